"""The training loop against its own step: ``cadenza train``'s tokens/s as a user runs it
(sampling windows, augmenting, batching, logging), beside the step alone on a fixed batch
and Hugging Face's GPT-2 of the same shape, in one run, in fp32 and bf16.

    python benchmarks/train_loop.py [--data DATASET] [--steps 60] [--heads 8]

The shape of the issue that set the goal: 6 layers, d_model 256, d_ff 1024, learned
positions, context 512, batch 8, dropout 0.1, fused AdamW, augmentation on (transposition,
time stretch, velocity). The loop is ``cadenza.train.train`` on a prepared performance-token
dataset (``--data``; by default the first 120 POP909 songs of ``$CADENZA_PIANO_DATA``,
prepared into a temporary folder), its tokens/s the median of its own progress lines
(metrics.csv: real target tokens over the wall time between lines, evaluation excluded),
once with ``--prefetch 0`` (each batch drawn in the step's path, as before) and once with the
default background prefetch. The step is the same model's forward, backward and optimizer
step on one fixed random batch (benchmarks/train_throughput.py's timing). Goal: the loop
within 10% of the step, and at least 1.3x GPT-2 (attn_pdrop=0) as the loop runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path

import torch
from train_throughput import V, hf_gpt2, step_time

from cadenza.config import ModelConfig, PrepareConfig, TrainConfig
from cadenza.data.prepare import prepare
from cadenza.models import build_model
from cadenza.train import train

L, D, FF, CONTEXT, BATCH = 6, 256, 1024, 512, 8


def dataset(work: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    root = Path(os.environ.get("CADENZA_PIANO_DATA", "../shared/data/piano")) / "pop909"
    songs = sorted(p for p in root.glob("*/*.mid"))[:120]
    if not songs:
        raise SystemExit(f"no POP909 songs under {root}: give --data or set "
                         "CADENZA_PIANO_DATA")
    out = work / "data"
    prepare(PrepareConfig(sources=tuple(str(s) for s in songs), out=str(out),
                          valid_frac=0.02, test_frac=0.0, workers=2), progress=False)
    return out


def loop_speed(model_cfg: ModelConfig, data: Path, out: Path, precision: str, steps: int,
               prefetch: int) -> float:
    """Median tokens/s of ``train``'s progress lines (the first one, warming up, left out)."""
    train(model_cfg, TrainConfig(data=str(data), out=str(out), context=CONTEXT,
                                 batch_size=BATCH, max_steps=steps, eval_every=10**6,
                                 log_every=5, warmup_steps=10, precision=precision,
                                 prefetch=prefetch, force=True), quiet=True)
    rows = [float(r["tokens_per_s"]) for r in csv.DictReader(open(out / "metrics.csv"))
            if r.get("tokens_per_s")]
    return statistics.median(rows[1:-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", help="a prepared performance-token dataset")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--heads", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"{torch.__version__}, {torch.get_num_threads()} threads; {L} x {D}, {a.heads} "
          f"heads, context {CONTEXT}, batch {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = dataset(work, a.data)
        model_cfg = ModelConfig(n_layer=L, d_model=D, n_head=a.heads, d_ff=FF, dropout=0.1,
                                position="learned")
        x = torch.randint(3, V, (BATCH, CONTEXT))
        print(f"{'':<10}{'step alone':>12}{'loop, no prefetch':>19}{'loop, prefetch':>16}"
              f"{'GPT-2 step':>12}{'loop/step':>11}{'loop/GPT-2':>12}")
        for precision in ("fp32", "bf16"):
            step = step_time(build_model(model_cfg.replace(vocab_size=V,
                                                           max_context=CONTEXT)),
                             x, precision, 10, False)
            bare = loop_speed(model_cfg, data, work / "bare", precision, a.steps, 0)
            ahead = loop_speed(model_cfg, data, work / "ahead", precision, a.steps, 2)
            gpt2 = step_time(hf_gpt2(CONTEXT, 0.0, a.heads), x, precision, 10, True)
            s, g = x.numel() / step, x.numel() / gpt2
            print(f"{precision:<10}{s:>12,.0f}{bare:>19,.0f}{ahead:>16,.0f}{g:>12,.0f}"
                  f"{ahead / s:>11.2f}{ahead / g:>11.2f}x")


if __name__ == "__main__":
    main()
