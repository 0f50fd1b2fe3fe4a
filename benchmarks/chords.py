"""How closely does a continuation follow the chords it is given (`--chords`)? POP909
validation songs with their own chord_midi.txt: 8 s of the song as the primer (from its first
note), 20 s continued by pretrained:piano, following the song's true chords from there on
(`--chords-file chord_midi.txt --chord-offset T`), at several strengths, against no chord
control, `--key` with the song's key, and the song's true continuation; and with another
song's chords (a foreign progression), to show that it follows what it is given rather than
the primer.

    python benchmarks/chords.py --dataset data/piano-v3 [--songs 12] [--model pretrained:piano]

Per condition, over every new note: the share of note-time on the sounding chord's tones
(sampled every 50 ms; time under "N" left out), under the true chords and, for the foreign
progression, under the chords it was given; notes per second; distinct pitch 4-grams (a share
of all 4-grams: diversity); and the NLL per new token under the model without any control (a
cost). Skips clearly when the data is absent.
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
from cadenza.data.midi import load_score, notes_from_score
from cadenza.session import Session

PRIMER, NEW = 8.0, 20.0


def chord_at(schedule, t: np.ndarray) -> list[frozenset[int] | None]:
    out = []
    for u in t:
        c = next((lab for a, b, lab in schedule if a <= u < b), "N")
        parsed = theory.parse_chord(c)
        out.append(parsed[0] if parsed else None)
    return out


def tone_share(notes, schedule, offset: float) -> float:
    """Share of note-time on chord tones (chord time = note time + offset), 50 ms samples."""
    if not len(notes):
        return float("nan")
    grid = np.arange(notes.start.min(), notes.end.max(), 0.05)
    chords = chord_at(schedule, grid + offset)
    on = total = 0
    for t, c in zip(grid, chords):
        if c is None:
            continue
        sounding = notes.pitch[(notes.start <= t) & (notes.end > t)] % 12
        on += int(np.isin(sounding, sorted(c)).sum())
        total += len(sounding)
    return on / total if total else float("nan")


def distinct4(pitches: np.ndarray) -> float:
    grams = [tuple(pitches[i: i + 4]) for i in range(len(pitches) - 3)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@torch.no_grad()
def nll_new(s: Session, prompt: np.ndarray, new: np.ndarray) -> float:
    ids = np.concatenate([prompt, new])[-(s.model.max_context or 10**9):]
    logp = torch.log_softmax(s.logits(torch.as_tensor(ids[None])).float()[0, :-1], -1)
    k = len(new)
    return float(-logp[-k:].gather(-1, torch.as_tensor(ids[-k:])[:, None]).mean())


def key_of(song: Path) -> str | None:
    f = song.parent / "key_audio.txt"
    if not f.exists():
        return None
    root, _, mode = f.read_text().split()[2].partition(":")
    return f"{root} {'minor' if mode.startswith('min') else 'major'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/piano-v3", help="the prepared piano data (its "
                    "manifest lists POP909's validation songs)")
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    manifest = Path(a.dataset) / "manifest.json"
    if not manifest.exists():
        print(f"skipped: {manifest} not found (--dataset names the prepared piano data)")
        sys.exit(0)
    songs = sorted(Path(r["path"]) for r in json.loads(manifest.read_text())["files"]
                   if r["split"] == "valid" and "pop909" in r["source"]
                   and (Path(r["path"]).parent / "chord_midi.txt").exists())[: a.songs]
    if len(songs) < 2:
        print("skipped: fewer than two POP909 validation songs with chord_midi.txt")
        sys.exit(0)
    torch.set_num_threads(2)
    s = Session.load(a.model)
    tok = s.tok
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, **vals: float) -> None:
        for k, v in vals.items():
            rows.setdefault(name, {}).setdefault(k, []).append(v)

    t_all = time.perf_counter()
    for i, song in enumerate(songs):
        notes = notes_from_score(load_score(song))
        start = float(notes.start.min())
        t0 = start + PRIMER  # where the new music starts, in the song's time
        chords_file = song.parent / "chord_midi.txt"
        true = theory.parse_schedule(chords_file.read_text())[0]
        other = songs[(i + 1) % len(songs)]
        other_start = float(notes_from_score(load_score(other)).start.min())
        foreign = theory.parse_schedule((other.parent / "chord_midi.txt").read_text())[0]
        keep = (notes.start >= t0) & (notes.start < t0 + NEW)
        real = type(notes)(notes.start[keep] - t0, np.minimum(notes.end[keep], t0 + NEW) - t0,
                           notes.pitch[keep], notes.velocity[keep])
        add("the song's true continuation", true_chords=tone_share(real, true, t0),
            notes_per_s=len(real) / NEW, distinct_4grams=distinct4(real.pitch))
        prompt, _ = s.encode_primer(str(song), t0)
        base = dict(seconds=NEW, seed=i, top_p=0.95)
        conditions = {"no chord control": SampleConfig(**base)}
        key = key_of(song)
        if key:
            conditions["--key (the song's key)"] = SampleConfig(key=key, **base)
        for strength in ("1", "3", "6", "hard"):
            conditions[f"true chords, strength {strength}"] = SampleConfig(
                chords_file=str(chords_file), chord_offset=t0, chord_strength=strength,
                **base)
        conditions["foreign chords, strength 3"] = SampleConfig(
            chords_file=str(other.parent / "chord_midi.txt"),
            chord_offset=other_start + PRIMER, chord_strength="3", **base)
        for name, cfg in conditions.items():
            new = s.generate(prompt, cfg)[0]
            full = tok.decode_notes(np.concatenate([prompt[1:], new]))
            fresh = full.start >= t0 - 1e-6
            n = type(full)(full.start[fresh] - t0, full.end[fresh] - t0, full.pitch[fresh],
                           full.velocity[fresh])
            vals = dict(true_chords=tone_share(n, true, t0), notes_per_s=len(n) / NEW,
                        distinct_4grams=distinct4(n.pitch), nll=nll_new(s, prompt, new))
            if name.startswith("foreign"):
                vals["given_chords"] = tone_share(n, foreign, other_start + PRIMER)
            add(name, **vals)
        print(f"song {i + 1}/{len(songs)} {song.parent.name} done "
              f"({time.perf_counter() - t_all:.0f} s)", flush=True)
    cols = ("true_chords", "given_chords", "notes_per_s", "distinct_4grams", "nll")
    print(f"\n{len(songs)} POP909 validation songs, {PRIMER:g} s primer, {NEW:g} s new, "
          f"{a.model}; chord-tone share of note-time (N left out)")
    print(f"{'condition':<34}" + "".join(f"{c:>16}" for c in cols))
    table = {}
    for name, vals in rows.items():
        means = {c: float(np.nanmean(vals[c])) if c in vals else None for c in cols}
        table[name] = means
        print(f"{name:<34}" + "".join(f"{'-':>16}" if v is None else f"{v:>16.3f}"
                                      for v in means.values()))
    print(f"{time.perf_counter() - t_all:.0f} s in all")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
