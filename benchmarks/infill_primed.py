"""An experiment (docs/infill.md, "Proposals that hear the right side first"): `resample`'s
candidates written after a prompt of the right side, a 1 s rest and the left side, and
importance-corrected by log p(span | left) - log p(span | that prompt), against plain
resampling, on the spans and with the seam metric of benchmarks/infill.py:

    python benchmarks/infill_primed.py [--pieces 3] [--k 8] [--checkpoint pretrained:piano]

One thread, so it can run beside a training run. Prints a row per span and the share of the
gap from a continuation to the true span that each way closes (primed: weighted by the right
context only, as `resample` weights; primed_iw: importance-corrected, the same target as
`resample`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.config import SampleConfig, Steering
from cadenza.data.fim import right_side, stream
from cadenza.data.tokenizers import BOS
from cadenza.data.tokenizers.performance import shift_tokens
from cadenza.engine import sample_run
from cadenza.infill import Proposals, contexts, fill, right_logprobs, trim_to
from cadenza.session import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infill as bench  # noqa: E402  (benchmarks/infill.py: its pieces, spans and metric)

PRIME_SECONDS = 8.0  # how much of the right side the proposals hear first
NAMES = ["resample", "primed", "primed_iw", "continuation", "retrieval", "true"]


def logprob(model, prefix: np.ndarray, ids: np.ndarray) -> float:
    """log p(ids | BOS, prefix), summed (the prefix keeps its latest tokens that fit)."""
    return float(right_logprobs(model, prefix, [ids[:0]], ids).sum())


def primed(gen, notes, span, steer: Steering, k: int):
    """K candidates written after ``BOS right rest left``; their right-context weights and
    the importance correction log p(span | left) - log p(span | primed prompt)."""
    tok, model = gen.tok, gen.model
    left, judge, budget = contexts(gen, notes, span, bench.JUDGE)
    prime = right_side(tok, notes, span.end, PRIME_SECONDS)[: model.max_context // 4]
    rest = shift_tokens(100)
    keep = max(model.max_context // 8, budget // 2 - len(prime) - len(rest))
    primer = np.concatenate([prime, rest, left[-keep:]]).astype(np.int64)
    prompt = np.concatenate([[BOS], primer])
    cfg = SampleConfig(seconds=span.seconds, **{**steer.to_dict(), "num_samples": k})
    run = sample_run(gen, np.repeat(prompt[None], k, 0), cfg)
    middles = [trim_to(t, span.seconds) for t in run.tokens]
    w = right_logprobs(model, left, middles, judge).sum(1)
    plain = left[-(budget // 2):]
    return middles, w, np.array([logprob(model, plain, m) - logprob(model, primer, m)
                                 for m in middles])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=3, help="asap pieces (POP909: 2/3 of it)")
    ap.add_argument("--k", type=int, default=8, help="candidates per span")
    ap.add_argument("--checkpoint", default="pretrained:piano")
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = Session.load(a.checkpoint)
    tok, model = gen.tok, gen.model
    rows = []
    for corpus, f, _, notes, length, span in bench.benchmark_spans(a.pieces):
        steer = Steering(seed=len(rows), top_p=0.95)
        t0 = time.perf_counter()
        res = fill(gen, notes, span, steer, Proposals(a.k, bench.JUDGE, "resample"))[0]
        t1 = time.perf_counter()
        middles, w, correction = primed(gen, notes, span, steer, a.k)
        t2 = time.perf_counter()
        rng = np.random.default_rng(steer.seed)
        ways = {"resample": bench.span_ids(tok, res.notes, span.start, length),
                "primed": middles[draw(rng, w)],
                "primed_iw": middles[draw(rng, w + correction)],
                **bench.baselines(gen, notes, span, length, steer)}
        left, right = stream(tok, notes, span.start), bench.judged(tok, model, notes, span)
        row = {"corpus": corpus, "length": length, "resample_s": t1 - t0, "primed_s": t2 - t1}
        for name, ids in ways.items():
            row[name], row[name + "_late"] = bench.seam(model, left, ids, right)
        rows.append(row)
        print(f"{corpus:>7} {f.name:<24} {length:g} s: " +
              " ".join(f"{n} {row[n]:.3f}/{row[n + '_late']:.3f}" for n in NAMES) +
              f"  ({row['resample_s']:.1f} s, {row['primed_s']:.1f} s)", flush=True)
    bench.tables(rows, NAMES, NAMES[:3])
    print(f"time per span: resample {np.mean([r['resample_s'] for r in rows]):.1f} s, "
          f"primed {np.mean([r['primed_s'] for r in rows]):.1f} s")


def draw(rng: np.random.Generator, logw: np.ndarray) -> int:
    """One candidate, in proportion to exp(logw)."""
    p = np.exp(logw - logw.max())
    return int(rng.choice(len(logw), p=p / p.sum()))


if __name__ == "__main__":
    main()
