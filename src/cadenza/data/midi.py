"""Reading and writing MIDI safely, and the flat note arrays the tokenizers work on.

Every rejection raises :class:`BadInput` with a one-line reason; ``prepare`` records it
against the file and moves on (or stops, with ``--strict``). Times here are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from .. import theory
from ..atomic import atomic_path

MIN_PITCH, MAX_PITCH = 21, 108  # the piano's keys: A0..C8
MAX_SECONDS = 3 * 3600.0
# Notes struck together: a piano has 88 keys and ten fingers; merged parts may stack a few
# dozen. Far more at one instant is no music, and would make every renderer and the
# tokenizer run away (100,000 notes at 0 s once wrote 10 GB of audio): refused.
MAX_STACKED = 128  # notes starting within STACK_SECONDS of each other
STACK_SECONDS = 0.01


Score = symusic.Score  # what the API takes and returns; only data/ reads or writes MIDI


class BadInput(ValueError):
    """A source that cannot be used; the message is the reason, without the path."""


@dataclass
class Notes:
    """All notes of a piece as parallel arrays, sorted by (start, pitch). Seconds."""

    start: np.ndarray  # float64 (N,)
    end: np.ndarray  # float64 (N,)
    pitch: np.ndarray  # int64 (N,)
    velocity: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.pitch)

    @classmethod
    def make(cls, start, end, pitch, velocity) -> Notes:
        start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
        pitch, velocity = np.asarray(pitch, np.int64), np.asarray(velocity, np.int64)
        order = np.lexsort((pitch, start))
        return cls(start[order], end[order], pitch[order], velocity[order])

    @classmethod
    def concat(cls, parts: list[Notes]) -> Notes:
        """The notes of several parts together, sorted as ``make`` sorts."""
        return cls.make(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("start", "end", "pitch", "velocity")))

    @property
    def duration(self) -> float:
        return float(self.end.max()) if len(self) else 0.0


def load_score(path: str | Path, max_mb: float = 20.0) -> symusic.Score:
    """Load a MIDI file, rejecting what is not a usable MIDI file with a reason."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise BadInput("empty file")
    if size > max_mb * 1e6:
        raise BadInput(f"file too large ({size / 1e6:.1f} MB > --max-file-mb {max_mb:g})")
    with open(path, "rb") as f:
        head = f.read(14)
    if head[:4] == b"RIFF":  # RMID wrapper: symusic cannot read it, say so plainly
        raise BadInput("RIFF/RMID-wrapped MIDI is not supported; extract the MThd data")
    if head[:4] != b"MThd":
        raise BadInput("not a MIDI file (no MThd header)")
    if len(head) < 14:
        raise BadInput("truncated MIDI header")
    division = int.from_bytes(head[12:14], "big")
    if division & 0x8000:
        raise BadInput("SMPTE time division is not supported")
    if division < 1:
        raise BadInput(f"absurd tick resolution ({division} ticks per quarter)")
    try:
        score = symusic.Score(str(path))
    except Exception as e:  # symusic raises RuntimeError/ValueError on corrupt data
        raise BadInput(f"corrupt or truncated MIDI ({str(e).splitlines()[0][:120]})") from e
    # Hand-sequenced files write fermatas and final ritardandos as tempos of 5-10 quarters
    # a minute (11 of piano-midi.de's pieces): only a tempo no music has is refused.
    for t in score.tempos:
        if not (1.0 <= t.qpm <= 1000.0):
            raise BadInput(f"absurd tempo ({t.qpm:.3g} quarter notes per minute)")
    return score


def notes_from_score(score: symusic.Score, sustain_pedal: bool = True,
                     unit: str = "second") -> Notes:
    """Merge every non-drum track into one piano part, in seconds (or ``unit``).

    With ``sustain_pedal`` a note released while the pedal (CC64 >= 64) is down sounds
    until the pedal lifts, or until the same key is struck again, whichever is first.
    """
    sec = score.to(unit)
    parts = []
    n_drum = 0
    for track in sec.tracks:
        if track.is_drum:
            n_drum += len(track.notes)
            continue
        if len(track.notes) == 0:
            continue
        a = track.notes.numpy()
        start = a["time"].astype(np.float64)
        end = start + a["duration"].astype(np.float64)
        if sustain_pedal and len(track.controls):
            p_start, p_end = _pedal_intervals(track, float(end.max()))
            if len(p_start):
                end = _extend_by_pedal(start, end, a["pitch"].astype(np.int64), p_start, p_end)
        parts.append((start, end, a["pitch"], a["velocity"]))
    if not parts:
        raise BadInput("drum-only file" if n_drum else "no notes")
    notes = Notes.make(*(np.concatenate(x) for x in zip(*parts)))
    keep = notes.velocity > 0
    notes = Notes(notes.start[keep], notes.end[keep], notes.pitch[keep], notes.velocity[keep])
    if len(notes) == 0:
        raise BadInput("no notes")
    if notes.duration > MAX_SECONDS:
        raise BadInput(f"absurdly long ({notes.duration / 3600:.1f} hours)")
    check_stacked(notes)
    return notes


def midi_seconds(path: str | Path) -> float:
    """How long a MIDI file plays, seconds (its last event)."""
    return float(load_score(path).to("second").end())


def check_stacked(notes: Notes) -> None:
    """BadInput when more than MAX_STACKED notes start at one instant."""
    if len(notes) <= MAX_STACKED:
        return
    _, first, counts = np.unique(np.floor(notes.start / STACK_SECONDS), return_index=True,
                                 return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] > MAX_STACKED:
        raise BadInput(f"{int(counts[k]):,} notes start at {notes.start[first[k]]:.2f} s "
                       f"(at most {MAX_STACKED} may start together: no piano music stacks "
                       "more)")


# --programs: which tracks a multitrack file contributes (General MIDI programs 0-7 are the
# pianos); drum tracks never do: their "pitches" are instruments, not notes.
PROGRAMS = {"all": range(128), "piano": range(8)}


def select_tracks(score: symusic.Score, programs: str = "all"
                  ) -> tuple[symusic.Score, dict[str, int]]:
    """The score with only the pitched tracks ``programs`` names, and what was done: the
    tracks merged into one part, and the notes left out (drums, other programs)."""
    keep = PROGRAMS[programs]
    out = score.copy()
    tracks = [t for t in out.tracks if len(t.notes)]
    out.tracks = [t for t in tracks if not t.is_drum and t.program in keep]
    facts = {"tracks": len(out.tracks),
             "drum_notes_dropped": sum(len(t.notes) for t in tracks if t.is_drum),
             "other_notes_dropped": sum(len(t.notes) for t in tracks if not t.is_drum)
             - sum(len(t.notes) for t in out.tracks)}
    if not len(out.tracks):
        raise BadInput("drum-only file" if facts["drum_notes_dropped"] and programs == "all"
                       else f"no notes in tracks of --programs {programs}")
    return out, facts


def merge_tracks(score: symusic.Score, name: str = "Piano") -> symusic.Score:
    """One piano track holding every non-drum note, on the score's own ticks, tempo map,
    time and key signatures: beats stay beats (a grid tokenizer reads them), and seconds
    stay what the tempo map makes them."""
    out = symusic.Score(score.ticks_per_quarter)
    out.tempos = score.tempos.copy()
    out.time_signatures = score.time_signatures.copy()
    out.key_signatures = score.key_signatures.copy()
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    track = symusic.Track(name=name, program=0)
    if parts:
        a = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.lexsort((a["pitch"], a["time"]))
        track.notes = symusic.Note.from_numpy(**{k: v[order] for k, v in a.items()})
    out.tracks.append(track)
    return out


def _tempo_spans(score: symusic.Score):
    """Each stretch of constant tempo: (its start in quarters, in seconds, its length in
    quarters (inf for the last), its quarters per minute); 120 bpm before the first tempo
    event, as MIDI says."""
    tpq = score.ticks_per_quarter
    marks = sorted((int(t.time), float(t.qpm)) for t in score.tempos)
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0, 120.0))
    q = sec = 0.0
    for i, (tick, qpm) in enumerate(marks):
        span_q = (marks[i + 1][0] - tick) / tpq if i + 1 < len(marks) else np.inf
        yield q, sec, span_q, qpm
        q, sec = q + span_q, sec + span_q * 60 / qpm


def quarters_at(score: symusic.Score, seconds: float) -> float:
    """The position in quarter notes of a time in seconds, through the score's tempo map."""
    for q, sec, span_q, qpm in _tempo_spans(score):
        if sec + span_q * 60 / qpm >= seconds:
            return q + (seconds - sec) * qpm / 60
    raise AssertionError("the last tempo span is endless")


def seconds_at(score: symusic.Score, quarters: float) -> float:
    """The time in seconds of a position in quarter notes (the inverse of quarters_at)."""
    for q, sec, span_q, qpm in _tempo_spans(score):
        if q + span_q >= quarters:
            return sec + (quarters - q) * 60 / qpm
    raise AssertionError("the last tempo span is endless")


def cut_notes(notes: Notes, end: float) -> Notes:
    """The notes that start before ``end``, released at ``end`` at the latest."""
    keep = notes.start < end
    return Notes(notes.start[keep], np.minimum(notes.end[keep], end), notes.pitch[keep],
                 notes.velocity[keep])


def _pedal_intervals(track, last: float) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) times of the sustain pedal (CC64 >= 64 is down) from the raw controls."""
    c = track.controls.numpy()
    sel = c["number"] == 64
    t, down = c["time"][sel].astype(np.float64), c["value"][sel] >= 64
    order = np.argsort(t, kind="stable")
    t, down = t[order], down[order]
    change = np.flatnonzero(down != np.r_[False, down[:-1]])
    starts, ends = t[change[down[change]]], t[change[~down[change]]]
    if len(ends) < len(starts):  # held to the end of the piece
        ends = np.r_[ends, max(last, starts[-1])]
    return starts, ends


def _extend_by_pedal(start, end, pitch, p_start, p_end) -> np.ndarray:
    """Vectorised sustain: extend each release that falls inside a pedal-down interval."""
    order = np.argsort(p_start)
    p_start, p_end = p_start[order], p_end[order]
    k = np.searchsorted(p_start, end, side="right") - 1  # last pedal pressed before release
    inside = (k >= 0) & (end < p_end[np.maximum(k, 0)])
    ext = np.where(inside, p_end[np.maximum(k, 0)], end)
    # A key struck again ends its previous (sustained) sounding: clip at the next onset.
    idx = np.lexsort((start, pitch))
    nxt = np.full(len(start), np.inf)
    same = pitch[idx][1:] == pitch[idx][:-1]
    nxt[idx[:-1][same]] = start[idx][1:][same]
    return np.maximum(end, np.minimum(ext, nxt))


def score_from_notes(notes: Notes, program: int = 0, name: str = "Piano") -> symusic.Score:
    """A one-track score (tick resolution 480 at 120 bpm, so 1 s = 960 ticks)."""
    return score_from_tracks({name: notes}, program)


def score_from_tracks(tracks: dict[str, Notes], program: int = 0) -> symusic.Score:
    """A score with one named track per entry, all on one program (480 ticks a quarter
    at 120 bpm: 1 s = 960 ticks)."""
    tpq = 480
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, 120.0))
    for name, notes in tracks.items():
        track = symusic.Track(name=name, program=program)
        if len(notes):
            t0 = np.round(notes.start * 2 * tpq).astype(np.int32)
            t1 = np.round(notes.end * 2 * tpq).astype(np.int32)
            track.notes = symusic.Note.from_numpy(
                time=t0, duration=np.maximum(t1 - t0, 1).astype(np.int32),
                pitch=notes.pitch.astype(np.int8), velocity=notes.velocity.astype(np.int8))
        score.tracks.append(track)
    return score


def only_track(score: symusic.Score, name: str) -> symusic.Score | None:
    """The score with only its track(s) called ``name`` (None when it has none)."""
    out = score.copy()
    out.tracks = [t for t in out.tracks if t.name == name]
    return out if len(out.tracks) else None


def write_midi(score: symusic.Score, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))


# --- editing a score in place of a span (infill) ---------------------------------------


def tick_at(score: symusic.Score, seconds: float) -> int:
    return int(round(quarters_at(score, seconds) * score.tpq))


def bar_span(score: symusic.Score, bars: str) -> tuple[float, float]:
    """``"9-12"`` (bars 9 to 12 inclusive, counted from 1) -> (start, end) seconds, through
    the score's time signatures and tempo map."""
    try:
        a, b = (int(x) for x in bars.split("-"))
    except ValueError:
        raise BadInput(f"--bars {bars}: expected FIRST-LAST, e.g. 9-12") from None
    if not 1 <= a <= b:
        raise BadInput(f"--bars {bars}: bars count from 1, FIRST <= LAST")
    if not len(score.time_signatures):
        raise BadInput(f"--bars {bars}: the file has no time signature; give --start and "
                       "--end in seconds")
    sigs = sorted((ts.time, ts.numerator * 4 / ts.denominator) for ts in score.time_signatures)
    q, bar, starts = 0.0, 1, {}
    limit = score.end() / score.tpq + 64
    while bar <= b + 1 and q <= limit:
        now = [length for t, length in sigs if t / score.tpq <= q + 1e-9]
        starts[bar] = q
        q += now[-1] if now else sigs[0][1]
        bar += 1
    if b + 1 not in starts:
        raise BadInput(f"--bars {bars}: the piece has fewer bars")
    return seconds_at(score, starts[a]), seconds_at(score, starts[b + 1])


def replace_span(score: symusic.Score, start_tick: int, end_tick: int, new: Notes,
                 track_name: str, cut_held: bool = False) -> symusic.Score:
    """``score`` without the notes that start in ``[start_tick, end_tick)`` (every other
    note, track, tempo and control as it was, in ticks), plus a track ``track_name`` with
    ``new`` (seconds). With ``cut_held``, notes that start before the span and ring into it
    end at its start."""
    out = score.copy()
    for tr in out.tracks:
        keep = [n for n in tr.notes if not start_tick <= n.time < end_tick]
        if cut_held:
            for n in keep:
                if n.time < start_tick < n.time + n.duration:
                    n.duration = start_tick - n.time
        tr.notes = symusic.Note.from_numpy(
            time=np.array([n.time for n in keep], np.int32),
            duration=np.array([n.duration for n in keep], np.int32),
            pitch=np.array([n.pitch for n in keep], np.int8),
            velocity=np.array([n.velocity for n in keep], np.int8)) if keep else tr.notes[:0]
    track = symusic.Track(name=track_name, program=out.tracks[0].program if out.tracks else 0)
    if len(new):
        t0 = np.array([tick_at(score, t) for t in new.start], np.int32)
        t1 = np.array([tick_at(score, t) for t in new.end], np.int32)
        track.notes = symusic.Note.from_numpy(
            time=t0, duration=np.maximum(t1 - t0, 1).astype(np.int32),
            pitch=new.pitch.astype(np.int8), velocity=new.velocity.astype(np.int8))
    out.tracks.append(track)
    return out


MAX_BEAT, MIN_BEAT = 2.0, 0.2  # seconds: a beat of the tempo map, kept to this for chords


def read_chords(path: str | Path) -> list[tuple[float, float, str]]:
    """The chords of a MIDI file's notes (``--chords-from``), one a beat of its tempo map
    (kept within MIN_BEAT..MAX_BEAT seconds; a file without tempo events is at 120 bpm, so
    a beat is half a second), read by theory.read_chords; times in seconds from the file's
    start. BadInput for a file that is not usable MIDI."""
    score = load_score(path)
    notes = notes_from_score(score)
    beats, t = [0.0], 0.0
    while t < notes.duration:
        q = quarters_at(score, t)
        t = min(max(seconds_at(score, np.floor(q + 1e-9) + 1) - t, MIN_BEAT), MAX_BEAT) + t
        beats.append(t)
    return theory.read_chords(notes.start, notes.end, notes.pitch, np.array(beats))
