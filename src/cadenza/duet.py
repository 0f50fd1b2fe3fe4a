"""``cadenza duet``: play with the model. The player plays; when they pause for ``--wait``
seconds the model answers for up to ``--answer`` seconds, continuing everything played so far
(both parts, one piece); the player may cut in at any time.

The model hears the player's notes as they come: each MIDI event becomes performance tokens
(the time since the last event, a velocity when it changes, NOTE_ON/NOTE_OFF) fed into the
engine (engine.py), and the cache reads them while the player plays, so an answer needs no
long prefill. An answer starts with a note (time-shift tokens are masked until its first
NOTE_ON), its tokens are sampled a little ahead of the music, and each note is sent when its
time comes by the music's own clock (never in bursts, never late by more than a token's
work). A player who cuts in stops the answer within one note: every answer note still
sounding is released, the tokens drawn ahead are forgotten (``Engine.rewind``), and what was
played stays in the context.

What the player sends is cleaned first: SysEx, clock and active sensing are ignored, running
status is mido's, a note-on of velocity 0 is a note-off, the sustain pedal (CC64) holds
releases until it is lifted (as the tokenizer reads pedals), a note never released is released
after ``--max-hold`` seconds (said once). Everything is recorded: at the end, on Ctrl-C or
SIGTERM, one MIDI with the player and Cadenza on their own tracks, its piano roll and a JSON
with every answer's latency and timing; and every note-on sent gets its note-off.

Without hardware: ``--replay FILE.mid`` plays a file as the player (``--speed N`` faster), and
the tests drive a whole session through in-process ports.

Try it: ``cadenza duet --replay builtin:openings/schubert --answer 6 --record duet/``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import Busy, locked_dir
from .config import DuetConfig, Steering
from .data.corpus import cadenza_home
from .data.midi import (
    BadInput,
    Notes,
    load_score,
    notes_from_score,
    score_from_tracks,
    write_midi,
)
from .data.tokenizers import BOS
from .data.tokenizers.base import Grammar
from .data.tokenizers.performance import (
    OFF0,
    ON0,
    SHIFT0,
    STEPS_PER_SECOND,
    VEL0,
    bin_velocity,
    shift_tokens,
    velocity_bin,
)
from .engine import Engine
from .render import piano_roll_png
from .session import Session, resolve_primer
from .takes import write_sidecar

PLAYER_TRACK, CADENZA_TRACK = "Player", "Cadenza"
LOOKAHEAD = 0.15  # seconds of the answer sampled ahead of the music
RUNWAY = 0.05  # seconds of an answer drawn before its first note leaves
ANSWER_TOKENS_PER_SECOND = 60  # room kept in the context for an answer (dense piano: ~50)
IGNORED = {"sysex", "clock", "active_sensing", "start", "stop", "continue", "reset",
           "songpos", "song_select", "tune_request", "quarter_frame"}


class NoteFirst(Grammar):
    """A grammar that, while ``need_note`` is set, allows no TIME_SHIFT: an answer starts
    with a note, not with a rest."""

    def __init__(self, inner: Grammar) -> None:
        self.inner, self.need_note = inner, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def reset(self, batch: int) -> None:
        self.inner.reset(batch)

    def feed(self, ids: np.ndarray) -> None:
        self.inner.feed(ids)

    def allowed(self) -> np.ndarray:
        m = self.inner.allowed()
        if self.need_note and m[:, ON0:OFF0].any():
            m[:, SHIFT0:VEL0] = False
        return m

    def advance(self, tokens: np.ndarray) -> None:
        if ((tokens >= ON0) & (tokens < OFF0)).any():
            self.need_note = False
        self.inner.advance(tokens)

    def elapsed(self) -> np.ndarray:
        return self.inner.elapsed()

    def sounding(self):
        return self.inner.sounding()

    def held(self):
        return self.inner.held()


@dataclass
class Answer:
    """One answer's timing, for the session's JSON."""

    detected: float  # session seconds when the pause was detected
    first_note: float | None = None  # when its first note left
    notes: int = 0
    cut_in: bool = False
    late_ms: list[float] = field(default_factory=list)  # each event: sent - scheduled

    @property
    def latency_ms(self) -> float | None:
        return None if self.first_note is None else (self.first_note - self.detected) * 1e3


class Clock:
    """Session seconds: wall time since the start, times ``speed`` (a replay at 4x runs the
    whole session 4x faster, the music's own time unchanged)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed, self.t0 = speed, time.perf_counter()

    def now(self) -> float:
        return (time.perf_counter() - self.t0) * self.speed

    def sleep_until(self, t: float, spin: bool = False) -> None:
        """Wait towards ``t`` (at most 2 ms at a time). ``spin``: a busy wait, for an answer's
        short waits: a core that sleeps between tokens wakes slower (its steps took ~6 ms
        instead of ~2.5 here)."""
        left = (t - self.now()) / self.speed
        if left <= 0:
            return
        if spin:
            end = time.perf_counter() + min(left, 0.002)
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(min(left, 0.002))


class Duet:
    """One duet session over a source of the player's messages and a sink for Cadenza's."""

    def __init__(self, gen: Session, steering: Steering, *, wait: float = 0.6,
                 answer: float = 8.0, max_hold: float = 10.0, clock: Clock | None = None,
                 send: Callable[[Any], None] = lambda msg: None,
                 say: Callable[[str], None] = print) -> None:
        if gen.tok.name != "performance":
            raise ValueError(f"--checkpoint {gen.ck.path}: the duet plays performance-token "
                             f"models (as pretrained:piano); this one reads {gen.tok.name}")
        self.gen, self.wait, self.answer_seconds, self.max_hold = gen, wait, answer, max_hold
        self.clock, self.send_msg, self.say = clock or Clock(), send, say
        self.grammar = NoteFirst(gen.tok.grammar())
        cfg = steering.sampling(seconds=answer)
        self.engine = Engine(gen, cfg, grammar=self.grammar)  # checks cfg
        self.engine.feed(np.array([BOS]))
        self.origin = 0.0  # session seconds of the music's step 0
        self.vbin = -1  # the velocity bin in force in the token stream
        self.pedal = False
        self.held: dict[int, float] = {}  # player keys down: pitch -> session seconds
        self.deferred: set[int] = set()  # releases the pedal holds
        self.warned_hold = False
        self.player: list[tuple[float, float, int, int]] = []  # (start, end, pitch, velocity)
        self.cadenza: list[tuple[float, float, int, int]] = []
        self.sounding: dict[int, tuple[float, int]] = {}  # answer keys on: start, velocity
        self.answers: list[Answer] = []
        self.last_event = -1e9
        self.heard = False  # a player note since the last answer
        self.answering = False

    # --- hearing -----------------------------------------------------------------------------

    def _step_at(self, t: float) -> int:
        return int(round((t - self.origin) * STEPS_PER_SECOND))

    def _advance_to(self, t: float) -> None:
        """Feed TIME_SHIFTs up to session time ``t``."""
        ids = shift_tokens(self._step_at(t) - int(self.grammar.inner.steps[0]))
        if len(ids):
            self.engine.feed(ids)

    def _feed_note(self, t: float, pitch: int, velocity: int) -> None:
        """A note-on (velocity > 0) or note-off, at session time ``t``, into the context."""
        self._advance_to(t)
        down = self.grammar.inner.down[0, pitch] > 0
        if velocity > 0:
            ids = []
            b = int(velocity_bin(velocity))
            if b != self.vbin:
                ids.append(VEL0 + b)
                self.vbin = b
            self.engine.feed(np.array([*ids, ON0 + pitch]))
        elif down:
            self.engine.feed(np.array([OFF0 + pitch]))

    def hear(self, msg: Any, t: float) -> bool:
        """One message from the player at session time ``t``; True when it is a note event
        (it cuts in an answer). Bad or foreign messages are ignored."""
        kind = getattr(msg, "type", None)
        if kind in IGNORED or kind is None:
            return False
        if kind == "control_change" and msg.control == 64:
            down = msg.value >= 64
            if self.pedal and not down:
                for p in sorted(self.deferred):
                    self._release(p, t)
                self.deferred.clear()
            self.pedal = down
            return False
        if kind == "note_on" and msg.velocity > 0:
            if msg.note in self.deferred:  # re-struck under the pedal: release it first
                self.deferred.discard(msg.note)
                self._release(msg.note, t)
            if msg.note in self.held:
                self._release(msg.note, t)
            self.held[msg.note] = t
            self.player.append((t, -1.0, msg.note, msg.velocity))
            self._feed_note(t, msg.note, msg.velocity)
        elif kind in ("note_off", "note_on"):  # note_on with velocity 0 is a release
            if msg.note not in self.held:
                return False
            if self.pedal:
                self.deferred.add(msg.note)
            else:
                self._release(msg.note, t)
        else:
            return False
        self.last_event = t
        self.heard |= kind == "note_on" and msg.velocity > 0  # a release alone asks nothing
        return True

    def _release(self, pitch: int, t: float) -> None:
        start = self.held.pop(pitch, None)
        if start is None:
            return
        for i in range(len(self.player) - 1, -1, -1):
            if self.player[i][2] == pitch and self.player[i][1] < 0:
                self.player[i] = (self.player[i][0], t, pitch, self.player[i][3])
                break
        self._feed_note(t, pitch, 0)

    def release_stale(self, t: float) -> None:
        """Keys held past --max-hold are released (said once)."""
        for p, since in list(self.held.items()):
            if t - since > self.max_hold:
                if not self.warned_hold:
                    self.say(f"note {p} held over {self.max_hold:g} s: released (a stuck key "
                             "or a lost note-off)")
                    self.warned_hold = True
                self.deferred.discard(p)
                self._release(p, t)

    # --- answering ---------------------------------------------------------------------------

    def due(self, t: float) -> bool:
        return self.heard and t - self.last_event >= self.wait

    def idle(self) -> None:
        """Work while the player plays: read what they played into the cache, and slide
        the context now if an answer would not fit (a re-read costs tens of ms, which would
        otherwise fall inside an answer and delay its notes)."""
        self.engine.make_room(int(self.answer_seconds * ANSWER_TOKENS_PER_SECOND))
        self.engine.prefill()

    def respond(self, poll: Callable[[], list[tuple[Any, float]]]) -> Answer:
        """Answer now: sample ahead, send each note when its time comes, stop at the answer's
        length or when ``poll`` returns a player's note (handled after the answer stops)."""
        clk = self.clock
        ans = Answer(detected=clk.now())
        self.answers.append(ans)
        self.answering = True
        try:
            return self._respond(ans, poll)
        finally:
            self.answering = False

    def _respond(self, ans: Answer, poll: Callable[[], list[tuple[Any, float]]]) -> Answer:
        clk = self.clock
        self.heard = False
        self._advance_to(ans.detected)
        self.grammar.need_note = True
        start_step = int(self.grammar.inner.steps[0])
        queue: list[tuple[float, int, int, int]] = []  # (music s, order, pitch, velocity)
        order = 0
        first = self.engine.n
        marks: list[tuple[int, float]] = []  # (context length after a token, its music s)
        anchor = None  # session seconds of the answer's music start
        opened = 0  # context length at the answer's first note
        vel = self.vbin
        pending_msgs: list[tuple[Any, float]] = []
        end_music = self.answer_seconds
        while True:
            got = poll()
            pending_msgs += got  # heard once the answer has stopped
            now = clk.now()
            music_now = -1.0 if anchor is None else now - anchor
            if any(getattr(m, "type", "") == "note_on" and m.velocity > 0 for m, _ in got):
                ans.cut_in = True  # keep the tokens of the music already played
                played_tokens = max([n for n, m in marks if m <= music_now], default=first)
                break
            while queue and anchor is not None and queue[0][0] <= music_now + 1e-4:
                at, _, pitch, velocity = heapq.heappop(queue)
                self._send(pitch, velocity, anchor + at, ans)
            gen_music = (int(self.grammar.inner.steps[0]) - start_step) / STEPS_PER_SECOND
            if gen_music >= end_music:
                if not queue:
                    played_tokens = self.engine.n
                    break
                clk.sleep_until(anchor + queue[0][0], spin=True)
                continue
            if anchor is None and opened and (gen_music >= RUNWAY or
                                              self.engine.n - opened > 24):
                # the first chord and what follows it within RUNWAY s are drawn: the
                # answer's clock starts now, and they leave together, on time
                anchor = clk.now()
                continue
            if anchor is not None and gen_music > music_now + LOOKAHEAD:
                clk.sleep_until(anchor + min(queue[0][0], gen_music - LOOKAHEAD)
                                if queue else anchor + gen_music - LOOKAHEAD, spin=True)
                continue
            tok, _ = self.engine.step(may_end=False)
            tok = int(tok[0])
            music = (int(self.grammar.inner.steps[0]) - start_step) / STEPS_PER_SECOND
            if VEL0 <= tok:
                vel = tok - VEL0
            elif ON0 <= tok < OFF0:
                opened = opened or self.engine.n
                heapq.heappush(queue, (music, order, tok - ON0, int(bin_velocity(max(vel, 0)))))
                order += 1
            elif OFF0 <= tok < SHIFT0:
                heapq.heappush(queue, (music, order, tok - OFF0, 0))
                order += 1
            marks.append((self.engine.n, music))
        self.vbin = vel
        self._finish(ans, played_tokens, anchor)
        for m, t in pending_msgs:
            self.hear(m, t)
        return ans

    def _send(self, pitch: int, velocity: int, scheduled: float, ans: Answer) -> None:
        import mido
        now = self.clock.now()
        if velocity > 0:
            if pitch in self.sounding:  # a re-strike: the old one ends here
                self._send(pitch, 0, scheduled, ans)
            self.sounding[pitch] = (now, velocity)  # first: a send interrupted still ends
            self.send_msg(mido.Message("note_on", note=pitch, velocity=velocity))
            ans.notes += 1
            if ans.first_note is None:
                ans.first_note = now
        elif pitch in self.sounding:
            self.send_msg(mido.Message("note_off", note=pitch, velocity=0))
            start, v = self.sounding.pop(pitch)
            self.cadenza.append((start, now, pitch, v))
        else:
            return
        ans.late_ms.append((now - scheduled) * 1e3)

    def _finish(self, ans: Answer, played: int, anchor: float | None) -> None:
        """End an answer: tokens drawn ahead of the music are forgotten, every answer note
        still sounding is released (in the port and in the context), and the session's
        clock follows the answer's (its first note left a little after the pause)."""
        now = self.clock.now()
        for pitch in list(self.sounding):  # first: the port hears the end at once
            self._send(pitch, 0, now, ans)
        if played < self.engine.n:
            self.engine.rewind(played)
            self.vbin = -1  # said again with the next note
        if anchor is not None:  # the answer's music started at its anchor
            self.origin = anchor - self._step_at(ans.detected) / STEPS_PER_SECOND
        for p in range(128):
            if self.grammar.inner.down[0, p] > 0 and p not in self.held:
                self._advance_to(max(now, self.origin))
                self.engine.feed(np.array([OFF0 + p]))
        self.grammar.need_note = False
        self.engine.prefill()

    def all_notes_off(self) -> None:
        """Every note Cadenza has on is released, and all-notes-off on every channel."""
        import mido
        now = self.clock.now()
        for pitch in list(self.sounding):
            self.send_msg(mido.Message("note_off", note=pitch, velocity=0))
            start, v = self.sounding.pop(pitch)
            self.cadenza.append((start, now, pitch, v))
        for ch in range(16):
            self.send_msg(mido.Message("control_change", channel=ch, control=123, value=0))

    # --- the record --------------------------------------------------------------------------

    def record(self, base: Path) -> dict[str, Any]:
        """BASE.mid (Player and Cadenza tracks), BASE.png and BASE.json, each atomically."""
        now = self.clock.now()
        player = [(a, b if b >= 0 else now, p, v) for a, b, p, v in self.player]
        cadenza = self.cadenza + [(a, now, p, v) for p, (a, v) in self.sounding.items()]
        parts = {PLAYER_TRACK: _notes(player), CADENZA_TRACK: _notes(cadenza)}
        base.parent.mkdir(parents=True, exist_ok=True)
        write_midi(score_from_tracks(parts), base.with_suffix(".mid"))
        both = Notes(*(np.concatenate([getattr(parts[k], f) for k in parts])
                       for f in ("start", "end", "pitch", "velocity")))
        if len(both):
            piano_roll_png(both, 0.0, base.with_suffix(".png"),
                           primer=np.r_[np.ones(len(parts[PLAYER_TRACK]), bool),
                                        np.zeros(len(parts[CADENZA_TRACK]), bool)],
                           title="duet: player (blue), Cadenza (orange)")
        lat = [a.latency_ms for a in self.answers if a.latency_ms is not None]
        late = [x for a in self.answers for x in a.late_ms]
        summary = {
            "seconds": now, "player_notes": len(player), "cadenza_notes": len(cadenza),
            "answers": [{**asdict(a), "latency_ms": a.latency_ms} for a in self.answers],
            "latency_ms": _summary(lat), "late_ms": _summary(late),
            "files": {"midi": base.with_suffix(".mid").name,
                      "png": base.with_suffix(".png").name if len(both) else None}}
        write_sidecar(base, summary)
        return summary


def _notes(rows: list[tuple[float, float, int, int]]) -> Notes:
    if not rows:
        return Notes.make([], [], [], [])
    a = np.array(rows, float)
    return Notes.make(a[:, 0], np.maximum(a[:, 1], a[:, 0] + 0.01), a[:, 2].astype(int),
                      a[:, 3].astype(int))


def _summary(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    a = np.array(xs)
    return {"n": len(a), "median": float(np.median(a)), "p95": float(np.quantile(a, 0.95)),
            "p99": float(np.quantile(a, 0.99)), "max": float(a.max())}


# --- sources and the session loop --------------------------------------------------------------


class Replay:
    """A MIDI file played as the player: its messages at their times (session seconds)."""

    def __init__(self, path: str | Path) -> None:
        import mido

        f = resolve_primer(str(path), "--replay")
        try:
            n = notes_from_score(load_score(f), sustain_pedal=True)
        except BadInput as e:
            raise BadInput(f"--replay {path}: {e}") from None
        events = [(float(a), 1, mido.Message("note_on", note=int(p), velocity=int(v)))
                  for a, p, v in zip(n.start, n.pitch, n.velocity)]
        events += [(float(b), 0, mido.Message("note_off", note=int(p), velocity=0))
                   for b, p in zip(n.end, n.pitch)]
        self.events = sorted(events, key=lambda e: (e[0], e[1]))
        self.i = 0
        self.offset = 0.0  # session seconds of the file's start

    @property
    def done(self) -> bool:
        return self.i >= len(self.events)

    def poll(self, now: float) -> list[tuple[Any, float]]:
        out = []
        while self.i < len(self.events) and self.events[self.i][0] + self.offset <= now:
            t, _, m = self.events[self.i]
            out.append((m, t + self.offset))
            self.i += 1
        return out


def parse_midi_bytes(data: list[int] | bytes) -> list[Any]:
    """Messages of a raw MIDI byte stream, running status included (a status byte left
    out when it repeats, as keyboards send long runs of notes); mido's own parser drops
    those. Real-time bytes between data bytes are kept, stray data bytes skipped."""
    import mido
    out, status, i = [], None, 0
    data = list(data)
    while i < len(data):
        b = data[i]
        if b >= 0xF8:  # real time (clock, active sensing): may come anywhere
            out.append(mido.Message.from_bytes([b]))
            i += 1
            continue
        if b == 0xF0:  # SysEx up to its end
            end = data.index(0xF7, i) if 0xF7 in data[i:] else len(data) - 1
            out.append(mido.Message.from_bytes(data[i: end + 1]))
            status, i = None, end + 1
            continue
        if b & 0x80:
            status, i = b, i + 1
            if b >= 0xF0:  # other system common messages cancel running status
                status = None
                continue
        elif status is None:
            i += 1
            continue
        n = 1 if status & 0xF0 in (0xC0, 0xD0) else 2
        if i + n > len(data):
            break
        out.append(mido.Message.from_bytes([status, *data[i: i + n]]))
        i += n
    return out


class PortSource:
    """A mido input port (or any object with ``poll()``), messages timed on arrival."""

    def __init__(self, port: Any, clock: Clock) -> None:
        self.port, self.clock = port, clock
        self.done = False
        self.error: OSError | None = None

    def poll(self, now: float) -> list[tuple[Any, float]]:
        """What arrived; a port that went away raises, after what it delivered is heard."""
        if self.error is not None:
            raise self.error
        out = []
        while True:
            try:
                m = self.port.poll()
            except OSError as e:
                self.error = e
                return out
            if m is None:
                return out
            out.append((m, self.clock.now()))


def play(duet: Duet, source: Any, *, until: Callable[[], bool] | None = None,
         tail: float | None = None) -> None:
    """Run the session: hear the source, answer each pause, until ``until()`` says stop, or
    (a replay) the source is done and its last answer given (then ``tail`` seconds more)."""
    clk = duet.clock
    end_at = None
    while True:
        now = clk.now()
        for m, t in source.poll(now):
            duet.hear(m, t)
        duet.release_stale(now)
        if until is not None and until():
            return
        if duet.due(clk.now()):
            duet.respond(lambda: source.poll(clk.now()))
            continue
        if source.done and not duet.heard and not duet.held:
            end_at = end_at if end_at is not None else clk.now() + (tail or 0.0)
            if clk.now() >= end_at:
                return
        duet.idle()
        clk.sleep_until(clk.now() + 0.002)


def list_ports() -> str:
    """The MIDI ports mido sees through rtmidi, or why there are none (one line each)."""
    try:
        import mido
        mido.set_backend("mido.backends.rtmidi")
        ins, outs = mido.get_input_names(), mido.get_output_names()
    except ImportError:
        return "no MIDI support: pip install -e '.[live]' (mido and python-rtmidi)"
    except Exception as e:  # rtmidi's SystemError without ALSA
        return f"no MIDI system on this machine ({str(e).splitlines()[0]})"
    return "inputs:  " + (", ".join(ins) or "none") + "\noutputs: " + (", ".join(outs) or "none")


def _synth_port() -> str | None:
    """A running FluidSynth's MIDI port, to hear the answers without --out (None: none)."""
    try:
        import mido
        mido.set_backend("mido.backends.rtmidi")
        return next((n for n in mido.get_output_names() if "fluid" in n.lower()), None)
    except Exception:  # no MIDI system here
        return None


def run_duet(cfg: DuetConfig, *, device: str = "cpu") -> dict[str, Any] | None:
    """The ``duet`` command."""
    if cfg.list_ports:
        print(list_ports())
        return None
    try:
        import mido
    except ImportError:
        raise ValueError("cadenza duet needs the live extra: pip install -e '.[live]' "
                         "(mido and python-rtmidi)") from None
    # batch-1 decoding streams weights from memory: one thread is as fast, and leaves the
    # other core to the OS and a synthesizer (two would stall each other's steps)
    torch.set_num_threads(1)
    check_record(cfg.record)  # before the session: a take played is never lost to a bad path
    replay = Replay(cfg.replay) if cfg.replay else None
    clock = Clock(cfg.speed)
    gen = Session.load(cfg.checkpoint, device=device, precision=cfg.precision)
    with contextlib.ExitStack() as stack:
        for flag, name in (("--in", None if cfg.replay else cfg.in_port or "default"),
                           ("--out", cfg.out_port)):
            if name is not None:  # one duet per port: a second is refused (atomic.Busy)
                stack.enter_context(port_lock(name, flag))
        return _session(cfg, gen, clock, mido, replay)


def check_record(folder: str) -> None:
    """``--record``: a folder that exists or can be made, and written to (ValueError naming
    the flag otherwise), checked before the session starts."""
    p = Path(folder)
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == p else f"{probe} is a file"
        raise ValueError(f"--record {folder}: {what}; give a folder for the session's files")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--record {folder}: cannot write there ({probe} is not writable)")


@contextlib.contextmanager
def port_lock(name: str, flag: str) -> Iterator[None]:
    """An OS lock on a port's name, held for the session (released however it ends): two
    duets on one port are refused in one line."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    lock = locked_dir(cadenza_home() / "locks" / f"midi-{safe}", flag)
    try:
        lock.__enter__()
    except Busy as e:
        pid = str(e).split("PID ")[-1].split(")")[0]
        raise Busy(f"{flag} {name}: another duet plays on this port (PID {pid}); stop it "
                   "first") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _session(cfg: DuetConfig, gen: Session, clock: Clock, mido: Any,
             replay: Replay | None = None) -> dict[str, Any]:
    out_port = in_port = None
    try:
        if cfg.replay:
            source: Any = replay or Replay(cfg.replay)
        else:
            mido.set_backend("mido.backends.rtmidi")
            try:
                in_port = mido.open_input(cfg.in_port) if cfg.in_port else mido.open_input()
            except Exception as e:
                raise ValueError(f"--in {cfg.in_port or '(default)'}: cannot open the MIDI "
                                 f"input ({str(e).splitlines()[0]}); see --list-ports") from None
            source = PortSource(in_port, clock)
        out_name = cfg.out_port or _synth_port()
        if out_name:
            try:
                mido.set_backend("mido.backends.rtmidi")
                out_port = mido.open_output(out_name)
            except Exception as e:
                raise ValueError(f"--out {out_name}: cannot open the MIDI output "
                                 f"({str(e).splitlines()[0]}); see --list-ports") from None
            print(f"Cadenza answers on {out_name}")
        else:
            print("no --out port and no FluidSynth port (fluidsynth -a pulse -m alsa_seq "
                  "makes one): Cadenza's answers are only recorded")
        duet = Duet(gen, cfg.sample, wait=cfg.wait, answer=cfg.answer, max_hold=cfg.max_hold,
                    clock=clock, send=out_port.send if out_port else (lambda m: None))
        base = Path(cfg.record) / time.strftime("duet-%Y%m%d-%H%M%S")
        try:
            play(duet, source, tail=cfg.wait)
        except OSError as e:
            print(f"the MIDI input went away ({e}); the session so far is saved")
        finally:
            duet.all_notes_off()
            summary = duet.record(base)
        lat = summary["latency_ms"]
        print(f"{len(duet.answers)} answers"
              + (f", latency median {lat['median']:.0f} ms, p95 {lat['p95']:.0f} ms"
                 if lat else "") + f" -> {base}.mid/.png/.json")
        return summary
    finally:
        for p in (in_port, out_port):
            if p is not None:
                p.close()
