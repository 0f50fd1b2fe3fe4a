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
from cadenza.data.fim import after, right_side, stream
from cadenza.data.tokenizers import BOS
from cadenza.data.tokenizers.performance import shift_tokens
from cadenza.engine import sample_run
from cadenza.generate import Generator
from cadenza.infill import contexts, fill, right_logprobs, trim_to

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infill as bench  # noqa: E402  (benchmarks/infill.py: its pieces, spans and metric)

PRIME_SECONDS = 8.0  # how much of the right side the proposals hear first
NAMES = ["resample", "primed", "primed_iw", "continuation", "retrieval", "true"]


@torch.no_grad()
def seq_logprobs(model, prefix: np.ndarray, conts: list[np.ndarray]) -> np.ndarray:
    """log p of each continuation (summed over its tokens) after ``prefix`` (its latest
    tokens that fit the model's context)."""
    room = model.max_context
    seqs, starts = [], []
    for c in conts:
        p = prefix[len(prefix) + len(c) - room:] if len(prefix) + len(c) > room else prefix
        seqs.append(np.concatenate([p, c]).astype(np.int64))
        starts.append(len(p))
    batch = torch.zeros((len(seqs), max(len(s) for s in seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.as_tensor(s)
    logp = torch.log_softmax(model(batch).float(), -1)
    return np.array([float(logp[i, torch.arange(a - 1, len(s) - 1), torch.as_tensor(s[a:])].sum())
                     for i, (s, a) in enumerate(zip(seqs, starts))])


def primed(gen, notes, span, steer: Steering, k: int):
    """K candidates written after ``BOS right rest left``; their right-context weights and
    the importance correction log p(span | left) - log p(span | primed prompt)."""
    tok, model = gen.tok, gen.model
    left, judge, budget = contexts(gen, notes, span, bench.JUDGE)
    prime = right_side(tok, notes, span.end, PRIME_SECONDS)[: model.max_context // 4]
    rest = shift_tokens(100)
    keep = max(model.max_context // 8, budget // 2 - len(prime) - len(rest))
    prompt = np.concatenate([[BOS], prime, rest, left[-keep:]]).astype(np.int64)
    cfg = SampleConfig(seconds=span.seconds, **{**steer.to_dict(), "num_samples": k})
    run = sample_run(model, np.repeat(prompt[None], k, 0), tok.grammar(), cfg, 0,
                     period=gen.period, roles=tok.note_roles(), scheme=tok.name)
    middles = [trim_to(t, span.seconds) for t in run.tokens]
    w = right_logprobs(model, left, middles, judge).sum(1)
    plain = np.concatenate([[BOS], left[-(budget // 2):]]).astype(np.int64)
    return middles, w, seq_logprobs(model, plain, middles) - seq_logprobs(model, prompt, middles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=3, help="asap pieces (POP909: 2/3 of it)")
    ap.add_argument("--k", type=int, default=8, help="candidates per span")
    ap.add_argument("--checkpoint", default="pretrained:piano")
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = Generator.load(a.checkpoint)
    tok, model = gen.tok, gen.model
    rows = []
    for corpus, f, _, notes, length, span in bench.benchmark_spans(a.pieces):
        mid = span.start
        steer = Steering(seed=len(rows), top_p=0.95)
        t0 = time.perf_counter()
        res = fill(gen, notes, span, steer, a.k, bench.JUDGE, method="resample")[0]
        t1 = time.perf_counter()
        middles, w, correction = primed(gen, notes, span, steer, a.k)
        t2 = time.perf_counter()
        rng = np.random.default_rng(steer.seed)
        cont = fill(gen, notes, span, steer, 1, 0.0, method="resample")[0]
        other = mid - 2 * length if mid - 2 * length >= 0 else mid + 2 * length
        right = stream(tok, after(notes, span.end, bench.AFTER), bench.AFTER)
        right = right[: model.max_context // 3]
        ways = {"resample": bench.span_ids(tok, res.notes, span.start, length),
                "primed": middles[draw(rng, w)],
                "primed_iw": middles[draw(rng, w + correction)],
                "continuation": bench.span_ids(tok, cont.notes, span.start, length),
                "retrieval": stream(tok, after(notes, other, length), length),
                "true": stream(tok, after(notes, span.start, length), length)}
        left = stream(tok, notes, span.start)
        late = bench.right_times(right) >= bench.JUDGE
        row = {"resample_s": t1 - t0, "primed_s": t2 - t1}
        for name, ids in ways.items():
            lp = right_logprobs(model, left, [ids], right)[0]
            row[name], row[name + "_late"] = float(-lp.mean()), float(-lp[late].mean())
        rows.append(row)
        print(f"{corpus:>7} {f.name:<24} {length:g} s: " +
              " ".join(f"{n} {row[n]:.3f}/{row[n + '_late']:.3f}" for n in NAMES) +
              f"  ({row['resample_s']:.1f} s, {row['primed_s']:.1f} s)", flush=True)
    for late in ("", "_late"):
        m = {n: float(np.nanmean([r[n + late] for r in rows])) for n in NAMES}
        gap = m["continuation"] - m["true"]
        print("seconds 4-8" if late else "next 8 s", len(rows), "spans:",
              " ".join(f"{n} {m[n]:.3f}" for n in NAMES), "| closed:",
              " ".join(f"{n} {100 * (m['continuation'] - m[n]) / gap:.0f}%"
                       for n in NAMES[:3]))


def draw(rng: np.random.Generator, logw: np.ndarray) -> int:
    """One candidate, in proportion to exp(logw)."""
    p = np.exp(logw - logw.max())
    return int(rng.choice(len(logw), p=p / p.sum()))


if __name__ == "__main__":
    main()
