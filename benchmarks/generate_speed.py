"""Generation speed: new tokens/s at batch 1 and 8, 1024 new tokens after a 256-token primer,
with Cadenza's KV cache, without a cache, and Hugging Face `generate` on a GPT-2 of identical
dimensions (6 layers, d_model 256, 8 heads, d_ff 1024, vocab 391), in the same run. Then, with
the `performance` tokenizer and the `small` preset, the time to generate 10 s of music.

    python benchmarks/generate_speed.py [--new 1024] [--primer 256] [--device cuda --batches 1,64]

Goals: ours >= 2x Hugging Face and >= 5x our uncached loop; 10 s of music in < 5 s.
At batch 1 on a CPU a step streams every weight from memory, so the script also prints
that floor: bytes read per token over the streaming bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cadenza.config import ModelConfig
from cadenza.data.tokenizers import BOS, build_tokenizer
from cadenza.generate import SampleConfig, sample
from cadenza.models import build_model
from cadenza.recipes import RECIPES

V, L, D, H, FF = 391, 6, 256, 8, 1024


def timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def stream_bandwidth(dtype=torch.float32, mb: int = 64) -> float:
    """Bytes/s at which one-row products stream weights that do not fit the CPU's caches
    (decoding's access pattern), at the current thread count."""
    ws = [torch.randn(256, 1024, dtype=dtype) for _ in range(mb * 2**20 // (256 * 1024 * 4))]
    x = torch.randn(1, 256, dtype=dtype)
    for w in ws:
        x @ w
    t = time.perf_counter()
    for _ in range(5):
        for w in ws:
            x @ w
    return 5 * sum(w.numel() * w.element_size() for w in ws) / (time.perf_counter() - t)


def decode_bytes(model, context: float) -> float:
    """Bytes one decoding step must read at least: every weight once (the tied embedding
    once, as the output layer), and the cached keys and values of ``context`` tokens."""
    c, params = model.cfg, list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    return weights + 2 * c.n_layer * c.d_model * context * params[0].element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--new", type=int, default=1024)
    ap.add_argument("--primer", type=int, default=256)
    ap.add_argument("--uncached-tokens", type=int, default=256,
                    help="the uncached loop is timed on fewer tokens (it is slow)")
    ap.add_argument("--checkpoint", help="a trained performance checkpoint (e.g. the demo's "
                    "run/best) for the 10-seconds-of-music test; default: an untrained "
                    "`small` model, whose token density is not music's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    a = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel
    dev = a.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    total = a.primer + a.new
    torch.manual_seed(0)
    ours = build_model(ModelConfig(vocab_size=V, n_layer=L, d_model=D, n_head=H, d_ff=FF,
                                   dropout=0.0, position="learned", max_context=total)
                       ).eval().to(dev)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=total, n_embd=D, n_layer=L,
                                    n_head=H, n_inner=FF, attn_implementation="sdpa",
                                    bos_token_id=1, eos_token_id=2)
                         ).eval().to(dev)
    tok = build_tokenizer("performance")
    rng = np.random.default_rng(0)
    if dev.startswith("cuda"):
        print(torch.cuda.get_device_name())
    for batch in (int(b) for b in a.batches.split(",")):
        prompt = np.concatenate([np.full((batch, 1), BOS),
                                 rng.integers(259, 359, (batch, a.primer - 1))], 1)
        cfg = SampleConfig(tokens=a.new, seed=0, num_samples=batch)
        warm = SampleConfig(tokens=8, seed=0, num_samples=batch)  # first calls: allocation
        sample(ours, prompt, tok.grammar(), warm, 8)
        with torch.no_grad():
            hf.generate(torch.from_numpy(prompt).to(dev), max_new_tokens=8, do_sample=True,
                        attention_mask=torch.ones(prompt.shape, dtype=torch.long, device=dev),
                        top_k=0, pad_token_id=0)
        ids = torch.from_numpy(prompt).to(dev)
        t_ours = t_hf = float("inf")
        for _ in range(2):  # two turns each, alternating; the better kept (machine noise)
            t_ours = min(t_ours, timed(sample, ours, prompt, tok.grammar(), cfg, a.new))
            with torch.no_grad():
                t_hf = min(t_hf, timed(hf.generate, ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=a.new, min_new_tokens=a.new,
                                       do_sample=True, top_k=0, pad_token_id=0))
                sync()
        n_unc = a.uncached_tokens
        t_unc = timed(sample, ours, prompt, tok.grammar(), cfg, n_unc, use_cache=False)
        r_ours, r_unc, r_hf = batch * a.new / t_ours, batch * n_unc / t_unc, batch * a.new / t_hf
        print(f"batch {batch}: cadenza cached {r_ours:>8,.0f} tok/s | uncached {r_unc:>7,.0f} "
              f"tok/s | HF generate {r_hf:>7,.0f} tok/s | ours/HF {r_ours / r_hf:.2f}x "
              f"(goal >= 2) | cached/uncached {r_ours / r_unc:.1f}x (goal >= 5)")
        if batch == 1 and dev == "cpu":
            bw, need = stream_bandwidth(), decode_bytes(ours, a.primer + a.new / 2)
            floor = bw / need
            print(f"  memory floor: {need / 1e6:.1f} MB "
                  f"read per token at the {bw / 1e9:.1f} GB/s measured now = at most "
                  f"{floor:,.0f} tok/s; cadenza {r_ours / floor:.0%} of it, HF "
                  f"{r_hf / floor:.0%} (so 2x HF needs HF below {floor / 2:,.0f})")
    if a.checkpoint:
        from cadenza.checkpoint import load_checkpoint
        ck = load_checkpoint(a.checkpoint, dev)
        small, tok, label = ck.model, ck.tokenizer, f"checkpoint {a.checkpoint}"
    else:
        small = build_model(RECIPES["small"].model.replace(vocab_size=tok.vocab_size,
                                                           max_context=512)).eval().to(dev)
        label = "small preset, untrained"
    cfg = SampleConfig(seconds=10.0, seed=0)
    news: list = []
    t = timed(lambda: news.extend(sample(small, np.array([[BOS]]), tok.grammar(), cfg, 20000)))  # noqa: B023
    secs = tok.decode_notes(news[0]).duration
    print(f"{label} ({sum(p.numel() for p in small.parameters()):,} params): "
          f"{len(news[0])} tokens = {secs:.1f} s of music in {t:.2f} s (goal < 5 s)")


if __name__ == "__main__":
    main()
