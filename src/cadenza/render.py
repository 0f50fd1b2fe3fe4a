"""Hearing and seeing notes: WAV through FluidSynth and a General MIDI SoundFont, piano-roll
PNGs through matplotlib.

Audio, chosen deliberately: symusic 0.6's built-in synthesizer fails under numpy 2
(``Synthesizer.render`` raises TypeError), and ``tinysoundfont`` declares a ``pyaudio``
dependency that does not build without PortAudio headers. FluidSynth is the reference
SoundFont renderer, packaged everywhere (Debian/Ubuntu ``fluidsynth``, Homebrew, conda),
and renders a MIDI file offline with one command. The SoundFont is ``--soundfont PATH``,
else ``$CADENZA_SOUNDFONT``, else the usual Debian locations (``fluid-soundfont-gm``,
``timgm6mb-soundfont``), else the small GM font inside the ``pretty_midi`` wheel if that is
installed. Without FluidSynth or a SoundFont, no WAV is written and the message says how to
install one; MIDI, PNG and JSON are still written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data.midi import Notes, midi_seconds

SOUNDFONTS = [
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
]
INSTALL_HINT = ("install FluidSynth and a General MIDI SoundFont, e.g. "
                "`sudo apt-get install fluidsynth fluid-soundfont-gm` "
                "(macOS: `brew install fluid-synth`), or pass --soundfont PATH")
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def find_soundfont(explicit: str | None = None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"--soundfont {explicit}: no such file")
        return p
    env = os.environ.get("CADENZA_SOUNDFONT")
    candidates = ([env] if env else []) + SOUNDFONTS
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    try:  # pretty_midi's wheel carries TimGM6mb.sf2
        import pretty_midi
        p = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if p.is_file():
            return p
    except ImportError:
        pass
    return None


def _tools(soundfont: str | None) -> tuple[str | None, Path | None, str | None]:
    """FluidSynth and the SoundFont, and why no WAV can be rendered (None when both exist)."""
    exe, sf = shutil.which("fluidsynth"), find_soundfont(soundfont)
    why = None if exe and sf else \
        ("FluidSynth not found; " if exe is None else "no SoundFont found; ") + INSTALL_HINT
    return exe, sf, why


def audio_missing(soundfont: str | None = None) -> str | None:
    """Why no WAV can be rendered here (no FluidSynth, no SoundFont), or None."""
    return _tools(soundfont)[2]


# What one render may cost, checked before FluidSynth starts and enforced while it runs: the
# WAV's bytes (its music's length, plus a tail for the last notes' release), and the clock.
RENDER_TAIL_SECONDS = 10.0
RENDER_TIMEOUT = 600.0  # seconds of wall clock (the studio passes its own, shorter)
_children: set[subprocess.Popen] = set()  # renders in progress (kill_renders ends them)
_children_lock = threading.Lock()


def wav_bytes(seconds: float, sample_rate: int = 44100) -> int:
    """The most bytes a WAV of ``seconds`` of music may hold (16-bit stereo, with a tail)."""
    return int((max(seconds, 0.0) + RENDER_TAIL_SECONDS) * sample_rate * 4) + 4096


def render_wav(midi: Path, wav: Path, soundfont: str | None = None,
               sample_rate: int = 44100, timeout: float = RENDER_TIMEOUT,
               max_bytes: int | None = None) -> tuple[Path | None, str]:
    """Render a MIDI file to WAV; returns (path, "") or (None, why not). The render is
    stopped, and its partial file removed, when it runs past ``timeout`` seconds or its WAV
    grows past ``max_bytes`` (default: what the file's own length allows, ``wav_bytes``),
    or when ``kill_renders`` is called (a server that stops)."""
    exe, sf, why = _tools(soundfont)
    if why:
        return None, why
    try:
        if max_bytes is None:
            max_bytes = wav_bytes(midi_seconds(midi), sample_rate)
        with atomic_path(wav) as tmp:
            _run_bounded([exe, "-ni", "-q", "-g", "0.7", "-r", str(sample_rate), "-F",
                          str(tmp), str(sf), str(midi)], tmp, timeout, max_bytes)
        return wav, ""
    except Exception as e:
        return None, f"fluidsynth failed: {e}"


def _run_bounded(cmd: list[str], out: Path, timeout: float, max_bytes: int) -> None:
    """Run FluidSynth, watching the clock and the size of what it writes."""
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty child never blocks
    with _children_lock:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                 preexec_fn=_die_with_parent)
        _children.add(child)
    t0 = time.monotonic()
    try:
        while child.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"stopped after {timeout:g} s (the render's time limit)")
            if out.exists() and out.stat().st_size > max_bytes:
                raise RuntimeError(f"stopped at {max_bytes / 1e6:.0f} MB (longer audio than "
                                   "the music it renders)")
            time.sleep(0.05)
        log.seek(0)
        err = log.read()
        if child.returncode != 0 or not out.exists() or out.stat().st_size <= 44:
            lines = err.strip().splitlines()
            raise RuntimeError(lines[-1] if lines else
                               "no audio written" if child.returncode >= 0 else "stopped")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
        with _children_lock:
            _children.discard(child)


def kill_renders() -> int:
    """End every render in progress (their partial files are removed by their callers);
    how many there were."""
    with _children_lock:
        running = [c for c in _children if c.poll() is None]
    for c in running:
        c.kill()
    return len(running)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to kill it when its parent dies (a killed
    `generate` must not leave FluidSynth finishing a hidden WAV). A no-op elsewhere."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PDEATHSIG
    except (OSError, AttributeError):
        pass


def note_name(p: int) -> str:
    return f"{NOTE_NAMES[p % 12]}{p // 12 - 1}"


@dataclass(frozen=True)
class Roll:
    """What a take's piano roll shows: ``notes``, those marked ``blue`` (the primer's, the
    melody's) blue and the others orange, a dashed line at ``split_seconds`` (0: none), a
    ``title``, and ``chords`` written over the roll (start s, end s, label)."""

    notes: Notes
    blue: np.ndarray
    split_seconds: float
    title: str
    chords: tuple[tuple[float, float, str], ...] = ()

    def draw(self, path: Path) -> Path:
        return piano_roll_png(self.notes, self.split_seconds, path, self.title,
                              primer=self.blue, chords=self.chords)


def piano_roll_png(notes: Notes, split_seconds: float, path: Path, title: str = "",
                   primer: np.ndarray | None = None,
                   span: tuple[float, float] | None = None,
                   chords: tuple[tuple[float, float, str], ...] = ()) -> Path:
    """Notes as bars: the primer's blue, the continuation's orange. ``primer`` marks the
    primer's notes (a continuation may start under a primer note that still sounds);
    without it, notes before ``split_seconds`` are the primer's. ``span``: a regenerated
    span (infill), shaded between two lines; the picture shows it with 12 s either side.
    ``chords``: (start, end, label), each labelled at the top, every other one shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    dur = max(notes.duration if len(notes) else 1.0, 1.0)
    t0, t1 = (max(0.0, span[0] - 12), min(dur, span[1] + 12)) if span else (0.0, dur)
    fig, ax = plt.subplots(figsize=(min(4 + (t1 - t0) * 0.5, 24), 5))
    if len(notes):
        polys = [[(s, p - 0.4), (e, p - 0.4), (e, p + 0.4), (s, p + 0.4)]
                 for s, e, p in zip(notes.start, notes.end, notes.pitch)]
        is_primer = notes.start < split_seconds if primer is None else primer
        colors = np.where(is_primer, "#3b6ea8", "#e8862a")
        ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="none"))
        lo, hi = int(notes.pitch.min()) - 2, int(notes.pitch.max()) + 2
    else:
        lo, hi = 48, 84
    if split_seconds > 0:
        ax.axvline(split_seconds, color="k", lw=0.8, ls="--")
    if span is not None:
        ax.axvspan(*span, color="#e8862a", alpha=0.08)
        for t in span:
            ax.axvline(t, color="k", lw=0.8, ls="--")
    for i, (a, b, label) in enumerate(chords):
        if i % 2:
            ax.axvspan(a, b, color="#888888", alpha=0.08, lw=0)
        ax.text(a + 0.03, hi - 0.5, label, fontsize=8, va="top", clip_on=True)
    ax.set_xlim(t0, t1)
    ax.set_ylim(lo, hi)
    ticks = [p for p in range(lo, hi + 1) if p % 12 in (0, 7)]
    ax.set_yticks(ticks, [note_name(p) for p in ticks])
    ax.set_xlabel("seconds")
    ax.set_ylabel("pitch")
    ax.grid(axis="y", alpha=0.25)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
