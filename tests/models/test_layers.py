"""models.layers: the oneDNN fp32 path of Linear gives the reference's numbers (the forward
and both gradients equal F.linear's to float rounding, and a whole Transformer step equals
the step with the path switched off); Dropout keeps 1 - p of the elements, scales them, and
its gradient flows through exactly the kept ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cadenza.config import ModelConfig
from cadenza.models import build_model, layers

needs_onednn = pytest.mark.skipif(not layers.ONEDNN, reason="this PyTorch has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 100, 48), (300, 48)])
def test_forward_and_gradients_equal_f_linear(bias, shape):
    torch.manual_seed(0)
    lin = layers.Linear(48, 80, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    calls = []
    real = layers._OneDNNLinear.apply
    layers._OneDNNLinear.apply = lambda *a: calls.append(1) or real(*a)
    try:
        y = lin(x)
    finally:
        layers._OneDNNLinear.apply = real
    assert calls, "the oneDNN path was not taken"
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *lin.parameters()], g)
    ref = F.linear(x, lin.weight, lin.bias)
    ref_grads = torch.autograd.grad(ref, [x, *lin.parameters()], g)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_small_products_and_autocast_take_the_default_path():
    lin = layers.Linear(32, 16)
    x = torch.randn(1, 1, 32)  # one-token decoding
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    xb = torch.randn(128, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(xb).dtype == torch.bfloat16  # autocast still applies


@needs_onednn
def test_a_transformer_step_equals_the_step_without_onednn(monkeypatch):
    def grads(enabled: bool):
        monkeypatch.setattr(layers, "ONEDNN", enabled)
        torch.manual_seed(0)
        m = build_model(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=4, d_ff=64,
                                    dropout=0.0, position="rope", max_context=64))
        x = torch.randint(0, 50, (4, 64), generator=torch.Generator().manual_seed(1))
        loss = F.cross_entropy(m(x[:, :-1]).reshape(-1, 50), x[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad for p in m.parameters()]
    (l1, g1), (l0, g0) = grads(True), grads(False)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_keeps_one_minus_p_scaled_and_its_gradient_follows_the_mask():
    d = layers.Dropout(0.25)
    x = torch.rand(400, 500) + 1.0
    x.requires_grad_(True)
    torch.manual_seed(5)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    torch.manual_seed(5)
    assert torch.equal(layers.Dropout(0.25)(x), y)  # seeded: the same mask
    d.eval()
    assert d(x) is x
