"""What makes the Transformer fast on a CPU: two torch layers (same state-dict names) and
one attention function, each giving the reference's results to rounding.

``Linear``: ``nn.Linear`` whose fp32 products on a CPU go through oneDNN.

torch's default fp32 matmul on a CPU is MKL's, which on this project's AMD machines runs at
about 210 GFLOP/s; oneDNN's linear (the kernel inductor uses) reaches about 460 on the same
matrices. bf16 products already go to oneDNN, and so do products under autocast, so only
plain fp32 on a CPU takes this path: the forward and both products of the backward, exact
fp32 (no reduced-precision accumulation), about 1.3x the training step of the 6x256 model.
Small products without a gradient (one-token decoding) read a transposed copy of the
weight instead (``Linear._decode``), or with ``use_half_weights`` (``generate --precision
fp16w``) an fp16 copy: half the bytes, fp32 arithmetic. State-dict names are nn.Linear's, so
checkpoints do not change.

``Dropout``: ``nn.Dropout`` drawing its mask as 16-bit integers, four to one 64-bit draw,
instead of ``bernoulli_``, whose CPU kernel took 11% of a training step, or ``torch.rand``
(then a tenth): see ``dropout_keep``. Each element is kept with probability 1 - p and
scaled by 1 / (1 - p), as before; the draws come from the same generator, so a seeded run
(and a resumed one) repeats exactly.

``causal_attention``: causal self-attention for training, in blocks of query rows as
batched matrix products, instead of torch's CPU flash-attention kernel (see its docstring).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_ROWS = 64  # fewer rows than this (decoding) without a gradient: Linear._decode


def _onednn_works() -> bool:
    try:
        a = torch.ones(2, 3)
        out = torch.ops.mkldnn._linear_pointwise(a, torch.ones(4, 3), None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError):
        return False


ONEDNN = torch.backends.mkldnn.is_available() and _onednn_works()


def _mm(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """a @ w.T (+ b) through oneDNN; a (N, in), w (out, in)."""
    return torch.ops.mkldnn._linear_pointwise(a, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _mm(x.reshape(-1, x.shape[-1]), w, b).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g2, w.t()).view(x.shape)  # g @ w
        if ctx.needs_input_grad[1]:
            gw = _mm(g2.t(), x.reshape(-1, x.shape[-1]).t())  # g.T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


HALF_ROWS = 4  # at most this many rows read the fp16 copy (more: fp16 products are slower)
HALF_MAX = 65504.0  # the largest fp16: a weight beyond it keeps the fp32 copy


class Linear(nn.Linear):
    # decoding: copies of the parameters, each (key of what it copies, the copy)
    _t: tuple | None = None  # weight.T contiguous
    _h: tuple | None = None  # fp16 weight and bias, or None where fp16 cannot hold them
    half_decoding = False  # set by use_half_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype \
                or torch.is_autocast_enabled("cpu"):
            return F.linear(x, self.weight, self.bias)
        if x.numel() < MIN_ROWS * x.shape[-1]:
            if not torch.is_grad_enabled():
                return self._decode(x)
        elif ONEDNN and x.dtype == torch.float32:
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _copy(self, name: str, make):
        """The copy held as ``name``, made by ``make()`` on first use and again whenever the
        weight or the bias changes (version counter, storage or type); not in the state
        dict."""
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, w.dtype) + \
            (() if b is None else (b.data_ptr(), b._version))
        held = getattr(self, name)
        if held is None or held[0] != key:
            held = (key, make())
            setattr(self, name, held)
        return held[1]

    def _decode(self, x: torch.Tensor, half_out: bool = False) -> torch.Tensor:
        """x @ W.T for a few rows, reading the weight stored transposed (in, out): when the
        weights do not fit the CPU's cache, as in decoding, the product streams them from
        memory faster than from nn.Linear's (out, in) layout (1.1-1.7x measured here; the
        layout GPT-2's Conv1D keeps).

        With ``half_decoding`` (use_half_weights), fp32 products of at most HALF_ROWS rows
        read an fp16 copy instead, half the bytes, accumulating in fp32 (torch's fp16
        matrix-vector kernel); x is rounded to fp16 on the way in and the result comes
        back as fp32, or as fp16 with ``half_out`` when it is an fp16 product's."""
        w = self.weight
        x2 = x.reshape(-1, x.shape[-1])
        if self.half_decoding and w.dtype == torch.float32 and x2.shape[0] <= HALF_ROWS:
            half = self._copy("_h", lambda: _half_copy(w, self.bias))
            if half is not None:
                y = F.linear(x2.half(), *half)
                return y.view(*x.shape[:-1], y.shape[-1]) if half_out else \
                    y.float().view(*x.shape[:-1], y.shape[-1])
        if x.dtype == torch.float16:  # an fp16 product's output, for a layer without a copy
            x2 = x2.to(w.dtype)
        wt = self._copy("_t", lambda: w.detach().t().contiguous())
        y = x2 @ wt if self.bias is None else torch.addmm(self.bias, x2, wt)
        return y.view(*x.shape[:-1], y.shape[-1])


def _half_copy(w: torch.Tensor, b: torch.Tensor | None) -> tuple | None:
    """fp16 copies of a weight and its bias, or None if a value is beyond fp16's range."""
    if w.detach().abs().max() > HALF_MAX or (b is not None and b.detach().abs().max() > HALF_MAX):
        return None
    return w.detach().half(), None if b is None else b.detach().half()


def use_half_weights(model: nn.Module, on: bool = True) -> None:
    """Decode on a CPU reading fp16 copies of the weights (``Linear._decode``): about half
    the bytes a one-token step reads, the rest in fp32 (activations, the cache, attention,
    the softmax). For weights stored in bf16 the copy loses next to nothing: a bf16 value
    between fp16's smallest normal (6.1e-5) and its largest is an fp16 value, and a
    smaller one moves by at most 3e-8."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.half_decoding = on


def dropout_keep(shape, p: float, device) -> tuple[torch.Tensor, float]:
    """Which elements of a tensor of ``shape`` dropout keeps, and their scale: a bool
    tensor, True with probability 1 - p, and 1 / (1 - p). Each element compares 16 random
    bits with p * 2^16 (so p is rounded to a multiple of 2^-16, at most 8e-6 off, and the
    scale is that of the rounded p), four elements to one 64-bit draw of the generator: a
    quarter of ``torch.rand``'s draws and no conversion to floats, 2.3x faster (the draws
    had been a tenth of a training step)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    # from int64's least value with no upper bound: all 64 bits raw (a bounded range
    # would reduce each draw modulo its size, 30% slower)
    bits = bits.random_(-2**63, None).view(torch.int16)[:n].view(shape)
    dropped = min(round(p * 65536), 65535)
    return bits >= dropped - 32768, 65536 / (65536 - dropped)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        keep, ctx.scale = dropout_keep(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        # a product with the mask's bytes (0 or 1) is ~5x faster than torch.where or a
        # product with the bool mask, which CPU kernels convert first
        return (x * keep.view(torch.uint8)).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return (g * keep.view(torch.uint8)).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":  # the GPU's own kernel is fast
            return F.dropout(x, self.p, True)
        return _Dropout.apply(x, self.p)


CHUNK = 64  # query rows per block (hs 32: 32 and 128 5% slower; hs 64: 128 3% faster)
MAX_SAVED = 256 * 2**20  # bytes of attention weights kept per layer for the backward pass


def use_chunked_attention(q: torch.Tensor) -> bool:
    """Whether causal self-attention over q (B, H, T, hs) takes :func:`causal_attention`: on
    a CPU, when training (the gradient is needed), over more than one block, and when the
    weights it keeps for the backward pass fit MAX_SAVED."""
    B, H, T, _ = q.shape
    return (q.device.type == "cpu" and torch.is_grad_enabled() and T > CHUNK
            and q.dtype in (torch.float32, torch.bfloat16)
            and B * H * T * (T + CHUNK) // 2 * q.element_size() <= MAX_SAVED)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + causal mask) v, for q, k, v (B, H, T, hs): what
    ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` computes, to rounding.

    torch's CPU flash-attention kernel runs at ~35 GFLOP/s at head size 32 and took over half
    of a bf16 training step. Here the queries go in blocks of CHUNK rows, each against the
    keys up to its last row only (the causal half of the work, no more), as batched matrix
    products (oneDNN in bf16): about 2x faster forward and backward at head sizes 32 and 64.
    The weights of each block are kept for the backward pass (at most MAX_SAVED bytes per
    layer; :func:`use_chunked_attention` sends longer sequences to the fused kernel)."""
    with torch.autocast("cpu", enabled=False):
        return _CausalAttention.apply(q, k, v)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.shape[2]
        # contiguous (B, H, T, hs) once: every block's products then read slices in place
        q = q * (1.0 / q.shape[-1] ** 0.5)  # a new contiguous tensor
        k, v = k.contiguous(), v.contiguous()
        future = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).triu(1)
        out = torch.empty_like(v)
        weights = []
        for s in range(0, T, CHUNK):
            e = min(s + CHUNK, T)
            att = q[:, :, s:e] @ k[:, :, :e].transpose(-1, -2)  # (B, H, e - s, e)
            att[..., s:e].masked_fill_(future[: e - s, : e - s], float("-inf"))
            p = torch.softmax(att, -1)
            out[:, :, s:e] = p @ v[:, :, :e]
            weights.append(p)
        ctx.save_for_backward(q, k, v, *weights)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        q, k, v, *weights = ctx.saved_tensors  # q is already scaled
        T, scale = q.shape[2], 1.0 / q.shape[-1] ** 0.5
        g = g.contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for s, p in zip(range(0, T, CHUNK), weights):
            e = min(s + CHUNK, T)
            gs = g[:, :, s:e]
            dp = gs @ v[:, :, :e].transpose(-1, -2)
            # softmax backward, dS = P * (dP - rowsum(dP * P)), in torch's kernel (fp32
            # inside, one pass; 3x the separate operations): a block holds every key its
            # rows attend to, so its rows' sums are the whole rows'
            ds = torch._softmax_backward_data(dp, p, -1, q.dtype)
            dq[:, :, s:e] = (ds @ k[:, :, :e]) * scale
            dk[:, :, :e].add_(ds.transpose(-1, -2) @ q[:, :, s:e])
            dv[:, :, :e].add_(p.transpose(-1, -2) @ gs)
        return dq, dk.to(k.dtype), dv.to(v.dtype)
