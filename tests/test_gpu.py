"""The CUDA paths: bf16 autocast, fp16 with loss scaling, torch.compile, cached decoding equal
to the full forward, and sampling with and without the cache. Marked ``gpu``; each skips
without a GPU, so the default run passes on a CPU. ``benchmarks/gpu.sh`` runs them
(``python -m pytest -m gpu``) on a machine that has one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cadenza.config import AugmentConfig, ModelConfig, SampleConfig, TrainConfig
from cadenza.data.tokenizers import BOS, build_tokenizer
from cadenza.generate import sample
from cadenza.models import build_model
from cadenza.session import Session

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

V = 391  # the performance vocabulary


def _model(position: str = "rope", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layer=2, d_model=64, n_head=4, d_ff=128, dropout=0.0,
                      position=position, max_context=128, **kw)
    return build_model(cfg).cuda().eval()


def _batch(B: int = 4, T: int = 96) -> torch.Tensor:
    return torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(1)).cuda()


def _loss(model, x) -> torch.Tensor:
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, V), x[:, 1:].reshape(-1))


def test_bf16_autocast_is_close_to_fp32_and_differentiable():
    model, x = _model(), _batch()
    ref = _loss(model, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = _loss(model, x)
    assert abs(low.item() - ref.item()) < 0.02 * ref.item()
    low.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fp16_with_loss_scaling_trains(tiny_dataset, tmp_path):
    from cadenza.train import train
    res = train(ModelConfig(n_layer=2, d_model=64, n_head=4, d_ff=128, dropout=0.0,
                            position="rope", max_context=64),
                TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), context=64,
                            batch_size=8, max_steps=40, eval_every=20, lr=3e-3,
                            precision="fp16", augment=AugmentConfig()),
                device="cuda", quiet=True)
    import csv
    with open(tmp_path / "run/metrics.csv") as f:
        first = next(float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"])
    assert math.isfinite(res.best_val_nll) and res.best_val_nll < first < 2 * math.log(V)


@pytest.mark.parametrize("position", ["learned", "rope", "relative", "sinusoidal"])
def test_compile_equals_eager(position):
    model, x = _model(position), _batch()
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("position", ["learned", "rope", "relative", "sinusoidal"])
def test_cached_decoding_equals_full_forward(position):
    model, x = _model(position), _batch(2, 40)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        steps = [model(x[:, :8], cache)] + [model(x[:, t: t + 1], cache) for t in range(8, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_sampling_with_and_without_cache_draws_the_same_tokens():
    model = _model()
    torch.backends.cuda.matmul.allow_tf32 = False
    tok = build_tokenizer("performance")
    prompt = np.concatenate([[[BOS]] * 2, np.full((2, 5), 300)], 1)
    cfg = SampleConfig(tokens=40, seed=3, num_samples=2)
    with_cache = sample(Session(model, tok), prompt, cfg, 40)
    without = sample(Session(model, tok), prompt, cfg, 40, use_cache=False)
    assert all(np.array_equal(a, b) for a, b in zip(with_cache, without))
    assert all(len(a) == 40 for a in with_cache)
