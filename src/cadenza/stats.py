"""``cadenza stats``: musical statistics of generated pieces against real ones, and
memorization.

Features follow Yang & Lerch 2020 ("On the evaluation of generative models in music"):
pitch-class histogram, pitch range, polyphony, notes per second, inter-onset intervals,
durations and velocities. For each feature the generated and reference values are binned on
shared bins and compared by overlapping area (OA, 1 = identical distributions) and
KL(reference || generated), histograms smoothed by 1e-4 so KL stays finite. (Yang & Lerch
compare kernel density estimates of intra/inter-set distances; comparing the feature
distributions directly is simpler to read and enough to spot a model that plays too fast,
too dense or off-key.)

Memorization: notes in onset order become pitch intervals (transposition-invariant). For a
sample we report the longest run of notes whose interval sequence also occurs in the
training set, and the share of its 8-note n-grams found there.

Try it: ``cadenza stats out/demo --reference data/chorales``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import theory
from .config import StatsConfig
from .controls import chords_over
from .data.dataset import TokenDataset
from .data.midi import BadInput, Notes, load_score, notes_from_score, only_track

CONTINUATION_TRACK = "Continuation"  # the track `generate` writes new music on

NGRAM = 8
_MOD = (1 << 61) - 1
_BASE = 1_000_003


def intervals(notes: Notes) -> np.ndarray:
    return np.diff(notes.pitch).astype(np.int64) if len(notes) > 1 else np.zeros(0, np.int64)


def _gram_hashes(seq: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every length-n window of an int sequence (vectorised polynomial hash)."""
    if len(seq) < n:
        return np.zeros(0, np.int64)
    w = np.lib.stride_tricks.sliding_window_view((seq + 200) % 1024, n).astype(np.int64)
    h = np.zeros(len(w), np.int64)
    for j in range(n):  # n is small; wrap-around int64 arithmetic is a fine hash
        h = h * _BASE + w[:, j]
    return h


class NgramIndex:
    """Interval n-grams of a training set, built lazily per length."""

    def __init__(self, seqs: list[np.ndarray]) -> None:
        self.seqs = seqs
        self._sets: dict[int, set] = {}

    @classmethod
    def from_pieces(cls, pieces: list[Notes]) -> NgramIndex:
        return cls([intervals(p) for p in pieces])

    def grams(self, n: int) -> set:
        if n not in self._sets:
            self._sets[n] = set(np.concatenate([_gram_hashes(s, n) for s in self.seqs]
                                               + [np.zeros(0, np.int64)]).tolist())
        return self._sets[n]

    def contains_any(self, seq: np.ndarray, n: int) -> bool:
        g = self.grams(n)
        return any(h in g for h in _gram_hashes(seq, n).tolist())


@functools.lru_cache(maxsize=4)
def training_index(data: str) -> NgramIndex:
    """The n-gram index of a prepared dataset's train split, built once per process (the
    demo generates from three primers against the same training set)."""
    ds = TokenDataset(data)
    return NgramIndex.from_pieces([ds.tokenizer.decode_notes(p) for p in ds.pieces("train")])


def memorization(notes: Notes, index: NgramIndex) -> dict[str, Any]:
    """Longest copied run of notes and share of copied 8-note n-grams."""
    iv = intervals(notes)
    lo, hi = 0, len(iv)  # longest interval run found in training, by binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if index.contains_any(iv, mid):
            lo = mid
        else:
            hi = mid - 1
    grams = _gram_hashes(iv, NGRAM - 1)
    train = index.grams(NGRAM - 1)
    share = float(np.mean([h in train for h in grams.tolist()])) if len(grams) else 0.0
    return {"longest_copied_notes": int(lo + 1 if lo else 0), "notes": int(len(notes)),
            f"copied_{NGRAM}gram_share": share}


# --- musical statistics -------------------------------------------------------------------

def longest_repeat(notes: Notes, max_pattern: int = 8, same: float = 0.02) -> int:
    """The most copies in a row of one pattern of 1..``max_pattern`` notes, a note being its
    pitch and the time since the note before (equal within ``same`` seconds); notes in
    onset order, a chord's from low to high (a key struck twice at one moment counted
    once). 1: nothing repeats; a note struck 30 times at one pace: 30. What
    ``--max-repeats`` bounds (controls.py; it reads the notes in the
    order the model writes them, so a chord written in another order can slip past)."""
    if len(notes) == 0:
        return 0
    order = np.lexsort((notes.pitch, notes.start))
    pitch, start = notes.pitch[order], notes.start[order]
    one = np.r_[True, (pitch[1:] != pitch[:-1]) | (start[1:] != start[:-1])]
    pitch, start = pitch[one], start[one]  # a key struck twice at one moment sounds once
    ioi = np.r_[np.nan, np.diff(start)]
    best = 1
    for L in range(1, min(max_pattern, len(pitch) - 1) + 1):
        match = (pitch[L:] == pitch[:-L]) & (np.abs(ioi[L:] - ioi[:-L]) <= same)
        run = 0
        for m in match:  # a run of r matches: r + L notes of period L
            run = run + 1 if m else 0
            best = max(best, (run + L) // L)
    return best


def distinct_ngrams(pitches: np.ndarray, n: int = 4) -> float:
    """Diversity: the share of a line's pitch n-grams (notes in order) that are distinct;
    nan for fewer than n notes."""
    grams = [tuple(pitches[i: i + n]) for i in range(len(pitches) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def time_edges(top: float, n: int) -> np.ndarray:
    """Log-spaced bin edges for times in seconds, each moved to 3 ms past a multiple of 10
    ms. Decoded times are multiples of 10 ms (performance) or of 1/8 s (grids), and a MIDI
    file's tick rounding moves them by about 1 ms: an edge exactly on a representable value
    (0.01 s) would drop one-step intervals on either side of it at random."""
    edges = np.floor(np.geomspace(0.01, top, n) * 100) / 100 + 0.003
    return np.unique(np.r_[0.0, edges])


FEATURES = {  # name: (bins, per-note or per-piece)
    "pitch_class": (np.arange(13) - 0.5, "note"),
    "pitch_range": (np.arange(0, 90, 4), "piece"),
    "polyphony": (np.arange(0, 11, 0.5), "piece"),
    "notes_per_second": (np.arange(0, 31, 1.0), "piece"),
    "ioi": (time_edges(4, 24), "note"),
    "duration": (time_edges(8, 24), "note"),
    "velocity": (np.arange(0, 129, 8), "note"),
}


def polyphony(n: Notes) -> float:
    """Mean number of notes sounding at each distinct onset, over the whole piece:
    #(start <= t) - #(end <= t), two binary searches instead of a loop over onsets."""
    onsets = np.unique(n.start)
    sounding = (np.searchsorted(np.sort(n.start), onsets, side="right")
                - np.searchsorted(np.sort(n.end), onsets, side="right"))
    return float(np.mean(sounding))


def features(n: Notes) -> dict[str, np.ndarray]:
    onsets = np.unique(n.start)
    return {
        "pitch_class": n.pitch % 12,
        "pitch_range": np.array([n.pitch.max() - n.pitch.min()]),
        "polyphony": np.array([polyphony(n)]),
        "notes_per_second": np.array([len(n) / max(n.duration, 1e-6)]),
        "ioi": np.diff(onsets),
        "duration": n.end - n.start,
        "velocity": n.velocity,
    }


def feature_vector(n: Notes) -> np.ndarray:
    """The features' histograms, each normalised, concatenated and scaled to unit length:
    one vector per piece or window (a baseline beside the model's embeddings)."""
    f = features(n)
    parts = [np.histogram(f[k], bins=bins)[0].astype(float) for k, (bins, _) in FEATURES.items()]
    v = np.concatenate([p / max(p.sum(), 1) for p in parts])
    return v / max(np.linalg.norm(v), 1e-12)


def _smoothed(h: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Normalised histogram with a little mass everywhere (KL stays finite)."""
    p = h / max(h.sum(), 1)
    return (p + eps) / (1 + eps * len(p))


def compare(gen: list[Notes], ref: list[Notes]) -> dict[str, dict[str, float]]:
    fg = [features(n) for n in gen if len(n)]
    fr = [features(n) for n in ref if len(n)]
    out = {}
    for name, (bins, _) in FEATURES.items():
        g = np.concatenate([f[name] for f in fg]) if fg else np.zeros(0)
        r = np.concatenate([f[name] for f in fr]) if fr else np.zeros(0)
        p, q = (_smoothed(np.histogram(np.clip(x, bins[0], bins[-1]), bins)[0])
                for x in (r, g))
        out[name] = {"overlap": float(np.minimum(p, q).sum()),
                     "kl": float(np.sum(p * np.log(p / q))),
                     "generated_mean": float(g.mean()) if len(g) else float("nan"),
                     "reference_mean": float(r.mean()) if len(r) else float("nan")}
    return out


def midi_files_under(path: Path) -> list[Path]:
    """A MIDI file, or every MIDI file under a folder (BadInput when there is none)."""
    files = [path] if path.is_file() else sorted(
        f for f in path.rglob("*") if f.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise BadInput(f"{path}: no MIDI files")
    return files


def load_notes_folder(path: Path, continuation_only: bool = False
                      ) -> tuple[list[Notes], int, list[str]]:
    """Notes of every MIDI file under path (or of one file); (notes, total, failures).

    With ``continuation_only``, a file written by ``generate`` (it has a track named
    ``Continuation``) contributes that track alone: the primer is not generated music."""
    files = midi_files_under(path)
    notes, bad = [], []
    for f in files:
        try:
            score = load_score(f)
            if continuation_only:
                score = only_track(score, CONTINUATION_TRACK) or score
            notes.append(notes_from_score(score))
        except (BadInput, OSError) as e:
            bad.append(f"{f}: {e}")
    return notes, len(files), bad


MIN_REFERENCE_PIECES = 5  # per-piece features (range, polyphony, density) need a few


@dataclass(frozen=True)
class StatsResult:
    """What ``cadenza stats`` measured (``--json`` writes it; ``report`` reads it back)."""

    generated: int  # MIDI files given
    decoded_share: float  # of them, the share that could be read
    failures: list[str]
    generated_notes: int
    reference_split: str | None  # a dataset's split, or None for a MIDI folder
    reference_pieces: int
    outside_key_profile_share: float
    features: dict[str, dict[str, float]]  # per feature: overlap, kl, generated/reference mean
    memorization: dict[str, float] | None = None  # against a dataset's training pieces

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.memorization is None:
            del out["memorization"]
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> StatsResult:
        return StatsResult(d["generated"], d["decoded_share"], d.get("failures", []),
                           d.get("generated_notes", 0), d.get("reference_split"),
                           d.get("reference_pieces", 0), d["outside_key_profile_share"],
                           d["features"], d.get("memorization"))


def run_stats(cfg: StatsConfig) -> StatsResult | None:
    """The ``stats`` command's comparison with its reference (None without one)."""
    return stats_of(cfg.generated, cfg.reference, cfg.split) if cfg.reference else None


def stats_of(generated: str, reference: str, split: str = "train") -> StatsResult:
    """Compare generated MIDI with a reference: a prepared dataset's ``split`` (by default
    train, the music the model learnt) or a MIDI folder."""
    gen, total, bad = load_notes_folder(Path(generated), continuation_only=True)
    if not gen:
        raise BadInput(f"{generated}: none of its {total} MIDI files could be read "
                       f"(e.g. {bad[0]})")
    ref_path = Path(reference)
    index = None
    if (ref_path / "manifest.json").exists():
        ds = TokenDataset(ref_path)
        if split not in ds.splits:
            raise BadInput(f"--split: {ref_path} has no '{split}' split "
                           f"(it has {', '.join(ds.splits)})")
        ref = [ds.tokenizer.decode_notes(p) for p in ds.pieces(split)]
        index = training_index(str(ref_path.resolve()))
        where = f"its {split} split"
    else:
        ref, _, _ = load_notes_folder(ref_path)
        split, where = None, "it"
    if len(ref) < MIN_REFERENCE_PIECES:
        raise BadInput(f"--reference {reference}: {where} has {len(ref)} pieces, too few to "
                       f"estimate a distribution (at least {MIN_REFERENCE_PIECES}; the train "
                       "split or a larger folder)")
    pc = np.bincount(np.concatenate([r.pitch % 12 for r in ref]), minlength=12)
    profile = np.argsort(-pc)[:7]  # the reference's seven most used pitch classes
    gp = np.concatenate([g.pitch % 12 for g in gen]) if gen else np.zeros(0, int)
    memorized = None
    if index is not None:
        mem = [memorization(g, index) for g in gen]
        memorized = {
            "mean_longest_copied_notes": float(np.mean([m["longest_copied_notes"]
                                                        for m in mem])),
            "max_longest_copied_notes": int(max(m["longest_copied_notes"] for m in mem)),
            f"mean_copied_{NGRAM}gram_share": float(np.mean(
                [m[f"copied_{NGRAM}gram_share"] for m in mem])),
        }
    return StatsResult(total, len(gen) / total, bad, int(sum(len(g) for g in gen)), split,
                       len(ref),
                       float(np.mean(~np.isin(gp, profile))) if len(gp) else 0.0,
                       compare(gen, ref), memorized)


# --- a chord schedule ----------------------------------------------------------------------

GRID = 0.05  # seconds: chord fit is sampled this often


def chord_fit(notes: Notes, chords: list[tuple[float, float, str]]) -> dict[str, float]:
    """How closely notes follow chords (``chords`` in the notes' own times), sampled every
    GRID seconds where a chord (not N) and a note sound: the share of sounding notes on the
    chord's tones (of note-time), and the share of moments whose lowest sounding note is
    the chord's bass (its root, or a slash chord's bass); nan where nothing was sampled."""
    on = total = bass_on = moments = 0
    if len(notes) and chords:
        grid = np.arange(notes.start.min(), notes.end.max(), GRID)
        for t, chord in zip(grid, theory.chords_at(chords, grid)):
            if chord is None:
                continue
            pcs, bass = chord
            sounding = notes.pitch[(notes.start <= t) & (notes.end > t)]
            if not len(sounding):
                continue
            on += int(np.isin(sounding % 12, sorted(pcs)).sum())
            total += len(sounding)
            bass_on += int(sounding.min() % 12 == bass)
            moments += 1
    return {"chord_tone_share": on / total if total else float("nan"),
            "bass_on_root_share": bass_on / moments if moments else float("nan"),
            "seconds_measured": moments * GRID}


def take_start(midi: Path) -> float | None:
    """Where a take's new music starts (its ``sample-K.json`` beside it, as ``generate``
    wrote it: the primer's seconds), or None for any other file."""
    side = midi.with_suffix(".json")
    try:
        info = json.loads(side.read_text()) if side.is_file() else None
        return float(info["primer"]["seconds"]) if info else None
    except (ValueError, KeyError, TypeError):
        return None


def chord_fits(cfg: StatsConfig) -> dict[str, Any]:
    """``stats`` with a chord schedule: each file's fit (chord_fit) with the schedule placed
    where its new music starts (a take's primer end, else the file's start), read from
    ``--chord-offset``, and the fit over all files' moments together."""
    rows, sums = [], np.zeros(4)
    for f in midi_files_under(Path(cfg.generated)):
        try:
            score = load_score(f)
            notes = notes_from_score(only_track(score, CONTINUATION_TRACK) or score)
        except (BadInput, OSError) as e:
            rows.append({"path": str(f), "error": str(e)})
            continue
        start = take_start(f) or 0.0
        span = max(float(notes.end.max()) - start, GRID)
        fit = chord_fit(notes, chords_over(cfg, span, start))
        rows.append({"path": str(f), "starts_at": start, **fit})
        n = fit["seconds_measured"] / GRID
        if n:
            sums += [fit["chord_tone_share"] * n, fit["bass_on_root_share"] * n, n, 1]
    return {"files": rows, "chord_tone_share": sums[0] / sums[2] if sums[2] else float("nan"),
            "bass_on_root_share": sums[1] / sums[2] if sums[2] else float("nan"),
            "measured_files": int(sums[3])}


FEATURE_COLUMNS = ("feature", "overlap", "KL", "gen mean", "ref mean")


def feature_rows(res: StatsResult) -> list[tuple[str, ...]]:
    """One row of formatted cells per feature (FEATURE_COLUMNS): for the terminal and the
    report alike."""
    return [(k, f"{v['overlap']:.3f}", f"{v['kl']:.3f}", f"{v['generated_mean']:.3f}",
             f"{v['reference_mean']:.3f}") for k, v in res.features.items()]


def summary_lines(res: StatsResult) -> list[str]:
    """What was compared with what, and the memorization, in plain sentences."""
    ref = f"{res.reference_pieces} reference pieces" + (
        f" (the dataset's {res.reference_split} split)" if res.reference_split else "")
    lines = [f"{res.generated} generated files ({res.generated_notes:,} new "
             f"notes; a sample's primer track is not counted), {res.decoded_share:.0%} "
             f"decode; {ref}; {res.outside_key_profile_share:.1%} of notes outside the "
             "reference's key profile"]
    if res.memorization is not None:
        m = res.memorization
        lines.append(f"memorization: longest copied run {m['mean_longest_copied_notes']:.1f} "
                     f"notes on average (max {m['max_longest_copied_notes']}); "
                     f"{m[f'mean_copied_{NGRAM}gram_share']:.1%} of {NGRAM}-note n-grams "
                     "occur in training")
    return lines


def chord_lines(fit: dict[str, Any]) -> list[str]:
    """A chord fit (chord_fits) in plain sentences, a line a file when there are several."""
    lines = [f"chords: {fit['chord_tone_share']:.1%} of note-time on the chord's tones, the "
             f"bass on the chord's root (or slash bass) {fit['bass_on_root_share']:.1%} of "
             f"the time, over {fit['measured_files']} of {len(fit['files'])} files"]
    if len(fit["files"]) > 1:
        lines += [f"  {r['path']}: " + (r["error"] if "error" in r else
                  f"{r['chord_tone_share']:.1%} chord tones, {r['bass_on_root_share']:.1%} "
                  f"bass on root") for r in fit["files"]]
    return lines


def format_stats(res: StatsResult | None, as_json: bool,
                 chords: dict[str, Any] | None = None) -> str:
    """``stats``'s output: the comparison with a reference, a chord fit, or both."""
    if as_json:
        out = res.to_json() if res is not None else {}
        return json.dumps(out | ({"chords": chords} if chords is not None else {}), indent=1)
    lines = []
    if res is not None:
        widths = (18, 8, 8, 10, 10)
        table = ["".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(row, widths)))
                 for row in [FEATURE_COLUMNS, *feature_rows(res)]]
        summary = summary_lines(res)
        lines = summary[:1] + table + summary[1:]
    return "\n".join(lines + (chord_lines(chords) if chords is not None else []))
