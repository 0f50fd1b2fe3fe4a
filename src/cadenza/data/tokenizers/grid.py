"""Grid pieces: what the benchmark files hold (a voice grid or a binary piano roll).

Sources hand tokenizers either a MIDI score or one of these; each tokenizer converts
what it is given into its own piece type (see ``Tokenizer.piece_from_source``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..midi import MAX_PITCH, MIN_PITCH, BadInput, Notes


@dataclass
class Grid:
    """(T, V) int pitches per voice and step, -1 for silence (e.g. SATB chorales)."""

    array: np.ndarray
    step_seconds: float

    def notes(self) -> Notes:
        return grid_notes(self.array, self.step_seconds)


@dataclass
class Roll:
    """(T, 88) bool piano roll, column i = MIDI pitch 21 + i."""

    array: np.ndarray
    step_seconds: float

    def notes(self) -> Notes:
        return roll_notes(self.array, self.step_seconds)


def roll_to_columns(roll: np.ndarray, width: int | None = None) -> np.ndarray:
    """(T, 88) bool -> (T, W) pitches, highest first, -1 padded (W = max polyphony)."""
    vals = np.where(roll, np.arange(roll.shape[1]) + MIN_PITCH, -1)
    cols = -np.sort(-vals, axis=1)
    w = width if width is not None else max(1, int(roll.sum(1).max(initial=0)))
    if w > cols.shape[1]:
        cols = np.pad(cols, ((0, 0), (0, w - cols.shape[1])), constant_values=-1)
    return cols[:, :w]


def grid_to_roll(grid: np.ndarray) -> np.ndarray:
    roll = np.zeros((grid.shape[0], 88), bool)
    t, v = np.nonzero(grid >= MIN_PITCH)
    roll[t, grid[t, v] - MIN_PITCH] = True
    return roll


def grid_notes(grid: np.ndarray, step_seconds: float, velocity: int = 80) -> Notes:
    """Notes of a (T, V) voice grid (pitch or -1): equal consecutive pitches are held."""
    starts, ends, pitches = [], [], []
    for v in range(grid.shape[1]):
        col = grid[:, v]
        change = np.flatnonzero(np.diff(col, prepend=-2, append=-2))  # run boundaries
        s, e = change[:-1], change[1:]
        p = col[s]
        keep = p >= 0
        starts.append(s[keep]), ends.append(e[keep]), pitches.append(p[keep])
    s, e, p = (np.concatenate(x) for x in (starts, ends, pitches))
    return Notes.make(s * step_seconds, e * step_seconds, p, np.full(len(p), velocity))


def roll_from_notes(notes: Notes, step_seconds: float) -> np.ndarray:
    """(T, 88) bool piano roll: a key is on in every step its note covers (quantised)."""
    if len(notes) == 0:
        raise BadInput("no notes")
    s = np.round(notes.start / step_seconds).astype(np.int64)
    e = np.maximum(np.round(notes.end / step_seconds).astype(np.int64), s + 1)
    T = int(e.max())
    if T > 200_000:
        raise BadInput(f"too many grid steps ({T})")
    roll = np.zeros((T + 1, 88), np.int32)
    ok = (notes.pitch >= MIN_PITCH) & (notes.pitch <= MAX_PITCH)
    k = notes.pitch[ok] - MIN_PITCH
    np.add.at(roll, (s[ok], k), 1)  # difference array: +1 at onset, -1 at release
    np.add.at(roll, (e[ok], k), -1)
    return np.cumsum(roll, axis=0)[:T] > 0


def pad_to_cut(grid: np.ndarray, steps: int, fill) -> np.ndarray:
    """A primer grid extended with silent steps up to its cut, ``steps`` long: a rest that
    ends the primer is part of it, and the continuation starts at the cut."""
    if steps <= len(grid):
        return grid
    pad = np.full((steps - len(grid),) + grid.shape[1:], fill, grid.dtype)
    return np.concatenate([grid, pad])


def roll_notes(roll: np.ndarray, step_seconds: float, velocity: int = 80) -> Notes:
    """Notes of a (T, 88) roll: each run of consecutive on-frames of a key is one note."""
    edges = np.diff(np.pad(np.asarray(roll, np.int8), ((1, 1), (0, 0))), axis=0)
    s_k, s_t = np.nonzero(edges.T == 1)  # by key, then time: starts and ends pair up
    _, e_t = np.nonzero(edges.T == -1)
    return Notes.make(s_t * step_seconds, e_t * step_seconds, s_k + MIN_PITCH,
                      np.full(len(s_t), velocity))
