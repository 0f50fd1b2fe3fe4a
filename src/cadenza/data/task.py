"""What a dataset trains and a checkpoint was trained for: a type per task.

- :class:`Continue`: pieces, continued (``prepare`` without ``--task``; ``generate``).
- :class:`Harmonize`: a chorale's soprano in, its alto, tenor and bass out (JSB16; three
  chorale16 tokens a 16th step).
- :class:`Accompany`: a song's melody in, its piano part out (POP909; performance events,
  one window of bars at a time).

A task owns what differs between them: how a source becomes training examples (pieces, or
source -> target pairs of ``bars`` bars: pairs.py), what a training batch holds, how a melody
is cut into the windows a model reads, what limits a window's answer, and the tracks a
sample is written as. Everything else asks the task (``Task.of`` a manifest's or a
checkpoint's record, ``Task.named`` a flag) instead of comparing names.

The record (``{"name": ..., "bars": ...}`` in ``manifest.json`` and a checkpoint's
``config.json``; none for :class:`Continue`, as datasets and checkpoints made before tasks)
is read and written here only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import ConfigError, register_names
from . import pairs
from .dataset import BatchPlan, TokenDataset, WindowSampler
from .midi import BadInput, Notes, Score, cut_notes
from .sources import Item, hash_split, ids_digest, music_digest
from .tokenizers import EOS, Tokenizer
from .tokenizers.base import Grammar
from .tokenizers.chorale16 import StepGrammar, grid_ids, ids_grid
from .tokenizers.grid import Grid


@dataclass(frozen=True)
class Piece:
    """One source read for pairing: what its pairs are cut from, its music's digest (for
    duplicates) and the key its split is drawn by."""

    content: Any
    digest: str
    group: str


@dataclass(frozen=True)
class Windows:
    """A melody cut into the windows a paired model reads: each window's source ids, its
    place in the piece, and the melody itself (written beside the answer)."""

    sources: list[np.ndarray]
    places: list[Any]  # harmonize: the window's first step; accompany: (t0, t1) seconds
    melody: Any  # harmonize: the soprano grid (steps,); accompany: the melody's notes


@dataclass(frozen=True)
class Task:
    """Continuing pieces: the base of every task, and the task of a plain dataset."""

    bars: int = 0  # bars per pair (paired tasks)

    name: ClassVar[str] = "continue"
    paired: ClassVar[bool] = False
    tokenizer: ClassVar[str | None] = None  # the scheme it needs (None: any)
    default_bars: ClassVar[int] = 0
    command: ClassVar[str] = "generate"  # the command that uses its checkpoints
    # grid tokens a step of the source and of the target (harmonize: 1 soprano, then alto,
    # tenor and bass), 0: the tokenizer's own events
    source_voices: ClassVar[int] = 0
    target_voices: ClassVar[int] = 0

    # --- the record -------------------------------------------------------------------------

    @staticmethod
    def named(name: str, bars: int = 0) -> Task:
        """``prepare --task NAME --bars N`` (0: the task's own default)."""
        if name not in TASKS:
            raise ConfigError(f"--task: must be one of {', '.join(TASKS)}, got {name!r}")
        kind = TASKS[name]
        return kind(bars or kind.default_bars)

    @staticmethod
    def of(record: dict[str, Any] | None) -> Task:
        """The task of a manifest's or a checkpoint's ``task`` record (none: continue)."""
        if not record:
            return Continue()
        return Task.named(record.get("name", "continue"), int(record.get("bars", 0)))

    @staticmethod
    def of_dataset(ds: TokenDataset) -> Task:
        return Task.of(ds.manifest.get("task"))

    def record(self) -> dict[str, Any] | None:
        return {"name": self.name, "bars": self.bars} if self.paired else None

    def __str__(self) -> str:
        return self.name

    def tokenizer_for(self, asked: str | None) -> str:
        """``prepare --tokenizer`` for this task: the one it needs, else the one asked for,
        else performance tokens."""
        if self.tokenizer is not None and asked not in (None, self.tokenizer):
            raise ConfigError(f"--tokenizer: --task {self.name} uses {self.tokenizer}, got "
                              f"{asked!r}")
        return self.tokenizer or asked or "performance"

    # --- training -------------------------------------------------------------------------

    def check_model(self, kind: str, data: str) -> None:
        """Refuse a model kind this task's datasets cannot train (one line)."""
        if kind == "encoder-decoder":
            raise ConfigError(f"--model encoder-decoder: --data {data} has no source -> "
                              "target pairs; prepare it with --task harmonize or --task "
                              "accompany")

    def sampler(self, ds: TokenDataset, plan: BatchPlan, decoder_only: bool):
        """The training batches drawn as ``plan`` says (dataset.BatchPlan): each
        ``next_batch()`` is (model inputs by name, targets, real targets in the global
        batch)."""
        return WindowSampler(ds, plan)

    def sources(self, ds: TokenDataset, split: str) -> list[np.ndarray] | None:
        """A split's sources, one per piece (None: a piece has no source)."""
        return None


@dataclass(frozen=True)
class Continue(Task):
    """Pieces continued: the default."""


@dataclass(frozen=True)
class Paired(Task):
    """A source -> target task: pairs of ``bars`` bars, a melody in and parts out."""

    paired: ClassVar[bool] = True
    source_track: ClassVar[str] = "Melody"
    target_tracks: ClassVar[tuple[str, ...]] = ()
    parts: ClassVar[str] = ""  # what a sample adds, in words

    def check_model(self, kind: str, data: str) -> None:
        pass  # an encoder-decoder, or a decoder-only model reading the source as a prefix

    def sampler(self, ds: TokenDataset, plan: BatchPlan, decoder_only: bool):
        # train.train_tags refuses --fim for pairs
        return pairs.PairSampler(ds, plan, prefix=decoder_only)

    def sources(self, ds: TokenDataset, split: str) -> list[np.ndarray] | None:
        return ds.pieces(split, "source")

    # --- preparing: a source read, then cut into pairs ------------------------------------

    def read(self, item: Item, tok: Tokenizer, max_mb: float) -> Piece:
        raise NotImplementedError

    def pairs(self, piece: Piece, tok: Tokenizer, train: bool) -> list[pairs.Pair]:
        raise NotImplementedError

    # --- arranging a user's melody --------------------------------------------------------

    def windows(self, tok: Tokenizer, score: Score, path: Path, seconds: float) -> Windows:
        """The melody's windows (its first ``seconds``; 0: all of it)."""
        raise NotImplementedError

    def place_seconds(self, tok: Tokenizer, place: Any) -> float:
        """Where a window starts in the melody, seconds (a chord schedule reads from it)."""
        raise NotImplementedError

    def answer_limits(self, tok: Tokenizer, windows: Windows, rows: np.ndarray
                      ) -> tuple[dict[str, Any], Callable[[], Grammar]]:
        """How long each window's answer is (``SampleConfig`` fields) and the grammar that
        holds it there, for prompts whose rows read the windows ``rows``."""
        raise NotImplementedError

    def tracks(self, tok: Tokenizer, answers: list[np.ndarray], windows: Windows
               ) -> dict[str, Notes]:
        """One sample: the melody and the new parts, as notes on named tracks."""
        raise NotImplementedError


class ExactLength(StepGrammar):
    """Per sample, exactly ``n[b]`` content tokens (whole steps of ``period``), then EOS:
    harmonize writes three tokens a step, no more and no fewer."""

    def __init__(self, vocab_size: int, period: int, step_seconds: float,
                 lengths: np.ndarray) -> None:
        super().__init__(vocab_size, period, step_seconds)
        self.lengths = np.asarray(lengths)

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = ~self.done
        full = live & (self.count >= self.lengths)
        m[live, EOS] = False
        m[full] = False
        m[full, EOS] = True
        return m


@dataclass(frozen=True)
class Harmonize(Paired):
    """A chorale's soprano in, alto, tenor and bass out, on the 16th-note grid."""

    name: ClassVar[str] = "harmonize"
    tokenizer: ClassVar[str | None] = "chorale16"
    default_bars: ClassVar[int] = 4
    command: ClassVar[str] = "harmonize"
    source_voices: ClassVar[int] = 1
    target_voices: ClassVar[int] = pairs.LOWER_VOICES
    source_track: ClassVar[str] = "Soprano"
    target_tracks: ClassVar[tuple[str, ...]] = ("Alto", "Tenor", "Bass")
    parts: ClassVar[str] = "alto, tenor and bass"

    def read(self, item: Item, tok: Tokenizer, max_mb: float) -> Piece:
        if not isinstance(item.grid, Grid) or item.grid.array.shape[1] != 4:
            raise BadInput("--task harmonize reads 4-voice chorale grids (the JSB16 JSON), "
                           "not this")
        digest = ids_digest(tok.encode(item.grid.array))
        return Piece(item.grid.array, digest, digest)

    def pairs(self, piece: Piece, tok: Tokenizer, train: bool) -> list[pairs.Pair]:
        return pairs.harmonize_pairs(piece.content, self.bars, train)

    def windows(self, tok: Tokenizer, score: Score, path: Path, seconds: float) -> Windows:
        sop = pairs.soprano_grid(score, tok)
        if seconds:
            sop = sop[: int(round(seconds / tok.step_seconds))]
        width = self.bars * pairs.STEPS_PER_BAR
        starts = list(range(0, len(sop), width))
        return Windows([grid_ids(sop[s: s + width, None]) for s in starts], starts, sop)

    def place_seconds(self, tok: Tokenizer, place: Any) -> float:
        return place * tok.step_seconds  # a window's first step

    def answer_limits(self, tok: Tokenizer, windows: Windows, rows: np.ndarray
                      ) -> tuple[dict[str, Any], Callable[[], Grammar]]:
        need = np.array([len(windows.sources[w]) * pairs.LOWER_VOICES for w in rows])
        return ({"tokens": int(need.max()) + 1},
                lambda: ExactLength(tok.vocab_size, pairs.LOWER_VOICES, tok.step_seconds,
                                    need))

    def tracks(self, tok: Tokenizer, answers: list[np.ndarray], windows: Windows
               ) -> dict[str, Notes]:
        lower = np.concatenate([ids_grid(ids, pairs.LOWER_VOICES) for ids in answers])
        grid = np.full((len(windows.melody), 4), -1, np.int64)
        grid[:, 0] = windows.melody
        grid[: len(lower), 1:] = lower[: len(windows.melody)]
        return {name: tok.notes_of(np.where(np.arange(4) == v, grid, -1))
                for v, name in enumerate([self.source_track, *self.target_tracks])}


@dataclass(frozen=True)
class Accompany(Paired):
    """A song's melody in, its piano part out, a window of bars at a time."""

    name: ClassVar[str] = "accompany"
    tokenizer: ClassVar[str | None] = "performance"
    default_bars: ClassVar[int] = 2
    command: ClassVar[str] = "accompany"
    source_track: ClassVar[str] = "Melody"
    target_tracks: ClassVar[tuple[str, ...]] = ("Piano",)
    parts: ClassVar[str] = "accompaniment"

    def read(self, item: Item, tok: Tokenizer, max_mb: float) -> Piece:
        if item.grid is not None:
            raise BadInput("--task accompany reads MIDI files with MELODY and PIANO tracks "
                           "(POP909), not benchmark grids")
        song = pairs.load_song(item.path, max_mb)
        digest = music_digest(song.notes)
        return Piece(song, digest, item.group or digest)

    def pairs(self, piece: Piece, tok: Tokenizer, train: bool) -> list[pairs.Pair]:
        return pairs.song_pairs(piece.content, tok, self.bars, train)

    def windows(self, tok: Tokenizer, score: Score, path: Path, seconds: float) -> Windows:
        mel = pairs.melody_notes(score)
        if seconds:
            mel = cut_notes(mel, seconds)
        src, places = [], []
        for t0, t1 in pairs.accompany_windows(pairs.downbeats(path, score), self.bars,
                                              train=False):
            w = pairs.window_notes(mel, t0, t1)
            if len(w):  # a window without melody stays silent: the model never saw one
                src.append(tok.encode(w))
                places.append((t0, t1))
        return Windows(src, places, mel)

    def place_seconds(self, tok: Tokenizer, place: Any) -> float:
        return place[0]  # a window's (start, end) in seconds

    def answer_limits(self, tok: Tokenizer, windows: Windows, rows: np.ndarray
                      ) -> tuple[dict[str, Any], Callable[[], Grammar]]:
        # piano events until the window's length in time (or the model's EOS: it learnt
        # each window's end)
        return ({"seconds": max(t1 - t0 for t0, t1 in windows.places)}, tok.grammar)

    def tracks(self, tok: Tokenizer, answers: list[np.ndarray], windows: Windows
               ) -> dict[str, Notes]:
        piano = []
        for ids, (t0, t1) in zip(answers, windows.places):
            notes = cut_notes(tok.decode_notes(ids), t1 - t0)
            piano.append(Notes(notes.start + t0, notes.end + t0, notes.pitch, notes.velocity))
        return {self.source_track: windows.melody, self.target_tracks[0]: Notes.concat(piano)}


TASKS: dict[str, type[Task]] = {t.name: t for t in (Continue, Harmonize, Accompany)}
register_names("task", lambda: list(TASKS))


def split_of(piece: Piece, item: Item, valid_frac: float, test_frac: float) -> str:
    """A paired source's split: a benchmark file's own, else drawn by its group's hash."""
    return item.split or hash_split(piece.group, valid_frac, test_frac)
