"""Two torch layers made faster on a CPU, same state-dict names, same results to rounding.

``Linear``: ``nn.Linear`` whose fp32 products on a CPU go through oneDNN.

torch's default fp32 matmul on a CPU is MKL's, which on this project's AMD machines runs at
about 210 GFLOP/s; oneDNN's linear (the kernel inductor uses) reaches about 460 on the same
matrices. bf16 products already go to oneDNN, and so do products under autocast, so only
plain fp32 on a CPU takes this path: the forward and both products of the backward, exact
fp32 (no reduced-precision accumulation), about 1.3x the training step of the 6x256 model.
Small products (one-token decoding) stay on the default path, which is faster for them.
State-dict names are nn.Linear's, so checkpoints do not change.

``Dropout``: ``nn.Dropout`` drawing its mask with ``torch.rand`` and a comparison instead of
``bernoulli_``, whose CPU kernel took 11% of a training step (about 5% of the step saved).
Each element is kept with probability 1 - p and scaled by 1 / (1 - p), as before; the
draws come from the same generator, so a seeded run (and a resumed one) repeats exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_ROWS = 64  # below this many rows (decoding) the default GEMV is faster


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


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the size first: one-token decoding (most calls) leaves at the first test
        if (x.numel() >= MIN_ROWS * x.shape[-1] and ONEDNN and x.dtype == torch.float32
                and x.device.type == "cpu" and self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        keep = torch.rand(x.shape, device=x.device) >= p
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return g * keep * ctx.scale, None


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":  # the GPU's own kernel is fast
            return F.dropout(x, self.p, True)
        return _Dropout.apply(x, self.p)
