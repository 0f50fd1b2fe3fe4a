"""Which model shape learns most per minute of CPU training? A recipe (default `demo`:
bf16, rotary positions, 2 x 256 since this sweep chose it, 4 x 256 when it ran, batch 16 x
512, lr 1e-3) on one dataset, with one change
of shape at a time -- head size, width, depth, context -- each trained for the same
minutes, one run at a time; a table of validation NLL per token, steps and tokens/s.

    python benchmarks/shapes.py --data ~/.cache/cadenza/datasets/chorales-v2-performance \
        [--recipe demo] [--minutes 4] [--threads 2] [--out bench/shapes] [--only as-is,hs32]

The table this printed is in docs/benchmarks.md ("Shapes by NLL per minute").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cadenza.recipes import RECIPES

# name -> (changes to the recipe, what it tests)
SHAPES: dict[str, tuple[dict, str]] = {
    "as-is": ({}, "the recipe as it is"),
    "hs32": ({"n_head": 8}, "8 heads of 32"),
    "hs128": ({"n_head": 2}, "2 heads of 128"),
    "depth2": ({"n_layer": 2}, "2 layers"),
    "depth3": ({"n_layer": 3}, "3 layers"),
    "2x192": ({"n_layer": 2, "d_model": 192, "n_head": 3, "d_ff": 768},
              "2 layers, 192 wide (3 heads of 64)"),
    "2x384": ({"n_layer": 2, "d_model": 384, "n_head": 6, "d_ff": 1536},
              "2 layers, 384 wide (6 heads of 64)"),
    "depth6": ({"n_layer": 6}, "6 layers"),
    "width192": ({"d_model": 192, "n_head": 3, "d_ff": 768}, "192 wide (3 heads of 64)"),
    "width384": ({"d_model": 384, "n_head": 6, "d_ff": 1536}, "384 wide (6 heads of 64)"),
    "ctx256": ({"context": 256, "batch_size": 32}, "context 256, batch 32 (same tokens/step)"),
    "ctx1024": ({"context": 1024, "batch_size": 8}, "context 1024, batch 8 (same tokens/step)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared performance dataset")
    ap.add_argument("--recipe", default="demo", choices=sorted(RECIPES))
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="bench/shapes")
    ap.add_argument("--only", help="comma-separated shape names (default: all)")
    a = ap.parse_args()
    from cadenza.train import train
    torch.set_num_threads(a.threads)
    names = a.only.split(",") if a.only else list(SHAPES)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = json.loads((out / "shapes.json").read_text()) if (out / "shapes.json").exists() \
        else {}
    for name in names:
        changes, about = SHAPES[name]
        model, tc = RECIPES[a.recipe].configs(data=a.data, out=str(out / name), force=True,
                                            minutes=a.minutes, **changes)
        t = time.perf_counter()
        r = train(model, tc)
        rows[name] = {"about": about, "recipe": a.recipe, "minutes": a.minutes,
                      "threads": a.threads, "parameters": r.parameters, "steps": r.step,
                      "best_val_nll": r.best_val_nll,
                      "tokens_per_s": r.step * tc.batch_size * tc.context / r.elapsed,
                      "wall_s": time.perf_counter() - t}
        (out / "shapes.json").write_text(json.dumps(rows, indent=1) + "\n")
    # the table holds every shape trained into --out, this run's and earlier ones'
    print(f"\non {a.data}\n")
    print("| shape | recipe, minutes x threads | parameters | steps | tokens/s | best valid NLL |")
    print("|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['about']} | {r['recipe']}, {r['minutes']:g} x {r['threads']} | "
              f"{r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['tokens_per_s']:,.0f} | "
              f"{r['best_val_nll']:.3f} |")


if __name__ == "__main__":
    main()
