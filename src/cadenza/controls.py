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

``--chords`` favours the tones of the chord sounding at each moment (soft, a bias that keeps
the share of notes struck; or ``hard``: only chord tones).

The tokenizer says which tokens do what (``Tokenizer.note_roles``) and what its tokens carry;
each control says what it needs (``NEEDS``), and asking for one a scheme cannot carry is
refused in one line naming the flag. Controls
never leave a sample without a legal token: where they would, the grammar's choice stands
for that token (a dead end the engine reports).

Each control is one :class:`Step`: a class with a few hooks the engine calls for every
draw (``restrict`` the legal tokens, ``bias`` the logits) and for every token it reads
(``feed`` a prefix, ``advance`` one drawn token), registered under its config field in
``STEPS``. A new control is one class here and one field of ``Steering`` (config.py); a
caller may also hand the engine steps of its own (``Engine(..., steps=[...])``).

Try it: ``cadenza generate --primer builtin:openings --key "D minor" --density 6 --out out``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import theory
from .config import ChordSchedule, ConfigError, SampleConfig, flag
from .data.midi import BadInput, read_chords
from .data.tokenizers import EOS, build_tokenizer, tokenizer_names
from .data.tokenizers.base import (
    CLOCK,
    NOTE_TIMES,
    PITCH,
    SOUNDING,
    VELOCITY,
    Grammar,
    NoteRoles,
)

MAX_PATTERN = 8  # notes in the longest pattern --max-repeats looks for
SAME_INTERVAL = 0.02  # seconds: onset intervals this close count as the same
# --density controller gains (on log(notes wanted / notes written)) and the bias's bound
KP, KI, MAX_BIAS = 6.0, 12.0, 16.0
WINDOW = 3.0  # seconds: --density measures the recent rate over about this long


@dataclass
class Now:
    """What a step may read at a draw: the grammar (its clock, the keys down) and the time
    each sample's music has reached (B,)."""

    grammar: Grammar
    time: np.ndarray


class Step:
    """One stage of every draw, after the grammar's mask. Every hook is optional:

    - ``reset(batch)``: a fresh context (the engine's start, or a rewind);
    - ``begin(now)``: new music starts at ``now`` (B,) (a run of the engine);
    - ``feed(ids, times)``: a (B, T) prefix read without sampling, with the grammar's time
      after each token when ``needs_times`` (else None);
    - ``advance(tokens, now)``: one drawn token per sample, at the time after it;
    - ``restrict(allowed, now)``: narrow the (B, V) legal tokens (in place or anew);
    - ``bias(logits, now)``: shift the (B, V) logits.

    The engine never lets the steps leave a sample without a legal token: where they
    would, the grammar's choice stands (a dead end it reports)."""

    needs_times = False

    def reset(self, batch: int) -> None:
        pass

    def begin(self, now: np.ndarray) -> None:
        pass

    def feed(self, ids: np.ndarray, times: np.ndarray | None) -> None:
        pass

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        pass

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        return allowed

    def bias(self, logits: torch.Tensor, now: Now) -> torch.Tensor:
        return logits


class TokenMask(Step):
    """``--key`` and ``--pitch-range`` (and ``--velocity-range``'s own tokens): tokens that
    are never allowed, whatever came before."""

    def __init__(self, ok: np.ndarray) -> None:
        self.ok = ok

    @classmethod
    def of(cls, cfg: SampleConfig, roles: NoteRoles, scheme: str) -> TokenMask | None:
        strikes = roles.pitch >= 0
        ok = np.ones(len(roles.pitch), bool)
        if cfg.key:
            ok &= ~strikes | np.isin(roles.pitch % 12, np.array(sorted(cfg.key_classes)))
        if cfg.pitch_range:
            lo, hi = cfg.pitch_range_values
            ok &= ~strikes | ((roles.pitch >= lo) & (roles.pitch <= hi))
        if cfg.velocity_range:
            ok &= VelocityRange.token_ok(cfg, roles, scheme)
        return cls(ok) if not ok.all() else None

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        allowed &= self.ok
        return allowed


class VelocityRange(Step):
    """``--velocity-range`` where a velocity token carries over to later notes: no note is
    struck until the velocity in force is inside the range."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        lo, hi = cfg.velocity_range_values
        self.roles, self.strikes = roles, roles.pitch >= 0
        self.vel_ok = np.zeros(128, bool)
        self.vel_ok[lo: hi + 1] = True
        self.velocity = np.zeros(0, int)

    @staticmethod
    def token_ok(cfg: SampleConfig, roles: NoteRoles, scheme: str) -> np.ndarray:
        """The velocity tokens inside the range (ConfigError when none is)."""
        lo, hi = cfg.velocity_range_values
        has = roles.velocity >= 0
        inside = has & (roles.velocity >= lo) & (roles.velocity <= hi)
        if not inside.any():
            steps = sorted(set(roles.velocity[has].tolist()))
            raise ConfigError(f"{flag('velocity_range')}: no velocity of {scheme} tokens "
                              f"falls in {lo}-{hi} (they are {steps[0]}, {steps[1]}, ..., "
                              f"{steps[-1]})")
        return ~has | inside

    def reset(self, batch: int) -> None:
        self.velocity = np.full(batch, self.roles.default_velocity)

    def feed(self, ids: np.ndarray, times: np.ndarray | None) -> None:
        vel = self.roles.velocity[ids]  # the last velocity token of each row is in force
        last = np.where(vel >= 0, np.arange(ids.shape[1]), -1).max(1)
        has = last >= 0
        self.velocity[has] = vel[has, last[has]]

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        vel = self.roles.velocity[tokens]
        self.velocity = np.where(vel >= 0, vel, self.velocity)

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        block = ~self.vel_ok[np.clip(self.velocity, 0, 127)]
        allowed[block] &= ~self.strikes
        return allowed


class MaxPolyphony(Step):
    """``--max-polyphony N``: no new note while N sound (as the grammar counts them)."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        self.most, self.strikes = cfg.max_polyphony, roles.pitch >= 0

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        block = now.grammar.sounding() >= self.most
        allowed[block] &= ~self.strikes
        return allowed


class LoopGuard(Step):
    """``--max-repeats K``: no note that would complete the (K+1)-th copy in a row of a
    pattern of 1..MAX_PATTERN notes (a note: its pitch and the time since the note
    before, within SAME_INTERVAL)."""

    needs_times = True

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        self.k, self.roles, self.strikes = cfg.max_repeats, roles, roles.pitch >= 0
        self.tokens_of = {int(p): np.flatnonzero(roles.pitch == p)
                          for p in np.unique(roles.pitch[self.strikes])}
        self.reset(0)

    def reset(self, batch: int) -> None:
        # each row's recent notes as (pitch, seconds since the note before)
        self.notes: list[list[tuple[int, float | None]]] = [[] for _ in range(batch)]
        self.last_onset: list[float | None] = [None] * batch
        self.forbid: list[list[tuple[int, float]]] = [[] for _ in range(batch)]

    def feed(self, ids: np.ndarray, times: np.ndarray | None) -> None:
        for t in range(ids.shape[1]):
            self.advance(ids[:, t], times[:, t])

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        struck = self.strikes[tokens] & (tokens > EOS)
        for b in np.flatnonzero(struck):
            self._note(b, int(self.roles.pitch[tokens[b]]), float(now[b]))

    def _note(self, b: int, pitch: int, at: float) -> None:
        """Remember a note and work out which next notes would loop: for each pattern length
        L whose last K copies (less the note to come) repeat exactly, the note that would
        start copy K+1 is forbidden (its pitch, at its interval)."""
        prev, seq = self.last_onset[b], self.notes[b]
        seq.append((pitch, None if prev is None else at - prev))
        self.last_onset[b] = at
        k = self.k
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

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        for b, pats in enumerate(self.forbid):
            if pats:
                gap = now.time[b] - self.last_onset[b]
                for pitch, interval in pats:
                    if abs(gap - interval) <= SAME_INTERVAL:
                        allowed[b, self.tokens_of[pitch]] = False
        return allowed


class Density(Step):
    """``--density N`` (soft): a bias on the tokens that strike a note, from a
    proportional-integral controller on log(notes wanted / notes written) over the last few
    seconds (an exponential window of WINDOW s, with half a second of notes as a prior), so
    that a burst is not paid back by a long silence, nor a silence by a burst."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        self.density, self.roles = cfg.density, roles
        self.strikes = roles.pitch >= 0
        self._strikes: torch.Tensor | None = None  # on the logits' device
        self.begin(np.zeros(0))

    def reset(self, batch: int) -> None:
        self.begin(np.zeros(batch))

    def begin(self, now: np.ndarray) -> None:
        """New music starts here: the notes are counted from now."""
        self.t0 = np.asarray(now, float).copy()
        n = len(self.t0)
        self.written, self.integral, self.last_t = np.zeros(n), np.zeros(n), np.zeros(n)
        self.win_seconds, self.win_notes, self.counted = np.zeros(n), np.zeros(n), np.zeros(n)

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        self.written += self.strikes[tokens] & (tokens > EOS)

    def bias(self, logits: torch.Tensor, now: Now) -> torch.Tensor:
        t = np.maximum(now.time - self.t0, 0.0)
        dt = t - self.last_t
        fade = np.exp(-dt / WINDOW)
        self.win_seconds = self.win_seconds * fade + dt
        self.win_notes = self.win_notes * fade + (self.written - self.counted)
        self.counted = self.written.copy()
        prior = 0.5 * self.density
        err = np.log((self.density * self.win_seconds + prior) / (self.win_notes + prior))
        self.integral = np.clip(self.integral + KI * err * dt, -MAX_BIAS, MAX_BIAS)
        self.last_t = t
        bias = np.clip(KP * err + self.integral, -MAX_BIAS, MAX_BIAS)
        if self._strikes is None or self._strikes.device != logits.device:
            self._strikes = torch.from_numpy(self.strikes).to(logits.device)
        return logits + torch.as_tensor(bias, dtype=logits.dtype,
                                        device=logits.device)[:, None] * self._strikes


@functools.lru_cache(maxsize=8)
def _midi_chords(path: str, stamp: tuple[int, int]) -> str:
    try:
        return theory.schedule_text(read_chords(path))
    except (BadInput, OSError, ValueError) as e:
        raise ConfigError(f"{flag('chords_from')} {path}: {e}") from None


def chord_text(cfg: ChordSchedule) -> str | None:
    """The chord schedule's text: ``--chords`` (or a chords file's), or the chords read off
    ``--chords-from``'s MIDI (data/midi.py's read_chords; read once per file and change)."""
    if cfg.chords or not cfg.chords_from:
        return cfg.chords
    st = Path(cfg.chords_from).stat()
    return _midi_chords(cfg.chords_from, (st.st_mtime_ns, st.st_size))


SLIVER = 0.05  # seconds: a chord this short at the end of the music is not shown


def chords_over(cfg: ChordSchedule, seconds: float, start: float = 0.0
                ) -> list[tuple[float, float, str]]:
    """The chords sounding over ``seconds`` of new music that starts at ``start`` (in the
    caller's time: a take's primer end, an infill's span), for a roll to show or stats to
    measure; none without a schedule, and no sliver shorter than SLIVER."""
    text = chord_text(cfg)
    if not text:
        return []
    return [(start + a, start + b, label) for a, b, label in theory.chords_over(
        text, cfg.bpm, cfg.beats_per_bar, cfg.chord_offset, seconds) if b - a >= SLIVER]


class Schedule:
    """Which chord sounds at each sample's moment of the new music: the schedule starts
    where the new music starts (``begin``), read from ``--chord-offset``; bars repeat, a
    timed schedule has no chord past its end or between its chords."""

    def __init__(self, cfg: ChordSchedule) -> None:
        chords, self.repeats = theory.parse_schedule(chord_text(cfg), cfg.bpm,
                                                     cfg.beats_per_bar)
        self.offset = cfg.chord_offset
        self.starts = np.array([a for a, _, _ in chords])
        self.ends = np.array([b for _, b, _ in chords])
        self.length = chords[-1][1]
        self.parsed = [theory.parse_chord(label) for _, _, label in chords]
        self.t0 = np.zeros(0)

    def begin(self, now: np.ndarray) -> None:
        self.t0 = np.asarray(now, float).copy()

    def at(self, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) the index of the chord sounding at each sample's moment (len(chords): none),
        and (B,) which stretch of the schedule it is (the index, counted on over laps)."""
        t = np.maximum(time - self.t0, 0.0) + self.offset
        lap = np.zeros(len(t), int)
        if self.repeats:
            lap, t = np.floor_divide(t, self.length).astype(int), t % self.length
        i = np.searchsorted(self.starts, t, side="right") - 1
        none = (i < 0) | (t >= self.ends[np.maximum(i, 0)])
        index = np.where(none, len(self.starts), i)
        return index, np.where(none, -1, lap * len(self.starts) + i)


class Chords(Step):
    """``--chords`` (with ``--chord-strength``, ``--bpm``, ``--beats-per-bar``): the chord
    sounding at each moment of the new music (Schedule) favours its tones. Soft (a number
    S): the tokens that strike one of its tones gain S against those that strike another
    pitch, the strikes' total probability kept (how many notes is still the model's
    choice); ``hard``: only its tones may be struck. ``N`` (no chord) lets every note. A
    slash bass is one of the chord's tones.

    Where a note's end is a token of its own (performance), a key still held that is not a
    tone of the chord now (held over a change, or a passing tone) has its release favoured
    by the same S (RELEASE_HARD with ``hard``): a pianist lifts it, so that the chord
    sounds, not only starts."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        self.schedule = Schedule(cfg)
        self.strikes = roles.pitch >= 0
        pc = np.where(self.strikes, roles.pitch % 12, -1)
        tones = [self.strikes.copy() if chord is None
                 else self.strikes & np.isin(pc, sorted(chord[0]))
                 for chord in self.schedule.parsed]
        tones.append(self.strikes.copy())  # no chord: every note
        self.tones = np.stack(tones)  # (chords + 1, V): the tokens that strike a tone of each
        self.hard = cfg.chord_strength == "hard"
        self.strength = 0.0 if self.hard else float(cfg.chord_strength)
        self._on: dict[str, torch.Tensor] = {}  # tones and strikes on the logits' device
        self.release_token = None  # per pitch, the token that releases it (performance)
        if roles.release is not None:
            pitches = np.arange(128)  # per chord (then none): the pitches not its tones
            self.off_tone = np.stack([np.zeros(128, bool) if chord is None
                                      else ~np.isin(pitches % 12, sorted(chord[0]))
                                      for chord in self.schedule.parsed]
                                     + [np.zeros(128, bool)])
            has = roles.release >= 0
            self.release_token = np.full(128, -1)
            self.release_token[roles.release[has]] = np.flatnonzero(has)
        self.begin(np.zeros(0))

    def reset(self, batch: int) -> None:
        self.begin(np.zeros(batch))

    def begin(self, now: np.ndarray) -> None:
        self.schedule.begin(now)

    def chord(self, now: Now) -> np.ndarray:
        """(B,) the index of the chord sounding at each sample's moment (the last row of
        ``tones``: none)."""
        return self.schedule.at(now.time)[0]

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        if self.hard:
            allowed &= ~(self.strikes & ~self.tones[self.chord(now)])
        return allowed

    def bias(self, logits: torch.Tensor, now: Now) -> torch.Tensor:
        chord = self.chord(now)
        held = now.grammar.held() if self.release_token is not None else None
        if held is not None:
            logits = self._lift(logits, chord, held)
        if self.hard or not self.strength:
            return logits
        if "strikes" not in self._on or self._on["strikes"].device != logits.device:
            self._on = {"strikes": torch.from_numpy(self.strikes).to(logits.device),
                        "tones": torch.from_numpy(self.tones).to(logits.device)}
        strikes, tone = self._on["strikes"], self._on["tones"][torch.from_numpy(chord)]
        lg = logits.float()
        shifted = lg + self.strength * tone
        # keep the strikes' total probability: only which pitches, not how many notes
        before = torch.logsumexp(lg.masked_fill(~strikes, float("-inf")), -1, keepdim=True)
        after = torch.logsumexp(shifted.masked_fill(~strikes, float("-inf")), -1, keepdim=True)
        return torch.where(strikes, shifted - (after - before), lg).to(logits.dtype)

    def _lift(self, logits: torch.Tensor, chord: np.ndarray, held: np.ndarray
              ) -> torch.Tensor:
        """Favour releasing the keys held (the grammar's) that are not tones of the chord
        now."""
        rows, pitches = np.nonzero(held & self.off_tone[chord])
        if not len(rows):
            return logits
        lift = RELEASE_HARD if self.hard else self.strength
        out = logits.clone()
        out[torch.from_numpy(rows), torch.from_numpy(self.release_token[pitches])] += lift
        return out


RELEASE_HARD = 8.0  # --chord-strength hard: how strongly a key off the chord is lifted
BASS_BELOW = 60  # the bass register: below middle C (or a --pitch-range's lowest octave)


class ChordBass(Step):
    """``--chord-bass``: in each chord's stretch of time, the first new note struck is the
    chord's bass (its root, or a slash chord's bass) in the bass register, and no note
    struck at the same moment is lower. How "lowest" is known: the tokenizers that carry
    each note's onset (NOTE_TIMES) write notes that start together from low to high, so
    the first note of a moment is its lowest, and this step forbids any later note of that
    moment below it. A stretch in which nothing is struck asks nothing of the next."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles) -> None:
        self.schedule = Schedule(cfg)
        self.pitch, self.strikes = roles.pitch, roles.pitch >= 0
        lo, hi = cfg.pitch_range_values or (theory.LOWEST_KEY, theory.HIGHEST_KEY)
        top = BASS_BELOW if lo < BASS_BELOW else lo + 12  # the register's upper bound
        register = self.strikes & (roles.pitch >= lo) & (roles.pitch < min(top, hi + 1))
        pc = np.where(self.strikes, roles.pitch % 12, -1)
        # per chord (then none): the tokens its bass may be struck with
        self.bass_ok = np.stack([self.strikes.copy() if chord is None
                                 else register & (pc == chord[1])
                                 for chord in self.schedule.parsed] + [self.strikes.copy()])
        self.reset(0)

    def reset(self, batch: int) -> None:
        self.begin(np.zeros(batch))

    def begin(self, now: np.ndarray) -> None:
        self.schedule.begin(now)
        n = len(np.atleast_1d(now))
        self.stretch = np.full(n, -2)  # the stretch each sample's last draw was in
        self.need = np.zeros(n, bool)  # its bass is still to be struck
        self.floor = np.full(n, -1)  # the bass just struck: nothing lower at its moment
        self.floor_at = np.full(n, -1.0)

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        struck = self.strikes[tokens] & (tokens > EOS)
        first = struck & self.need
        self.floor = np.where(first, self.pitch[tokens], self.floor)
        self.floor_at = np.where(first, now, self.floor_at)
        self.need &= ~struck

    def restrict(self, allowed: np.ndarray, now: Now) -> np.ndarray:
        index, stretch = self.schedule.at(now.time)
        new = stretch != self.stretch
        self.need = np.where(new, (stretch >= 0) & (index < len(self.schedule.parsed)),
                             self.need)
        self.stretch = stretch
        need = self.need
        allowed[need] &= ~self.strikes | self.bass_ok[index[need]]
        same = (self.floor >= 0) & (np.abs(now.time - self.floor_at) < 1e-9)
        allowed[same] &= ~(self.strikes & (self.pitch < self.floor[same, None]))
        return allowed


def _velocity_step(cfg: SampleConfig, roles: NoteRoles) -> Step | None:
    return VelocityRange(cfg, roles) if roles.velocity_carries else None


# What each control needs the tokens to carry (NoteRoles.carries), by its config field: a
# tokenizer that does not carry it refuses the control.
NEEDS = {"key": PITCH, "pitch_range": PITCH, "velocity_range": VELOCITY,
         "max_polyphony": SOUNDING, "density": CLOCK, "max_repeats": NOTE_TIMES,
         "chords": PITCH, "chord_bass": NOTE_TIMES}

# Each control's steps, by its config field (Steering), in the order they shape a draw;
# the static token masks of --key, --pitch-range and --velocity-range come first, as one.
STEPS = {
    "velocity_range": _velocity_step,
    "max_polyphony": MaxPolyphony,
    "max_repeats": LoopGuard,
    "density": Density,
    "chords": Chords,
    "chord_bass": ChordBass,
}


def build_steps(cfg: SampleConfig, roles: NoteRoles | None, scheme: str) -> list[Step]:
    """The steps of the controls ``cfg`` turns on (ConfigError, naming the flag, for a
    control this tokenizer cannot carry)."""
    if not cfg.controls:
        return []
    if roles is None:
        raise ValueError("controls need the tokenizer's note roles")
    for name in cfg.controls:
        if NEEDS[name] not in roles.carries:
            raise ConfigError(f"{flag(name)}: {scheme} tokens cannot carry it; it works "
                              f"with {_works_with(name)}")
    steps: list[Step | None] = [TokenMask.of(cfg, roles, scheme)]
    steps += [make(cfg, roles) for name, make in STEPS.items() if name in cfg.controls]
    return [s for s in steps if s is not None]


class Controls:
    """A list of steps driven as one (the engine's, and what a benchmark replays): every
    hook of each step in order; ``restrict`` never leaves a row with nothing."""

    def __init__(self, cfg: SampleConfig, roles: NoteRoles, scheme: str,
                 extra: Sequence[Step] = ()) -> None:
        self.steps = build_steps(cfg, roles, scheme) + list(extra)
        self.needs_times = any(s.needs_times for s in self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def reset(self, batch: int) -> None:
        for s in self.steps:
            s.reset(batch)

    def begin(self, now: np.ndarray) -> None:
        for s in self.steps:
            s.begin(now)

    def feed(self, ids: np.ndarray, times: np.ndarray | None) -> None:
        for s in self.steps:
            s.feed(ids, times)

    def advance(self, tokens: np.ndarray, now: np.ndarray) -> None:
        for s in self.steps:
            s.advance(tokens, now)

    def restrict(self, allowed: np.ndarray, grammar: Grammar, now: np.ndarray) -> np.ndarray:
        """``allowed`` (B, V), the grammar's, narrowed by every step, never to nothing."""
        m, at = allowed.copy(), Now(grammar, now)
        for s in self.steps:
            m = s.restrict(m, at)
        dead = ~m.any(1) & allowed.any(1)
        m[dead] = allowed[dead]  # the grammar's choice stands (the engine reports it)
        return m

    def bias(self, logits: torch.Tensor, grammar: Grammar, now: np.ndarray) -> torch.Tensor:
        at = Now(grammar, now)
        for s in self.steps:
            logits = s.bias(logits, at)
        return logits


def _same(a: tuple[int, float | None], b: tuple[int, float | None]) -> bool:
    return a[0] == b[0] and a[1] is not None and b[1] is not None \
        and abs(a[1] - b[1]) <= SAME_INTERVAL


def _works_with(name: str) -> str:
    """The tokenizers that carry a control (for the refusal's message)."""
    ok = [n for n in tokenizer_names() if n != "remi"
          and NEEDS[name] in build_tokenizer(n).note_roles().carries]
    return ", ".join(ok)
