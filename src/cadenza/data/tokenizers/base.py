"""The tokenizer contract and the grammar every generator obeys.

A tokenizer turns a *piece* (its own representation: note arrays, a voice grid, a binary
piano roll) into content token ids and back, converts pieces to and from MIDI scores, and
provides a :class:`Grammar`: a small per-sample state machine that says which tokens may
follow a prefix, so that sampling never produces a sequence that cannot be decoded.

Ids 0, 1, 2 are PAD, BOS and EOS in every scheme. Content ids never include them; the
dataset frames each piece as ``[BOS, content..., EOS]``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import symusic

from ..midi import (
    MAX_PITCH,
    MIN_PITCH,
    BadInput,
    Notes,
    cut_notes,
    notes_from_score,
    quarters_at,
)
from .grid import pad_to_cut

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["PAD", "BOS", "EOS"]


# What a scheme's tokens can tell the controls (NoteRoles.carries):
PITCH = "pitch"  # the pitch each note token strikes or sounds
VELOCITY = "velocity"  # velocity tokens
SOUNDING = "sounding"  # the grammar counts the notes sounding now (Grammar.sounding)
CLOCK = "clock"  # the grammar's clock advances with the music (notes per second)
NOTE_TIMES = "note-times"  # each note's onset exactly, token by token (repeated patterns)
CARRIES = (PITCH, VELOCITY, SOUNDING, CLOCK, NOTE_TIMES)


@dataclass(frozen=True)
class NoteRoles:
    """What the generation controls (controls.py) need to know of a vocabulary, token by
    token, so that they can work on ids without knowing the scheme.

    ``pitch``: (V,) the pitch a token strikes (or, in a grid, sounds), -1 for none: the
    tokens a key or a range forbids. ``velocity``: (V,) the MIDI velocity a token gives,
    -1 for none. ``velocity_carries``: a velocity token sets the velocity of every later
    note until the next (performance), else it is the one note's own (MidiTok's, after its
    pitch); ``default_velocity`` is the velocity before any velocity token. ``carries``:
    what the scheme's tokens and grammar can tell (CARRIES); each control says which of
    these it needs (controls.py), so a new control never touches a tokenizer.
    ``release``: (V,) the pitch a token releases, -1 for none, where a note's end is a token
    of its own (performance: NOTE_OFF); None where it is not (a grid, a duration token)."""

    pitch: np.ndarray
    velocity: np.ndarray
    carries: frozenset[str]
    velocity_carries: bool = False
    default_velocity: int = -1
    release: np.ndarray | None = None


def framed(ids: np.ndarray) -> np.ndarray:
    """Content ids as a dataset stores a piece: [BOS, content..., EOS] (int64)."""
    return np.concatenate([[BOS], np.asarray(ids, np.int64), [EOS]]).astype(np.int64)


class Grammar:
    """Which tokens may come next, for a batch of sequences being generated.

    The default allows any content token or EOS after BOS and nothing after EOS but PAD.
    Subclasses keep extra per-sample state (sounding notes, position in a frame) in numpy
    arrays so that one call serves the whole batch.
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.done = np.zeros(0, bool)

    def reset(self, batch: int) -> None:
        self.done = np.zeros(batch, bool)

    def allowed(self) -> np.ndarray:
        """(B, V) bool: tokens allowed at the next position."""
        m = np.ones((len(self.done), self.vocab_size), bool)
        m[:, [PAD, BOS]] = False
        m[self.done] = False
        m[self.done, PAD] = True
        return m

    def advance(self, tokens: np.ndarray) -> None:
        """Consume one token per sample (a (B,) array)."""
        self.done |= tokens == EOS

    def elapsed(self) -> np.ndarray:
        """(B,) seconds of music so far (for ``--seconds``)."""
        return np.zeros(len(self.done))

    def sounding(self) -> np.ndarray | None:
        """(B,) notes sounding at the next token's moment as the decoder will read them
        (a scheme that carries SOUNDING); None where the scheme cannot tell."""
        return None

    def held(self) -> np.ndarray | None:
        """(B, 128) bool: the keys down now, where a note's end is a token of its own
        (``NoteRoles.release``); None where the scheme has no such keys."""
        return None

    def feed(self, ids: np.ndarray) -> None:
        """Advance through a (B, T) prefix; BOS and PAD are skipped."""
        for t in range(ids.shape[1]):
            col = ids[:, t]
            if np.all((col == BOS) | (col == PAD)):
                continue
            self.advance(col)


class Tokenizer(ABC):
    """Base class. ``name`` identifies the scheme; ``config()`` rebuilds it exactly."""

    name: str = ""
    #: seconds per grid step for grid schemes (used for time axes and --seconds)
    step_seconds: float = 0.0
    #: id of the token that ends a time step of varying length (for --step-positions)
    step_token: int | None = None
    #: grid schemes count beats: they read a score in quarter notes, whatever its tempo,
    #: as seconds at 120 bpm (a step of 0.125 s is a 16th note)
    beat_grid: bool = False
    #: a beat grid's value for a silent step (pads a primer that ends with a rest)
    rest: Any = None

    def __init__(self) -> None:
        self.vocab: list[str] = list(SPECIALS)

    # --- identity -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def config(self) -> dict[str, Any]:
        """JSON-able options; ``build_tokenizer(name, **config)`` recreates the tokenizer."""
        return {}

    def fit_grammar(self, sequences: Iterable[np.ndarray]) -> None:
        """Learn what the grammar allows from the training split's sequences (``prepare``
        calls it); a scheme whose grammar is fixed has nothing to learn."""
        return None

    def frame_index(self, ids: np.ndarray) -> np.ndarray | None:
        """Index of the frame/step of each content token, for NLL per frame (grid
        schemes); None for schemes without frames."""
        return None

    # --- pieces <-> tokens ----------------------------------------------------------
    @abstractmethod
    def encode(self, piece: Any) -> np.ndarray:
        """Content ids (int64) of a piece, without BOS/EOS."""

    @abstractmethod
    def decode(self, ids: np.ndarray) -> Any:
        """The piece of a token sequence. Specials are ignored; never raises on a
        sequence its grammar allows."""

    # --- pieces <-> MIDI ------------------------------------------------------------
    @abstractmethod
    def piece_from_notes(self, notes: Notes) -> Any:
        """Raise :class:`BadInput` when the notes have nothing this scheme can use."""

    def piece_from_score(self, score: symusic.Score, sustain_pedal: bool = True) -> Any:
        return self.piece_from_notes(self.score_notes(score, sustain_pedal))

    def primer_piece(self, score: symusic.Score, seconds: float = 0.0,
                     sustain_pedal: bool = True) -> Any:
        """The piece of a score's first ``seconds`` (0: all of it), as a primer. A beat
        grid is padded with ``rest`` steps up to the cut: a rest that ends the primer is
        part of it, and the continuation starts at the cut."""
        piece = self.piece_from_notes(self.score_notes(score, sustain_pedal, seconds))
        if self.beat_grid and seconds:
            steps = int(round(quarters_at(score, seconds) * 0.5 / self.step_seconds))
            piece = pad_to_cut(piece, steps, self.rest)
        return piece

    def encode_primer(self, score: symusic.Score, seconds: float = 0.0,
                      sustain_pedal: bool = True) -> np.ndarray:
        """Content ids of a primer whose stream reaches the primer's end (``seconds``, or
        its last note's release): a continuation then starts where the primer stops, not
        at its last event. Schemes whose stream can stop short of that override this."""
        return self.encode(self.primer_piece(score, seconds, sustain_pedal))

    def score_notes(self, score: symusic.Score, sustain_pedal: bool = True,
                    seconds: float = 0.0) -> Notes:
        """The notes this scheme reads from a score, cut at ``seconds`` of the score's own
        time when given: in seconds, or for a beat grid in the score's quarter notes
        (written as seconds at 120 bpm; the notated rhythm, so no pedal)."""
        if self.beat_grid:
            q = notes_from_score(score, sustain_pedal=False, unit="quarter")
            if seconds:
                q = cut_notes(q, quarters_at(score, seconds))
            notes = Notes(q.start * 0.5, q.end * 0.5, q.pitch, q.velocity)
        else:
            notes = notes_from_score(score, sustain_pedal)
            if seconds:
                notes = cut_notes(notes, seconds)
        if not len(notes):
            raise BadInput(f"no notes in its first {seconds:g} s" if seconds else "no notes")
        return notes

    def piece_from_source(self, src: Any, sustain_pedal: bool = True) -> Any:
        """A source item: a MIDI score, or a benchmark ``Grid``/``Roll`` (see grid.py)."""
        if isinstance(src, symusic.Score):
            return self.piece_from_score(src, sustain_pedal)
        return self.piece_from_notes(src.notes())

    @abstractmethod
    def notes_of(self, piece: Any) -> Notes:
        """Notes (seconds) of a piece: for MIDI output, piano rolls and statistics."""

    def encode_score(self, score: symusic.Score, sustain_pedal: bool = True) -> np.ndarray:
        return self.encode(self.piece_from_score(score, sustain_pedal))

    def decode_notes(self, ids: np.ndarray) -> Notes:
        return self.notes_of(self.decode(np.asarray(ids)))

    # --- grammar and augmentation -----------------------------------------------------
    def grammar(self) -> Grammar:
        return Grammar(self.vocab_size)

    def pitch_table(self) -> np.ndarray:
        """(V,) MIDI pitch carried by each token, -1 for tokens without one."""
        return np.full(self.vocab_size, -1, np.int64)

    def note_roles(self) -> NoteRoles:
        """The tokens' roles for the generation controls. By default the pitch tokens
        carry a key and a range and nothing else is known."""
        return NoteRoles(self.pitches, np.full(self.vocab_size, -1, np.int64),
                         frozenset({PITCH}))

    @functools.cached_property
    def pitches(self) -> np.ndarray:
        """``pitch_table()``, computed once: the training sampler reads it per window."""
        return self.pitch_table()

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a tokenizer lives as long as its run
    def transpose_table(self, shift: int) -> np.ndarray:
        """(V,) id -> id of the token transposed by ``shift`` semitones (pitch tokens only;
        targets outside 21..108 map to -1). Cached per tokenizer and shift."""
        pitch = self.pitches
        table = np.arange(self.vocab_size, dtype=np.int64)
        # a pitch token's kind is its name without the number: NOTE_ON_60 -> NOTE_ON
        kind = [name.rsplit("_", 1)[0] for name in self.vocab]
        lookup = {(kind[i], int(p)): i for i, p in enumerate(pitch) if p >= 0}
        for i, p in enumerate(pitch):
            if p >= 0:
                table[i] = lookup.get((kind[i], int(p) + shift), -1)
        return table

    def augment(self, ids: np.ndarray, rng: np.random.Generator, aug) -> np.ndarray:
        """Randomly transpose one training window, never outside the piano's keys."""
        return self.augment_together([ids], rng, aug)[0]

    def augment_together(self, seqs: list[np.ndarray], rng: np.random.Generator, aug
                         ) -> list[np.ndarray]:
        """Augment sequences that sound together (a melody and its accompaniment) alike:
        one transposition that keeps every note of all of them on the keyboard."""
        return transpose_together(seqs, self, rng, aug.transpose)


def transpose_together(seqs: list[np.ndarray], tok: Tokenizer, rng: np.random.Generator,
                       span: tuple[int, int]) -> list[np.ndarray]:
    lo, hi = span
    if lo == hi == 0:
        return seqs
    pitches = np.concatenate([tok.pitches[ids] for ids in seqs])
    pitches = pitches[pitches >= 0]
    if len(pitches):  # only shifts that keep every note on the keyboard
        lo = max(lo, MIN_PITCH - int(pitches.min()))
        hi = min(hi, MAX_PITCH - int(pitches.max()))
    if lo > hi:
        return seqs
    shift = int(rng.integers(lo, hi + 1))
    if shift == 0:
        return seqs
    out = [tok.transpose_table(shift)[ids] for ids in seqs]
    assert all((o >= 0).all() for o in out), "transposition left the keyboard"
    return out
