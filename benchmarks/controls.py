"""How well the generation controls hold, steer and cost, with pretrained:piano on held-out
live performances (docs/generation.md quotes the tables):

    python benchmarks/controls.py                 # all tables, ~10 min on 2 cores
    python benchmarks/controls.py --pieces 8      # a quick look

32 openings (the first 8 s) of asap-maestro/validation, pieces the model never saw, are
continued for 20 s (top-p 0.95, seed = the opening's number) with no control and with each
control; a control that depends on the piece (the key) takes the opening's own key
(Krumhansl-Kessler). Reported:

- adherence: the share of new notes that obey each hard control (goal: 100%), and whether
  every continuation is as long as asked;
- density: the notes per second achieved for --density 2, 6 and 12 (median, quartiles)
  against none;
- loops: the longest run of copies of one pattern (stats.longest_repeat) with and without
  --max-repeats, beside the true continuations';
- cost on real music: the model's NLL per token of the true continuations that obey a
  control (its values read from each true continuation), with the grammar's mask alone and
  with the control's mask too (renormalised over the tokens it allows);
- statistics: `cadenza stats` overlap of each condition's continuations with the true ones;
- docs/controls.png: one opening continued with several controls.

The corpus comes from $CADENZA_PIANO_DATA (default ../shared/data/piano); absent, it skips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.config import SampleConfig
from cadenza.controls import Controls
from cadenza.data.midi import Notes, cut_notes, load_score, notes_from_score
from cadenza.data.tokenizers import BOS
from cadenza.generate import primer_mask
from cadenza.session import Session
from cadenza.stats import compare, longest_repeat
from cadenza.theory import NAMES, estimate_key, key_pitch_classes

ROOT = Path(__file__).resolve().parents[1]
PIANO = Path(os.environ.get("CADENZA_PIANO_DATA", ROOT.parent / "shared/data/piano"))
PRIMER, NEW = 8.0, 20.0
STATIC = {"pitch_range": "C3-C6", "velocity_range": "40-80", "max_polyphony": 3}
REPEATS = 3


def opening_key(notes: Notes) -> str:
    w = np.zeros(12)
    np.add.at(w, notes.pitch % 12, notes.end - notes.start)
    return estimate_key(w)


def sounding_at_onsets(notes: Notes, which: np.ndarray) -> np.ndarray:
    return np.array([int(((notes.start <= t + 1e-9) & (notes.end > t + 1e-9)).sum())
                     for t in notes.start[which]], int)


def conditions(key: str) -> dict[str, dict]:
    return {"none": {}, "key": {"key": key},
            **{name: {name: value} for name, value in STATIC.items()},
            "density 2": {"density": 2.0}, "density 6": {"density": 6.0},
            "density 12": {"density": 12.0}, f"max_repeats {REPEATS}": {"max_repeats": REPEATS}}


def obeys(name: str, s: dict, notes: Notes, fresh: np.ndarray) -> np.ndarray:
    """Per new note, whether it obeys the condition's hard control (True when none), its
    values read by the config as the engine reads them."""
    p, v = notes.pitch[fresh], notes.velocity[fresh]
    cfg = SampleConfig(**s)
    if cfg.key:
        return np.isin(p % 12, sorted(cfg.key_classes))
    if cfg.pitch_range:
        lo, hi = cfg.pitch_range_values
        return (p >= lo) & (p <= hi)
    if cfg.velocity_range:
        lo, hi = cfg.velocity_range_values
        return (v >= lo) & (v <= hi)
    if cfg.max_polyphony:
        return sounding_at_onsets(notes, fresh) <= cfg.max_polyphony
    return np.ones(len(p), bool)


def generate_all(gen: Session, files: list[Path]) -> dict:
    tok = gen.tok
    out: dict[str, dict] = {}
    truth = []
    for i, f in enumerate(files):
        score = load_score(f)
        prompt = np.concatenate([[BOS], tok.encode_primer(score, PRIMER)]).astype(np.int64)
        n = notes_from_score(score)
        keep = n.start >= PRIMER
        truth.append(cut_notes(Notes(n.start[keep] - PRIMER, n.end[keep] - PRIMER,
                                     n.pitch[keep], n.velocity[keep]), NEW))
        before = tok.decode_notes(prompt[1:])
        key = opening_key(cut_notes(n, PRIMER))
        for name, s in conditions(key).items():
            cfg = SampleConfig(seconds=NEW, seed=i, top_p=0.95, **s)
            t = time.perf_counter()
            run = gen.run(prompt, cfg)
            secs = time.perf_counter() - t
            new = run.tokens[0]
            notes = tok.decode_notes(np.concatenate([prompt[1:], new]))
            fresh = ~primer_mask(notes, before)
            cont = Notes(notes.start[fresh] - PRIMER, notes.end[fresh] - PRIMER,
                         notes.pitch[fresh], notes.velocity[fresh])
            r = out.setdefault(name, {"notes": [], "obey": 0, "total": 0, "seconds": [],
                                      "stopped": [], "time": 0.0, "tokens": 0})
            ok = obeys(name, s, notes, fresh)
            r["obey"] += int(ok.sum())
            r["total"] += int(len(ok))
            r["notes"].append(cont)
            r["seconds"].append(gen.seconds_of(np.concatenate([prompt[1:], new])) - PRIMER)
            r["stopped"].append(run.stopped[0])
            r["time"] += secs
            r["tokens"] += len(new)
        print(f"  {i + 1}/{len(files)} {f.name} ({key})", flush=True)
    out["true"] = {"notes": truth}
    return out


def replay_masks(tok, cfg: SampleConfig | None, prompt: np.ndarray, cont: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(T, V) masks at each continuation token: the grammar's, and with the control's."""
    g = tok.grammar()
    g.reset(1)
    ctl = Controls(cfg, tok.note_roles(), tok.name) if cfg is not None else None
    if ctl is not None:
        ctl.reset(1)
    for t in prompt:
        g.feed(np.array([[t]]))
        if ctl is not None:  # the primer: read, not counted as new notes
            ctl.feed(np.array([[t]]), g.elapsed()[:, None])
    if ctl is not None:
        ctl.begin(g.elapsed())
    gm, cm = [], []
    for t in cont:
        a = g.allowed()
        gm.append(a[0])
        cm.append(ctl.restrict(a.copy(), g, g.elapsed())[0] if ctl is not None else a[0])
        g.advance(np.array([t]))
        if ctl is not None:
            ctl.advance(np.array([t]), g.elapsed())
    return np.array(gm), np.array(cm)


def cost_on_real_music(gen: Session, files: list[Path]) -> dict:
    """NLL per token of each true continuation that obeys a control set from itself."""
    tok, model = gen.tok, gen.model
    limit = model.max_context
    rows: dict[str, list] = {}
    for f in files:
        score = load_score(f)
        prompt = tok.encode_primer(score, PRIMER)
        n = notes_from_score(score)
        keep = n.start >= PRIMER
        cont_notes = cut_notes(Notes(n.start[keep] - PRIMER, n.end[keep] - PRIMER,
                                     n.pitch[keep], n.velocity[keep]), NEW)
        if not len(cont_notes):
            continue
        cont = tok.encode(cont_notes)[: limit - 1 - len(prompt)]
        scored = tok.decode_notes(cont)  # the notes the scored tokens hold
        if not len(scored):
            continue
        played = set((scored.pitch % 12).tolist())
        keys = [k for k in (f"{r} {m}" for m in ("major", "minor") for r in NAMES)
                if played <= key_pitch_classes(k)]
        lo, hi = int(max(scored.pitch.min(), 21)), int(min(scored.pitch.max(), 108))
        vlo, vhi = int(max(scored.velocity.min(), 1)), int(scored.velocity.max())
        poly = int(sounding_at_onsets(scored, np.ones(len(scored), bool)).max())
        ctl = {"pitch_range": {"pitch_range": f"{lo}-{hi}"},
               "velocity_range": {"velocity_range": f"{vlo}-{vhi}"},
               "max_polyphony": {"max_polyphony": poly},
               f"max_repeats {REPEATS}": {"max_repeats": REPEATS}}
        if keys:
            ctl["key"] = {"key": keys[0]}
        ids = torch.as_tensor(np.concatenate([[BOS], prompt, cont]), dtype=torch.long)[None]
        with torch.no_grad():
            logits = model(ids)[0, len(prompt): len(prompt) + len(cont)].float()
        target = torch.as_tensor(cont)
        for name, s in ctl.items():
            gm, cm = replay_masks(tok, SampleConfig(seconds=NEW, **s), prompt, cont)
            if not cm[np.arange(len(cont)), cont].all():  # the true tokens break it: skip
                rows.setdefault(name, []).append(None)
                continue
            nll = []
            for m in (np.ones_like(gm), gm, cm):
                lg = logits.masked_fill(~torch.as_tensor(m), float("-inf"))
                nll.append(float(-torch.log_softmax(lg, -1)[torch.arange(len(cont)), target]
                                 .sum()))
            rows.setdefault(name, []).append((len(cont), *nll))
    out = {}
    for name, rs in rows.items():
        ok = [r for r in rs if r is not None]
        n = sum(r[0] for r in ok)
        out[name] = {"pieces": len(ok), "skipped": len(rs) - len(ok), "tokens": n,
                     "nll_plain": sum(r[1] for r in ok) / max(n, 1),
                     "nll_grammar": sum(r[2] for r in ok) / max(n, 1),
                     "nll_control": sum(r[3] for r in ok) / max(n, 1)}
    return out


def figure(gen: Session, f: Path, out: Path) -> None:
    """One opening continued without a control and with several."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    tok = gen.tok
    score = load_score(f)
    prompt = np.concatenate([[BOS], tok.encode_primer(score, PRIMER)]).astype(np.int64)
    before = tok.decode_notes(prompt[1:])
    key = opening_key(cut_notes(notes_from_score(score), PRIMER))
    rows = [("no control", {}), (f"--key '{key}'", {"key": key}),
            ("--pitch-range C3-C6", {"pitch_range": "C3-C6"}),
            ("--density 2", {"density": 2.0}), ("--density 12", {"density": 12.0})]
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 2.2 * len(rows)), sharex=True)
    for ax, (title, s) in zip(axes, rows):
        new = gen.run(prompt, SampleConfig(seconds=12.0, seed=3, top_p=0.95, **s)).tokens[0]
        notes = tok.decode_notes(np.concatenate([prompt[1:], new]))
        is_primer = primer_mask(notes, before)
        polys = [[(a, p - 0.45), (b, p - 0.45), (b, p + 0.45), (a, p + 0.45)]
                 for a, b, p in zip(notes.start, notes.end, notes.pitch)]
        ax.add_collection(PolyCollection(polys, facecolors=np.where(is_primer, "#3b6ea8",
                                                                    "#e8862a"),
                                         edgecolors="none"))
        ax.axvline(PRIMER, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, PRIMER + 12)
        ax.set_ylim(24, 100)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel("pitch")
        if "pitch_range" in s:
            ax.axhspan(48, 84, color="#e8862a", alpha=0.08)
    axes[-1].set_xlabel(f"seconds ({f.parent.name}/{f.name}: 8 s opening, blue; "
                        "12 s continued, orange)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=32)
    ap.add_argument("--out", default="runs/controls-bench.json")
    ap.add_argument("--figure", default=str(ROOT / "docs/controls.png"))
    a = ap.parse_args()
    valid = PIANO / "asap-maestro" / "validation"
    if not valid.exists():
        sys.exit(f"skipped: {valid} not found (set CADENZA_PIANO_DATA)")
    files = sorted(valid.rglob("*.mid"))
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(a.pieces, len(files)))
             .round().astype(int)]
    gen = Session.load("pretrained:piano")
    print(f"{len(files)} openings of {valid}, {gen.precision} decoding")
    res = generate_all(gen, files)
    truth = res.pop("true")["notes"]
    report: dict = {"pieces": len(files), "precision": gen.precision, "conditions": {}}
    real_rep = [longest_repeat(n) for n in truth if len(n)]
    print(f"\n{'condition':<16}{'obey':>8}{'as long':>9}{'notes/s med [q1, q3]':>24}"
          f"{'repeat max/med':>16}{'stats OA':>10}{'tok/s':>8}")
    for name, r in res.items():
        rates = np.array([len(n) / NEW for n in r["notes"]])
        reps = [longest_repeat(n) for n in r["notes"] if len(n)]
        oa = compare(r["notes"], truth)
        mean_oa = float(np.mean([v["overlap"] for v in oa.values()]))
        long_ = sum(s >= NEW - 1e-6 for s in r["seconds"])
        row = {"obey": r["obey"] / max(r["total"], 1), "new_notes": r["total"],
               "as_long_as_asked": long_, "stopped": sorted(set(r["stopped"])),
               "notes_per_second": [float(np.median(rates)), float(np.quantile(rates, 0.25)),
                                    float(np.quantile(rates, 0.75))],
               "longest_repeat": [int(max(reps)), float(np.median(reps))],
               "stats_overlap": mean_oa, "stats": oa,
               "tokens_per_second": r["tokens"] / r["time"]}
        report["conditions"][name] = row
        q = row["notes_per_second"]
        print(f"{name:<16}{100 * row['obey']:>7.2f}%{long_:>6}/{len(files)}"
              f"{q[0]:>10.1f} [{q[1]:.1f}, {q[2]:.1f}]{row['longest_repeat'][0]:>10}/"
              f"{row['longest_repeat'][1]:<5.0f}{mean_oa:>10.3f}{row['tokens_per_second']:>8.0f}")
    rates = np.array([len(n) / NEW for n in truth])
    report["true"] = {"notes_per_second": [float(np.median(rates)),
                                           float(np.quantile(rates, 0.25)),
                                           float(np.quantile(rates, 0.75))],
                      "longest_repeat": [int(max(real_rep)), float(np.median(real_rep))]}
    print(f"{'true':<16}{'':>8}{'':>9}{np.median(rates):>10.1f} [{np.quantile(rates, .25):.1f}, "
          f"{np.quantile(rates, .75):.1f}]{max(real_rep):>10}/{np.median(real_rep):<5.0f}")
    print("\ncost on real music (NLL per token of true continuations obeying the control)")
    cost = cost_on_real_music(gen, files)
    report["cost"] = cost
    print(f"{'control':<16}{'pieces':>8}{'plain':>8}{'grammar':>9}{'+control':>10}")
    for name, c in cost.items():
        print(f"{name:<16}{c['pieces']:>5}/{c['pieces'] + c['skipped']:<3}"
              f"{c['nll_plain']:>7.3f}{c['nll_grammar']:>9.3f}{c['nll_control']:>10.3f}")
    figure(gen, files[len(files) // 2], Path(a.figure))
    print(f"\nfigure: {a.figure}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
