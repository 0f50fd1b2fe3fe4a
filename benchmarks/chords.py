"""How closely does a continuation follow the chords it is given (`--chords`)?

1. POP909 validation songs with their own chord_midi.txt: 8 s of the song as the primer (from
   its first note), 20 s continued by pretrained:piano following the song's true chords from
   there on (`--chords-file chord_midi.txt --chord-offset T`), at several strengths, with
   `--chord-bass`, and with the chords `--chords-from` reads off the song's own MIDI; against
   no chord control, `--key` with the song's key, and the song's true continuation; and with
   another song's chords (a foreign progression), to show that it follows what it is given
   rather than the primer.
2. Live classical openings (asap-maestro validation): 8 s primer, 16 s over a ii-V-I in the
   key the Krumhansl-Kessler key-finder (theory.estimate_key) names for the primer (a chord
   every 2 s, repeating), against no control measured under the same chords.
3. How often `--chords-from`'s chords (read off the notes) agree with POP909's annotations.

    python benchmarks/chords.py --dataset data/piano-v3 [--songs 12] [--openings 10]

Per condition, over the new notes: the share of note-time on the sounding chord's tones and
the share of moments whose lowest note is the chord's bass (stats.chord_fit: 50 ms samples,
"N" left out), under the true chords and, for a foreign progression, under the chords it was
given (no control is measured under those foreign chords too: the base a foreign progression
rises from); notes per second; distinct pitch 4-grams (a share of all 4-grams: diversity); the NLL
per new token under the model without any control (the cost); seconds per take. Skips
clearly when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cadenza import theory
from cadenza.config import SampleConfig
from cadenza.data.dataset import TokenDataset
from cadenza.data.midi import Notes, load_score, notes_from_score, read_chords
from cadenza.generate import primer_mask
from cadenza.session import Session
from cadenza.stats import chord_fit, distinct_ngrams

PRIMER, NEW, OPENING_NEW = 8.0, 20.0, 16.0
COLS = ("chord_tones", "bass_on_root", "given_chord_tones", "given_bass", "notes_per_s",
        "distinct_4grams", "nll", "seconds")


def key_of(song: Path) -> str | None:
    f = song.parent / "key_audio.txt"
    if not f.exists():
        return None
    root, _, mode = f.read_text().split()[2].partition(":")
    return f"{root} {'minor' if mode.startswith('min') else 'major'}"


def cut(notes: Notes, a: float, b: float) -> Notes:
    keep = (notes.start >= a) & (notes.start < b)
    return Notes(notes.start[keep], np.minimum(notes.end[keep], b), notes.pitch[keep],
                 notes.velocity[keep])


def take(s: Session, prompt: np.ndarray, cfg: SampleConfig) -> tuple[Notes, float, float]:
    """The new notes (in the primer's time), the NLL of the new tokens, seconds taken."""
    t = time.perf_counter()
    new = s.generate(prompt, cfg)[0]
    took = time.perf_counter() - t
    full = s.tok.decode_notes(np.concatenate([prompt[1:], new]))
    fresh = ~primer_mask(full, s.tok.decode_notes(prompt[1:]))
    n = Notes(full.start[fresh], full.end[fresh], full.pitch[fresh], full.velocity[fresh])
    return n, s.continuation_nll(prompt, new), took


def shifted(chords, by: float):
    return [(a + by, b + by, label) for a, b, label in chords]


def table(rows: dict[str, dict[str, list[float]]], title: str) -> dict[str, dict]:
    print(f"\n{title}")
    print(f"{'condition':<38}" + "".join(f"{c:>13}" for c in COLS))
    out = {}
    for name, vals in rows.items():
        means = {c: float(np.nanmean(vals[c])) if c in vals else None for c in COLS}
        out[name] = means
        print(f"{name:<38}" + "".join(f"{'-':>13}" if v is None else f"{v:>13.3f}"
                                      for v in means.values()))
    return out


def pop909(s: Session, songs: list[Path]) -> dict:
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, **vals: float) -> None:
        for k, v in vals.items():
            rows.setdefault(name, {}).setdefault(k, []).append(v)

    t_all = time.perf_counter()
    for i, song in enumerate(songs):
        notes = notes_from_score(load_score(song))
        prompt, _ = s.encode_primer(str(song), float(notes.start.min()) + PRIMER)
        t0 = s.seconds_of(prompt[1:])  # where the new music starts, in the song's time
        chords_file = song.parent / "chord_midi.txt"
        true = theory.parse_schedule(chords_file.read_text())[0]
        other = songs[(i + 1) % len(songs)]
        other_t0 = float(notes_from_score(load_score(other)).start.min()) + PRIMER
        foreign = shifted(theory.parse_schedule((other.parent / "chord_midi.txt")
                                                .read_text())[0], t0 - other_t0)
        real = cut(notes, t0, t0 + NEW)
        fit = chord_fit(real, true)
        add("the song's true continuation", chord_tones=fit["chord_tone_share"],
            bass_on_root=fit["bass_on_root_share"], notes_per_s=len(real) / NEW,
            distinct_4grams=distinct_ngrams(real.pitch))
        base = dict(seconds=NEW, seed=i, top_p=0.95)
        true_chords = dict(chords_file=str(chords_file), chord_offset=t0)
        conditions = {"no chord control": SampleConfig(**base)}
        key = key_of(song)
        if key:
            conditions["--key (the song's key)"] = SampleConfig(key=key, **base)
        for strength in ("1", "3", "6", "hard"):
            conditions[f"true chords, strength {strength}"] = SampleConfig(
                chord_strength=strength, **true_chords, **base)
        conditions["true chords, 3, --chord-bass"] = SampleConfig(
            chord_strength="3", chord_bass=True, **true_chords, **base)
        conditions["--chords-from the song, 3"] = SampleConfig(
            chords_from=str(song), chord_offset=t0, chord_strength="3", **base)
        conditions["foreign chords, strength 3"] = SampleConfig(
            chords_file=str(other.parent / "chord_midi.txt"), chord_offset=other_t0,
            chord_strength="3", **base)
        for name, cfg in conditions.items():
            n, nll, took = take(s, prompt, cfg)
            fit = chord_fit(n, true)
            vals = dict(chord_tones=fit["chord_tone_share"], bass_on_root=fit[
                "bass_on_root_share"], notes_per_s=len(n) / NEW, distinct_4grams=distinct_ngrams(
                n.pitch), nll=nll, seconds=took)
            if name.startswith("foreign") or name == "no chord control":
                given = chord_fit(n, foreign)  # no control, measured under them: the base
                vals |= dict(given_chord_tones=given["chord_tone_share"],
                             given_bass=given["bass_on_root_share"])
            add(name, **vals)
        print(f"song {i + 1}/{len(songs)} {song.parent.name} done "
              f"({time.perf_counter() - t_all:.0f} s)", flush=True)
    return table(rows, f"{len(songs)} POP909 validation songs, {PRIMER:g} s primer, {NEW:g} "
                       "s new; shares under the song's true chords (given_: under the chords "
                       "given)")


TWO_FIVE_ONE = {"major": ("m7", "7", "maj7"), "minor": ("m7b5", "7", "m")}


def two_five_one(key: str) -> str:
    """A ii-V-I in a key, a chord a bar of 4 beats (120 bpm: 2 s), the tonic held twice."""
    root, mode = theory.parse_key(key)
    two, five, one = TWO_FIVE_ONE[mode]
    name = lambda r: theory.NAMES[r % 12]  # noqa: E731
    return (f"{name(root + 2)}{two} | {name(root + 7)}{five} | {name(root)}{one} | "
            f"{name(root)}{one}")


def openings(s: Session, pieces: list[Path]) -> dict:
    rows: dict[str, dict[str, list[float]]] = {}
    for i, piece in enumerate(pieces):
        notes = notes_from_score(load_score(piece))
        prompt, _ = s.encode_primer(str(piece), float(notes.start.min()) + PRIMER)
        t0 = s.seconds_of(prompt[1:])
        primer = cut(notes, 0, t0)
        w = np.bincount(primer.pitch % 12, primer.end - primer.start, minlength=12)
        key = theory.estimate_key(w)
        prog = two_five_one(key)
        chords = shifted(theory.chords_over(prog, 120, 4, 0.0, OPENING_NEW), t0)
        base = dict(seconds=OPENING_NEW, seed=i, top_p=0.95)
        for name, cfg in {"no chord control": SampleConfig(**base),
                          "--key (the primer's key)": SampleConfig(key=key, **base),
                          "ii-V-I, strength 3": SampleConfig(chords=prog, **base),
                          "ii-V-I, strength 6": SampleConfig(chords=prog, chord_strength="6",
                                                             **base),
                          "ii-V-I, 3, --chord-bass": SampleConfig(chords=prog, chord_bass=True,
                                                                  **base)}.items():
            n, nll, took = take(s, prompt, cfg)
            fit = chord_fit(n, chords)
            for k, v in dict(chord_tones=fit["chord_tone_share"],
                             bass_on_root=fit["bass_on_root_share"],
                             notes_per_s=len(n) / OPENING_NEW, distinct_4grams=distinct_ngrams(
                                 n.pitch), nll=nll, seconds=took).items():
                rows.setdefault(name, {}).setdefault(k, []).append(v)
        print(f"opening {i + 1}/{len(pieces)} {piece.name} in {key}: {prog}", flush=True)
    return table(rows, f"{len(pieces)} live classical openings (asap-maestro validation), "
                       f"{PRIMER:g} s primer, {OPENING_NEW:g} s new over a ii-V-I in the "
                       "primer's key; shares under the ii-V-I")


def agreement(songs: list[Path]) -> dict:
    """How much of POP909's annotated time (not N) --chords-from's chords agree with: the
    same pitch classes, the same root, and the annotation's tones all among ours."""
    same = root = inside = total = 0
    for song in songs:
        ours = read_chords(song)
        true = theory.parse_schedule((song.parent / "chord_midi.txt").read_text())[0]
        grid = np.arange(0, min(ours[-1][1], true[-1][1]), 0.1)
        for a, b in zip(theory.chords_at(ours, grid), theory.chords_at(true, grid)):
            if b is None:
                continue
            total += 1
            if a is not None:
                same += a[0] == b[0]
                inside += b[0] <= a[0] or a[0] <= b[0]
                root += _root(a) == _root(b)
    out = {"annotated_seconds": total / 10, "same_tones": same / total,
           "same_root": root / total, "one_inside_the_other": inside / total}
    print(f"\n--chords-from against POP909's annotations, {len(songs)} validation songs, "
          f"{out['annotated_seconds']:.0f} s: same tones {out['same_tones']:.1%}, same root "
          f"{out['same_root']:.1%}, one's tones inside the other's "
          f"{out['one_inside_the_other']:.1%}")
    return out


def _root(chord) -> int:
    """A parsed chord's root: the tone whose triad (major, minor, diminished or augmented)
    the chord holds, the bass first."""
    pcs, bass = chord
    for r in [bass, *sorted(pcs)]:
        if (r + 7) % 12 in pcs and ((r + 4) % 12 in pcs or (r + 3) % 12 in pcs):
            return r
    return bass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/piano-v3", help="the prepared piano data (its "
                    "manifest lists the validation files)")
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--openings", type=int, default=10)
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    manifest = Path(a.dataset) / "manifest.json"
    if not manifest.exists():
        print(f"skipped: {manifest} not found (--dataset names the prepared piano data)")
        sys.exit(0)
    files = TokenDataset(a.dataset).files("valid")
    pop = sorted(Path(r["path"]) for r in files if "pop909" in r["source"]
                 and (Path(r["path"]).parent / "chord_midi.txt").exists())
    live = sorted(Path(r["path"]) for r in files if r["source"].endswith("asap-maestro"))
    if len(pop) < 2:
        print("skipped: fewer than two POP909 validation songs with chord_midi.txt")
        sys.exit(0)
    torch.set_num_threads(2)
    s = Session.load(a.model)
    t = time.perf_counter()
    out = {"model": a.model, "agreement": agreement(pop)}
    if a.songs:
        out["pop909"] = pop909(s, pop[: a.songs])
    if a.openings and live:
        step = max(len(live) // a.openings, 1)  # spread over the composers
        out["openings"] = openings(s, live[::step][: a.openings])
    print(f"{time.perf_counter() - t:.0f} s in all")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
