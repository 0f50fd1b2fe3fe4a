"""Does `cadenza similar` find another performance of the same piece? Recall at 1 and 5 on
the live performances of asap-maestro/validation (46 performances of 23 pieces: each query's
library is the other 45), for the model's embedding at each block (`--layer`) and for the
`cadenza stats` features (their per-piece histograms, concatenated and scaled to unit length),
and what an embedding costs per 20 s of music.

    python benchmarks/embeddings.py [--piano ../shared/data/piano] [--model pretrained:piano]

A piece is its ASAP folder (composer/work/piece): two files in one folder are two performances
of one piece. Skips clearly when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.data.midi import load_score, notes_from_score
from cadenza.embed import embed_one, piece_ids
from cadenza.session import Session
from cadenza.stats import feature_vector


def recall(vectors: np.ndarray, pieces: list[str], k: int) -> float:
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    hits = []
    for i, p in enumerate(pieces):
        if sum(q == p for q in pieces) < 2:
            continue  # a piece with one performance has nothing to find
        top = np.argsort(-sim[i])[:k]
        hits.append(any(pieces[j] == p for j in top))
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--piano", default=os.environ.get("CADENZA_PIANO_DATA",
                                                      "../shared/data/piano"))
    ap.add_argument("--model", default="pretrained:piano")
    a = ap.parse_args()
    root = Path(a.piano) / "asap-maestro" / "validation"
    files = sorted(root.rglob("*.mid"))
    if not files:
        print(f"skipped: no MIDI files under {root} (--piano names the piano data)")
        sys.exit(0)
    torch.set_num_threads(2)
    pieces = [str(f.parent.relative_to(root)) for f in files]
    s = Session.load(a.model)
    layers = (*range(len(s.model.blocks) - 1), -1)
    per_layer: list[list[np.ndarray]] = [[] for _ in layers]
    t = time.perf_counter()
    for f in files:  # every layer in one reading (embed_one reads one; the same means)
        for k, h in enumerate(s.features(piece_ids(s, f), layers=layers)):
            per_layer[k].append(h.mean(0) / np.linalg.norm(h.mean(0)))
    seconds = time.perf_counter() - t
    music = sum(load_score(f).to("second").end() for f in files)
    rows = {}
    for layer, vecs in zip(layers, per_layer):
        name = "last block, after the final norm (default)" if layer == -1 \
            else f"block {layer}"
        rows[f"embedding: {name}"] = np.stack(vecs)
    assert np.allclose(rows[f"embedding: {name}"][0], embed_one(s, files[0]).vector, atol=1e-5)
    rows["cadenza stats features (histograms)"] = np.stack(
        [feature_vector(notes_from_score(load_score(f))) for f in files])
    print(f"{len(files)} performances of {len(set(pieces))} pieces "
          f"({sum(pieces.count(p) > 1 for p in set(pieces))} with two or more)")
    print(f"{'features':<50}{'recall@1':>9}{'recall@5':>9}")
    for name, v in rows.items():
        print(f"{name:<50}{recall(v, pieces, 1):>9.2f}{recall(v, pieces, 5):>9.2f}")
    print(f"chance: about {1 / (len(files) - 1):.2f} at 1")
    print(f"cost: {seconds:.1f} s for {music / 60:.0f} min of music, all layers in one "
          f"reading: {seconds / music * 20:.2f} s per 20 s (2 threads, this machine's load)")


if __name__ == "__main__":
    main()
