"""Tokenizer registry: ``build_tokenizer("performance")``, ``build_tokenizer("miditok:TSD")``.

One file per scheme; each starts with a docstring citing where the scheme comes from.
"""

from __future__ import annotations

from typing import Any

from ...config import register_names
from .base import BOS, EOS, PAD, Grammar, Tokenizer, framed
from .chorale16 import Chorale16Tokenizer
from .miditok_adapter import STREAM_NAMES, MidiTokTokenizer
from .performance import PerformanceTokenizer
from .pianoroll import PianoRollTokenizer

NATIVE = {
    "performance": PerformanceTokenizer,
    "chorale16": Chorale16Tokenizer,
    "pianoroll": PianoRollTokenizer,
}
ALIASES = {"remi": "miditok:REMI"}


def tokenizer_names() -> list[str]:
    return [*NATIVE, "remi", *(f"miditok:{n}" for n in STREAM_NAMES)]


register_names("tokenizer", tokenizer_names)  # prepare --tokenizer


def build_tokenizer(name: str, **config: Any) -> Tokenizer:
    """Build a tokenizer by name; ``config`` is what ``Tokenizer.config()`` returned."""
    name = ALIASES.get(name, name)
    if name in NATIVE:
        return NATIVE[name](**config)
    if name.startswith("miditok:"):
        scheme = name.split(":", 1)[1]
        if scheme in STREAM_NAMES:
            config = {k: v for k, v in config.items() if k != "scheme"}
            return MidiTokTokenizer(scheme, **config)
    raise ValueError(f"--tokenizer: unknown tokenizer {name!r}; "
                     f"choose one of {', '.join(tokenizer_names())}")


__all__ = ["BOS", "EOS", "PAD", "Grammar", "Tokenizer", "build_tokenizer", "framed",
           "tokenizer_names"]
