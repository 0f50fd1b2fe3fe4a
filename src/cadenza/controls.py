"""Controls a musician asks for, applied token by token while sampling (engine.py).

Hard controls mask tokens, so every new note obeys them:

- ``--key``, ``--pitch-range``: the tokens that strike (or, in a grid, sound) a pitch outside
  the key's scale or the range.
- ``--velocity-range``: velocity tokens outside the range; where a velocity token carries
  over to later notes (performance tokens), a note may not be struck until the velocity in
  force is inside it.
- ``--max-polyphony N``: no new note while N sound (as the grammar counts them: the keys down
  for performance tokens, the voices of a step or the keys of a frame for grids).
- ``--max-repeats K``: no note that would complete the (K+1)-th copy in a row of a pattern of
  1..8 notes, a note being its pitch and the time since the note before (within 20 ms).

The soft control, ``--density N`` new notes per second, adds a bias to the logits of the
tokens that strike a note: a proportional-integral controller on the log of the notes wanted
over the notes written in the last few seconds (an exponential window of 3 s, with half a
second of notes as a prior), so that a model that plays too little is pushed a little harder
each second it stays behind, and a burst is not paid back by a long silence.

The tokenizer says which tokens do what (``Tokenizer.note_roles``) and which controls its
scheme can carry; asking for another one is refused in one line naming the flag. Controls
never leave a sample without a legal token: where they would, the grammar's choice stands
for that token (a dead end the engine reports).

Try it: ``cadenza generate --primer builtin:openings --key "D minor" --density 6 --out out``.
"""

from __future__ import annotations

import numpy as np

from .config import ConfigError, SampleConfig, flag
from .data.tokenizers import EOS, build_tokenizer, tokenizer_names
from .data.tokenizers.base import Grammar, NoteRoles

MAX_PATTERN = 8  # notes in the longest pattern --max-repeats looks for
SAME_INTERVAL = 0.02  # seconds: onset intervals this close count as the same
# --density controller gains (on log(notes wanted / notes written)) and the bias's bound
KP, KI, MAX_BIAS = 6.0, 12.0, 16.0
WINDOW = 3.0  # seconds: --density measures the recent rate over about this long


class Controls:
    """The controls of one SampleConfig over a batch; ``feed``/``advance`` see every token
    (the primer's and the sampled ones), ``restrict``/``bias`` shape the next draw."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles, scheme: str) -> None:
        for name in cfg.controls:
            if name not in roles.supports:
                raise ConfigError(f"{flag(name)}: {scheme} tokens cannot carry it; it works "
                                  f"with {_works_with(name)}")
        self.cfg, self.roles = cfg, roles
        self.strikes = roles.pitch >= 0
        vocab = len(roles.pitch)
        ok = np.ones(vocab, bool)  # tokens the static controls allow
        if cfg.key:
            classes = np.array(sorted(cfg.key_classes))
            ok &= ~self.strikes | np.isin(roles.pitch % 12, classes)
        if cfg.pitch_range:
            lo, hi = cfg.pitch_range_values
            ok &= ~self.strikes | ((roles.pitch >= lo) & (roles.pitch <= hi))
        self.vel_ok = None
        if cfg.velocity_range:
            lo, hi = cfg.velocity_range_values
            has = roles.velocity >= 0
            inside = has & (roles.velocity >= lo) & (roles.velocity <= hi)
            if not inside.any():
                steps = sorted(set(roles.velocity[has].tolist()))
                raise ConfigError(f"{flag('velocity_range')}: no velocity of {scheme} tokens "
                                  f"falls in {lo}-{hi} (they are {steps[0]}, {steps[1]}, ..., "
                                  f"{steps[-1]})")
            ok &= ~has | inside
            self.vel_ok = np.zeros(128, bool)
            self.vel_ok[lo: hi + 1] = True
        self.static = ok
        # --max-repeats forbids a pitch: the tokens that strike it
        self.tokens_of = {int(p): np.flatnonzero(roles.pitch == p)
                          for p in np.unique(roles.pitch[self.strikes])}
        self.reset(0)

    @property
    def needs_times(self) -> bool:
        """Whether ``feed`` needs the time after each token (the loop guard's onsets)."""
        return bool(self.cfg.max_repeats)

    def reset(self, batch: int) -> None:
        self.velocity = np.full(batch, self.roles.default_velocity)
        # --max-repeats: each row's recent notes as (pitch, seconds since the note before)
        self.notes: list[list[tuple[int, float | None]]] = [[] for _ in range(batch)]
        self.last_onset: list[float | None] = [None] * batch
        self.forbid: list[list[tuple[int, float]]] = [[] for _ in range(batch)]
        self.begin(np.zeros(batch))

    def begin(self, now: np.ndarray) -> None:
        """New music starts here (a run of the engine): --density counts from now."""
        self.t0 = np.asarray(now, float).copy()
        self.written = np.zeros(len(self.t0))
        self.integral = np.zeros(len(self.t0))
        self.last_t = np.zeros(len(self.t0))
        self.win_seconds = np.zeros(len(self.t0))  # the window's seconds and notes
        self.win_notes = np.zeros(len(self.t0))
        self.counted = np.zeros(len(self.t0))

    # --- seeing tokens ---------------------------------------------------------------------

    def advance(self, tokens: np.ndarray, now: np.ndarray | None, new: bool = True) -> None:
        """One token per row, at the grammar's time ``now`` (after the token; needed only
        when ``needs_times``)."""
        vel = self.roles.velocity[tokens]
        if self.roles.velocity_carries:
            self.velocity = np.where(vel >= 0, vel, self.velocity)
        struck = self.strikes[tokens] & (tokens > EOS)
        if new:
            self.written += struck
        if self.cfg.max_repeats:
            for b in np.flatnonzero(struck):
                self._note(b, int(self.roles.pitch[tokens[b]]), float(now[b]))

    def feed(self, ids: np.ndarray, times: np.ndarray | None) -> None:
        """A (B, T) prefix, with the grammar's time after each token (B, T) when
        ``needs_times``."""
        if not self.needs_times:  # only the velocity in force is read from a prefix
            if self.roles.velocity_carries:
                vel = self.roles.velocity[ids]
                last = np.where(vel >= 0, np.arange(ids.shape[1]), -1).max(1)
                has = last >= 0
                self.velocity[has] = vel[has, last[has]]
            return
        for t in range(ids.shape[1]):
            self.advance(ids[:, t], times[:, t], new=False)

    def _note(self, b: int, pitch: int, at: float) -> None:
        """Remember a note and work out which next notes would loop: for each pattern length
        L whose last K copies (less the note to come) repeat exactly, the note that would
        start copy K+1 is forbidden (its pitch, at its interval)."""
        prev, seq = self.last_onset[b], self.notes[b]
        seq.append((pitch, None if prev is None else at - prev))
        self.last_onset[b] = at
        k = self.cfg.max_repeats
        del seq[: -MAX_PATTERN * (k + 1)]
        forbid = []
        for L in range(1, MAX_PATTERN + 1):
            need = (k + 1) * L - 1  # the notes before the one to come
            if len(seq) < need:
                break
            tail = seq[len(seq) - need:]
            if all(_same(tail[i], tail[i - L]) for i in range(L, need)):
                forbid.append(tail[need - L])
        self.forbid[b] = [f for f in forbid if f[1] is not None]

    # --- shaping the next draw ---------------------------------------------------------

    def restrict(self, allowed: np.ndarray, grammar: Grammar, now: np.ndarray) -> np.ndarray:
        """``allowed`` (B, V) narrowed by the hard controls, never to nothing."""
        m = allowed & self.static
        block = np.zeros(len(m), bool)  # rows that may strike no note now
        if self.cfg.max_polyphony:
            block |= grammar.sounding() >= self.cfg.max_polyphony
        if self.vel_ok is not None and self.roles.velocity_carries:
            block |= ~self.vel_ok[np.clip(self.velocity, 0, 127)]
        m[block] &= ~self.strikes
        if self.cfg.max_repeats:
            for b, pats in enumerate(self.forbid):
                if pats:
                    gap = now[b] - self.last_onset[b]
                    for pitch, interval in pats:
                        if abs(gap - interval) <= SAME_INTERVAL:
                            m[b, self.tokens_of[pitch]] = False
        dead = ~m.any(1) & allowed.any(1)
        m[dead] = allowed[dead]  # the grammar's choice stands (the engine reports it)
        return m

    def bias(self, now: np.ndarray) -> np.ndarray | None:
        """(B,) logit bias on the tokens that strike, for --density; None when off. The
        notes and seconds are counted over the last few seconds (an exponential window of
        WINDOW s), so that a burst is not paid back by a long silence, nor a silence by a
        burst."""
        if not self.cfg.density:
            return None
        t = np.maximum(now - self.t0, 0.0)
        dt = t - self.last_t
        fade = np.exp(-dt / WINDOW)
        self.win_seconds = self.win_seconds * fade + dt
        self.win_notes = self.win_notes * fade + (self.written - self.counted)
        self.counted = self.written.copy()
        prior = 0.5 * self.cfg.density
        err = np.log((self.cfg.density * self.win_seconds + prior) / (self.win_notes + prior))
        self.integral = np.clip(self.integral + KI * err * dt, -MAX_BIAS, MAX_BIAS)
        self.last_t = t
        return np.clip(KP * err + self.integral, -MAX_BIAS, MAX_BIAS)


def _same(a: tuple[int, float | None], b: tuple[int, float | None]) -> bool:
    return a[0] == b[0] and a[1] is not None and b[1] is not None \
        and abs(a[1] - b[1]) <= SAME_INTERVAL


def _works_with(name: str) -> str:
    """The tokenizers that carry a control (for the refusal's message)."""
    ok = [n for n in tokenizer_names() if n != "remi"
          and name in build_tokenizer(n).note_roles().supports]
    return ", ".join(ok)
