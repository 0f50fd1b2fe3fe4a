"""How well `cadenza infill` joins a span to the music after it, with pretrained:piano on
pieces it never saw (docs/infill.md quotes the tables):

    python benchmarks/infill.py                  # ~15 min on 2 cores
    python benchmarks/infill.py --pieces 4       # a quick look
    python benchmarks/infill.py --checkpoint runs/x/best   # another model (it also judges)

Spans of 4 and 8 s from the middle of each piece of asap-maestro/validation (live, unseen
pieces) and of POP909's validation songs (the same content-hash split `prepare` makes). For
each span, these ways to fill it:

  (a) resample: K = 8 candidates from the left context, one drawn by the right context's
      likelihood (its first 4 s, as `cadenza infill --method resample` does);
  (a') fim: for a model trained with `train --fim`, one span written after reading both
      sides (K = 1, `--method fim --candidates 1`), and fim K = 8: eight such, one drawn as
      in (a) (`cadenza infill`'s default for such a model);
  (b) continuation: one candidate, the right context ignored (infill with K = 1);
  (c) retrieval: a span of the same length from elsewhere in the same piece (the baseline of
      the Anticipatory Music Transformer's listening test);
  (d) the true span: the ceiling.

Seam coherence, our metric: the model's NLL per token of the real music after the span given
the left context and the filled span. It asks what a listener hears at the seam: does the
piece go on from the new span as it really goes on? There is no standard metric for this;
we report it over the next 8 s and, separately, over seconds 4-8 after the span, which the
weighting in (a) never looked at (the honest figure). The fraction of the gap from (b) to (d)
that a way closes is (b - a) / (b - d). Also: `cadenza stats` overlap of the spans' notes with
the true spans', the time per span, and docs/infill.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cadenza.config import Steering
from cadenza.data.fim import after, stream
from cadenza.data.midi import BadInput, Notes, load_score, notes_from_score
from cadenza.data.sources import hash_split, music_digest
from cadenza.data.tokenizers.performance import shift_steps
from cadenza.infill import Proposals, fill, make_span, method_of, right_logprobs, trim_to
from cadenza.session import Session
from cadenza.stats import compare

ROOT = Path(__file__).resolve().parents[1]
PIANO = Path(os.environ.get("CADENZA_PIANO_DATA", ROOT.parent / "shared/data/piano"))
K, JUDGE, AFTER = 8, 4.0, 8.0


def pieces(n: int) -> list[tuple[str, Path]]:
    asap = sorted((PIANO / "asap-maestro" / "validation").rglob("*.mid"))
    asap = [asap[i] for i in np.linspace(0, len(asap) - 1, min(n, len(asap))).round()
            .astype(int)]
    pop = []
    for f in sorted((PIANO / "pop909").glob("*/*.mid")):
        if len(pop) >= max(1, n * 2 // 3):
            break
        try:
            d = music_digest(notes_from_score(load_score(f)))
        except BadInput:
            continue
        if hash_split(d, 0.05, 0.05) == "valid":
            pop.append(f)
    return [("asap", f) for f in asap] + [("pop909", f) for f in pop]


def benchmark_spans(n: int):
    """(corpus, file, score, notes, length, span) of the benchmark's spans: 4 and 8 s from
    the middle of each piece of ``pieces(n)`` long enough for music on both sides."""
    for corpus, f in pieces(n):
        score = load_score(f)
        notes = notes_from_score(score)
        for length in (4.0, 8.0):
            mid = round(float(notes.end.max()) / 2, 2)
            if mid >= 2 * length + 4:
                yield corpus, f, score, notes, length, make_span(score, notes, mid, mid + length)


def span_ids(tok, new: Notes, start: float, length: float) -> np.ndarray:
    """A filled span's notes (seconds of the piece) as the stream the true span gets."""
    rel = Notes(new.start - start, new.end - start, new.pitch, new.velocity)
    return trim_to(stream(tok, rel, length), length)


def right_times(right: np.ndarray) -> np.ndarray:
    """The time (s) at which each right-context token stands."""
    shift = shift_steps(right)
    return (np.cumsum(shift) - shift) / 100


def judged(tok, model, notes: Notes, span) -> np.ndarray:
    """The real music after the span that the seam is judged on: its next 8 s (dense music:
    its first context / 3 tokens)."""
    return stream(tok, after(notes, span.end, AFTER), AFTER)[: model.max_context // 3]


def baselines(gen, notes: Notes, span, length: float, steer: Steering) -> dict[str, np.ndarray]:
    """The ids of (b) a plain continuation, (c) a span of the same length from elsewhere in
    the piece, (d) the true span."""
    tok = gen.tok
    cont = fill(gen, notes, span, steer, Proposals(1, 0.0, "resample"))[0]
    other = span.start - 2 * length if span.start >= 2 * length else span.start + 2 * length
    return {"continuation": span_ids(tok, cont.notes, span.start, length),
            "retrieval": stream(tok, after(notes, other, length), length),
            "true": stream(tok, after(notes, span.start, length), length)}


def seam(model, left: np.ndarray, ids: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """NLL per token of ``right`` after ``left`` and a filled span (untagged, left to right):
    over all of it, and over the part from JUDGE seconds on, which no weighting saw."""
    lp = right_logprobs(model, left, [ids], right)[0]
    late = right_times(right) >= JUDGE
    return float(-lp.mean()), float(-lp[late].mean()) if late.any() else float("nan")


def tables(rows: list[dict], names: list[str], made: list[str]) -> dict:
    """Print and return the mean seam NLL of each way, by corpus and span length, and the
    share of the gap from the continuation to the true span that each way in ``made``
    closes."""
    out = {}
    print(f"\n{'spans':<22}{'n':>4}" + "".join(f"{n:>13}" for n in names) +
          "".join(f"{'closed ' + n:>18}" for n in made) +
          "   (NLL/token of the next 8 s; then of seconds 4-8 only)")
    for corpus in ("asap", "pop909", "all"):
        for length in (4.0, 8.0, None):
            sel = [r for r in rows if (corpus == "all" or r["corpus"] == corpus)
                   and (length is None or r["length"] == length)]
            if not sel:
                continue
            for late in ("", "_late"):
                m = {w: float(np.nanmean([r[w + late] for r in sel])) for w in names}
                gap = m["continuation"] - m["true"]
                closed = {n: (m["continuation"] - m[n]) / gap if gap else float("nan")
                          for n in made}
                label = f"{corpus} {'all' if length is None else f'{length:g} s'}" + \
                    (" (4-8 s)" if late else "")
                out[label] = {**m, "closed": closed, "spans": len(sel)}
                print(f"{label:<22}{len(sel):>4}" + "".join(f"{m[n]:>13.3f}" for n in names)
                      + "".join(f"{100 * closed[n]:>17.0f}%" for n in made))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=12, help="asap pieces (POP909: 2/3 of it)")
    ap.add_argument("--k", type=int, default=K, help="candidates per span (default 8)")
    ap.add_argument("--checkpoint", default="pretrained:piano",
                    help="the model that fills and judges (default pretrained:piano)")
    ap.add_argument("--out", default="runs/infill-bench.json")
    ap.add_argument("--figure", default=str(ROOT / "docs/infill.png"))
    a = ap.parse_args()
    if not (PIANO / "asap-maestro" / "validation").exists():
        sys.exit(f"skipped: {PIANO} not found (set CADENZA_PIANO_DATA)")
    gen = Session.load(a.checkpoint)
    tok, model = gen.tok, gen.model
    fims = ["fim", f"fim K={a.k}"] if method_of(gen, "auto") == "fim" else []
    made = ["resample", *fims]
    names = [*made, "continuation", "retrieval", "true"]
    rows: list[dict] = []
    spans: dict[str, list[Notes]] = {n: [] for n in names}
    shown = []
    for corpus, f, score, notes, length, span in benchmark_spans(a.pieces):
        left, right = stream(tok, notes, span.start), judged(tok, model, notes, span)
        steer = Steering(seed=len(rows), top_p=0.95)
        t = time.perf_counter()
        filled = {"resample": fill(gen, notes, span, steer,
                                   Proposals(a.k, JUDGE, "resample"))[0]}
        secs = {"resample": time.perf_counter() - t}
        for name, k in zip(fims, (1, a.k)):
            t = time.perf_counter()
            filled[name] = fill(gen, notes, span, steer, Proposals(k, JUDGE, "fim"))[0]
            secs[name] = time.perf_counter() - t
        ways = {**{n: span_ids(tok, filled[n].notes, span.start, length) for n in made},
                **baselines(gen, notes, span, length, steer)}
        row = {"corpus": corpus, "file": f.name, "span": [span.start, span.end],
               "length": length, "seconds": secs, "right_tokens": int(len(right))}
        for name, ids in ways.items():
            row[name], row[name + "_late"] = seam(model, left, ids, right)
            spans[name].append(tok.decode_notes(ids))
        rows.append(row)
        if len(shown) < 3 and length == 8.0:
            shown.append((f, score, notes, span, filled[made[-1]].notes))
        print(f"{corpus:>7} {f.name:<28} {length:g} s: " +
              " ".join(f"{n} {row[n]:.3f}" for n in names) +
              "  (" + ", ".join(f"{n} {secs[n]:.1f} s" for n in made) + ")", flush=True)
    report = {"checkpoint": a.checkpoint, "k": a.k, "judge_seconds": JUDGE,
              "after_seconds": AFTER, "rows": rows, "tables": tables(rows, names, made)}
    print("\nstats overlap with the true spans (mean over features)")
    for name in [*made, "continuation", "retrieval"]:
        oa = compare(spans[name], spans["true"])
        report[f"stats_{name}"] = oa
        print(f"  {name:<14}{np.mean([v['overlap'] for v in oa.values()]):.3f}  " +
              " ".join(f"{k} {v['overlap']:.2f}" for k, v in oa.items()))
    lengths = [r["length"] for r in rows]
    report["time"] = {}
    for n in made:
        per = [r["seconds"][n] for r in rows]
        report["time"][n] = {"seconds_per_span": float(np.mean(per)),
                             "real_time_factor": float(np.sum(lengths) / np.sum(per))}
        print(f"time, {n}: {np.mean(per):.1f} s per span "
              f"({np.sum(lengths) / np.sum(per):.2f}x real time), {gen.precision} decoding")
    if a.figure:
        figure(shown, Path(a.figure))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


def figure(shown, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    fig, axes = plt.subplots(len(shown), 2, figsize=(14, 2.6 * len(shown)), squeeze=False)
    for row, (f, _, notes, span, new) in zip(axes, shown):
        inside = (notes.start >= span.start) & (notes.start < span.end)
        for ax, (title, extra) in zip(row, (("original", None), ("infilled", new))):
            kept = Notes(*(getattr(notes, k)[~inside] for k in ("start", "end", "pitch",
                                                                 "velocity")))
            span_notes = Notes(*(getattr(notes, k)[inside] for k in ("start", "end", "pitch",
                                                                      "velocity"))) \
                if extra is None else extra
            for part, colour in ((kept, "#3b6ea8"), (span_notes, "#e8862a")):
                polys = [[(s, p - 0.45), (e, p - 0.45), (e, p + 0.45), (s, p + 0.45)]
                         for s, e, p in zip(part.start, part.end, part.pitch)]
                ax.add_collection(PolyCollection(polys, facecolors=colour, edgecolors="none"))
            ax.axvspan(span.start, span.end, color="#e8862a", alpha=0.08)
            ax.set_xlim(span.start - 8, span.end + 8)
            ax.set_ylim(int(notes.pitch.min()) - 2, int(notes.pitch.max()) + 2)
            ax.set_title(f"{f.name}: {title} ({span.start:g}-{span.end:g} s)", loc="left",
                         fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
