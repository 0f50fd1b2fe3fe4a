"""Does learning the piece while it is read (`evaluate --adapt`, dynamic evaluation) lower the
NLL of live performances, by position in the piece, and what does it cost?

    python benchmarks/adapt.py [--pieces 12] [--tokens 4096] [--lrs 0.005,0.01] [--segment 256]

The files of asap-maestro/validation ($CADENZA_PIANO_DATA, default ../shared/data/piano) at
least ``--tokens`` long, every ``step``-th so the composers are spread, each cut to its
first ``--tokens`` tokens, scored by pretrained:piano statically (evaluate's sliding
windows, stride half the context), in dynamic evaluation's segments without learning
(learning rate 0: what its longer reading alone gives) and under dynamic evaluation at each
learning rate; the NLL per token over all, and by position (tokens 1-1,000, 1,000-5,000,
beyond), and the seconds per 1,000 tokens of each.
Skips clearly when the data is absent.
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

from cadenza.adapt import Adaptation, score_adapted
from cadenza.data.tokenizers import EOS
from cadenza.evaluate import midi_pieces, score_pieces
from cadenza.session import Session

ROOT = Path(__file__).resolve().parents[1]
PIANO = Path(os.environ.get("CADENZA_PIANO_DATA", ROOT.parent / "shared/data/piano"))
BUCKETS = ((0, 1000), (1000, 5000), (5000, 10**9))


def by_position(nll: list[np.ndarray]) -> dict[str, float]:
    out = {"all": float(np.concatenate(nll).mean())}
    for a, b in BUCKETS:
        part = [x[a:b] for x in nll if len(x) > a]
        if part:
            out[f"{a}-{b if b < 10**9 else ''}"] = float(np.concatenate(part).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--lrs", default="0.005,0.01")
    ap.add_argument("--segment", type=int, default=256)
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    folder = PIANO / "asap-maestro" / "validation"
    if not folder.exists():
        print(f"skipped: {folder} not found (set CADENZA_PIANO_DATA)")
        sys.exit(0)
    torch.set_num_threads(a.threads)
    s = Session.load(a.model, precision="fp32")
    names, pieces, _ = midi_pieces([folder], s.tok)
    # the performances at least --tokens long (each position bucket then holds all of them)
    long = [(n, p) for n, p in zip(names, pieces) if len(p) >= a.tokens + 2] or \
        list(zip(names, pieces))
    step = max(len(long) // a.pieces, 1)
    chosen = [(n, np.r_[p[: a.tokens + 1], EOS]) for n, p in long][::step]
    chosen = chosen[: a.pieces]
    names, pieces = [n for n, _ in chosen], [p for _, p in chosen]
    tokens = sum(len(p) - 2 for p in pieces)
    ctx = s.ck.train.context
    rows = {}
    t = time.perf_counter()
    static = score_pieces(s.model, pieces, ctx, ctx // 2)
    rows["static"] = {**by_position(static),
                      "s_per_1000": (time.perf_counter() - t) / tokens * 1000}
    # lr 0: the same segments and windows, no learning (dynamic evaluation reads each token
    # with 768-1,024 tokens before it, the static windows with 512-1,024: this row parts
    # what the longer reading gives from what the learning gives)
    for lr in (0.0, *(float(x) for x in a.lrs.split(","))):
        t = time.perf_counter()
        nll = score_adapted(s.model, pieces, ctx, Adaptation(lr, a.segment))
        rows[f"adapt lr {lr:g}, segment {a.segment}" if lr else
             f"segments of {a.segment}, no learning"] = {
            **by_position(nll), "s_per_1000": (time.perf_counter() - t) / tokens * 1000}
    print(f"{len(pieces)} asap-maestro/validation performances, their first {a.tokens} "
          f"tokens ({tokens:,} in all), {a.model} in fp32, context {ctx}")
    cols = sorted({k for r in rows.values() for k in r}, key=lambda k: (k != "all", k))
    print(f"{'':<32}" + "".join(f"{c:>14}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<32}" + "".join(f"{r.get(c, float('nan')):>14.4f}" for c in cols))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"pieces": names, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
