"""An ensemble of models over the same vocabulary: the next-token distribution is the mean of
the members' distributions, p(x_t | x_<t) = 1/K sum_k p_k(x_t | x_<t).

Averaging probabilities token by token is itself an autoregressive model (each step's mixture
sums to one), so its NLL is an exact likelihood, comparable with any single model's; it is
never above the members' mean NLL (the log of a mean is at least the mean of the logs). The
ensemble presents the single-model interface (``forward(idx, cache)``, ``new_cache``,
``max_context``), so sampling uses it unchanged. ``forward`` returns log probabilities, which are
valid logits. (Evaluation scores each member once and mixes their per-token NLL instead,
``evaluate.mix``: the same numbers, and each member's own NLL comes with them.)

``Relabelled`` makes one model into several members: it reads every input token through a
table of token ids and answers in the original ids. With the tokenizer's transposition tables
(``checkpoint.key_views``) an ensemble of a model's relabellings is the model averaged over
keys: p(x_t | x_<t) = 1/K sum_k p(T_k x_t | T_k x_<t), T_k transposing by k semitones. A
model trained on transposed pieces has learnt each key from other windows, and its keys
disagree where it is unsure, so the average beats every single key (on the JSB chorales 12
keys take 10% off the NLL), at K forward passes per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class EnsembleCache:
    """One cache per member; ``length`` is the tokens consumed (the same for every member)."""

    def __init__(self, caches: list) -> None:
        self.caches = caches

    @property
    def length(self) -> int:
        return self.caches[0].length

    def reset(self) -> None:
        for c in self.caches:
            c.reset()


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        limits = [m.max_context for m in members if m.max_context is not None]
        self.max_context = min(limits) if limits else None  # the shortest context bounds all

    def new_cache(self, batch: int, device=None, dtype=None) -> EnsembleCache:
        return EnsembleCache([m.new_cache(batch, device, dtype) for m in self.members])

    def forward(self, idx: torch.Tensor, cache: EnsembleCache | None = None) -> torch.Tensor:
        """idx (B, T) -> log of the mean member probability, (B, T, V)."""
        caches = cache.caches if cache is not None else [None] * len(self.members)
        logp = torch.stack([F.log_softmax(m(idx, c).float(), -1)
                            for m, c in zip(self.members, caches)])  # (K, B, T, V)
        return torch.logsumexp(logp, 0) - math.log(len(self.members))


class Relabelled(nn.Module):
    """``model`` seen through a relabelling of its vocabulary: input token v is read as
    ``table[v]``, and the probability of answering v is the model's probability of
    ``table[v]``, renormalised over the tokens whose ``table`` entry is not -1 (-1: no
    counterpart; such a token is read as itself and gets probability 0). Same interface as
    ``model``; ``forward`` returns log probabilities."""

    def __init__(self, model: nn.Module, table) -> None:
        super().__init__()
        self.model = model
        device = next(model.parameters()).device
        table = torch.as_tensor(table, dtype=torch.long, device=device)
        ids = torch.arange(len(table), device=device)
        self.register_buffer("inp", torch.where(table >= 0, table, ids), persistent=False)
        self.register_buffer("missing", table < 0, persistent=False)
        self.max_context = model.max_context

    def new_cache(self, batch: int, device=None, dtype=None):
        return self.model.new_cache(batch, device, dtype)

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        logits = self.model(self.inp[idx], cache).float()
        logits = logits.index_select(-1, self.inp).masked_fill(self.missing, float("-inf"))
        return F.log_softmax(logits, -1)
