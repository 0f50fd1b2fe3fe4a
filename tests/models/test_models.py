"""Model properties on tiny dimensions: causality, cached == full, skewing == naive
relative attention, overfitting one batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cadenza.config import ModelConfig
from cadenza.models import build_model, layers, transformer
from cadenza.models.transformer import STEP_WIDTH, apply_rope, skew, step_positions

SCHEMES = ["sinusoidal", "learned", "rope", "relative"]
KINDS = [("transformer", p) for p in SCHEMES] + [(k, "relative") for k in ("rnn", "lstm", "gru")]


def tiny(kind="transformer", position="relative", **kw):
    torch.manual_seed(0)
    cfg = dict(kind=kind, vocab_size=40, n_layer=2, d_model=32, n_head=4, d_ff=64, dropout=0.0,
               position=position, max_context=64)
    cfg.update(kw)
    return build_model(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("kind,position", KINDS)
def test_future_tokens_never_change_past_logits(kind, position):
    m = tiny(kind, position, voice_period=4 if kind == "transformer" else 0)
    x = torch.randint(3, 40, (2, 48))
    y = x.clone()
    y[:, 30:] = torch.randint(3, 40, (2, 18))
    a, b = m(x), m(y)
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6)
    assert not torch.allclose(a[:, 30:], b[:, 30:])


@pytest.mark.parametrize("kind,position", KINDS)
def test_cached_steps_equal_the_full_forward(kind, position):
    m = tiny(kind, position)
    with torch.no_grad():  # sharper attention than at initialisation: keys and values count
        for name, p in m.named_parameters():
            if name.endswith("qkv.weight"):
                p.mul_(8.0)
    x = torch.randint(3, 40, (3, 50))
    full = m(x)
    cache = m.new_cache(3)
    parts = [m(x[:, :13], cache)] + [m(x[:, t: t + 1], cache) for t in range(13, 50)]
    assert torch.allclose(full, torch.cat(parts, 1), atol=1e-5)


def reference_decoding(monkeypatch) -> None:
    """Decoding without its fast paths: one-token steps take the general path (no
    Block.decode) and the products nn.Linear's (no transposed copy)."""
    monkeypatch.setattr(transformer, "FAST_DECODE", False)
    monkeypatch.setattr(layers.Linear, "_decode",
                        lambda self, h, half_out=False: F.linear(h, self.weight, self.bias))


def trained_size(m):
    """Scale a tiny model's weights to a trained model's size: every sublayer counts."""
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(8.0) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.5)
    return m


def cached_steps(m, x: torch.Tensor, prompt: int = 9) -> torch.Tensor:
    """Logits of x read as decoding does: the first ``prompt`` tokens at once, then one
    token at a time through the cache."""
    with torch.no_grad():
        cache = m.new_cache(x.shape[0])
        return torch.cat([m(x[:, :prompt], cache)] +
                         [m(x[:, t: t + 1], cache) for t in range(prompt, x.shape[1])], 1)


@pytest.mark.parametrize("position,extra", [("learned", {}), ("sinusoidal", {}),
                                            ("rope", {"voice_period": 4}), ("rope", {})])
def test_lean_decoding_step_equals_the_general_step(position, extra, monkeypatch):
    """Block.decode and the transposed products (one-token steps on a CPU) give the general
    path's logits to float rounding, step after step."""
    m = trained_size(tiny("transformer", position, **extra))
    x = torch.randint(3, 40, (2, 40))
    fast = cached_steps(m, x)
    reference_decoding(monkeypatch)
    slow = cached_steps(m, x)
    assert slow.abs().max() > 1.0
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope", "relative"])
def test_half_weight_decoding_stays_within_fp16_rounding_of_fp32(position):
    """use_half_weights (--precision fp16w): cached decoding reads fp16 copies of the
    weights; its log-probabilities stay within fp16's rounding of fp32's, and the fp16 path
    was taken (the lean step, and the general step of relative attention)."""
    m = trained_size(tiny("transformer", position))
    x = torch.randint(3, 40, (2, 40))
    exact = torch.log_softmax(cached_steps(m, x), -1)
    layers.use_half_weights(m)
    half = torch.log_softmax(cached_steps(m, x), -1)
    gap = (half - exact)[:, 9:].abs().max().item()
    spread = (exact.max(-1).values - exact.min(-1).values).min().item()
    assert 0 < gap < 0.01 and spread > 2.0  # far from flat: rounding would show
    torch.testing.assert_close(half[:, :9], exact[:, :9])  # the prompt: many rows, fp32


def naive_relative_attention(q, k, v, rel):
    """Shaw et al. 2018 written out: an explicit (L, L, hs) tensor of relative embeddings."""
    L, hs = q.shape[2], q.shape[3]
    dist = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).clamp(min=0)  # (L, L)
    er = rel[:, dist]  # (H, L, L, hs): O(L^2 * D) memory, what skewing avoids
    srel = torch.einsum("bhid,hijd->bhij", q, er)
    att = (q @ k.transpose(-2, -1) + srel) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(att, -1) @ v


def test_skewing_equals_naive_relative_attention():
    m = tiny("transformer", "relative")
    attn = m.blocks[0].attn
    B, L, C = 2, 24, 32
    x = torch.randn(B, L, C)
    q, k, v = attn.qkv(x).split(C, dim=2)
    q, k, v = (t.view(B, L, 4, 8).transpose(1, 2) for t in (q, k, v))
    ref = naive_relative_attention(q, k, v, attn.rel[:, :L])
    ours = attn(x, 0, None, None, 0)
    ref = attn.proj(ref.transpose(1, 2).reshape(B, L, C))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_skew_places_distance_i_minus_j():
    L = 5
    e = torch.arange(L).float()  # embedding "value" = its distance
    qe = e.flip(0).expand(1, 1, L, L)  # column c holds distance L-1-c, for every query
    s = skew(qe.contiguous())[0, 0]
    for i in range(L):
        for j in range(i + 1):
            assert s[i, j] == i - j


@pytest.mark.parametrize("kind,position", [("transformer", "relative"), ("transformer", "rope"),
                                           ("lstm", "relative")])
def test_a_tiny_model_overfits_one_batch(kind, position):
    m = tiny(kind, position).train()
    x = torch.randint(3, 40, (4, 33))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(m(x[:, :-1]).reshape(-1, 40), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("position", ["learned", "relative", "sinusoidal", "rope"])
def test_a_window_longer_than_the_positions_allow_is_refused(position):
    m = tiny("transformer", position, max_context=16)
    with pytest.raises(ValueError, match="--context"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_step_positions_count_time_steps_across_cached_calls():
    F_ = 9  # the step token
    x = torch.tensor([[5, 6, F_, 7, F_, F_, 8, 8]])
    W = STEP_WIDTH
    want = [0, 1, 2, W, W + 1, 2 * W, 3 * W, 3 * W + 1]
    pos, _ = step_positions(x, F_, None)
    assert pos[0].tolist() == want
    state = None
    got = []
    for a, b in [(0, 3), (3, 4), (4, 7), (7, 8)]:  # in pieces, the state carries the counts
        p, state = step_positions(x[:, a:b], F_, state)
        got += p[0].tolist()
    assert got == want


def stepped(n: int, step_token: int = 3, seed: int = 0) -> torch.Tensor:
    """Random tokens with a step token about every fourth position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 40, (3, n), generator=g)
    return torch.where(torch.rand(3, n, generator=g) < 0.25, step_token, x)


def assert_causal_and_cached_equals_full(m) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill, a multi-token chunk, then single tokens: equal to the full forward, and
    changing later tokens never changes earlier logits. Returns (tokens, full logits)."""
    x = stepped(50)
    full = m(x)
    cache = m.new_cache(3)
    parts = [m(x[:, :13], cache), m(x[:, 13:20], cache)]
    parts += [m(x[:, t: t + 1], cache) for t in range(20, 50)]
    assert torch.allclose(full, torch.cat(parts, 1), atol=1e-5)
    y = x.clone()
    y[:, 30:] = stepped(20, seed=1)
    assert torch.allclose(m(y)[:, :30], full[:, :30], atol=1e-6)
    return x, full


def test_step_position_model_is_causal_and_cached_equals_full():
    m = tiny("transformer", "rope", step_positions=True, step_token=3)
    x, full = assert_causal_and_cached_equals_full(m)
    # the positions are really steps: the same weights with token positions differ
    plain = tiny("transformer", "rope")
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain(x), full, atol=1e-4)


def test_step_positions_need_rope():
    from cadenza.config import ConfigError
    with pytest.raises(ConfigError, match="--step-positions"):
        ModelConfig(vocab_size=40, position="relative", step_positions=True)
    with pytest.raises(ValueError, match="step token"):  # never silently without steps
        tiny("transformer", "rope", step_positions=True)


PITCH_OF = (-1,) * 4 + tuple(range(60, 96))  # tokens 4..39 are pitches 60..95


def test_pitch_dims_make_scores_depend_on_the_interval_only():
    m = tiny("transformer", "rope", pitch_dims=4, pitch_of=PITCH_OF)  # head size 8: 4 + 4
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 6, 8, generator=g)
    q[..., [0, 1, 4, 5]] = 0  # keep only the pitch pairs (the last two of each half)
    k[..., [0, 1, 4, 5]] = 0

    def scores(tokens):
        cos, sin = m._rope_angles(torch.tensor([tokens]), 0, None)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    melody = [10, 14, 17, 22, 10, 3]  # the last token has no pitch: never rotated
    up = [t + 5 for t in melody[:5]] + [3]
    assert torch.allclose(scores(melody)[..., :5, :5], scores(up)[..., :5, :5], atol=1e-5)
    other = [10, 15, 17, 22, 10, 3]  # one interval changed
    assert not torch.allclose(scores(melody), scores(other), atol=1e-3)


@pytest.mark.parametrize("steps", [False, True])
def test_pitch_dim_model_is_causal_and_cached_equals_full(steps):
    m = tiny("transformer", "rope", pitch_dims=4, pitch_of=PITCH_OF, step_positions=steps,
             step_token=3 if steps else -1)
    assert_causal_and_cached_equals_full(m)


def test_pitch_dims_need_rope_an_even_count_and_a_pitch_table():
    from cadenza.config import ConfigError
    with pytest.raises(ConfigError, match="--pitch-dims"):
        ModelConfig(vocab_size=40, position="relative", pitch_dims=4)
    with pytest.raises(ConfigError, match="--pitch-dims: must be even"):
        ModelConfig(vocab_size=40, d_model=32, n_head=4, position="rope", pitch_dims=3)
    with pytest.raises(ConfigError, match="--pitch-dims"):
        ModelConfig(vocab_size=40, d_model=32, n_head=4, position="rope", pitch_dims=8)
    with pytest.raises(ValueError, match="pitch table"):
        tiny("transformer", "rope", pitch_dims=4)
