"""A piece as a vector: ``cadenza embed`` and ``cadenza similar``.

A piece's embedding is what the model's hidden states say of it: the session's features
(session.py: the hidden states after the block named by ``--layer``, by default the last,
after the final norm: what the output layer reads) for every token of the piece, read in
consecutive windows of the model's context, averaged over the tokens and scaled to unit
length. The mean over tokens weighs every moment of the piece alike (a window mean would
weigh a short last window as much as a full one); unit length makes the dot product of two
embeddings their cosine similarity. ``--window-seconds S`` also gives one vector per S
seconds of music (the tokens whose time falls in each window), for finding a passage.

``similar`` ranks a library's pieces by cosine similarity to a query. The library's
embeddings are cached under ``$CADENZA_HOME/embeddings/`` by the model's weights, the layer
and each file's SHA-256, so a second query reads only the query (and any file that changed).

Python API::

    from cadenza.embed import embed_files, similar
    rows = similar("query.mid", "my_library/", top=5)   # [{"path", "score"}], best first
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, file_digests, staged_dir
from .config import EmbedConfig, SimilarConfig
from .data.corpus import cadenza_home
from .data.midi import BadInput, load_score
from .data.sources import SourceError, midi_files
from .data.tokenizers import BOS
from .session import Session

CACHE = "embeddings"  # under $CADENZA_HOME
MAX_FILE_MB = 16  # a MIDI file larger than this is not a piece to embed


@dataclass(frozen=True)
class Embedding:
    """One file's embedding: its ``vector`` (d,), unit length; with windows, ``windows``
    (n, d) and their [start, end) seconds ``spans`` (n, 2)."""

    path: str
    sha256: str
    tokens: int
    vector: np.ndarray
    windows: np.ndarray | None = None
    spans: np.ndarray | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def piece_ids(session: Session, path: Path) -> np.ndarray:
    """The piece's tokens as the model reads a primer (BOS first), the whole file."""
    if path.stat().st_size > MAX_FILE_MB * 1_000_000:
        raise BadInput(f"{path}: larger than {MAX_FILE_MB} MB; not a piece to embed")
    try:
        ids = session.tok.encode_primer(load_score(path), 0.0)
    except BadInput as e:
        raise BadInput(f"{path}: {e}") from e
    if not len(ids):
        raise BadInput(f"{path}: no notes")
    return np.concatenate([[BOS], ids]).astype(np.int64)


def token_times(session: Session, ids: np.ndarray, until: float | None = None) -> np.ndarray:
    """(T,) the music's time (seconds) after each token (BOS excluded), by the grammar;
    with ``until``, only as far as the first token past that time."""
    g = session.tok.grammar()
    g.reset(1)
    out = []
    for i in ids:
        g.feed(np.array([[i]]))
        out.append(g.elapsed()[0])
        if until is not None and out[-1] > until:
            break
    return np.array(out, float)


def embed_one(session: Session, path: Path, layer: int = -1,
              window_seconds: float = 0.0) -> Embedding:
    """One MIDI file's embedding (see the module's doc)."""
    ids = piece_ids(session, path)
    h = session.features(ids, layers=(layer,))[0]  # (T - 1, d): every token after BOS
    windows = spans = None
    if window_seconds > 0:
        times = token_times(session, ids[1:])
        k = (times // window_seconds).astype(int)
        found = np.unique(k)
        windows = _unit(np.stack([h[k == j].mean(0) for j in found]))
        spans = np.stack([found * window_seconds, (found + 1) * window_seconds], 1)
    sha = file_digests(path, "sha256")["sha256"]
    return Embedding(str(path), sha, int(len(h)), _unit(h.mean(0)), windows, spans)


def _files(inputs: list[str], flag: str) -> list[Path]:
    try:
        files = midi_files([Path(p) for p in inputs])
    except SourceError as e:
        raise BadInput(str(e).replace("--data", flag)) from e
    return files


def embed_files(session: Session, inputs: list[str], layer: int = -1,
                window_seconds: float = 0.0) -> tuple[list[Embedding], list[dict[str, str]]]:
    """Every MIDI file named or found in ``inputs``: the embeddings, and the files skipped
    (unreadable as MIDI) with why."""
    out, skipped = [], []
    for f in _files(inputs, "FILES"):
        try:
            out.append(embed_one(session, f, layer, window_seconds))
        except BadInput as e:
            skipped.append({"path": str(f), "why": str(e)})
    return out, skipped


def run_embed(cfg: EmbedConfig, *, device: str = "cpu") -> dict[str, Any]:
    """``cadenza embed``: ``embeddings.npy`` (N, d), with ``--window-seconds`` also
    ``windows.npy``, and ``index.json`` (each file's path, SHA-256, tokens, row and
    windows), written into a temporary folder and moved into ``--out`` as one."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.force:
        raise BadInput(f"--out {out}: not empty; choose another folder or --force")
    session = Session.load(cfg.checkpoint, device=device)
    embs, skipped = embed_files(session, list(cfg.inputs), cfg.layer, cfg.window_seconds)
    if not embs:
        raise BadInput(f"FILES {' '.join(cfg.inputs)}: no MIDI file could be read"
                       + (f" ({skipped[0]['why']})" if skipped else ""))
    index: dict[str, Any] = {"checkpoint": cfg.checkpoint, "checkpoint_sha1":
                             session.checkpoint_hash, "layer": cfg.layer,
                             "window_seconds": cfg.window_seconds, "files": [],
                             "skipped": skipped}
    row = 0
    for i, e in enumerate(embs):
        entry: dict[str, Any] = {"path": e.path, "sha256": e.sha256, "tokens": e.tokens,
                                 "row": i}
        if e.windows is not None:
            entry["windows"] = {"rows": [row, row + len(e.windows)],
                                "spans": e.spans.round(3).tolist()}
            row += len(e.windows)
        index["files"].append(entry)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out) as tmp:
        np.save(tmp / "embeddings.npy", np.stack([e.vector for e in embs]))
        if cfg.window_seconds > 0:
            np.save(tmp / "windows.npy", np.concatenate([e.windows for e in embs]))
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


# --- similar -------------------------------------------------------------------------------


def _cache_dir(session: Session, layer: int) -> Path:
    return cadenza_home() / CACHE / f"{session.checkpoint_hash or 'model'}-layer{layer}"


def cached_vector(session: Session, path: Path, layer: int) -> np.ndarray:
    """A file's embedding, from the cache when this model and layer have read these bytes
    before (else computed and cached)."""
    folder = _cache_dir(session, layer)
    f = folder / (file_digests(path, "sha256")["sha256"] + ".npy")
    if f.exists():
        try:
            return np.load(f)
        except (OSError, ValueError):
            pass  # a damaged cache entry: computed again
    v = embed_one(session, path, layer).vector
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(f) as tmp, open(tmp, "wb") as fh:
        np.save(fh, v)
    return v


def similar(query: str, library: str, *, top: int = 10, checkpoint: str = "pretrained:piano",
            layer: int = -1, device: str = "cpu") -> list[dict[str, Any]]:
    """The ``top`` pieces of ``library`` most like ``query``, best first: ``{"path",
    "score"}`` with the cosine similarity of their embeddings."""
    q = Path(query)
    if not q.is_file():
        raise BadInput(f"QUERY {query}: no such file")
    files = _files([library], "--library")
    session = Session.load(checkpoint, device=device)
    try:
        qv = embed_one(session, q, layer).vector
    except BadInput as e:
        raise BadInput(f"QUERY {e}") from e
    scores = []
    for f in files:
        try:
            scores.append((float(cached_vector(session, f, layer) @ qv), str(f)))
        except BadInput:
            continue  # not a readable piece: not a candidate
    if not scores:
        raise BadInput(f"--library {library}: no readable MIDI file")
    scores.sort(key=lambda s: (-s[0], s[1]))
    return [{"path": p, "score": round(s, 6)} for s, p in scores[:top]]


def run_similar(cfg: SimilarConfig, *, device: str = "cpu") -> list[dict[str, Any]]:
    """``cadenza similar``."""
    return similar(cfg.query, cfg.library, top=cfg.top, checkpoint=cfg.checkpoint,
                   layer=cfg.layer, device=device)
