"""Tokenization speed: Cadenza's vectorised `performance` tokenizer against MidiTok's MIDILike
on the same real MIDI files (the built-in keyboard corpus unless --folder is given), and the
time to prepare `builtin:chorales` from the cached corpus.

    python benchmarks/tokenize_speed.py [--folder DIR] [--repeat 3]

Prints notes/s for both and their ratio (goal: ours >= 5x MidiTok), then the prepare time
(goal: < 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import symusic

from cadenza.config import PrepareConfig
from cadenza.data.corpus import build_corpus
from cadenza.data.midi import notes_from_score
from cadenza.data.prepare import prepare
from cadenza.data.tokenizers import build_tokenizer


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", help="MIDI files to tokenize (default: builtin:keyboard)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    folder = Path(a.folder) if a.folder else build_corpus("keyboard", workers=2)
    scores = [symusic.Score(str(f)) for f in sorted(folder.rglob("*.mid"))]
    n_notes = sum(s.note_num() for s in scores)
    ours = build_tokenizer("performance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import miditok
        theirs = miditok.MIDILike(miditok.TokenizerConfig(use_programs=False))

    def run_ours():  # score -> notes (with pedal) -> ids, as `prepare` does
        for s in scores:
            ours.encode(notes_from_score(s))

    def run_theirs():
        for s in scores:
            theirs.encode(s)

    t_ours, t_theirs = best_of(run_ours, a.repeat), best_of(run_theirs, a.repeat)
    print(f"{len(scores)} files, {n_notes:,} notes ({folder})")
    print(f"cadenza performance  {n_notes / t_ours:>12,.0f} notes/s")
    print(f"miditok MIDILike     {n_notes / t_theirs:>12,.0f} notes/s")
    print(f"ratio                {t_theirs / t_ours:>12.1f}x  (goal >= 5x)")

    build_corpus("chorales", workers=2)  # make sure the cache exists; not timed
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        prepare(PrepareConfig(sources=("builtin:chorales",), out=f"{d}/ds", workers=2),
                progress=False)
        print(f"prepare builtin:chorales from the cache: {time.perf_counter() - t:.1f} s "
              "(goal < 30 s)")


if __name__ == "__main__":
    main()
