"""``cadenza prepare``: sources -> a tokenized dataset directory, split by piece.

Layout of the output directory::

    manifest.json            tokenizer (name, config, vocabulary), splits, per-file records,
                             skipped files with reasons, totals, format version
    train.tokens.npy         uint16, every piece as [BOS, content..., EOS], concatenated
    train.offsets.npy        int64 (n_pieces + 1,) boundaries into train.tokens.npy
    valid.* / test.*         the same

Splits are decided per piece *before* augmentation, from the content hash (benchmark files
keep their own splits). Augmentation is not stored: the training loader applies it on the
fly to training windows only (see dataset.py), so valid and test can never see it and the
dataset stays one copy of the music. The directory is built under a temporary name and
renamed into place; the same command twice gives byte-identical files.

Try it: ``cadenza prepare builtin:chorales --out data/chorales``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..atomic import staged_dir, temp_dir
from ..config import FORMAT_VERSION, ConfigError, PrepareConfig
from . import pairs
from .midi import BadInput, load_score, notes_from_score, select_tracks
from .sources import SPLITS, Item, expand_sources, hash_split, ids_digest, music_digest
from .styles import Tags, piece_style
from .task import Paired, Task, split_of
from .tokenizers import Tokenizer, build_tokenizer, framed
from .tokenizers.grid import Roll


class PrepareError(ValueError):
    """A fatal problem (with --strict, the first bad file)."""


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        m = self.manifest
        lines = [f"dataset {self.out}  tokenizer {m['tokenizer']['name']}  "
                 f"vocabulary {len(m['tokenizer']['vocab'])}"]
        if "task" in m:
            lines[0] += f"  task {m['task']['name']} ({m['task']['bars']} bars a pair)"
        if "tags" in m:
            t = Tags.of(m["tags"])
            lines.append(f"  tags  {len(t.styles)} styles ({', '.join(t.styles[:6])}"
                         f"{', ...' if len(t.styles) > 6 else ''}), kinds "
                         f"{', '.join(t.kinds) or 'none'}, and the group classical")
        for s, info in m["splits"].items():
            if "songs" in info:
                lines.append(f"  {s:<5} {info['pieces']:>6} pairs from {info['songs']} pieces: "
                             f"source {info['source_tokens']:,} tokens, target "
                             f"{info['tokens']:,} (longest {info['source_longest']} and "
                             f"{info['longest']})")
            else:
                lines.append(f"  {s:<5} {info['pieces']:>6} pieces {info['tokens']:>11,} "
                             "tokens")
        if len(m.get("per_source", {})) > 1 or any(
                v["layout"] not in ("folder", "file") for v in m.get("per_source", {}).values()):
            for src, v in m["per_source"].items():
                counts = ", ".join(f"{n} {s}" for s, n in v["splits"].items())
                lines.append(f"  from {src} ({v['layout']}): {counts or 'nothing usable'}")
        t = m["totals"]
        if t.get("multitrack_files") or t.get("drum_notes_dropped") or t.get(
                "other_notes_dropped"):
            lines.append(f"  {t['multitrack_files']} files had several tracks merged into one "
                         f"piano part; {t['drum_notes_dropped']:,} drum notes and "
                         f"{t['other_notes_dropped']:,} notes of other programs left out "
                         f"(--programs {m['programs']}; per file in manifest.json)")
        lines.append(f"  skipped {len(self.skipped)} files")
        for sk in self.skipped[:20]:
            lines.append(f"    {sk['path']}: {sk['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"    ... {len(self.skipped) - 20} more in manifest.json")
        return "\n".join(lines)


def encode_file(path: str, tok: Tokenizer, max_mb: float = 20.0, sustain: bool = True,
                programs: str = "all") -> tuple[np.ndarray, str, dict[str, int]]:
    """One MIDI file, whole -> (token ids without BOS/EOS, music digest, track facts).
    Raises BadInput with the reason a file cannot be used, also when a library crashes on
    it: a bad file is a bad file, not a bad run (prepare skips it, evaluate lists it)."""
    try:
        score, facts = select_tracks(load_score(path, max_mb), programs)
        ids = tok.encode(tok.piece_from_source(score, sustain))
        if len(ids) == 0:
            raise BadInput("no notes the tokenizer can use")
        if ids.max() >= 65535:
            raise BadInput("token id does not fit uint16")
        return ids, music_digest(notes_from_score(score, sustain_pedal=False)), facts
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"unreadable ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:100] if str(e) else ''})") from e


def _encode_midi(args: tuple[str, str, dict, float, bool, str]) -> tuple[str, Any]:
    """Worker: one MIDI file -> ("ok", (digest, ids, track facts)) or ("skip", reason)."""
    path, tok_name, tok_cfg, max_mb, sustain, programs = args
    tok = build_tokenizer(tok_name, **tok_cfg)
    try:
        ids, digest, facts = encode_file(path, tok, max_mb, sustain, programs)
        return "ok", (digest, ids.astype(np.uint16), facts)
    except BadInput as e:
        return "skip", str(e)


def prepare(cfg: PrepareConfig, progress: bool = True) -> PrepareResult:
    out = Path(cfg.out)
    task = Task.named(cfg.task, cfg.bars)
    scheme = task.tokenizer_for(cfg.tokenizer)
    check_out(out, cfg.force)
    items, layouts = expand_sources(cfg.sources, workers=cfg.workers, exclude=cfg.exclude)
    tok_cfg: dict[str, Any] = {}
    rolls = [it.grid for it in items if isinstance(it.grid, Roll)]
    if scheme == "pianoroll" and rolls:
        tok_cfg["step_seconds"] = rolls[0].step_seconds  # keep the benchmark's frame rate
    tok = build_tokenizer(scheme, **tok_cfg)
    tok_cfg = tok.config()
    if isinstance(task, Paired):
        if cfg.tags:
            raise ConfigError(f"--tags: style tags are for pieces to continue, not --task "
                              f"{task} pairs")
        return prepare_pairs(cfg, task, items, layouts, tok, progress)

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    encoded: list[tuple[Item, np.ndarray]] = []

    def skip(item: Item, reason: str) -> None:
        if cfg.strict:
            raise PrepareError(f"{item.name}: {reason}")
        skipped.append({"path": item.name, "reason": reason})

    midi = [it for it in items if it.grid is None]
    bench = [it for it in items if it.grid is not None]
    for it in bench:
        try:
            ids = tok.encode(tok.piece_from_source(it.grid, cfg.sustain_pedal))
            if len(ids) == 0:
                raise BadInput("empty piece")
            encoded.append((it, ids.astype(np.uint16)))
        except BadInput as e:
            skip(it, str(e))
    jobs = [(it.path, tok.name, tok_cfg, cfg.max_file_mb, cfg.sustain_pedal, cfg.programs)
            for it in midi]
    with _pool(cfg.workers) as pool:
        results = pool.map(_encode_midi, jobs, chunksize=4) if pool else map(_encode_midi, jobs)
        for it, (status, val) in tqdm(zip(midi, results), total=len(midi), unit="file",
                                      desc="tokenizing", disable=not progress or not midi):
            if status == "skip":
                skip(it, val)
            else:
                it.digest, ids, it.tracks = val
                encoded.append((it, ids))

    # Split by piece before any augmentation, from the hash of the music (not of the
    # file's bytes). A duplicate (the same notes, or the same tokens) is kept once, so the
    # same music can never sit in train and in valid/test.
    seen: dict[str, str] = {}
    by_split: dict[str, list[tuple[Item, np.ndarray]]] = {s: [] for s in SPLITS}
    for it, ids in sorted(encoded, key=lambda x: (x[0].path, x[0].split or "", x[0].index or 0)):
        keys = (it.digest, ids_digest(ids))
        dup = next((seen[k] for k in keys if k in seen), None)
        if dup is not None and it.split is None:
            skip(it, f"duplicate of {dup}")
            continue
        for k in keys:
            seen.setdefault(k, it.name)
        split = it.split or hash_split(it.group or it.digest, cfg.valid_frac, cfg.test_frac)
        by_split[split].append((it, ids))
    _ensure_nonempty(by_split, cfg, midi_only=not bench)
    if not any(by_split.values()):
        raise PrepareError("no usable pieces in " + ", ".join(cfg.sources)
                           + (f" ({len(skipped)} skipped, e.g. {skipped[0]['path']}: "
                              f"{skipped[0]['reason']})" if skipped else ""))
    tok.fit_grammar(ids for _, ids in by_split["train"])  # read only by learnt grammars

    style = {it.name: piece_style(it.path, it.source, layouts[it.source], cfg.kind,
                                  it.composer)
             for pieces in by_split.values() for it, _ in pieces} if cfg.tags else {}
    tags = Tags.collect(list(style.values()), tok.vocab_size) if cfg.tags else None
    with staged_dir(out) as tmp:
        splits_info = {}
        for split, pieces in by_split.items():
            if not pieces:
                continue
            lengths = _save_stream(tmp, split, [ids for _, ids in pieces])
            splits_info[split] = {"pieces": len(pieces), "tokens": int(lengths.sum())}
            if tags is not None:  # each piece's (style, kind) as positions in tags.names
                np.save(tmp / f"{split}.tags.npy", np.array(
                    [tags.indices(*style[it.name]) for it, _ in pieces], np.int16))
            for (it, ids), k in zip(pieces, range(len(pieces))):
                records.append({"path": it.name, "source": it.source,
                                "music_sha1": it.digest, "split": split,
                                "piece": k, "tokens": int(len(ids)),
                                **(it.tracks or {}),
                                **(dict(zip(("style", "kind"), style[it.name]))
                                   if tags is not None else {})})
        extra = {"tags": tags.record()} if tags is not None else {}
        manifest = _manifest(cfg, tok, layouts, splits_info, records, skipped, "piece", {
            "multitrack_files": sum(r.get("tracks", 1) > 1 for r in records),
            "drum_notes_dropped": sum(r.get("drum_notes_dropped", 0) for r in records),
            "other_notes_dropped": sum(r.get("other_notes_dropped", 0) for r in records)},
            **extra)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return PrepareResult(out, manifest, manifest["skipped"])


def prepare_pairs(cfg: PrepareConfig, task: Paired, items: list[Item],
                  layouts: dict[str, str], tok: Tokenizer, progress: bool = True
                  ) -> PrepareResult:
    """``--task harmonize|accompany``: source -> target pairs of ``task.bars`` bars
    (data/task.py), split by piece (a benchmark file's own splits; songs by their music's
    hash)."""
    skipped: list[dict[str, str]] = []
    by_split: dict[str, list[tuple[Item, list[pairs.Pair]]]] = {s: [] for s in SPLITS}

    def skip(item: Item, reason: str) -> None:
        if cfg.strict:
            raise PrepareError(f"{item.name}: {reason}")
        skipped.append({"path": item.name, "reason": reason})

    seen: dict[str, str] = {}
    for it in tqdm(sorted(items, key=lambda i: (i.path, i.split or "", i.index or 0)),
                   unit="piece", desc="pairing",
                   disable=not progress or all(it.grid is not None for it in items)):
        try:
            piece = task.read(it, tok, cfg.max_file_mb)
            digest = piece.digest
            split = split_of(piece, it, cfg.valid_frac, cfg.test_frac)
            made = task.pairs(piece, tok, split == "train")
            if not made:
                raise BadInput("no window with a melody")
        except BadInput as e:
            skip(it, str(e))
            continue
        if digest in seen and it.split is None:
            skip(it, f"duplicate of {seen[digest]}")
            continue
        seen.setdefault(digest, it.name)
        by_split[split].append((it, made))
    if not by_split["train"] or not any(by_split[s] for s in ("valid", "test")):
        raise PrepareError(f"--task {task}: needs training and validation pieces in "
                           + ", ".join(cfg.sources) + f" ({len(skipped)} skipped"
                           + (f", e.g. {skipped[0]['path']}: {skipped[0]['reason']})"
                              if skipped else ")"))
    out = Path(cfg.out)
    with staged_dir(out) as tmp:
        splits_info, records = {}, []
        for split, entries in by_split.items():
            if not entries:
                continue
            flat = [p for _, made in entries for p in made]
            for side in ("target", "source"):
                stem = split if side == "target" else f"{split}.source"
                lengths = _save_stream(tmp, stem, [getattr(p, side) for p in flat])
                info = {"pieces": len(lengths), "tokens": int(lengths.sum()),
                        "longest": int(lengths.max())}
                if side == "target":
                    splits_info[split] = {**info, "songs": len(entries)}
                else:
                    splits_info[split]["source_tokens"] = info["tokens"]
                    splits_info[split]["source_longest"] = info["longest"]
            for it, made in entries:
                records.append({"path": it.name, "source": it.source, "split": split,
                                "pairs": len(made)})
        manifest = _manifest(cfg, tok, layouts, splits_info, records, skipped, "path", {
            "pairs": sum(s["pieces"] for s in splits_info.values())},
            task=task.record())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return PrepareResult(out, manifest, manifest["skipped"])


def _save_stream(folder: Path, stem: str, pieces: list[np.ndarray]) -> np.ndarray:
    """STEM.tokens.npy (every piece as [BOS, content..., EOS], uint16, concatenated) and
    STEM.offsets.npy (the boundaries); returns each framed piece's length."""
    seqs = [framed(ids).astype(np.uint16) for ids in pieces]
    lengths = np.array([len(f) for f in seqs], np.int64)
    np.save(folder / f"{stem}.tokens.npy", np.concatenate(seqs))
    np.save(folder / f"{stem}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    return lengths


def _manifest(cfg: PrepareConfig, tok: Tokenizer, layouts: dict[str, str],
              splits_info: dict[str, Any], records: list[dict[str, Any]],
              skipped: list[dict[str, str]], order: str, totals: dict[str, int],
              **extra: Any) -> dict[str, Any]:
    """manifest.json: the tokenizer (to rebuild it exactly), the options, each split's size,
    every file's record (sorted by split, then ``order``) and every skipped file's reason."""
    counts = Counter((r["source"], r["split"]) for r in records)
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"name": tok.name, "config": tok.config(), "vocab": tok.vocab},
        **extra,
        "sources": list(cfg.sources),
        "per_source": {src: {"layout": layouts[src], "splits": {
            s: counts[src, s] for s in SPLITS if counts[src, s]}} for src in cfg.sources},
        "exclude": list(cfg.exclude),
        "valid_frac": cfg.valid_frac, "test_frac": cfg.test_frac,
        "sustain_pedal": cfg.sustain_pedal, "programs": cfg.programs,
        "splits": splits_info,
        "files": sorted(records, key=lambda r: (r["split"], r[order])),
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "totals": {"pieces": len(records), "skipped": len(skipped),
                   "tokens": sum(s["tokens"] for s in splits_info.values()), **totals},
    }


def check_out(out: Path, force: bool) -> None:
    """Before any work: --out must be new, empty, or (with --force) a dataset to replace,
    and its folder writable. Never replaces anything that is not a Cadenza dataset."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out}: is a file, not a dataset directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").exists():
            raise PrepareError(f"--out {out}: exists and is not a Cadenza dataset; "
                               "refusing to replace it")
        if not force:
            raise PrepareError(f"--out {out}: already holds a dataset; pass --force to "
                               "replace it, or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp_dir(out))  # can a directory be made there?
    except OSError as e:
        raise PrepareError(f"--out {out}: cannot write there ({e.strerror})") from e


def _ensure_nonempty(by_split: dict, cfg: PrepareConfig, midi_only: bool) -> None:
    """Small collections: make sure valid (and test) get a piece when >= 3 training pieces
    had their split from the hash (a corpus's own split is never changed)."""
    if not midi_only:
        return
    for split, frac in (("valid", cfg.valid_frac), ("test", cfg.test_frac)):
        train = by_split["train"]
        hashed = [i for i, (it, _) in enumerate(train) if it.split is None]
        if frac > 0 and not by_split[split] and len(hashed) >= 3:
            k = max(hashed, key=lambda i: train[i][0].digest)  # deterministic
            by_split[split].append(train.pop(k))


class _pool:
    """A process pool for workers > 1, nothing (in-process) for 1."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(workers) if workers > 1 else None

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)
