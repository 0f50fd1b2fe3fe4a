"""models.layers: the oneDNN fp32 path of Linear gives the reference's numbers (the forward
and both gradients equal F.linear's to float rounding, and a whole Transformer step equals
the step with the path switched off); Dropout keeps 1 - p of the elements, scales them, and
its gradient flows through exactly the kept ones; the blocked causal attention gives SDPA's
output and gradients (to fp32 rounding, and within bf16's own error in bf16) and is taken
only when training on a CPU."""

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
    monkeypatch.setattr(layers, "ONEDNN", True)
    fast = training_step("rope", batch=4, length=64)
    monkeypatch.setattr(layers, "ONEDNN", False)
    assert_same_step(fast, training_step("rope", batch=4, length=64))


def training_step(position: str, batch: int, length: int, sharpen: float = 1.0):
    """Loss and gradients of one step of a small seeded Transformer; ``sharpen`` scales the
    attention projections (sharper attention than at initialisation: gradients flow)."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=4, d_ff=64,
                                dropout=0.0, position=position, max_context=length))
    with torch.no_grad():
        for b in m.blocks:
            b.attn.qkv.weight.mul_(sharpen)
    x = torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(1))
    loss = F.cross_entropy(m(x[:, :-1]).reshape(-1, 50), x[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), [p.grad for p in m.parameters()]


def assert_same_step(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_dropout_keeps_one_minus_p_scaled_and_its_gradient_follows_the_mask():
    d = layers.Dropout(0.25)
    x = torch.rand(400, 500) + 1.0
    x.requires_grad_(True)
    torch.manual_seed(5)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    # four elements share one 64-bit draw: each of the four keeps its own 1 - p
    assert (kept.view(-1, 4).float().mean(0) - 0.75).abs().max() < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    torch.manual_seed(5)
    assert torch.equal(layers.Dropout(0.25)(x), y)  # seeded: the same mask
    d.eval()
    assert d(x) is x


@pytest.mark.parametrize("T", [layers.CHUNK + 1, 100, 2 * layers.CHUNK])
def test_causal_attention_equals_sdpa_with_gradients(T):
    gen = torch.Generator().manual_seed(T)
    q, k, v, g = (torch.randn(2, 3, T, 16, generator=gen, dtype=torch.float64)
                  for _ in range(4))

    def run(f, dtype):
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = f(*ins)
        return [out, *torch.autograd.grad(out, ins, g.to(dtype))]

    exact = run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                torch.float64)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        ours = run(layers.causal_attention, dtype)
        sdpa = run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                   dtype)
        for a, b, ref in zip(ours, sdpa, exact):
            scale = ref.abs().max().item()
            err = (a.double() - ref).abs().max().item() / scale
            assert err < tol, (dtype, err)
            if dtype == torch.bfloat16:  # no worse than the fused kernel's own rounding, x3
                assert err < 3 * (b.double() - ref).abs().max().item() / scale + 1e-3


def test_causal_attention_is_taken_only_when_training_on_a_cpu(monkeypatch):
    q = torch.randn(2, 4, 2 * layers.CHUNK, 8)
    assert layers.use_chunked_attention(q)
    with torch.no_grad():  # evaluation and sampling: the fused kernel, as before
        assert not layers.use_chunked_attention(q)
    assert not layers.use_chunked_attention(q[:, :, : layers.CHUNK])  # one block: fused
    monkeypatch.setattr(layers, "MAX_SAVED", 1000)  # weights too big to keep: fused
    assert not layers.use_chunked_attention(q)


def test_a_transformer_step_equals_the_step_with_the_fused_kernel(monkeypatch):
    blocked = training_step("learned", batch=3, length=100, sharpen=20.0)
    monkeypatch.setattr(layers, "MAX_SAVED", 0)  # nothing may be kept: the fused kernel
    assert_same_step(blocked, training_step("learned", batch=3, length=100, sharpen=20.0))


def test_decoding_product_reads_the_current_weights():
    """One-token products read a transposed copy of the weight: equal to F.linear to
    rounding, and never stale after an optimizer step or a state dict load."""
    torch.manual_seed(0)
    lin = layers.Linear(64, 96)
    x = torch.randn(1, 1, 64)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias),
                                       rtol=1e-5, atol=1e-6)
    check()
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    lin(torch.randn(2, 64)).square().sum().backward()
    opt.step()  # in place: the copy must follow
    check()
    lin.load_state_dict({"weight": torch.randn(96, 64), "bias": torch.randn(96)})
    check()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # autocast: the reference path


def test_half_weight_products_round_the_weights_to_fp16_and_nothing_else():
    """use_half_weights: one-token products read fp16 copies (fp32 accumulation): equal to
    the fp32 product with fp16-rounded weights and input to fp16's rounding of the result,
    following weight changes; rows beyond HALF_ROWS and weights beyond fp16's range take
    the fp32 copy and stay exact."""
    torch.manual_seed(0)
    lin = layers.Linear(256, 96)
    layers.use_half_weights(lin)
    x = torch.randn(1, 1, 256)

    def check(rows=1):
        h = x.expand(rows, 1, 256).contiguous()
        ref = F.linear(h.half().float(), lin.weight.half().float(), lin.bias.half().float())
        with torch.no_grad():
            out = lin(h)
        assert out.dtype == torch.float32
        exact = F.linear(h, lin.weight, lin.bias)
        if rows > layers.HALF_ROWS:
            torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
            assert not torch.equal(out, exact)  # the fp16 copy was read
    check()
    check(rows=layers.HALF_ROWS + 1)
    with torch.no_grad():
        lin.weight.mul_(3.0)  # in place: the copy must follow
    check()
    with torch.no_grad():
        lin.bias.add_(1.0)  # the bias alone, in place: its copy must follow too
    check()
    with torch.no_grad():
        lin.weight[0, 0] = 1e5  # beyond fp16: the fp32 copy, exact
        out = lin(x)
    torch.testing.assert_close(out, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
    layers.use_half_weights(lin, False)
    with torch.no_grad():
        lin.weight[0, 0] = 0.5
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5,
                                   atol=1e-6)
