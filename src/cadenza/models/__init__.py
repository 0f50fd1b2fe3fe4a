"""Models over token ids: ``build_model(ModelConfig)``, each a :class:`TokenModel`. Nothing
here knows about MIDI."""

from __future__ import annotations

import torch.nn as nn

from ..config import ModelConfig
from .base import TokenModel
from .encdec import Conditioned, EncoderDecoder
from .recurrent import Recurrent
from .transformer import Transformer


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.vocab_size < 4:
        raise ValueError(f"vocab_size {cfg.vocab_size}: set it from the dataset")
    if cfg.kind == "encoder-decoder":
        return EncoderDecoder(cfg)
    return Transformer(cfg) if cfg.kind == "transformer" else Recurrent(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Conditioned", "EncoderDecoder", "Recurrent", "TokenModel", "Transformer",
           "build_model", "count_params"]
