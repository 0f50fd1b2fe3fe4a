"""``performance``: the MIDI event vocabulary of Oore et al. 2018 (Performance RNN), used by
the Music Transformer (Huang et al. 2018) for piano performances.

388 events: 128 NOTE_ON, 128 NOTE_OFF, 100 TIME_SHIFT (10 ms .. 1 s), 32 VELOCITY bins;
plus PAD/BOS/EOS. A VELOCITY token precedes a NOTE_ON only when the bin changes.
Encoding and decoding are vectorised numpy over symusic's note arrays.

Same-pitch notes are paired first-in first-out: the k-th NOTE_OFF of a pitch closes its
k-th NOTE_ON. Overlapping re-strikes of one key survive exactly; a note nested inside a
longer note of the same pitch is ambiguous in any on/off stream and comes back with the
two releases swapped (the same sounding keys).

Try it: ``cadenza prepare builtin:keyboard --tokenizer performance --out data/kbd``.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..midi import Notes
from .base import CARRIES, EOS, SPECIALS, Grammar, NoteRoles, Tokenizer

STEPS_PER_SECOND = 100
MAX_SHIFT = 100
N_VEL = 32
ON0 = len(SPECIALS)  # 3
OFF0 = ON0 + 128  # 131
SHIFT0 = OFF0 + 128  # 259: TIME_SHIFT of k steps is SHIFT0 + k - 1
VEL0 = SHIFT0 + MAX_SHIFT  # 359
VOCAB = VEL0 + N_VEL  # 391
DEFAULT_BIN = 20


def velocity_bin(v: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(v) * N_VEL // 128, 0, N_VEL - 1)


def bin_velocity(b: np.ndarray) -> np.ndarray:
    return np.asarray(b) * (128 // N_VEL) + (128 // N_VEL) // 2


def shift_steps(ids: np.ndarray) -> np.ndarray:
    """The 10 ms steps each token moves time by (0 for all but TIME_SHIFTs)."""
    ids = np.asarray(ids)
    return np.where((ids >= SHIFT0) & (ids < VEL0), ids - SHIFT0 + 1, 0)


def shift_tokens(steps: int) -> np.ndarray:
    """The TIME_SHIFT ids that move time by ``steps`` 10 ms steps (none for steps <= 0)."""
    return _shift_runs(np.array([max(int(steps), 0)]))[3]


def _shift_runs(amounts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each time gap (in steps) into tokens of at most MAX_SHIFT steps.

    Returns (count per gap, gap index per token, index within its gap, token id).
    """
    full, rem = amounts // MAX_SHIFT, amounts % MAX_SHIFT
    count = full + (rem > 0)
    owner = np.repeat(np.arange(len(amounts)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    steps = np.where(within < full[owner], MAX_SHIFT, rem[owner])
    return count, owner, within, SHIFT0 + steps - 1


class PerformanceTokenizer(Tokenizer):
    name = "performance"

    def __init__(self) -> None:
        super().__init__()
        self.vocab += [f"NOTE_ON_{p}" for p in range(128)]
        self.vocab += [f"NOTE_OFF_{p}" for p in range(128)]
        self.vocab += [f"TIME_SHIFT_{10 * k}ms" for k in range(1, MAX_SHIFT + 1)]
        self.vocab += [f"VELOCITY_{b}" for b in range(N_VEL)]
        assert len(self.vocab) == VOCAB

    def piece_from_notes(self, notes: Notes) -> Notes:
        return notes

    def notes_of(self, piece: Notes) -> Notes:
        return piece

    # --- encoding -----------------------------------------------------------------------
    def encode(self, notes: Notes) -> np.ndarray:
        n = len(notes)
        if n == 0:
            return np.zeros(0, np.int64)
        t_on = np.round(notes.start * STEPS_PER_SECOND).astype(np.int64)
        t_off = np.maximum(np.round(notes.end * STEPS_PER_SECOND).astype(np.int64), t_on + 1)
        # FIFO pairing: within each pitch, the k-th release belongs to the k-th onset.
        by_pitch = np.lexsort((t_on, notes.pitch))
        off_sorted = np.lexsort((t_off, notes.pitch))
        t_off_fifo = np.empty_like(t_off)
        t_off_fifo[by_pitch] = t_off[off_sorted]
        # Events: kind 0 = off (first at equal times, so a re-struck key closes then opens).
        time = np.concatenate([t_off_fifo, t_on])
        kind = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        pitch = np.concatenate([notes.pitch, notes.pitch])
        vbin = np.concatenate([np.zeros(n, np.int64), velocity_bin(notes.velocity)])
        order = np.lexsort((pitch, kind, time))
        time, kind, pitch, vbin = time[order], kind[order], pitch[order], vbin[order]

        dt = np.diff(time, prepend=0)
        n_shift, owner, within, shift_ids = _shift_runs(dt)
        on = kind == 1
        prev_bin = np.full(len(vbin), -1)
        on_idx = np.flatnonzero(on)
        prev_bin[on_idx[1:]] = vbin[on_idx[:-1]]
        n_vel = (on & (vbin != prev_bin)).astype(np.int64)
        length = n_shift + n_vel + 1
        start = np.cumsum(length) - length
        out = np.empty(length.sum(), np.int64)
        out[start[owner] + within] = shift_ids
        vel_at = np.flatnonzero(n_vel)
        out[start[vel_at] + n_shift[vel_at]] = VEL0 + vbin[vel_at]
        out[start + n_shift + n_vel] = np.where(on, ON0 + pitch, OFF0 + pitch)
        return out

    def encode_primer(self, score, seconds: float = 0.0, sustain_pedal: bool = True
                      ) -> np.ndarray:
        """The primer's events, then TIME_SHIFTs up to its cut (a closing rest stays)."""
        notes = self.primer_piece(score, seconds, sustain_pedal)
        return self.encode_until(notes, seconds or notes.duration)

    def encode_until(self, notes: Notes, seconds: float) -> np.ndarray:
        """Ids of ``notes`` (which end by ``seconds``) whose stream reaches ``seconds``
        exactly: the events, then TIME_SHIFTs up to it."""
        ids = self.encode(notes)
        gap = int(round(seconds * STEPS_PER_SECOND)) - int(shift_steps(ids).sum())
        return np.concatenate([ids, shift_tokens(gap)]) if gap > 0 else ids

    # --- decoding -----------------------------------------------------------------------
    def decode(self, ids: np.ndarray) -> Notes:
        ids = np.asarray(ids, np.int64)
        eos = np.flatnonzero(ids == EOS)
        if len(eos):
            ids = ids[: eos[0]]
        ids = ids[(ids >= ON0) & (ids < VOCAB)]
        is_shift = (ids >= SHIFT0) & (ids < VEL0)
        time = np.cumsum(np.where(is_shift, ids - SHIFT0 + 1, 0))
        is_vel = ids >= VEL0
        last_vel = np.maximum.accumulate(np.where(is_vel, np.arange(len(ids)), -1))
        vbin = np.where(last_vel >= 0, ids[np.maximum(last_vel, 0)] - VEL0, DEFAULT_BIN)
        on = np.flatnonzero(ids < OFF0)
        off = np.flatnonzero((ids >= OFF0) & (ids < SHIFT0))
        end_time = int(time[-1]) if len(time) else 0
        if len(on) == 0:
            return Notes.make([], [], [], [])
        on_p, off_p = ids[on] - ON0, ids[off] - OFF0
        # rank of each event among the events of its pitch (stable in token order)
        on_o, off_o = np.lexsort((on, on_p)), np.lexsort((off, off_p))
        on_key = _group_rank_key(on_p[on_o])
        off_key = _group_rank_key(off_p[off_o])
        j = np.minimum(np.searchsorted(off_key, on_key), len(off_key) - 1)
        on_pos = on[on_o]
        if len(off_key):
            matched = off_key[j] == on_key
            off_pos = np.where(matched, off[off_o][j], -1)
        else:
            matched, off_pos = np.zeros(len(on_key), bool), np.full(len(on_key), -1)
        if np.any(matched & (off_pos < on_pos)):  # an off before its on: not FIFO-clean
            return self._decode_slow(ids, time, vbin)
        t_on = time[on_pos]
        t_off = np.where(matched, time[np.maximum(off_pos, 0)], np.maximum(end_time, t_on + 1))
        t_off = np.maximum(t_off, t_on + 1)
        return Notes.make(t_on / STEPS_PER_SECOND, t_off / STEPS_PER_SECOND, on_p[on_o],
                          bin_velocity(vbin[on_pos]))

    def _decode_slow(self, ids, time, vbin) -> Notes:
        """Token-by-token FIFO pairing that ignores releases of keys that are not down."""
        open_: dict[int, deque] = {}
        rows = []
        for i, tok in enumerate(ids):
            if tok < OFF0:
                open_.setdefault(int(tok - ON0), deque()).append(i)
            elif tok < SHIFT0:
                q = open_.get(int(tok - OFF0))
                if q:
                    s = q.popleft()
                    rows.append((time[s], max(time[i], time[s] + 1), tok - OFF0, vbin[s]))
        end = int(time[-1])
        for p, q in open_.items():
            rows += [(time[s], max(end, time[s] + 1), p, vbin[s]) for s in q]
        a = np.array(rows, np.int64).reshape(-1, 4)
        return Notes.make(a[:, 0] / STEPS_PER_SECOND, a[:, 1] / STEPS_PER_SECOND, a[:, 2],
                          bin_velocity(a[:, 3]))

    # --- grammar, augmentation --------------------------------------------------------------
    def grammar(self) -> Grammar:
        return PerformanceGrammar()

    def pitch_table(self) -> np.ndarray:
        t = np.full(VOCAB, -1, np.int64)
        t[ON0:OFF0] = np.arange(128)
        t[OFF0:SHIFT0] = np.arange(128)
        return t

    def note_roles(self) -> NoteRoles:
        """NOTE_ON strikes, NOTE_OFF releases; a VELOCITY token sets every later note's
        velocity; it carries everything a control may need (the grammar counts the keys
        down)."""
        pitch = np.full(VOCAB, -1, np.int64)
        pitch[ON0:OFF0] = np.arange(128)
        release = np.full(VOCAB, -1, np.int64)
        release[OFF0:SHIFT0] = np.arange(128)
        velocity = np.full(VOCAB, -1, np.int64)
        velocity[VEL0:] = bin_velocity(np.arange(N_VEL))
        return NoteRoles(pitch, velocity, frozenset(CARRIES),
                         velocity_carries=True, default_velocity=int(bin_velocity(DEFAULT_BIN)),
                         release=release)

    def augment_together(self, seqs: list[np.ndarray], rng: np.random.Generator, aug
                         ) -> list[np.ndarray]:
        """One transposition, velocity shift and time stretch for all of ``seqs``."""
        seqs = super().augment_together(seqs, rng, aug)
        if aug.velocity_shift:
            d = int(rng.integers(-aug.velocity_shift, aug.velocity_shift + 1))
            seqs = [_shift_velocity(ids, d) for ids in seqs]
        lo, hi = aug.stretch
        if hi > lo or lo != 1.0:
            factor = float(rng.uniform(lo, hi))
            seqs = [stretch_time(ids, factor) for ids in seqs]
        return seqs


def _shift_velocity(ids: np.ndarray, d: int) -> np.ndarray:
    v = ids >= VEL0
    ids = ids.copy()
    ids[v] = VEL0 + np.clip(ids[v] - VEL0 + d, 0, N_VEL - 1)
    return ids


def _group_rank_key(sorted_pitch: np.ndarray) -> np.ndarray:
    """For pitches sorted ascending: pitch * 2**32 + rank within its pitch group."""
    n = len(sorted_pitch)
    first = np.flatnonzero(np.diff(sorted_pitch, prepend=-1))
    starts = np.repeat(first, np.diff(np.append(first, n)))
    return sorted_pitch * (1 << 32) + (np.arange(n) - starts)


def stretch_time(ids: np.ndarray, factor: float) -> np.ndarray:
    """Scale every run of TIME_SHIFT tokens by ``factor`` (re-quantised to 10 ms)."""
    is_shift = (ids >= SHIFT0) & (ids < VEL0)
    if not is_shift.any():
        return ids
    run_start = is_shift & ~np.r_[False, is_shift[:-1]]
    run_id = np.cumsum(run_start) - 1
    amounts = np.zeros(run_start.sum(), np.int64)
    np.add.at(amounts, run_id[is_shift], ids[is_shift] - SHIFT0 + 1)
    # scale cumulative time, then difference: rounding errors do not accumulate
    new = np.diff(np.round(np.cumsum(amounts) * factor).astype(np.int64), prepend=0)
    count, owner, within, shift_ids = _shift_runs(new)
    # Rebuild: each non-shift token keeps its order; each run is replaced by its new tokens.
    pieces_len = np.where(is_shift, 0, 1)
    pieces_len[np.flatnonzero(run_start)] = count
    out = np.empty(pieces_len.sum(), np.int64)
    starts = np.cumsum(pieces_len) - pieces_len
    keep = ~is_shift
    out[starts[keep]] = ids[keep]
    out[starts[np.flatnonzero(run_start)][owner] + within] = shift_ids
    return out


class PerformanceGrammar(Grammar):
    """NOTE_OFF only for keys that are down; tracks elapsed time for ``--seconds``.

    A key held longer than ``max_hold`` seconds must be released before time moves on: a
    model that forgets a NOTE_OFF would otherwise leave a drone under the rest of the piece.
    """

    def __init__(self, max_hold: float = 8.0) -> None:
        super().__init__(VOCAB)
        self.max_hold = int(max_hold * STEPS_PER_SECOND)

    def reset(self, batch: int) -> None:
        super().reset(batch)
        self.down = np.zeros((batch, 128), np.int64)
        self.since = np.zeros((batch, 128), np.int64)  # step of each key's latest strike
        self.steps = np.zeros(batch, np.int64)
        # notes struck and released at the current step: the decoder gives each 10 ms,
        # so they still sound with the next note struck at this step
        self.blip = np.zeros(batch, np.int64)

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = ~self.done
        m[live, OFF0:SHIFT0] = self.down[live] > 0
        stale = (self.down > 0) & (self.steps[:, None] - self.since >= self.max_hold)
        overdue = live & stale.any(1)
        if overdue.any():  # only releases of the overdue keys
            m[overdue] = False
            m[overdue, OFF0:SHIFT0] = stale[overdue]
        return m

    def advance(self, tokens: np.ndarray) -> None:
        live = ~self.done
        b = np.arange(len(tokens))
        on = live & (tokens >= ON0) & (tokens < OFF0)
        off = live & (tokens >= OFF0) & (tokens < SHIFT0)
        # the hold is timed from the latest strike: a re-struck key sounds anew
        self.since[b[on], tokens[on] - ON0] = self.steps[on]
        self.down[b[on], tokens[on] - ON0] += 1
        key = np.where(off, tokens - OFF0, 0)
        self.blip += off & (self.down[b, key] > 0) & (self.since[b, key] == self.steps)
        self.down[b[off], tokens[off] - OFF0] -= 1
        np.maximum(self.down, 0, out=self.down)
        sh = live & (tokens >= SHIFT0) & (tokens < VEL0)
        self.steps[sh] += tokens[sh] - SHIFT0 + 1
        self.blip[sh] = 0
        super().advance(tokens)

    def elapsed(self) -> np.ndarray:
        return self.steps / STEPS_PER_SECOND

    def sounding(self) -> np.ndarray:
        return self.down.sum(1) + self.blip

    def held(self) -> np.ndarray:
        return self.down > 0
