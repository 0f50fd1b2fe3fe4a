"""What every model over token ids offers (``TokenModel``), and the AdamW grouping they share.

Sampling, scoring and ensembling rely on this interface only: the Transformer, the recurrent
baselines and the ensemble wrappers all satisfy it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class TokenModel(Protocol):
    #: the longest sequence it reads at once (its positions' reach); None: no limit
    max_context: int | None

    def forward(self, idx: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits; with a cache (from ``new_cache``) the ids
        are appended to what it holds, so one new token costs one position."""
        ...

    def new_cache(self, batch: int, device: Any = None, dtype: Any = None) -> Any:
        """An empty cache for ``batch`` sequences (key/values, or a hidden state). A cache
        with a ``reset()`` (ours) is emptied and reused when the engine slides."""
        ...


def decay_groups(model: nn.Module, weight_decay: float, keep: set[int] = frozenset()
                 ) -> list[dict]:
    """Two AdamW parameter groups: weight decay on matrices (dim >= 2) except those whose
    ``id`` is in ``keep``; none on vectors (biases, LayerNorm gains)."""
    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in keep]
    rest = [p for p in params if not (p.dim() >= 2 and id(p) not in keep)]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]
