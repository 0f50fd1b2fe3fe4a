"""Sources: what ``cadenza prepare SOURCE...`` accepts, expanded into items to tokenize.

- a MIDI file, or a folder searched recursively for ``.mid``/``.midi`` (any case). A folder's
  layout is recognised by its content, and a corpus keeps its own split (see ``LAYOUTS``):
  MAESTRO (``maestro-v*.csv``, its ``split`` column), ASAP-style ``metadata.csv`` (a
  ``midi_performance`` column; split by piece), POP909 (each song's main ``NNN/NNN.mid``,
  not its ``versions/``), split folders (``train/``, ``validation/``, ``test/``), and a plain
  folder (split by content hash);
- ``builtin:chorales|keyboard|classical`` (see corpus.py);
- benchmark files, recognised by content: the 16th-note chorales as Coconet / Music
  Transformer JSON (``{"train": [[[s, a, t, b], ...], ...], "valid": ..., "test": ...}``),
  and the Boulanger-Lewandowski piano-roll sets (``.mat`` with ``traindata``/``validdata``/
  ``testdata``, or the original ``.pickle`` of per-frame pitch lists). Their own splits are
  kept; whatever splits a file has are prepared.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import build_corpus
from .midi import BadInput, Notes
from .tokenizers.grid import Grid, Roll

MIDI_SUFFIXES = (".mid", ".midi")
BENCHMARK_SUFFIXES = (".json", ".mat", ".pickle", ".pkl")  # read by read_benchmark
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
    source: str = ""  # the SOURCE argument it came from
    group: str = ""  # pieces sharing a group share a split (performances of one piece)
    composer: str = ""  # from a corpus's metadata (MAESTRO's canonical_composer), for tags

    @property
    def name(self) -> str:
        return self.path if self.index is None else f"{self.path}#{self.split}/{self.index}"


# How a folder's files get their split; reported per source in the summary and manifest.
LAYOUTS = {
    "maestro": "MAESTRO: maestro-v*.csv lists each performance and its split",
    "asap": "ASAP-style metadata.csv (midi_performance column): performances of one piece "
            "share a split (its maestro_split/split column where there is one)",
    "pop909": "POP909: each song's main NNN/NNN.mid (versions/ left out), split by content",
    "split-folders": "train/, validation/ (or valid/) and test/ subfolders keep their split",
    "folder": "split by content hash",
    "file": "split by content hash",
}
MAESTRO_NAMES = ("MIDI-UNPROCESSED", "ORIG-MIDI")  # how MAESTRO's file names start
SPLIT_NAMES = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}


def expand_sources(sources: list[str] | tuple[str, ...], workers: int = 1,
                   exclude: tuple[str, ...] = ()) -> tuple[list[Item], dict[str, str]]:
    """Items of every source, and each source's layout (a key of ``LAYOUTS``). Files whose
    path matches an ``exclude`` glob (``*`` crosses folders; matched against the path's
    end, e.g. ``piano-midi.de/Grieg/*``) are left out before anything is read."""
    items: list[Item] = []
    layouts: dict[str, str] = {}
    for src in sources:
        if src.startswith("builtin:"):
            folder = build_corpus(src.split(":", 1)[1], workers=workers)
            layouts[src], found = folder_items(folder, src)
        else:
            p = Path(src)
            if not p.exists():
                raise SourceError(f"{src}: no such file or folder")
            if p.is_dir():
                layouts[src], found = folder_items(p, src)
            elif p.suffix.lower() in BENCHMARK_SUFFIXES:
                layouts[src], found = "benchmark", read_benchmark(p)
            else:  # anything else named explicitly is treated as MIDI (rejected with a reason)
                layouts[src], found = "file", [Item(str(p))]
        for it in found:
            it.source = src
        kept = [it for it in found if not excluded(it.path, exclude)]
        if found and not kept:
            raise SourceError(f"{src}: every file matches --exclude {' '.join(exclude)}")
        items += kept
    return items, layouts


def excluded(path: str, patterns: tuple[str, ...]) -> bool:
    p = Path(path).as_posix()
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, "*/" + pat.lstrip("/"))
               for pat in patterns)


def midi_files(paths: list[Path]) -> list[Path]:
    """Every MIDI file named or found (recursively) in the folders named, in order."""
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise SourceError(f"--data {p}: no such file or folder")
        found = _midi_files(p) if p.is_dir() else [p]
        if not found:
            raise SourceError(f"--data {p}: neither a prepared dataset (no manifest.json) nor "
                              "a folder with .mid or .midi files")
        out += found
    return out


def _midi_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file()
                  and f.suffix.lower() in MIDI_SUFFIXES)


def folder_items(folder: Path, src: str) -> tuple[str, list[Item]]:
    """(layout, items) of a folder, its layout recognised by content."""
    files = _midi_files(folder)
    if not files:
        raise SourceError(f"{src}: no .mid or .midi files in this folder")
    maestro = sorted(folder.glob("maestro-v*.csv")) or sorted(folder.glob("maestro-v*.json"))
    meta = folder / "metadata.csv"
    if not maestro and meta.exists() and {"canonical_composer", "file"} <= set(_csv_header(meta)):
        maestro = [meta]  # a MAESTRO subset described by a metadata.csv (../shared's layout)
    if maestro:
        return "maestro", _maestro_items(folder, maestro[-1], src)
    if sum(f.name.upper().startswith(MAESTRO_NAMES) for f in files) * 2 > len(files):
        raise SourceError(f"{src}: MAESTRO's recordings without its table (maestro-v*.csv, "
                          "maestro-v*.json or a metadata.csv with canonical_composer, split "
                          "and file): their splits and composers are unknown")
    if meta.exists() and "midi_performance" in _csv_header(meta):
        return "asap", _asap_items(folder, meta, files, src)
    main = [f for f in files if f.parent.name == f.stem and re.fullmatch(r"\d{3,}", f.stem)
            and "versions" not in f.relative_to(folder).parts]
    if main and len(main) * 2 >= len({f.parent for f in files if f.parent != folder}):
        return "pop909", [Item(str(f)) for f in main]
    tops = {f.relative_to(folder).parts[0] for f in files if f.parent != folder}
    if "train" in tops and tops & {"validation", "valid", "test"}:
        out = []
        for f in files:
            top = f.relative_to(folder).parts[0]
            out.append(Item(str(f), split=SPLIT_NAMES.get(top)))  # others: hash split
        return "split-folders", out
    return "folder", [Item(str(f)) for f in files]


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f), [])


def _csv_rows(path: Path, src: str, need: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: cannot read ({e})") from e
    missing = [c for c in need if rows and c not in rows[0]]
    if missing:
        raise SourceError(f"{path}: no {', '.join(missing)} column")
    return rows


def _maestro_items(folder: Path, table: Path, src: str) -> list[Item]:
    """MAESTRO's own table (``maestro-vN.csv`` or its column-wise ``.json``; or a
    ``metadata.csv`` with ``canonical_composer``, ``split`` and ``file``): each performance
    with MAESTRO's split, grouped by piece (composer and title), its composer kept."""
    if table.suffix.lower() == ".json":
        rows = _json_rows(table, ("midi_filename", "split"))
    else:
        rows = _csv_rows(table, src, ("split",))
        if rows and not {"midi_filename", "file"} & set(rows[0]):
            raise SourceError(f"{table}: no midi_filename (or file) column")
    items = []
    for n, row in enumerate(rows, start=2):
        rel = (row.get("midi_filename") or row.get("file") or "").strip()
        split = (row.get("split") or "").strip().lower()
        if not rel or split not in SPLIT_NAMES:
            raise SourceError(f"{table}: row {n}: needs a file and a split "
                              f"(train, validation or test), got {rel!r} and {split!r}")
        f = folder / rel
        if f.exists():
            composer = (row.get("canonical_composer") or "").strip()
            piece = f"{composer}/{(row.get('canonical_title') or '').strip()}"
            items.append(Item(str(f), split=SPLIT_NAMES[split], group=piece,
                              composer=composer))
    if not items:
        raise SourceError(f"{src}: {table.name} names no MIDI file found under {folder}")
    return items


def _json_rows(path: Path, need: tuple[str, ...]) -> list[dict[str, str]]:
    """MAESTRO's JSON: one object per column, each mapping a row number to its value."""
    try:
        cols = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path}: cannot read ({e})") from e
    if not isinstance(cols, dict) or not all(isinstance(cols.get(c), dict) for c in need):
        raise SourceError(f"{path}: not MAESTRO's table (needs the columns "
                          f"{', '.join(need)}, each an object of rows)")
    keys = sorted(cols[need[0]], key=lambda k: int(k) if str(k).isdigit() else 0)
    return [{c: str(v.get(k, "")) for c, v in cols.items() if isinstance(v, dict)}
            for k in keys]


def _asap_items(folder: Path, meta: Path, files: list[Path], src: str) -> list[Item]:
    """One item per performance listed; a file may sit under FOLDER or FOLDER/SPLIT/."""
    by_rel = {f.relative_to(folder).as_posix(): f for f in files}
    items, seen = [], set()
    for row in _csv_rows(meta, src, ("midi_performance",)):
        split = (row.get("maestro_split") or row.get("split") or "").strip().lower()
        rel = row["midi_performance"].strip()
        f = by_rel.get(rel) or next((by_rel[k] for k in (f"{s}/{rel}" for s in SPLIT_NAMES)
                                     if k in by_rel), None)
        if f is None or f in seen:
            continue
        seen.add(f)
        piece = f"{row.get('composer', '')}/{row.get('title', '') or Path(rel).parent}"
        items.append(Item(str(f), split=SPLIT_NAMES.get(split), group=piece))
    if not items:
        raise SourceError(f"{src}: metadata.csv names no MIDI file found under {folder}")
    return items


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
    """Deterministic split from a content hash (or a piece's name, hashed): stable when
    files are added or removed."""
    if len(digest) != 40 or any(c not in "0123456789abcdef" for c in digest):
        digest = hashlib.sha1(digest.encode()).hexdigest()
    u = int(digest[:12], 16) / 16**12
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


__all__ = ["BENCHMARK_SUFFIXES", "LAYOUTS", "BadInput", "Item", "SourceError", "excluded",
           "expand_sources", "folder_items", "hash_split", "ids_digest", "midi_files",
           "music_digest"]
