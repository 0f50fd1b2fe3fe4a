"""Sources: what ``cadenza prepare SOURCE...`` accepts, expanded into items to tokenize.

- a MIDI file, or a folder searched recursively for ``.mid``/``.midi`` (any case);
- ``builtin:chorales|keyboard|classical`` (see corpus.py);
- benchmark files, recognised by content: the 16th-note chorales as Coconet / Music
  Transformer JSON (``{"train": [[[s, a, t, b], ...], ...], "valid": ..., "test": ...}``),
  and the Boulanger-Lewandowski piano-roll sets (``.mat`` with ``traindata``/``validdata``/
  ``testdata``, or the original ``.pickle`` of per-frame pitch lists). Their own splits are
  kept; whatever splits a file has are prepared.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import build_corpus
from .midi import BadInput, Notes
from .tokenizers.grid import Grid, Roll

MIDI_SUFFIXES = (".mid", ".midi")
SPLITS = ("train", "valid", "test")
# Boulanger-Lewandowski frame rates: JSB is on quarter notes, the others on eighths.
ROLL_STEP = {"jsb": 0.5, "default": 0.25}


class SourceError(ValueError):
    """The whole command cannot proceed (missing path, empty source, ...)."""


@dataclass
class Item:
    """One piece to tokenize. MIDI items are loaded by the worker; benchmark items carry
    their grid. ``split`` is fixed for benchmark pieces, None for MIDI (hash-assigned)."""

    path: str
    index: int | None = None  # piece index inside a benchmark file
    split: str | None = None
    grid: Any = None  # Grid or Roll for benchmark pieces
    digest: str = ""  # of the music (sources.music_digest, or the benchmark grid)
    tracks: dict[str, int] | None = None  # MIDI: tracks merged, notes left out (midi.select_tracks)

    @property
    def name(self) -> str:
        return self.path if self.index is None else f"{self.path}#{self.split}/{self.index}"


def expand_sources(sources: list[str] | tuple[str, ...], workers: int = 1) -> list[Item]:
    items: list[Item] = []
    for src in sources:
        if src.startswith("builtin:"):
            folder = build_corpus(src.split(":", 1)[1], workers=workers)
            items += _folder_items(folder, src)
            continue
        p = Path(src)
        if not p.exists():
            raise SourceError(f"{src}: no such file or folder")
        if p.is_dir():
            items += _folder_items(p, src)
        elif p.suffix.lower() in (".json", ".mat", ".pickle", ".pkl"):
            items += read_benchmark(p)
        else:  # anything else named explicitly is treated as MIDI (and rejected with a reason)
            items.append(Item(str(p)))
    return items


def _folder_items(folder: Path, src: str) -> list[Item]:
    files = sorted(f for f in folder.rglob("*") if f.is_file()
                   and f.suffix.lower() in MIDI_SUFFIXES)
    if not files:
        raise SourceError(f"{src}: no .mid or .midi files in this folder")
    return [Item(str(f)) for f in files]


def read_benchmark(path: Path) -> list[Item]:
    """Split-keeping reader for the JSB16 JSON and the Boulanger .mat/.pickle files."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            splits = {k: data[k] for k in SPLITS if isinstance(data, dict) and k in data}
            if not splits:
                raise SourceError(f"{path}: JSON without 'train'/'valid'/'test' lists")
            return [_item(path, split, i, Grid(_grid(piece, path), 0.125))
                    for split, pieces in splits.items() for i, piece in enumerate(pieces)]
        if path.suffix.lower() == ".mat":
            import scipy.io
            mat = scipy.io.loadmat(str(path))
            splits = {k: list(mat[k + "data"][0]) for k in SPLITS if k + "data" in mat}
        else:
            with open(path, "rb") as f:
                raw = pickle.load(f, encoding="latin1")  # the originals are Python 2 pickles
            splits = {k: [_frames_to_roll(seq) for seq in raw[k]] for k in SPLITS if k in raw}
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{path}: cannot read benchmark file ({e})") from e
    if not splits:
        raise SourceError(f"{path}: no traindata/validdata/testdata in this file")
    step = ROLL_STEP["jsb"] if "jsb" in path.name.lower() else ROLL_STEP["default"]
    items = []
    for split, pieces in splits.items():
        for i, roll in enumerate(pieces):
            roll = np.asarray(roll)
            if roll.ndim != 2 or roll.shape[1] != 88:
                raise SourceError(f"{path}: {split} piece {i} is not a (T, 88) piano roll")
            items.append(_item(path, split, i, Roll(roll.astype(bool), step)))
    return items


def _grid(piece: list, path: Path) -> np.ndarray:
    g = np.asarray(piece, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 4:
        raise SourceError(f"{path}: chorale steps must hold 4 pitches, got shape {g.shape}")
    return np.nan_to_num(g, nan=-1).astype(np.int64)


def _frames_to_roll(seq: list) -> np.ndarray:
    roll = np.zeros((len(seq), 88), bool)
    for t, frame in enumerate(seq):
        for p in frame:
            if 21 <= int(p) <= 108:
                roll[t, int(p) - 21] = True
    return roll


def _item(path: Path, split: str, i: int, grid: Grid | Roll) -> Item:
    digest = hashlib.sha1(np.ascontiguousarray(grid.array).tobytes()).hexdigest()
    return Item(str(path), i, split, grid, digest)


def music_digest(notes: Notes) -> str:
    """SHA-1 of the music, not of the file: every note's onset and release on a 10 ms grid,
    pitch and velocity, in a canonical order. A copy with another track name, tick
    resolution or event order (or another file name) gets the same digest, so it is found
    as a duplicate and can never sit in another split than its original."""
    a = np.stack([np.round(notes.start * 100), np.round(notes.end * 100),
                  notes.pitch, notes.velocity]).astype(np.int64)
    a = a[:, np.lexsort(a[::-1])]
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def ids_digest(ids: np.ndarray) -> str:
    """SHA-1 of a token sequence: two files that tokenize alike are the same music to the
    model, whatever their notes' exact times."""
    return hashlib.sha1(np.ascontiguousarray(ids, np.uint16).tobytes()).hexdigest()


def hash_split(digest: str, valid_frac: float, test_frac: float) -> str:
    """Deterministic split from a content hash: stable when files are added or removed."""
    u = int(digest[:12], 16) / 16**12
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


__all__ = ["BadInput", "Item", "SourceError", "expand_sources", "hash_split", "ids_digest",
           "music_digest"]
