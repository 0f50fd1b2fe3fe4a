"""The Transformer of "Attention is all you need" (Vaswani et al. 2017), encoder and decoder,
for source -> target tasks (a melody in, its harmony or accompaniment out).

- The encoder reads the whole source at once: self-attention where every position sees every
  other (padding excepted), then a feed-forward layer; ``n_layer`` such layers.
- The decoder writes the target one token at a time: masked (causal) self-attention, then
  cross-attention whose queries are the target's positions and whose keys and values are the
  encoder's output, then a feed-forward layer; ``n_layer`` layers.
- One vocabulary, one embedding matrix: source embedding, target embedding and the output
  projection share it (sec. 3.4), and embeddings are scaled by sqrt(d_model).
- Positions: sinusoidal by default (sec. 3.5), learned, or rotary (in the self-attentions;
  cross-attention compares two different sequences and has none). Relative attention is
  built for a causal decoder and is not offered here.
- ``norm="post"`` is the paper's LayerNorm(x + sublayer(x)); "pre" (default) trains more
  easily without a warm-up schedule.

``forward(idx, cache, src=...)`` gives the target's next-token logits. With a cache, the
decoder's self-attention keys/values are appended one step at a time (as in the decoder-only
model) and the cross-attention keys/values are computed once per source (``encode_into``).
:class:`Conditioned` binds a source to the model so the sampler, which knows only
``TokenModel``, can decode from it unchanged.

Shapes: B batch, S source length, T target tokens, H heads, hs head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .base import decay_groups
from .layers import Dropout, Linear
from .transformer import (
    Attention,
    FeedForward,
    KVCache,
    apply_rope,
    residual,
    rope_tables,
    sinusoids,
)

PAD = 0  # the tokenizers' padding id: source positions holding it are never attended to


def _heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    B, L, C = t.shape
    return t.view(B, L, n_head, C // n_head).transpose(1, 2)


class EncoderAttention(nn.Module):
    """Bidirectional self-attention over the source; padding keys masked."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.hs = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x, rope):
        q, k, v = (_heads(t, self.n_head) for t in self.qkv(x).split(x.shape[-1], dim=2))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope, keep: torch.Tensor) -> torch.Tensor:
        B, S, C = x.shape
        q, k, v = self._qkv(x, rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.proj(y.transpose(1, 2).reshape(B, S, C))

    def probs(self, x, rope, keep) -> torch.Tensor:
        """(B, H, S, S) weights, written out (attention maps only)."""
        q, k, _ = self._qkv(x, rope)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hs)
        att = att.masked_fill(~keep[:, None, None, :], float("-inf"))
        return torch.softmax(att.float(), -1)


class CrossAttention(nn.Module):
    """Queries from the target, keys and values from the encoder's output (the memory)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.hs = cfg.n_head, cfg.d_model // cfg.n_head
        self.q = Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=False)

    def memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output: two (B, H, S, hs); once per source."""
        k, v = self.kv(mem).split(mem.shape[-1], dim=2)
        return _heads(k, self.n_head), _heads(v, self.n_head)

    def forward(self, x: torch.Tensor, kv: tuple, keep: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        y = F.scaled_dot_product_attention(_heads(self.q(x), self.n_head), *kv,
                                           attn_mask=keep[:, None, None, :])
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def probs(self, x, kv, keep) -> torch.Tensor:
        """(B, H, T, S) weights, written out (attention maps only)."""
        att = (_heads(self.q(x), self.n_head) @ kv[0].transpose(-1, -2)) / math.sqrt(self.hs)
        att = att.masked_fill(~keep[:, None, None, :], float("-inf"))
        return torch.softmax(att.float(), -1)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = EncoderAttention(cfg)
        self.ff = FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)
        self.post = cfg.norm == "post"

    def forward(self, x, rope, keep):
        x = residual(x, self.ln1, lambda h: self.attn(h, rope, keep), self.drop, self.post)
        return residual(x, self.ln2, self.ff, self.drop, self.post)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.attn = Attention(cfg)  # causal, cached: the decoder-only model's own
        self.cross = CrossAttention(cfg)
        self.ff = FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)
        self.post = cfg.norm == "post"

    def forward(self, x, start, rope, cache, layer, kv, keep):
        x = residual(x, self.ln1, lambda h: self.attn(h, start, rope, cache, layer), self.drop,
                     self.post)
        x = residual(x, self.ln2, lambda h: self.cross(h, kv, keep), self.drop, self.post)
        return residual(x, self.ln3, self.ff, self.drop, self.post)


class EncDecCache(KVCache):
    """The decoder's self-attention keys/values, plus each layer's cross-attention keys and
    values of one encoded source (set once by ``EncoderDecoder.encode_into``)."""

    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    keep: torch.Tensor | None = None  # (B, S) True at real (non-padding) source positions


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_context = cfg.max_context  # TokenModel: the longest target (and source)
        d = cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.scale = math.sqrt(d)
        if cfg.position == "learned":
            self.pos_src = nn.Embedding(cfg.max_context, d)
            self.pos_tgt = nn.Embedding(cfg.max_context, d)
        if cfg.position == "sinusoidal":
            self.register_buffer("pe", sinusoids(cfg.max_context, d), persistent=False)
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg.max_context, d // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layer))
        pre = cfg.norm == "pre"
        self.ln_enc = nn.LayerNorm(d) if pre else nn.Identity()
        self.ln_f = nn.LayerNorm(d) if pre else nn.Identity()
        self.head = Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # one matrix for both embeddings and the output
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        # Embeddings at std 0.02, scaled by sqrt(d) as in the paper: the token (~0.3 a
        # dimension at d 256) stands beside the unit-size sinusoids, and the tied output
        # starts near uniform (4.6 nats at 92 tokens). At std d^-0.5 the input token itself
        # dominated the first logits (13 nats) and cost the first few hundred steps.
        for name, p in self.named_parameters():  # GPT-2: scale residual projections
            if name.endswith("proj.weight") or name.endswith("ff.out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(3 * cfg.n_layer))

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def new_cache(self, batch: int, device=None, dtype=None) -> EncDecCache:
        c, p = self.cfg, self.tok.weight
        return EncDecCache(c.n_layer, batch, c.n_head, c.max_context, c.d_model // c.n_head,
                           device or p.device, dtype or p.dtype)

    def _embed(self, idx: torch.Tensor, start: int, learned: nn.Module | None):
        T = idx.shape[1]
        if start + T > self.max_context:
            raise ValueError(f"--context: {start + T} tokens exceed the model's maximum "
                             f"context {self.max_context}")
        x = self.tok(idx) * self.scale
        pos = torch.arange(start, start + T, device=idx.device)
        if learned is not None:
            x = x + learned(pos)
        elif self.cfg.position == "sinusoidal":
            x = x + self.pe[pos].to(x.dtype)
        rope = (self.rope_cos[start: start + T], self.rope_sin[start: start + T]) \
            if self.cfg.position == "rope" else None
        return self.drop(x), rope

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> encoder output (B, S, d) and its mask of real positions (B, S)."""
        keep = src != PAD
        x, rope = self._embed(src, 0, getattr(self, "pos_src", None))
        for layer in self.encoder:
            x = layer(x, rope, keep)
        return self.ln_enc(x), keep

    def memory(self, src: torch.Tensor) -> tuple[list[tuple], torch.Tensor]:
        """Each decoder layer's cross-attention keys/values of a source, and its mask."""
        mem, keep = self.encode(src)
        return [layer.cross.memory(mem) for layer in self.decoder], keep

    def encode_into(self, cache: EncDecCache, src: torch.Tensor) -> EncDecCache:
        cache.cross, cache.keep = self.memory(src)
        return cache

    def forward(self, idx: torch.Tensor, cache: EncDecCache | None = None,
                src: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) target tokens -> logits (B, T, V), reading ``src`` (B, S), or the
        source already encoded into ``cache``."""
        if cache is not None and cache.cross is None:
            if src is None:
                raise ValueError("an encoder-decoder needs its source: encode_into(cache, src)")
            self.encode_into(cache, src)
        cross, keep = (cache.cross, cache.keep) if cache is not None else self.memory(src)
        start = cache.length if cache is not None else 0
        x, rope = self._embed(idx, start, getattr(self, "pos_tgt", None))
        for i, layer in enumerate(self.decoder):
            x = layer(x, start, rope, cache, i, cross[i], keep)
        if cache is not None:
            cache.length += idx.shape[1]
        return self.head(self.ln_f(x))


class Conditioned(nn.Module):
    """A :class:`TokenModel` over targets: an encoder-decoder with its source bound (one
    source, shared by every sample of a batch, or one per sample)."""

    def __init__(self, model: EncoderDecoder, src: torch.Tensor) -> None:
        super().__init__()
        self.model, self.src = model, src
        self.max_context = model.max_context

    def _src(self, batch: int) -> torch.Tensor:
        return self.src.expand(batch, -1) if self.src.shape[0] == 1 else self.src

    def new_cache(self, batch: int, device=None, dtype=None) -> EncDecCache:
        return self.model.encode_into(self.model.new_cache(batch, device, dtype),
                                      self._src(batch).to(self.model.tok.weight.device))

    def forward(self, idx: torch.Tensor, cache: EncDecCache | None = None) -> torch.Tensor:
        return self.model(idx, cache, src=None if cache is not None else
                          self._src(idx.shape[0]).to(idx.device))
