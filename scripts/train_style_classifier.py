"""Train the style classifier that `cadenza classify` (and the guidance measurements) use, and
measure it: a linear classifier (classify.fit) on window embeddings of the model, labelled with
the style tags of a prepared piano dataset's training split, scored on its validation split
against the majority class and against the same classifier on `cadenza stats` features.

    python scripts/train_style_classifier.py --model pretrained:piano --dataset data/piano-v3
        [--out FILE] [--min-files 15] [--max-files 40] [--windows 2] [--window-seconds 20]

Classes: the styles with at least --min-files training pieces (pop and the well-represented
composers). Each piece gives up to --windows windows of --window-seconds from its start (up to
--max-files pieces per style, spread over the sorted list), each window's tokens read from BOS
as `cadenza embed` reads a piece. Writes the classifier beside the model (style_classifier.npz;
--out elsewhere) unless --no-save, and prints accuracy, macro-F1 and a confusion table.
Deterministic: the same data and model give the same classifier.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cadenza.checkpoint import resolve
from cadenza.classify import FILE, StyleClassifier, fit
from cadenza.data.dataset import TokenDataset
from cadenza.data.midi import BadInput
from cadenza.data.tokenizers import BOS
from cadenza.embed import piece_ids, token_times
from cadenza.session import Session
from cadenza.stats import feature_vector


def windows_of(s: Session, path: Path, layer: int, seconds: float, count: int
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Up to ``count`` windows of ``seconds`` from the piece's start: each window's embedding
    and its stats features (both from the window's tokens)."""
    ids = piece_ids(s, path)[1:]
    times = token_times(s, ids, until=count * seconds)
    emb, stat = [], []
    for k in range(count):
        sel = np.flatnonzero((times > k * seconds) & (times <= (k + 1) * seconds))
        if len(sel) < 32:
            break
        w = ids[sel[0]: sel[-1] + 1]
        h = s.features(np.r_[BOS, w], layers=(layer,))[0].mean(0)
        emb.append(h / np.linalg.norm(h))
        notes = s.tok.decode_notes(w)
        if len(notes) < 4:
            emb.pop()
            continue
        stat.append(feature_vector(notes))
    return emb, stat


def macro_f1(y: np.ndarray, p: np.ndarray, n: int) -> float:
    f1 = []
    for c in range(n):
        tp = int(((p == c) & (y == c)).sum())
        fp, fn = int(((p == c) & (y != c)).sum()), int(((p != c) & (y == c)).sum())
        if tp + fn == 0:
            continue  # a class absent from the validation windows
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(f1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--dataset", default="data/piano-v3")
    ap.add_argument("--out", help=f"where to write it (default: MODEL/{FILE})")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--min-files", type=int, default=15)
    ap.add_argument("--max-files", type=int, default=40)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--window-seconds", type=float, default=20.0)
    ap.add_argument("--layer", type=int, default=-1)
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    files = TokenDataset(a.dataset).files()
    counts = Counter(r.get("style") for r in files if r["split"] == "train")
    classes = sorted(c for c, n in counts.items() if c and n >= a.min_files)
    s = Session.load(a.model)
    data = {}
    for split in ("train", "valid"):
        xe, xs, ys = [], [], []
        for ci, c in enumerate(classes):
            mine = sorted(r["path"] for r in files if r["split"] == split and
                          r.get("style") == c)
            if split == "train" and len(mine) > a.max_files:
                mine = [mine[i] for i in np.linspace(0, len(mine) - 1, a.max_files).astype(int)]
            for p in mine:
                try:
                    e, st = windows_of(s, Path(p), a.layer, a.window_seconds, a.windows)
                except (BadInput, OSError):
                    continue
                xe += e
                xs += st
                ys += [ci] * len(e)
        data[split] = (np.array(xe), np.array(xs), np.array(ys))
        print(f"{split}: {len(ys)} windows of {len(classes)} styles "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    (xe, xs, y), (ve, vs, vy) = data["train"], data["valid"]
    n = len(classes)
    W, b = fit(xe, y, n)
    Ws, bs = fit(xs, y, n)
    clf = StyleClassifier(W, b, tuple(classes), a.layer, a.window_seconds, s.checkpoint_hash)
    pe = clf.probabilities(ve).argmax(1)
    ps = StyleClassifier(Ws, bs, tuple(classes), 0, 0, "").probabilities(vs).argmax(1)
    majority = classes.index(max(classes, key=lambda c: counts[c]))  # the training split's
    pm = np.full(len(vy), majority)
    print(f"\nvalidation windows: {len(vy)} ({', '.join(f'{classes[c]} {k}' for c, k in sorted(Counter(vy.tolist()).items()))})")  # noqa: E501
    print(f"{'classifier':<44}{'accuracy':>9}{'macro-F1':>9}")
    for name, p in (("embeddings (the model's last layer), linear", pe),
                    ("cadenza stats features, linear", ps),
                    (f"majority class ({classes[majority]})", pm)):
        print(f"{name:<44}{(p == vy).mean():>9.3f}{macro_f1(vy, p, n):>9.3f}")
    print("\nconfusion (rows: true style, columns: named), embeddings:")
    print(f"{'':<14}" + "".join(f"{c[:6]:>7}" for c in classes))
    for i, c in enumerate(classes):
        if (vy == i).any():
            print(f"{c:<14}" + "".join(f"{int(((vy == i) & (pe == j)).sum()):>7}"
                                       for j in range(n)))
    if not a.no_save:
        out = Path(a.out) if a.out else resolve(a.model) / FILE
        clf.save(out)
        print(f"\nwrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
