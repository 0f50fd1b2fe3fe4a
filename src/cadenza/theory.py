"""Names musicians use, read into numbers: keys (``"D minor"``, ``"F# major"``, ``"Bb:maj"``),
note names (``"C4"`` is MIDI 60, ``"A0"`` the piano's lowest key) and ranges (``"A0-C8"``,
``"40-80"``). Imports nothing of Cadenza's: the configs validate flags with it.

A minor key allows the union of its natural, harmonic and melodic forms (the raised 6th and
7th are part of minor-key writing), so ``"A minor"`` is A B C D E F F# G G#.
"""

from __future__ import annotations

import re

import numpy as np

LOWEST_KEY, HIGHEST_KEY = 21, 108  # A0 and C8, the piano's keyboard
NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 9, 10, 11)  # natural (b6 b7) + harmonic (7) + melodic (6, 7)
_LETTER = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_KEY = re.compile(r"^\s*([a-g])(#|♯|b|♭|s|sharp|flat)?\s*(?:[:\s]\s*)?"
                  r"(major|minor|maj|min|m)?\s*$", re.IGNORECASE)
_NOTE = re.compile(r"^\s*([a-g])(#|♯|b|♭)?(-?\d+)\s*$", re.IGNORECASE)


def _accidental(a: str | None) -> int:
    a = (a or "").lower()
    return 1 if a in ("#", "♯", "s", "sharp") else -1 if a in ("b", "♭", "flat") else 0


def parse_key(text: str) -> tuple[int, str]:
    """``"D minor"`` -> (2, "minor"). Letter, optional accidental (# or b), optional mode
    (major/maj, minor/min/m; none: major), case-insensitive, with a space or a colon
    between. Raises ValueError saying what is accepted."""
    m = _KEY.match(text)
    if not m:
        raise ValueError(f"unknown key {text!r}; write a letter A-G, an optional # or b and "
                         "major or minor, e.g. 'D minor', 'F# major', 'Bb:maj'")
    root = (_LETTER[m.group(1).lower()] + _accidental(m.group(2))) % 12
    mode = (m.group(3) or "major").lower()
    return root, "minor" if mode in ("minor", "min", "m") else "major"


def key_pitch_classes(text: str) -> frozenset[int]:
    """The pitch classes (0 = C) of a key's scale: 7 in major, 9 in minor (see above)."""
    root, mode = parse_key(text)
    return frozenset((root + i) % 12 for i in (MINOR if mode == "minor" else MAJOR))


def key_name(text: str) -> str:
    """The key spelt one way: ``"d:min"`` -> ``"D minor"``."""
    root, mode = parse_key(text)
    return f"{NAMES[root]} {mode}"


def note_number(text: str) -> int:
    """A MIDI note number from ``"60"`` or a name with its octave (``"C4"`` = 60,
    ``"A0"`` = 21, ``"F#5"``, ``"Bb3"``)."""
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    m = _NOTE.match(t)
    if not m:
        raise ValueError(f"{text!r} is neither a MIDI number nor a note name like C4 or F#5")
    return 12 * (int(m.group(3)) + 1) + _LETTER[m.group(1).lower()] + _accidental(m.group(2))


def parse_range(text: str, low: int, high: int, what: str = "values") -> tuple[int, int]:
    """``"LOW-HIGH"`` (numbers or note names) -> (low, high), both inside [low, high] and in
    order. Raises ValueError naming the problem."""
    m = re.fullmatch(r"\s*(-?[^-\s]+)\s*-\s*(-?[^-\s]+)\s*", str(text))
    if not m:
        raise ValueError(f"expected LOW-HIGH (e.g. {low}-{high}), got {text!r}")
    a, b = (note_number(g) for g in m.groups())
    if a > b:
        raise ValueError(f"the range {text!r} runs backwards (LOW must be <= HIGH)")
    if a < low or b > high:
        raise ValueError(f"the range {text!r} leaves the {what} {low}..{high}")
    return a, b


# Krumhansl & Kessler (1982) key profiles: how well each pitch class fits a key, from C.
_KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
_KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def estimate_key(weights) -> str:
    """The key whose Krumhansl-Kessler profile best correlates with ``weights``, 12 numbers
    (e.g. seconds sounded per pitch class, from C): ``"D minor"`` (Krumhansl 1990)."""
    w = np.asarray(weights, float)
    best, name = -2.0, "C major"
    for mode, prof in (("major", _KK_MAJOR), ("minor", _KK_MINOR)):
        for root in range(12):
            r = float(np.corrcoef(w, np.roll(prof, root))[0, 1]) if w.std() > 0 else 0.0
            if r > best:
                best, name = r, f"{NAMES[root]} {mode}"
    return name


# --- chords ----------------------------------------------------------------------------------

# A chord quality's tones, as semitones above the root (the spellings musicians and Harte's
# labels use: "Cm7", "C:min7"; "" is major).
QUALITIES: dict[str, tuple[int, ...]] = {
    "": (0, 4, 7), "maj": (0, 4, 7), "M": (0, 4, 7),
    "m": (0, 3, 7), "min": (0, 3, 7), "-": (0, 3, 7),
    "7": (0, 4, 7, 10), "dom7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11), "M7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10), "min7": (0, 3, 7, 10), "-7": (0, 3, 7, 10),
    "dim": (0, 3, 6), "o": (0, 3, 6),
    "dim7": (0, 3, 6, 9), "o7": (0, 3, 6, 9),
    "m7b5": (0, 3, 6, 10), "hdim7": (0, 3, 6, 10), "ø": (0, 3, 6, 10),
    "aug": (0, 4, 8), "+": (0, 4, 8),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "7sus4": (0, 5, 7, 10),
    "6": (0, 4, 7, 9), "maj6": (0, 4, 7, 9), "m6": (0, 3, 7, 9), "min6": (0, 3, 7, 9),
    "9": (0, 4, 7, 10, 2), "maj9": (0, 4, 7, 11, 2), "m9": (0, 3, 7, 10, 2),
    "min9": (0, 3, 7, 10, 2), "add9": (0, 4, 7, 2),
    "sus4(b7)": (0, 5, 7, 10), "minmaj7": (0, 3, 7, 11), "mM7": (0, 3, 7, 11),
}
NO_CHORD = "N"
# a slash bass as Harte writes it: a degree above the root
_DEGREES = {"1": 0, "b2": 1, "2": 2, "b3": 3, "3": 4, "4": 5, "#4": 6, "b5": 6, "5": 7,
            "#5": 8, "b6": 8, "6": 9, "bb7": 9, "b7": 10, "7": 11}
_CHORD = re.compile(r"^([A-Ga-g])(#|♯|b|♭)?:?([^/]*)(?:/(.+))?$")


class ChordError(ValueError):
    """An unreadable chord label or progression; the message names it and where it is."""


def parse_chord(label: str) -> tuple[frozenset[int], int] | None:
    """``"Dm7"`` -> (its pitch classes, the bass pitch class: the root, or the slash bass of
    ``"C/E"`` / Harte's ``"C:maj/3"``); None for ``N`` (no chord). ChordError names the
    label."""
    text = label.strip()
    if text == NO_CHORD:
        return None
    m = _CHORD.match(text)
    if not m or m.group(3) not in QUALITIES:
        raise ChordError(f"unknown chord {label!r}; write a root A-G with # or b and one of "
                         f"the qualities {', '.join(q for q in QUALITIES if q)} (or N)")
    root = (_LETTER[m.group(1).lower()] + _accidental(m.group(2))) % 12
    pcs = frozenset((root + i) % 12 for i in QUALITIES[m.group(3)])
    bass, slash = root, m.group(4)
    if slash:
        if slash in _DEGREES:
            bass = (root + _DEGREES[slash]) % 12
        else:
            b = re.fullmatch(r"([A-Ga-g])(#|♯|b|♭)?", slash)
            if not b:
                raise ChordError(f"unknown bass {slash!r} in chord {label!r}; write a note "
                                 "name (C/E) or a degree (C:maj/3)")
            bass = (_LETTER[b.group(1).lower()] + _accidental(b.group(2))) % 12
        pcs = pcs | {bass}
    return pcs, bass


MAX_SCHEDULE = 20_000  # chords in one schedule (a long song has a few hundred)


def parse_schedule(text: str, bpm: float = 120.0, beats_per_bar: int = 4
                   ) -> tuple[list[tuple[float, float, str]], bool]:
    """A chord schedule and whether it repeats: bars (``parse_progression``; they repeat),
    or times, one chord a line (or separated by ``;``): ``start end label`` in seconds, as
    POP909's ``chord_midi.txt`` (they do not repeat: after the last, no chord). ChordError
    names the line of a bad one, times that run backwards or overlap."""
    lines = [x.strip() for x in text.replace(";", "\n").splitlines() if x.strip()]
    if not lines or not re.match(r"^-?[\d.]+\s", lines[0]):
        return parse_progression(text, bpm, beats_per_bar), True
    if len(lines) > MAX_SCHEDULE:
        raise ChordError(f"{len(lines)} chords; at most {MAX_SCHEDULE}")
    out: list[tuple[float, float, str]] = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        try:
            a, b = float(parts[0]), float(parts[1])
            label = parts[2]
        except (IndexError, ValueError):
            raise ChordError(f"line {i}: expected 'start end label', got {line!r}") from None
        if not (np.isfinite(a) and np.isfinite(b) and 0 <= a < b):
            raise ChordError(f"line {i}: the times {a:g}-{b:g} run backwards or are negative")
        if out and a < out[-1][1] - 1e-6:
            raise ChordError(f"line {i}: starts at {a:g}, before the chord above ends "
                             f"({out[-1][1]:g})")
        try:
            parse_chord(label)
        except ChordError as e:
            raise ChordError(f"line {i}: {e}") from None
        out.append((a, b, label))
    return out, False


def parse_progression(text: str, bpm: float = 120.0, beats_per_bar: int = 4
                      ) -> list[tuple[float, float, str]]:
    """``"Dm7 G7 | Cmaj7 | A7sus4 A7"`` -> [(start s, end s, label)]: bars separated by
    ``|``, the chords of a bar sharing its beats evenly, at ``bpm`` quarter-note beats a
    minute and ``beats_per_bar`` beats a bar. ChordError names the bar and the chord."""
    if not text or not text.strip():
        raise ChordError("empty; write chords, bars separated by | (e.g. 'Dm7 G7 | Cmaj7')")
    bar = beats_per_bar * 60.0 / bpm
    out = []
    for i, chunk in enumerate(text.split("|")):
        labels = chunk.split()
        if not labels:
            raise ChordError(f"bar {i + 1} has no chord")
        for j, label in enumerate(labels):
            try:
                parse_chord(label)
            except ChordError as e:
                raise ChordError(f"bar {i + 1}, chord {j + 1}: {e}") from None
            step = bar / len(labels)
            out.append((round(i * bar + j * step, 6), round(i * bar + (j + 1) * step, 6),
                        label))
    return out


def chords_over(text: str, bpm: float, beats_per_bar: int, offset: float, seconds: float
                ) -> list[tuple[float, float, str]]:
    """The chords sounding over ``seconds`` of new music (times from its start) for a
    schedule read from ``offset`` on: bars repeat, timed chords do not."""
    chords, repeats = parse_schedule(text, bpm, beats_per_bar)
    length = chords[-1][1]
    out = []
    lap = float(np.floor(offset / length) * length) if repeats else 0.0
    while True:
        for a, b, label in chords:
            a, b = a + lap - offset, b + lap - offset
            if b > 0 and a < seconds:
                out.append((max(a, 0.0), min(b, seconds), label))
        lap += length
        if not repeats or lap - offset >= seconds or len(out) > MAX_SCHEDULE:
            return out


# Reading chords off notes (``--chords-from``): one chord a beat, by template matching.
READ_QUALITIES = ("", "m", "7", "m7", "maj7", "dim")  # the qualities read off notes
EXTRA_TONE = 0.2  # a tone past the triad must hold this share of the beat's sound to count
BASS_BONUS = 0.15  # of the beat's sound: a root in the bass breaks ties toward it
MIN_SOUND = 0.1  # seconds of sound a beat (summed over notes) below which it is N


def read_chords(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, beats: np.ndarray
                ) -> list[tuple[float, float, str]]:
    """Chords read off notes, one a beat (``beats``: the beats' times, in seconds, the last
    the end), as ``[(start, end, label)]`` with equal neighbours merged. For each beat:

    1. each pitch class's seconds of sound inside the beat (``w``, 12 numbers), and its bass,
       the lowest note sounding for at least a quarter of it;
    2. every root with every quality of READ_QUALITIES scores the sound on its tones less
       the sound off them, less EXTRA_TONE of the beat's sound for each tone past three
       (a seventh must be heard, not guessed), plus BASS_BONUS of it when the bass is the
       root; the best is the beat's chord, written over its bass when the bass is another
       of its tones (``C/E``); a beat with under MIN_SOUND seconds of sound is ``N``;
    3. a one-beat chord between two beats of one other chord takes theirs (a passing
       harmony), then equal neighbours merge.

    Simple on purpose (no key, no voice leading): what POP909's annotations agree with is
    measured in benchmarks/chords.py."""
    order = np.argsort(start, kind="stable")
    start, end, pitch = (np.asarray(x)[order] for x in (start, end, pitch))
    longest = float((end - start).max()) if len(start) else 0.0
    templates = []  # (label suffix, root, tones as a 12-vector)
    for q in READ_QUALITIES:
        for root in range(12):
            t = np.zeros(12)
            t[[(root + i) % 12 for i in QUALITIES[q]]] = 1
            templates.append((q, root, t))
    mask = np.stack([t for _, _, t in templates])  # (72, 12)
    sizes = mask.sum(1)
    roots = np.array([r for _, r, _ in templates])
    labels = []
    for a, b in zip(beats[:-1], beats[1:]):
        near = slice(np.searchsorted(start, a - longest), np.searchsorted(start, b))
        overlap = np.clip(np.minimum(end[near], b) - np.maximum(start[near], a), 0, None)
        sounds = overlap > 0
        p = pitch[near][sounds]
        overlap = overlap[sounds]
        w = np.bincount(p % 12, overlap, minlength=12)
        total = float(w.sum())
        if total < MIN_SOUND:
            labels.append(NO_CHORD)
            continue
        held = overlap >= 0.25 * (b - a)
        bass = int((p[held] if held.any() else p).min() % 12)
        score = (mask @ w - (1 - mask) @ w - EXTRA_TONE * total * (sizes - 3)
                 + BASS_BONUS * total * (roots == bass))
        q, root, t = templates[int(np.argmax(score))]
        name = f"{NAMES[root]}{q}"
        labels.append(name if bass == root or not t[bass] else f"{name}/{NAMES[bass]}")
    for i in range(1, len(labels) - 1):
        if labels[i - 1] == labels[i + 1] != labels[i]:
            labels[i] = labels[i - 1]
    out: list[tuple[float, float, str]] = []
    for a, b, label in zip(beats[:-1], beats[1:], labels):
        if out and out[-1][2] == label:
            out[-1] = (out[-1][0], float(b), label)
        else:
            out.append((float(a), float(b), label))
    if len(out) > MAX_SCHEDULE:
        raise ChordError(f"{len(out)} chords; at most {MAX_SCHEDULE}")
    return out


def chords_at(chords: list[tuple[float, float, str]], times: np.ndarray
              ) -> list[tuple[frozenset[int], int] | None]:
    """The parsed chord (parse_chord) sounding at each of ``times`` under a timed schedule
    (``[(start, end, label)]``, in order): None between and past its chords and for N."""
    parsed = [parse_chord(label) for _, _, label in chords]
    starts = np.array([a for a, _, _ in chords])
    ends = np.array([b for _, b, _ in chords])
    i = np.searchsorted(starts, times, side="right") - 1
    inside = (i >= 0) & (times < ends[np.maximum(i, 0)])
    return [parsed[j] if ok else None for j, ok in zip(i.tolist(), inside.tolist())]


def schedule_text(chords: list[tuple[float, float, str]]) -> str:
    """A chord schedule as ``start end label`` lines (what ``--chords-file`` reads)."""
    return "".join(f"{a:.3f} {b:.3f} {label}\n" for a, b, label in chords)
