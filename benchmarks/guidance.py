"""Does `--style` with `--guidance W` steer, and what does it cost?

Openings from the validation splits (8 s each: pop and three composers the training data has
much of, Chopin, Bach and Beethoven, two pieces each) are continued for 20 s by
pretrained:piano under each of the four styles at W in {1, 1.5, 2, 3, 5}; an opening is
only continued under the styles other than its own (the style must come from the tag, not
the primer), ``--samples`` times (one batch, the same seed per opening). W = 1 is the tag as
read, no guidance.

Per style and W, over the continuations (the new notes alone, re-read from their own start):
how often the shipped style classifier (classify.py, one 20 s window) names the requested
style (its likeliest of all 19), and the mean probability it gives it; the NLL per new token
under the model without a tag (the cost: how far from what it would play on its own); notes
per second and pitch range against the primer's; distinct pitch 4-grams (diversity); seconds
per take.
Skips clearly when the data is absent.

    python benchmarks/guidance.py --dataset data/piano-v3 [--per-style 1] [--samples 3]
                                  [--weights 1,4] [--guidance-context 16] [--json-out F]

docs/generation.md's table: ``--weights 1,4`` at the default --guidance-context (16), and
``--weights 4 --guidance-context K`` for the other rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.classify import classifier_of
from cadenza.config import SampleConfig
from cadenza.data.dataset import TokenDataset
from cadenza.data.midi import Notes, load_score, notes_from_score
from cadenza.data.tokenizers import BOS
from cadenza.generate import primer_mask
from cadenza.session import Session
from cadenza.stats import distinct_ngrams

STYLES = ("pop", "Chopin", "Bach", "Beethoven")
WEIGHTS = (1.0, 1.5, 2.0, 3.0, 5.0)
PRIMER, NEW = 8.0, 20.0


@torch.no_grad()
def style_probabilities(s: Session, clf, notes: Notes) -> np.ndarray:
    """The classifier's probabilities for notes re-read as a piece of their own."""
    t0 = float(notes.start.min())
    own = Notes(notes.start - t0, notes.end - t0, notes.pitch, notes.velocity)
    ids = np.concatenate([[BOS], s.tok.encode(own)]).astype(np.int64)
    h = s.features(ids, layers=(clf.layer,))[0]
    v = h.mean(0)
    return clf.probabilities((v / np.linalg.norm(v))[None])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/piano-v3")
    ap.add_argument("--per-style", type=int, default=2, help="openings of each style")
    ap.add_argument("--samples", type=int, default=1, help="continuations of each opening "
                    "under each style and W (one batch)")
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    ap.add_argument("--guidance-context", type=int,
                    default=SampleConfig().guidance_context, help="--guidance-context N "
                    "(default: generate's; 0: guidance over the whole context)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    manifest = Path(a.dataset) / "manifest.json"
    if not manifest.exists():
        print(f"skipped: {manifest} not found (--dataset names the prepared piano data)")
        sys.exit(0)
    files = TokenDataset(a.dataset).files("valid")
    openings = []
    for style in STYLES:
        mine = sorted(Path(r["path"]) for r in files if r.get("style") == style)
        step = max(len(mine) // max(a.per_style, 1), 1)
        openings += [(style, p) for p in mine[::step][: a.per_style]]
    if len(openings) < 2:
        print("skipped: no validation pieces with these styles")
        sys.exit(0)
    torch.set_num_threads(a.threads)
    s = Session.load(a.model)
    clf = classifier_of(s, a.model)
    want = [clf.classes.index(st) for st in STYLES]
    weights = [float(w) for w in a.weights.split(",")]
    rows: dict[tuple[str, float], dict[str, list[float]]] = {}
    t_all = time.perf_counter()
    for i, (own, path) in enumerate(openings):
        notes = notes_from_score(load_score(path))
        prompt, _ = s.encode_primer(str(path), float(notes.start.min()) + PRIMER)
        primer = s.tok.decode_notes(prompt[1:])
        p_rate = len(primer) / max(float(primer.end.max() - primer.start.min()), 1e-6)
        p_range = float(primer.pitch.max() - primer.pitch.min())
        for style, k in zip(STYLES, want):
            if style == own:
                continue
            for w in weights:
                cfg = SampleConfig(seconds=NEW, seed=i, top_p=0.95, style=style, guidance=w,
                                   guidance_context=a.guidance_context,
                                   num_samples=a.samples)
                t = time.perf_counter()
                run = s.generate(prompt, cfg)
                took = (time.perf_counter() - t) / len(run)
                for new in run:
                    full = s.tok.decode_notes(np.concatenate([prompt[1:], new]))
                    fresh = ~primer_mask(full, primer)
                    n = Notes(full.start[fresh], full.end[fresh], full.pitch[fresh],
                              full.velocity[fresh])
                    p = style_probabilities(s, clf, n) if len(n) > 3 else np.zeros(len(want))
                    vals = dict(named=float(len(n) > 3 and int(np.argmax(p)) == k),
                                probability=float(p[k]),
                                nll=s.continuation_nll(prompt, new),
                                rate_ratio=len(n) / NEW / max(p_rate, 1e-6),
                                range_change=float(n.pitch.max() - n.pitch.min()) - p_range
                                if len(n) else float("nan"),
                                distinct_4grams=distinct_ngrams(n.pitch), seconds=took)
                    for key, v in vals.items():
                        rows.setdefault((style, w), {}).setdefault(key, []).append(v)
                last = {key: np.mean(v[-len(run):]) for key, v in rows[(style, w)].items()}
                print(f"  {style} W={w:g}: named {last['named']:.2f}, probability "
                      f"{last['probability']:.3f}, NLL {last['nll']:.3f} ({took:.0f} s a take)",
                      flush=True)
        print(f"opening {i + 1}/{len(openings)} ({own}) {path.name} done "
              f"({time.perf_counter() - t_all:.0f} s)", flush=True)
    cols = ("named", "probability", "nll", "rate_ratio", "range_change", "distinct_4grams",
            "seconds")
    print(f"\n{len(openings)} validation openings, {PRIMER:g} s primer, {NEW:g} s new, "
          f"{a.model}; each continued under the styles other than its own")
    print(f"{'style':<11}{'W':>5}{'takes':>7}" + "".join(f"{c:>16}" for c in cols))
    table = {}
    for (style, w), vals in rows.items():
        means = {c: float(np.nanmean(vals[c])) for c in cols}
        table[f"{style} W={w:g}"] = {**means, "takes": len(vals["named"])}
        print(f"{style:<11}{w:>5g}{len(vals['named']):>7}" +
              "".join(f"{means[c]:>16.3f}" for c in cols))
    print("\nall four styles together:")
    for w in weights:
        named = [v for (st, ww), vals in rows.items() if ww == w for v in vals["named"]]
        nll = [v for (st, ww), vals in rows.items() if ww == w for v in vals["nll"]]
        table[f"all W={w:g}"] = {"named": float(np.mean(named)), "nll": float(np.mean(nll)),
                                 "takes": len(named)}
        print(f"W={w:<4g} named {np.mean(named):.3f} of {len(named)} takes, NLL "
              f"{np.mean(nll):.3f}")
    print(f"{time.perf_counter() - t_all:.0f} s in all")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
