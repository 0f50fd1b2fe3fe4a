"""Recurrent baselines: embedding -> stacked RNN (tanh) / LSTM (Hochreiter & Schmidhuber
1997) / GRU (Cho et al. 2014) -> output projection, tied to the embedding.

Same interface as the Transformer: ``forward(idx, cache)``. The "cache" is the hidden state,
so generation steps one token at a time with no context limit.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .base import decay_groups

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentState:
    def __init__(self) -> None:
        self.h = None  # (n_layer, B, d) or a pair for the LSTM
        self.length = 0

    def reset(self) -> None:
        self.h, self.length = None, 0


class Recurrent(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_context = None  # TokenModel: no positional limit
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = CELLS[cfg.kind](cfg.d_model, cfg.d_model, num_layers=cfg.n_layer,
                                   batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay the matrices, not biases or the LayerNorm."""
        return decay_groups(self, weight_decay)

    def new_cache(self, batch: int, device=None, dtype=None) -> RecurrentState:
        return RecurrentState()

    def forward(self, idx: torch.Tensor, cache: RecurrentState | None = None) -> torch.Tensor:
        x = self.drop(self.tok(idx))
        y, h = self.rnn(x, cache.h if cache is not None else None)
        if cache is not None:
            cache.h = h
            cache.length += idx.shape[1]
        return self.head(self.ln_f(self.drop(y)))
