"""Decoder-only Transformer (Vaswani et al. 2017, "Attention is all you need"), pre-LayerNorm,
tied input/output embeddings, with four positional schemes:

- ``sinusoidal``: fixed sines/cosines added to the input (Vaswani et al. 2017, sec. 3.5)
- ``learned``: a trained position embedding added to the input (GPT-2)
- ``rope``: rotary embeddings applied to queries and keys (Su et al. 2021); with
  ``step_positions`` the rotation angle counts time steps rather than tokens (position =
  step * STEP_WIDTH + index within the step), so a frame of any number of notes is one step
  away from the next: the "relative time" of Huang et al. 2018 for variable-length frames;
  with ``pitch_dims`` that many dimensions of each head rotate by the token's pitch instead,
  so a query-key score also depends on the interval between them ("relative pitch")
- ``relative``: relative attention (Shaw et al. 2018) as in the Music Transformer (Huang et
  al. 2018): logits gain q_i . E[i - j]; the full-sequence path uses the "skewing" trick so
  the relative embeddings cost O(L*D) memory instead of Shaw's O(L^2*D) tensor.

All schemes run through ``F.scaled_dot_product_attention``; relative attention passes its
position logits as an additive float mask. The model sees token ids only. ``forward(idx,
cache)`` with a :class:`KVCache` appends keys/values and returns logits for the new tokens:
the same code path serves training (no cache), prefill and one-token decoding.

Shapes in comments: B batch, T new tokens, S cached + new tokens, H heads, hs head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig
from .base import decay_groups
from .layers import Dropout, Linear, causal_attention, use_chunked_attention

STEP_WIDTH = 16  # step positions: tokens past the 16th of a step share its position
PITCH_BASE = 64.0  # pitch rotations: periods from 2*pi to ~240 semitones (pitch_dims 16)
FAST_DECODE = True  # one-token steps take Block.decode (tests switch it off to compare)


class KVCache:
    """Preallocated keys/values for every layer: (n_layer, B, H, max_len, hs)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
                 device, dtype) -> None:
        shape = (n_layer, batch, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens already cached
        self.max_len = max_len
        self.steps: torch.Tensor | None = None  # step positions: (steps, index in step), (2, B)

    def reset(self) -> None:
        """Empty it for a fresh read from position 0, keeping its buffers (a slide re-reads
        into them: a new cache's first writes fault in all its pages, twice the read)."""
        self.length = 0
        self.steps = None


def step_positions(idx: torch.Tensor, step_token: int, state: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary positions counting time steps: (B, T) positions and the state after idx.

    A token's position is STEP_WIDTH * (steps ended before it) + (tokens before it in its
    step, at most STEP_WIDTH - 1). ``state`` (2, B) carries both counts across cached calls.
    """
    B, T = idx.shape
    ends = idx == step_token
    ar = torch.arange(T, device=idx.device).expand(B, T)
    s0, w0 = state if state is not None else torch.zeros(2, B, dtype=torch.long,
                                                         device=idx.device)
    steps = s0[:, None] + ends.long().cumsum(1) - ends.long()
    last_end = torch.where(ends, ar, -1).cummax(1).values  # last step end at or before t
    prev_end = torch.cat([last_end.new_full((B, 1), -1), last_end[:, :-1]], 1)
    within = torch.where(prev_end >= 0, ar - prev_end - 1, w0[:, None] + ar)
    pos = STEP_WIDTH * steps + within.clamp(max=STEP_WIDTH - 1)
    s1 = steps[:, -1] + ends[:, -1].long()
    w1 = torch.where(ends[:, -1], 0, within[:, -1] + 1)
    return pos, torch.stack([s1, w1])


def sinusoids(n: int, d: int) -> torch.Tensor:
    """(n, d) table of Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/d)), cos for 2i+1."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : d // 2]
    return pe


def rope_tables(n: int, hs: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]  # (n, hs/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :hs/2], x[..., hs/2:]) by position angles; x (B, H, T, hs)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def skew(qe: torch.Tensor) -> torch.Tensor:
    """Huang et al. 2018, sec. 3.4.1. qe (B, H, L, L) with column c = distance L-1-c
    -> srel (B, H, L, L) with srel[i, j] = q_i . E[i - j] for j <= i (upper part: junk,
    masked by causality). Pad one column on the left, reshape (L+1, L), drop the first row."""
    B, H, L, _ = qe.shape
    padded = F.pad(qe, (1, 0))  # (B, H, L, L+1)
    return padded.reshape(B, H, L + 1, L)[:, :, 1:, :]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.hs = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=False)
        self.position = cfg.position
        if self.position == "relative":
            # one embedding per head and distance 0..max_context-1 (Music Transformer)
            self.rel = nn.Parameter(torch.randn(cfg.n_head, cfg.max_context, self.hs) * 0.02)

    def forward(self, x: torch.Tensor, start: int, rope: tuple | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.hs).transpose(1, 2) for t in (q, k, v))
        if rope is not None:  # angles of the new tokens' positions: (T or B,1,T, hs/2)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # append, then attend over everything cached: (B, H, S, hs)
            cache.k[layer, :, :, start: start + T] = k
            cache.v[layer, :, :, start: start + T] = v
            k, v = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]
        S = k.shape[2]
        if self.position == "relative":
            # SDPA would take the position logits as a mask, but a mask that needs a gradient
            # sends it down its slowest path; written out, it is about 2x faster on CPU.
            q = q * (1.0 / math.sqrt(self.hs))
            srel = self._relative_logits(q, start, S)  # (B, H, T, S)
            H = self.n_head
            att = torch.baddbmm(srel.reshape(B * H, T, S), q.reshape(B * H, T, self.hs),
                                k.reshape(B * H, S, self.hs).transpose(1, 2)).view(B, H, T, S)
            att = att.masked_fill(self._future(start, T, S, x.device), float("-inf"))
            y = torch.matmul(torch.softmax(att, dim=-1), v)
        elif T > 1 and S != T:  # a multi-token step after a cached prefix
            y = F.scaled_dot_product_attention(q, k, v,
                                               attn_mask=~self._future(start, T, S, x.device))
        elif use_chunked_attention(q):  # training on a CPU: see layers.py
            y = causal_attention(q, k, v)
        else:  # T == S: plain causal; T == 1 with a cache: attend to everything
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def _decode(self, x: torch.Tensor, start: int, rope: tuple | None, cache: KVCache,
                layer: int) -> torch.Tensor:
        """``forward`` for one new token with a cache, for Block.decode, in fewer operations
        (decoding pays per operation): the products go straight to Linear._decode, one
        token's (B, 3, H, 1, hs) split needs no transposes, and its output (B, H, 1, hs) is
        already laid out as (B, 1, C)."""
        B, _, C = x.shape
        q, k, v = self.qkv._decode(x).view(B, 3, self.n_head, 1, self.hs).unbind(1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cache.k[layer, :, :, start] = k[:, :, 0]
        cache.v[layer, :, :, start] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache.k[layer, :, :, : start + 1],
                                           cache.v[layer, :, :, : start + 1])
        return self.proj._decode(y.view(B, 1, C))

    def probs(self, x: torch.Tensor, start: int, rope: tuple | None, cache: None, layer: int
              ) -> torch.Tensor:
        """The weights ``forward`` attends with, written out: (B, H, T, T). A separate path
        for attention maps (models/inspect.py); training and sampling never run it."""
        B, T, C = x.shape
        q, k, _ = self.qkv(x).split(C, dim=2)
        q, k = (t.view(B, T, self.n_head, self.hs).transpose(1, 2) for t in (q, k))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q = q * (1.0 / math.sqrt(self.hs))
        att = q @ k.transpose(-1, -2)
        if self.position == "relative":
            att = att + self._relative_logits(q, 0, T)
        att = att.masked_fill(self._future(0, T, T, x.device), float("-inf"))
        return torch.softmax(att.float(), dim=-1)

    @staticmethod
    def _future(start: int, T: int, S: int, device) -> torch.Tensor:
        """(T, S) True where key j lies in the future of query start + i."""
        qpos = torch.arange(start, start + T, device=device)[:, None]
        return torch.arange(S, device=device)[None, :] > qpos

    def _relative_logits(self, q: torch.Tensor, start: int, S: int) -> torch.Tensor:
        """q_i . E[pos_i - pos_j] for queries at start.. and keys 0..S-1: (B, H, T, S)."""
        T = q.shape[2]
        if start == 0 and T == S:  # full sequence: the memory-efficient skewing path
            e = self.rel[:, :S].flip(1)  # (H, S, hs), column c = distance S-1-c
            return skew(torch.einsum("bhtd,hsd->bhts", q, e.to(q.dtype)))
        # cached decoding: gather distances from q . E^T over the distances in use
        qe = torch.einsum("bhtd,hsd->bhts", q, self.rel[:, :S].to(q.dtype))  # (B,H,T,S)
        qpos = torch.arange(start, start + T, device=q.device)[:, None]
        dist = (qpos - torch.arange(S, device=q.device)[None, :]).clamp(min=0)  # (T, S)
        return qe.gather(3, dist.expand(q.shape[0], q.shape[1], T, S))


def residual(x: torch.Tensor, ln: nn.LayerNorm, f, drop: nn.Module, post: bool
             ) -> torch.Tensor:
    """One sublayer with its residual connection: pre-LN x + f(LN(x)) (GPT-2, today's
    default), or post-LN LN(x + f(x)) (Vaswani et al. 2017, sec. 3.1)."""
    return ln(x + drop(f(x))) if post else x + drop(f(ln(x)))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = Linear(cfg.d_model, cfg.d_ff)
        self.out = Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = Linear(cfg.d_model, cfg.d_ff)
        self.out = Linear(cfg.d_ff, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.post = cfg.norm == "post"

    def forward(self, x, start, rope, cache, layer):
        x = residual(x, self.ln1, lambda h: self.attn(h, start, rope, cache, layer), self.drop,
                     self.post)
        return residual(x, self.ln2, lambda h: self.out(F.gelu(self.fc(h))), self.drop,
                        self.post)

    def decode(self, x, start, rope, cache, layer):
        """``forward`` for one token of a pre-LN model in eval mode on a CPU, fp32 or the
        weights' own type: the same operations without the module calls around them,
        which were half of a small model's decoding step (see Transformer.forward)."""
        a = F.layer_norm(x, self.ln1.normalized_shape, self.ln1.weight, self.ln1.bias,
                         self.ln1.eps)
        x = x + self.attn._decode(a, start, rope, cache, layer)
        a = F.layer_norm(x, self.ln2.normalized_shape, self.ln2.weight, self.ln2.bias,
                         self.ln2.eps)
        # with fp16 weights (use_half_weights) the hidden layer stays fp16 between the two
        # products: GELU of an fp16 tensor computes in fp32 and rounds once, as the cast
        # into the second product would
        return x + self.out._decode(F.gelu(self.fc._decode(a, half_out=True)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_context = cfg.max_context  # TokenModel: the longest sequence it reads
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.tags:  # style tags: read before the music, never written (data/styles.py)
            self.tag = nn.Embedding(cfg.tags, cfg.d_model)
        if cfg.position == "learned":
            self.pos = nn.Embedding(cfg.max_context, cfg.d_model)
        if cfg.position == "sinusoidal":
            self.register_buffer("pe", sinusoids(cfg.max_context, cfg.d_model), persistent=False)
        if cfg.step_positions and cfg.step_token < 0:  # set by train from the tokenizer
            raise ValueError("--step-positions: the model needs its tokenizer's step token")
        if cfg.pitch_dims and len(cfg.pitch_of) != cfg.vocab_size:  # set by train
            raise ValueError("--pitch-dims: the model needs its tokenizer's pitch table")
        if cfg.position == "rope":
            n = cfg.max_context * (STEP_WIDTH if cfg.step_positions else 1)
            cos, sin = rope_tables(n, cfg.d_model // cfg.n_head - cfg.pitch_dims)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.pitch_dims:  # angles by token id; tokens without a pitch are not rotated
            pitch = torch.tensor(cfg.pitch_of).clamp(min=0)
            cos, sin = rope_tables(int(pitch.max()) + 1, cfg.pitch_dims, PITCH_BASE)
            self.register_buffer("pitch_cos", cos[pitch], persistent=False)
            self.register_buffer("pitch_sin", sin[pitch], persistent=False)
        if cfg.voice_period:  # "instrument labels" of Huang et al. 2018: position mod P
            self.voice = nn.Embedding(cfg.voice_period, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # post-LN ends on a LayerNorm already: no final one (the paper has none)
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied embeddings (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections
            if name.endswith("attn.proj.weight") or name.endswith("out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay the matrices of the layers and the embeddings; not biases,
        LayerNorms or the relative-position embeddings (Huang et al. 2018 do not decay
        them: they are read by distance, not by token)."""
        rel = {id(b.attn.rel) for b in self.blocks} if self.cfg.position == "relative" \
            else set()
        return decay_groups(self, weight_decay, keep=rel)

    def new_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        c = self.cfg
        p = self.tok.weight
        return KVCache(c.n_layer, batch, c.n_head, c.max_context, c.d_model // c.n_head,
                       device or p.device, dtype or p.dtype)

    def _rope_angles(self, idx: torch.Tensor, start: int, cache: KVCache | None) -> tuple:
        """cos, sin of the new tokens' rotary angles: (T, hs/2), or (B, 1, T, hs/2) with step
        positions or pitch dimensions (each sequence has its own)."""
        B, T = idx.shape
        if not self.cfg.step_positions:
            cos, sin = self.rope_cos[start: start + T], self.rope_sin[start: start + T]
        else:
            pos, state = step_positions(idx, self.cfg.step_token,
                                        cache.steps if cache is not None else None)
            if cache is not None:
                cache.steps = state
            cos, sin = self.rope_cos[pos[:, None]], self.rope_sin[pos[:, None]]
        if not self.cfg.pitch_dims:
            return cos, sin
        n = cos.shape[-1]  # position pairs first, then the pitch pairs
        return (torch.cat([cos.expand(B, 1, T, n), self.pitch_cos[idx][:, None]], -1),
                torch.cat([sin.expand(B, 1, T, n), self.pitch_sin[idx][:, None]], -1))

    def _lean(self, x: torch.Tensor) -> bool:
        """Whether a one-token step may take Block.decode: what Linear._decode covers (a
        CPU, no gradient, no autocast; x has the weights' type, as it comes from the
        embedding), in eval mode (no dropout), pre-LN, without relative attention. Other
        steps (post-LN, the encoder-decoder's decoder, a GPU) take the general path."""
        return (FAST_DECODE and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not self.training and not torch.is_autocast_enabled("cpu")
                and self.cfg.norm == "pre" and self.cfg.position != "relative")

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V). With a cache, idx continues the cached tokens."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        x, rope = self._inputs(idx, start, cache)
        if T == 1 and cache is not None and self._lean(x):
            for i, block in enumerate(self.blocks):
                x = block.decode(x, start, rope, cache, i)
        else:
            for i, block in enumerate(self.blocks):
                x = block(x, start, rope, cache, i)
        if cache is not None:
            cache.length += T
        return self.head(self.ln_f(x))

    def hidden(self, idx: torch.Tensor, layers: tuple[int, ...] = (-1,)) -> list[torch.Tensor]:
        """A window's features: the hidden states (B, T, d_model) after each block named in
        ``layers`` (0 is the first block; -1 the last, after the final norm: what the output
        layer reads), read without a cache from position 0."""
        n = len(self.blocks)
        for k in layers:
            if not -n <= k < n:
                raise ConfigError(f"--layer {k}: this model has {n} blocks (0..{n - 1}; "
                                  "-1: the last, after the final norm)")
        x, rope = self._inputs(idx, 0, None)
        after = []
        for i, block in enumerate(self.blocks):
            x = block(x, 0, rope, None, i)
            after.append(self.ln_f(x) if i == n - 1 else x)
        return [after[k % n] for k in layers]

    def _inputs(self, idx: torch.Tensor, start: int, cache: KVCache | None
                ) -> tuple[torch.Tensor, tuple | None]:
        """The first block's input for ``idx`` at positions ``start``.., and RoPE's angles."""
        T = idx.shape[1]
        if start + T > self.max_context:
            raise ValueError(f"--context: {start + T} tokens exceed the model's maximum "
                             f"context {self.max_context} ({self.cfg.position} positions)")
        V = self.cfg.vocab_size
        # style tags and fim's marks are only ever in what is read from position 0 (a
        # training or scoring window, a prompt's first read, the engine's head after a
        # slide): a step that continues a cache holds none, so the decoding loop never pays
        # for the lookup (nor for a host sync to find out)
        if self.cfg.tags and start == 0:
            is_tag = idx >= V
            x = torch.where(is_tag[..., None], self.tag((idx - V).clamp(min=0)),
                            self.tok(idx.clamp(max=V - 1)))
            idx = idx.masked_fill(is_tag, 0)  # for pitch and step tables: no pitch, no step
        else:
            x = self.tok(idx)
        pos = torch.arange(start, start + T, device=idx.device)
        if self.cfg.position == "learned":
            x = x + self.pos(pos)
        elif self.cfg.position == "sinusoidal":
            x = x + self.pe[pos].to(x.dtype)
        if self.cfg.voice_period:
            x = x + self.voice((pos - 1) % self.cfg.voice_period)
        x = self.drop(x)
        rope = self._rope_angles(idx, start, cache) if self.cfg.position == "rope" else None
        return x, rope
