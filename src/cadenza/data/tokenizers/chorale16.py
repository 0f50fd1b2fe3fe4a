"""``chorale16``: the Music Transformer's serialisation of 4-voice chorales (Huang et al.
2018, following Coconet): at each 16th-note step the pitches of soprano, alto, tenor and
bass, one token each (a pitch 21..108 or SILENCE). A held note repeats its pitch.

Try it: ``cadenza prepare ../shared/data/benchmarks/jsb16/jsb16_separated.trainvalid.json
--tokenizer chorale16 --out data/jsb16``.
"""

from __future__ import annotations

import numpy as np

from ..midi import MAX_PITCH, MIN_PITCH, BadInput, Notes
from .base import EOS, PITCH, SOUNDING, SPECIALS, Grammar, NoteRoles, Tokenizer
from .grid import Grid, Roll, roll_from_notes, roll_to_columns

VOICES = 4
SILENCE = len(SPECIALS)  # 3
P0 = SILENCE + 1  # pitch p -> P0 + p - 21


class Chorale16Tokenizer(Tokenizer):
    name = "chorale16"
    step_seconds = 0.125  # a 16th note at 120 bpm
    beat_grid = True  # MIDI is read on its own beats: 4 steps a quarter, whatever the tempo
    rest = -1  # a silent voice

    def __init__(self) -> None:
        super().__init__()
        self.vocab += ["SILENCE"] + [f"PITCH_{p}" for p in range(MIN_PITCH, MAX_PITCH + 1)]

    def encode(self, grid: np.ndarray) -> np.ndarray:
        assert np.ndim(grid) == 2 and np.shape(grid)[1] == VOICES, np.shape(grid)
        return grid_ids(grid)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return ids_grid(ids, VOICES)

    def piece_from_source(self, src, sustain_pedal: bool = True) -> np.ndarray:
        if isinstance(src, Grid) and src.array.shape[1] == VOICES:
            return src.array.astype(np.int64)
        if isinstance(src, Roll):
            return roll_to_columns(src.array, VOICES)
        return super().piece_from_source(src, sustain_pedal)

    def piece_from_notes(self, notes: Notes) -> np.ndarray:
        """The four highest pitches sounding at each 16th step, highest first."""
        return roll_to_columns(roll_from_notes(notes, self.step_seconds), VOICES)

    def notes_of(self, grid: np.ndarray) -> Notes:
        return Grid(np.asarray(grid), self.step_seconds).notes()

    def pitch_table(self) -> np.ndarray:
        t = np.full(self.vocab_size, -1, np.int64)
        t[P0:] = np.arange(MIN_PITCH, MAX_PITCH + 1)
        return t

    def note_roles(self) -> NoteRoles:
        """Every PITCH token sounds a pitch at its step (held notes repeat theirs), so a key
        and a range apply to all of them; the grammar counts the voices of a step."""
        return NoteRoles(self.pitches, np.full(self.vocab_size, -1, np.int64),
                         frozenset({PITCH, SOUNDING}))

    def frame_index(self, ids: np.ndarray) -> np.ndarray:
        """Step index of each content token (for per-step NLL)."""
        return np.arange(len(ids)) // VOICES

    def grammar(self) -> Grammar:
        return StepGrammar(self.vocab_size, VOICES, self.step_seconds)


def grid_ids(grid: np.ndarray) -> np.ndarray:
    """Ids of a (steps, voices) pitch grid, step by step (-1: a silent voice)."""
    g = np.asarray(grid, np.int64)
    if ((g >= 0) & ((g < MIN_PITCH) | (g > MAX_PITCH))).any():
        raise BadInput("pitch outside the piano range 21..108")
    return np.where(g < 0, SILENCE, P0 + g - MIN_PITCH).reshape(-1)


def ids_grid(ids: np.ndarray, voices: int) -> np.ndarray:
    """The (steps, voices) grid of ids (up to EOS; specials skipped, a last partial step
    dropped)."""
    ids = np.asarray(ids, np.int64)
    eos = np.flatnonzero(ids == EOS)
    if len(eos):
        ids = ids[: eos[0]]
    ids = ids[ids >= SILENCE]
    ids = ids[: len(ids) - len(ids) % voices].reshape(-1, voices)
    return np.where(ids == SILENCE, -1, ids - P0 + MIN_PITCH)


class StepGrammar(Grammar):
    """Fixed-size steps: EOS only at a step boundary, after at least one step."""

    def __init__(self, vocab_size: int, period: int, step_seconds: float) -> None:
        super().__init__(vocab_size)
        self.period, self.step_seconds = period, step_seconds

    def reset(self, batch: int) -> None:
        super().reset(batch)
        self.count = np.zeros(batch, np.int64)
        self.voiced = np.zeros(batch, np.int64)  # voices with a pitch in the current step

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = ~self.done
        m[live, EOS] = (self.count[live] % self.period == 0) & (self.count[live] > 0)
        return m

    def advance(self, tokens: np.ndarray) -> None:
        live = (~self.done) & (tokens > EOS)
        self.voiced = np.where(live & (self.count % self.period == 0), 0, self.voiced)
        self.voiced += live & (tokens > SILENCE)
        self.count += live
        super().advance(tokens)

    def elapsed(self) -> np.ndarray:
        return (self.count // self.period) * self.step_seconds

    def sounding(self) -> np.ndarray:
        """The pitches already given in the step being written (0 at a step's start)."""
        return np.where(self.count % self.period == 0, 0, self.voiced)
