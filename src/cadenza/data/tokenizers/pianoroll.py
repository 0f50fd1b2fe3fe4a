"""``pianoroll``: binary piano-roll frames as token sequences, for the polyphonic benchmark
of Boulanger-Lewandowski et al. 2012. Each frame is its active keys in ascending order
followed by FRAME. Each set of keys has exactly one such spelling, so the sum of a frame's
token log-likelihoods is the log-likelihood of that binary frame (comparable to the
published per-frame numbers). The grammar enforces the ascending order.

Try it: ``cadenza prepare ../shared/data/benchmarks/boulanger/JSB_Chorales.trainvalid.mat
--tokenizer pianoroll --out data/jsb-roll``.
"""

from __future__ import annotations

import numpy as np

from ..midi import MIN_PITCH, Notes
from .base import EOS, PITCH, SOUNDING, SPECIALS, Grammar, NoteRoles, Tokenizer
from .grid import Grid, Roll, grid_to_roll, roll_from_notes

K0 = len(SPECIALS)  # key i (pitch 21 + i) -> K0 + i
FRAME = K0 + 88


class PianoRollTokenizer(Tokenizer):
    name = "pianoroll"
    step_token = FRAME
    beat_grid = True  # MIDI is read on its own beats (step_seconds is a step at 120 bpm)
    rest = False  # no key down

    def __init__(self, step_seconds: float = 0.125) -> None:
        super().__init__()
        self.step_seconds = float(step_seconds)
        self.vocab += [f"KEY_{MIN_PITCH + i}" for i in range(88)] + ["FRAME"]

    def config(self) -> dict:
        return {"step_seconds": self.step_seconds}

    def encode(self, roll: np.ndarray) -> np.ndarray:
        roll = np.asarray(roll, bool)
        assert roll.ndim == 2 and roll.shape[1] == 88, roll.shape
        count = roll.sum(1)
        length = count + 1
        start = np.cumsum(length) - length
        out = np.empty(length.sum(), np.int64)
        t, k = np.nonzero(roll)  # row-major: by frame, then ascending key
        within = np.arange(len(t)) - np.repeat(np.cumsum(count) - count, count)
        out[start[t] + within] = K0 + k
        out[start + count] = FRAME
        return out

    def decode(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        eos = np.flatnonzero(ids == EOS)
        if len(eos):
            ids = ids[: eos[0]]
        ids = ids[ids >= K0]
        frame_of = np.cumsum(ids == FRAME) - (ids == FRAME)
        n = int((ids == FRAME).sum())  # an unfinished last frame is dropped
        roll = np.zeros((n, 88), bool)
        keys = (ids < FRAME) & (frame_of < n)
        roll[frame_of[keys], ids[keys] - K0] = True
        return roll

    def piece_from_source(self, src, sustain_pedal: bool = True) -> np.ndarray:
        if isinstance(src, Roll):
            return src.array.astype(bool)
        if isinstance(src, Grid):
            return grid_to_roll(src.array)
        return super().piece_from_source(src, sustain_pedal)

    def piece_from_notes(self, notes: Notes) -> np.ndarray:
        return roll_from_notes(notes, self.step_seconds)

    def notes_of(self, roll: np.ndarray) -> Notes:
        return Roll(np.asarray(roll, bool), self.step_seconds).notes()

    def pitch_table(self) -> np.ndarray:
        t = np.full(self.vocab_size, -1, np.int64)
        t[K0:FRAME] = np.arange(88) + MIN_PITCH
        return t

    def note_roles(self) -> NoteRoles:
        """KEY tokens sound a key in their frame; the grammar counts a frame's keys."""
        return NoteRoles(self.pitches, np.full(self.vocab_size, -1, np.int64),
                         frozenset({PITCH, SOUNDING}))

    def frame_index(self, ids: np.ndarray) -> np.ndarray:
        """Frame of each content token; FRAME belongs to the frame it closes."""
        ids = np.asarray(ids)
        return np.cumsum(ids == FRAME) - (ids == FRAME)

    def grammar(self) -> Grammar:
        return RollGrammar(self.vocab_size, self.step_seconds)


class RollGrammar(Grammar):
    """Keys strictly ascending within a frame; EOS only between frames."""

    def __init__(self, vocab_size: int, step_seconds: float) -> None:
        super().__init__(vocab_size)
        self.step_seconds = step_seconds

    def reset(self, batch: int) -> None:
        super().reset(batch)
        self.last_key = np.full(batch, -1, np.int64)
        self.frames = np.zeros(batch, np.int64)
        self.keys = np.zeros(batch, np.int64)  # keys given in the frame being written

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = np.flatnonzero(~self.done)
        keys = np.arange(88)
        m[live, K0:FRAME] = keys[None, :] > self.last_key[live, None]
        m[live, EOS] = (self.last_key[live] < 0) & (self.frames[live] > 0)
        return m

    def advance(self, tokens: np.ndarray) -> None:
        live = ~self.done
        key = live & (tokens >= K0) & (tokens < FRAME)
        self.last_key[key] = tokens[key] - K0
        self.keys += key
        fr = live & (tokens == FRAME)
        self.last_key[fr] = -1
        self.keys[fr] = 0
        self.frames[fr] += 1
        super().advance(tokens)

    def elapsed(self) -> np.ndarray:
        return self.frames * self.step_seconds

    def sounding(self) -> np.ndarray:
        return self.keys.copy()

