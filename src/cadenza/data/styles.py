"""Style tags: what a piece is, as tokens a model reads before the music (``prepare --tags``).

Each piece gets up to two tags:

- its **style**: the composer or genre, read from where the file sits: the first folder
  under its source (``piano-midi.de/Chopin/x.mid``: Chopin; ``asap-extra/Bach/Fugue/...``:
  Bach; split folders such as ``train/`` are skipped), ``pop`` for a POP909 layout, and for
  MAESTRO its table's canonical composer in the short name the folders use
  (``composer_style``: ``Frédéric Chopin`` is ``Chopin``; an arrangement ``A / B`` is A's);
- its **kind**: ``live`` (a performance: ASAP and MAESTRO layouts), ``arrangement`` (POP909),
  or what ``prepare --kind`` says for the other sources (e.g. ``score``: sequenced by hand).

Every classical composer also belongs to the group ``classical``. The tags extend the
model's input vocabulary beyond the tokenizer's (ids ``V``, ``V + 1``, ... for a tokenizer of
``V`` tokens): a model reads them, never writes them, so generation, grammars and NLL stay
over the tokenizer's tokens. A training window starts with its piece's tags, each dropped
at random (``--tag-dropout``) and a composer sometimes replaced by its group, so one model
serves untagged, ``classical`` and ``Chopin`` prompts alike (``--style NAME``).

What a window starts with is a :class:`Conditioning`: the style tags, kept apart from the
fill-in-the-middle marks (data/fim.py) that share the tags' id range, and put before a
window in one place (``prepend``) for training windows, scoring and generation alike.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from . import fim

KINDS = ("live", "score", "arrangement")
POP = "pop"
CLASSICAL = "classical"
GROUP_SHARE = 0.25  # of kept composer tags, the share replaced by their group
LAYOUT_STYLE = {"pop909": POP}
LAYOUT_KIND = {"asap": "live", "maestro": "live", "pop909": "arrangement"}
SPLIT_FOLDERS = {"train", "valid", "validation", "test"}
# the marks of the fill-in-the-middle order (data/fim.py), read like tags by a model trained
# with `train --fim`: never a style, never written
MARKS = ("fim:right", "fim:middle")


# MAESTRO's canonical composers whose short name is not simply their last name folded to
# ASCII (composer_style); every other composer maps by that rule.
COMPOSER_NAMES = {
    "Ludwig van Beethoven": "Beethoven",
    "Carl Maria von Weber": "Weber",
    "Johann Christian Fischer": "Fischer",
    "Nikolai Rimsky-Korsakov": "Rimsky-Korsakov",
}


def composer_style(name: str) -> str:
    """The style tag of a composer as MAESTRO writes them: the first composer of an
    arrangement (``Johann Sebastian Bach / Ferruccio Busoni``: Bach, the piece's author),
    by ``COMPOSER_NAMES`` or else the last name without accents (``Frédéric Chopin``:
    Chopin; ``Isaac Albéniz``: Albeniz), which is how the composer folders of piano-midi.de
    and ASAP spell them."""
    first = name.split("/")[0].strip()
    if not first:
        return ""
    short = COMPOSER_NAMES.get(first, first.split()[-1])
    return "".join(c for c in unicodedata.normalize("NFKD", short)
                   if not unicodedata.combining(c))


def piece_style(path: str, source: str, layout: str, kind: str = "",
                composer: str = "") -> tuple[str, str]:
    """(style, kind) of one file of a source ("" where it has none); ``composer``: the
    composer a corpus's table names (MAESTRO), which wins over the folders."""
    style = LAYOUT_STYLE.get(layout, "") or composer_style(composer)
    if not style:
        try:
            parts = Path(path).relative_to(source).parts[:-1]
        except ValueError:
            parts = ()
        parts = tuple(p for p in parts if p.lower() not in SPLIT_FOLDERS)
        style = parts[0] if parts else ""
    return style, LAYOUT_KIND.get(layout, kind)


@dataclass(frozen=True)
class Tags:
    """A dataset's (and its models') tag vocabulary: ``names`` in id order, after the
    tokenizer's ``base`` tokens: the group, the styles, the kinds."""

    styles: tuple[str, ...]
    kinds: tuple[str, ...]
    base: int  # the tokenizer's vocabulary size: the first tag's id
    classical: tuple[str, ...] = ()  # the styles of the group: those of live or score pieces
    marks: tuple[str, ...] = ()  # MARKS, for a model trained to infill (train --fim)

    @property
    def names(self) -> tuple[str, ...]:
        return (CLASSICAL, *self.styles, *self.kinds, *self.marks)

    @property
    def choices(self) -> tuple[str, ...]:
        """What ``--style`` takes: the group (when it has styles), the styles, the kinds."""
        return ((CLASSICAL,) if self.classical else ()) + self.styles + self.kinds

    def with_marks(self) -> Tags:
        """These tags and the infilling marks after them (the ids before stay)."""
        return replace(self, marks=MARKS)

    def mark_ids(self) -> tuple[int, int]:
        """(right, middle): the ids of the infilling marks (ValueError: a model without)."""
        if self.marks != MARKS:
            raise ValueError("these tags have no infilling marks")
        return self.id(MARKS[0]), self.id(MARKS[1])

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def collect(pairs: list[tuple[str, str]], base: int) -> Tags:
        return Tags(tuple(sorted({s for s, _ in pairs if s})),
                    tuple(k for k in KINDS if any(k == kd for _, kd in pairs))
                    + tuple(sorted({kd for _, kd in pairs if kd and kd not in KINDS})), base,
                    tuple(sorted({s for s, k in pairs if s and s != POP
                                  and k in ("live", "score")})))

    def record(self) -> dict[str, Any]:
        return {"styles": list(self.styles), "kinds": list(self.kinds), "base": self.base,
                "classical": list(self.classical), **({"marks": list(self.marks)}
                                                     if self.marks else {})}

    @staticmethod
    def of(record: dict[str, Any] | None) -> Tags | None:
        if not record:
            return None
        return Tags(tuple(record["styles"]), tuple(record["kinds"]), int(record["base"]),
                    tuple(record.get("classical", ())), tuple(record.get("marks", ())))

    def id(self, name: str) -> int:
        return self.base + self.names.index(name)

    def indices(self, style: str, kind: str) -> tuple[int, int]:
        """A piece's (style, kind) as positions in ``names`` (-1: none)."""
        return (self.names.index(style) if style else -1,
                self.names.index(kind) if kind else -1)

    def prompt(self, name: str | None) -> list[int]:
        """The ids a ``--style NAME`` prompt starts with: a style or group, or a kind;
        an unknown name is one line naming the nearest known ones."""
        if not name:
            return []
        known = self.choices
        if name in known:
            return [self.id(name)]
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.6) or \
            [n for n in known if n.lower() == name.lower()]
        raise ConfigError(f"--style: this model knows no style {name!r}"
                          + (f" (nearest: {', '.join(near)})" if near else "")
                          + f"; it knows {', '.join(known) or 'none'}")

    def conditioning(self, style: str | None = None) -> Conditioning:
        """A ``--style NAME`` prompt's conditioning (no tags without one), with this
        vocabulary's fill-in-the-middle marks when it has them."""
        return Conditioning(tuple(self.prompt(style)),
                            self.mark_ids() if self.marks == MARKS else None)

    def window_prefix(self, style: int, kind: int, rng: np.random.Generator,
                      dropout: float) -> list[int]:
        """A training window's tags: each kept with probability 1 - dropout; a kept
        classical composer is replaced by ``classical`` a share of the time."""
        out = []
        if style >= 0 and rng.random() >= dropout:
            if self.names[style] in self.classical and rng.random() < GROUP_SHARE:
                style = 0  # CLASSICAL
            out.append(self.base + style)
        if kind >= 0 and rng.random() >= dropout:
            out.append(self.base + kind)
        return out


@dataclass(frozen=True)
class Conditioning:
    """What a model reads before the music of every window: ``tags`` (a ``--style``'s, or a
    training piece's), then ``fixed`` (ids every window keeps after them: an infill's
    fill-in-the-middle prompt, ``with_fim``). ``marks``: the ids of the two
    fill-in-the-middle marks of a model trained with them (None: it was not); they are
    never tags, and appear only inside ``fim_prompt``."""

    tags: tuple[int, ...] = ()
    marks: tuple[int, int] | None = None
    fixed: tuple[int, ...] = ()

    @property
    def head(self) -> tuple[int, ...]:
        return self.tags + self.fixed

    def __len__(self) -> int:
        return len(self.tags) + len(self.fixed)

    def fim_prompt(self, left: np.ndarray, right: np.ndarray, span_seconds: float
                   ) -> np.ndarray:
        """``BOS left <fim:right> gap right <fim:middle>`` (data/fim.py); ValueError for a
        model without the marks."""
        if self.marks is None:
            raise ValueError("this model was not trained to infill (no fill-in-the-middle marks)")
        return fim.prompt(left, right, span_seconds, self.marks)

    def with_fim(self, ids: np.ndarray) -> Conditioning:
        """These tags, then ``ids`` (a fill-in-the-middle prompt) kept by every window."""
        return replace(self, fixed=tuple(int(i) for i in ids))

    def prepend(self, window, length: int | None = None):
        """The head, then ``window`` (ids, last axis the time: a numpy array or a tensor of
        any batch shape), its first ``length - len(self)`` tokens where ``length`` is given
        (the whole is then at most ``length``)."""
        k = len(self)
        if length is not None:
            window = window[..., : max(length - k, 0)]
        if not k:
            return window
        if isinstance(window, torch.Tensor):
            head = torch.as_tensor(self.head, dtype=window.dtype, device=window.device)
            return torch.cat([head.expand(*window.shape[:-1], k), window], -1)
        head = np.broadcast_to(np.asarray(self.head, window.dtype), (*window.shape[:-1], k))
        return np.concatenate([head, window], -1)
