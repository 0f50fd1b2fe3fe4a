"""Training throughput: Cadenza's Transformer against Hugging Face's GPT2LMHeadModel (sdpa
attention) with identical dimensions, measured in the same run, in fp32 and bf16.

    python benchmarks/train_throughput.py [--steps 6] [--batch 8] [--context 512]

6 layers, d_model 256, 8 heads, d_ff 1024, vocab 391, learned positions, batch 8 x 512.
Dropout 0.1 in both. GPT-2 by default also drops attention weights, which pushes SDPA onto
its slow path; the table shows GPT-2 with that default and with attn_pdrop=0. Model-FLOPs
utilisation is 6 * params * tokens/s (+ attention) over a square matmul measured now.
Also: the LSTM baseline at a matched parameter count.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cadenza.bench import matched_width
from cadenza.config import ModelConfig
from cadenza.models import build_model, count_params

V, L, D, H, FF = 391, 6, 256, 8, 1024


def matmul_flops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 2 * n**3 * 5 / (time.perf_counter() - t)


def hf_gpt2(context: int, attn_pdrop: float):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=V, n_positions=context, n_embd=D, n_layer=L, n_head=H,
                     n_inner=FF, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=attn_pdrop,
                     activation_function="gelu", attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def step_time(model, x, precision: str, steps: int, hf: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x).logits if hf else model(x)
        loss = F.cross_entropy(logits.float().view(-1, V), x.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randint(3, V, (a.batch, a.context))
    tokens = a.batch * a.context
    ours = build_model(ModelConfig(vocab_size=V, n_layer=L, d_model=D, n_head=H, d_ff=FF,
                                   dropout=0.1, position="learned", max_context=a.context))
    n = count_params(ours)
    attn = 12 * L * a.context * D  # causal attention FLOPs per token (fwd + bwd)
    print(f"{torch.__version__}, {torch.get_num_threads()} threads; params: ours {n:,}, "
          f"GPT-2 {count_params(hf_gpt2(a.context, 0.1)):,}")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = matmul_flops(dtype)
        rows = [("cadenza transformer", step_time(ours, x, precision, a.steps, False)),
                ("HF GPT-2 (attn_pdrop=0.1)",
                 step_time(hf_gpt2(a.context, 0.1), x, precision, a.steps, True)),
                ("HF GPT-2 (attn_pdrop=0)",
                 step_time(hf_gpt2(a.context, 0.0), x, precision, a.steps, True))]
        print(f"\n{precision}: square matmul {peak / 1e9:.0f} GFLOP/s")
        for name, t in rows:
            tps = tokens / t
            mfu = (6 * n + attn) * tps / peak
            print(f"  {name:<28}{tps:>10,.0f} tok/s   MFU {mfu:6.1%}")
        print(f"  ratio ours / GPT-2 default   {rows[1][1] / rows[0][1]:.2f}x   "
              f"ours / GPT-2 no attn dropout {rows[2][1] / rows[0][1]:.2f}x  (goal >= 1.3x)")
    width = matched_width("lstm", n, 2, V)
    lstm = build_model(ModelConfig(kind="lstm", vocab_size=V, n_layer=2, d_model=width,
                                   dropout=0.1))
    t = step_time(lstm, x, "fp32", a.steps, False)
    print(f"\nLSTM (2 x {width}, {count_params(lstm):,} params) fp32: {tokens / t:,.0f} tok/s")


if __name__ == "__main__":
    main()
