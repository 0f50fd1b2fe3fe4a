"""Self-describing checkpoint directories, written atomically.

A checkpoint directory holds::

    model.safetensors   weights of the unwrapped, uncompiled module
    config.json         format version, model / train / augment configs, tokenizer name,
                        config and vocabulary, the dataset it was trained on
    metrics.json        step, validation NLL, best NLL, tokens seen, elapsed seconds
    state.pt            (``last/`` only) optimizer, scheduler, RNG and sampler state

Shipped pretrained models are such directories inside the package (``cadenza/pretrained/
NAME``), named ``pretrained:NAME`` wherever a checkpoint is asked for; each has a model card
(``MODEL_CARD.md``) whose SHA-256 of the weights is checked when it loads.

``generate`` and ``evaluate`` need nothing else (given several, they use them as one
ensemble: :func:`load_members`). Saving writes a temporary sibling
directory, then swaps it in with two renames (old aside, new in place); a crash between
the two leaves ``.NAME.old`` beside it, which :func:`resolve` falls back to, so a kill at any
moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import aside, file_digests, staged_dir, user_mode
from .config import (
    FORMAT_VERSION,
    ConfigError,
    ModelConfig,
    TrainConfig,
    transposition_shifts,
)
from .data.styles import Tags
from .data.task import Continue, Task
from .data.tokenizers import Tokenizer, build_tokenizer
from .models import build_model
from .models.ensemble import Relabelled

REQUIRED = ("model.safetensors", "config.json")
PRETRAINED = Path(__file__).parent / "pretrained"
CARD = "MODEL_CARD.md"
CARD_HASH = re.compile(r"SHA-256 of model\.safetensors: `([0-9a-f]{64})`")


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: Path, model: torch.nn.Module, config: RunRecord,
                    metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(path) as tmp:
        tied = tied_weights(model)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                   if k not in tied}  # a tied tensor is stored once, under its first name
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config.to_json(), indent=1) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        if state is not None:
            torch.save(state, tmp / "state.pt")
        _fsync_dir(tmp)


def tied_weights(model: torch.nn.Module) -> dict[str, str]:
    """Entries of the state dict that are another entry's tensor (tied embeddings): each
    name -> the first name holding that tensor."""
    first: dict[tuple, str] = {}
    tied = {}
    for k, v in model.state_dict().items():
        if v.numel() == 0:
            continue
        key = (v.data_ptr(), v.dtype, tuple(v.shape), v.stride())
        if key in first:
            tied[k] = first[key]
        else:
            first[key] = k
    return tied


def _fsync_dir(d: Path) -> None:
    for f in d.iterdir():
        user_mode(f)  # safetensors writes 0600
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def pretrained_names() -> list[str]:
    return sorted(d.name for d in PRETRAINED.iterdir() if (d / "config.json").exists()) \
        if PRETRAINED.is_dir() else []


def resolve(path: str | Path) -> Path:
    """The checkpoint directory to read: ``path``, or its complete ``.old`` twin; or for
    ``pretrained:NAME`` the shipped model's directory, its weights checked against its card."""
    if str(path).startswith("pretrained:"):
        name = str(path).split(":", 1)[1]
        d = PRETRAINED / name
        if not name or "/" in name or not (d / "config.json").exists():
            raise CheckpointError(f"--checkpoint {path}: no such pretrained model (shipped: "
                                  f"{', '.join('pretrained:' + n for n in pretrained_names())})")
        return d
    path = Path(path)
    if path.is_dir() and all((path / f).exists() for f in REQUIRED):
        return path
    old = aside(path)
    if old.is_dir() and all((old / f).exists() for f in REQUIRED):
        return old
    if not path.exists():
        raise CheckpointError(f"--checkpoint {path}: no such checkpoint directory")
    missing = [f for f in REQUIRED if not (path / f).exists()]
    raise CheckpointError(f"--checkpoint {path}: incomplete checkpoint, missing "
                          f"{', '.join(missing)}")


@dataclass(frozen=True)
class DataRecord:
    """What a run was trained on: the dataset's folder, sources and split sizes, and its
    task (data/task.py)."""

    path: str
    sources: list[str]
    splits: dict[str, Any]
    task: Task = field(default_factory=Continue)
    tags: Tags | None = None  # the style tags its model reads (data/styles.py)

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "sources": self.sources, "splits": self.splits}
        if self.task.record() is not None:  # plain pieces: no record, as before tasks
            out["task"] = self.task.record()
        if self.tags is not None:
            out["tags"] = self.tags.record()
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> DataRecord:
        return DataRecord(d.get("path", ""), list(d.get("sources", [])),
                          dict(d.get("splits", {})), Task.of(d.get("task")),
                          Tags.of(d.get("tags")))


@dataclass(frozen=True)
class RunRecord:
    """A checkpoint's ``config.json``, written by train and read here only: the model and
    training settings (their configs' own dicts, so an older run's extra or missing keys
    are handled where the configs are rebuilt), the tokenizer (name, config and
    vocabulary), the data and the parameter count."""

    model: dict[str, Any]
    train: dict[str, Any]
    tokenizer: dict[str, Any]
    data: DataRecord
    parameters: int
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "model": self.model,
                "train": self.train, "tokenizer": self.tokenizer,
                "data": self.data.to_json(), "parameters": self.parameters}

    @staticmethod
    def from_json(d: dict[str, Any], where: Path) -> RunRecord:
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: checkpoint format {d.get('format_version')}, "
                                  f"expected {FORMAT_VERSION}")
        try:
            return RunRecord(d["model"], d["train"], d["tokenizer"],
                             DataRecord.from_json(d.get("data", {})), int(d.get("parameters",
                                                                                0)))
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: not a checkpoint's config ({e!r} missing or "
                                  "wrong)") from e


@dataclass
class Checkpoint:
    path: Path
    model: torch.nn.Module
    model_cfg: ModelConfig
    train: TrainConfig
    tokenizer: Tokenizer
    config: RunRecord  # its config.json
    metrics: dict[str, Any]
    stored_dtype: str = "fp32"  # of model.safetensors: "bf16" for shipped models

    @property
    def task(self) -> Task:
        """What it was trained for (data/task.py): continuing pieces, or a paired task of
        ``prepare --task`` with its bars per pair."""
        return self.config.data.task

    @property
    def tags(self) -> Tags | None:
        """The style tags its model reads (``--style``), or None."""
        return self.config.data.tags


def read_config(path: str | Path) -> RunRecord:
    """A checkpoint's config.json (directory or pretrained:NAME), without loading weights."""
    f = resolve(path) / "config.json"
    try:
        return RunRecord.from_json(json.loads(f.read_text()), f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from e


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metrics.json (directory or pretrained:NAME); {} when it has none."""
    f = resolve(path) / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else {}


def verify_weights(path: Path) -> None:
    """A directory with a model card: its weights must have the card's SHA-256."""
    card = path / CARD
    if not card.exists():
        return
    m = CARD_HASH.search(card.read_text())
    if m is None:
        return
    got = weights_digest(path, "sha256")
    if got != m.group(1):
        raise CheckpointError(f"{path / 'model.safetensors'}: damaged weights (SHA-256 "
                              f"{got[:16]}..., its model card says {m.group(1)[:16]}...); "
                              "reinstall Cadenza or restore the file")


def weights_digest(path: Path, algorithm: str) -> str:
    """``sha1`` or ``sha256`` of a checkpoint's model.safetensors: both from one read of the
    file, kept while its size and mtime stay the same (loading pretrained:piano again, for
    a second primer or a second command in one process, does not hash it again)."""
    f = Path(path) / "model.safetensors"
    st = f.stat()
    return _digests(str(f), st.st_size, st.st_mtime_ns)[algorithm]


@functools.lru_cache(maxsize=8)
def _digests(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    return file_digests(path, "sha1", "sha256")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = resolve(path)
    verify_weights(path)
    config = read_config(path)
    model_cfg = ModelConfig.from_dict(config.model)
    train_cfg = TrainConfig.from_dict(config.train)
    t = config.tokenizer
    tokenizer = build_tokenizer(t["name"], **t["config"])
    if tokenizer.vocab != t["vocab"]:
        raise CheckpointError(f"{path / 'config.json'}: vocabulary does not match "
                              f"tokenizer {t['name']} of this Cadenza version")
    model = build_model(model_cfg)
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as e:  # SafetensorError: truncated, empty or not safetensors at all
        raise CheckpointError(f"{path / 'model.safetensors'}: damaged or truncated weights "
                              f"({str(e).splitlines()[0][:100]})") from e
    stored = "bf16" if weights and all(v.dtype == torch.bfloat16
                                       for v in weights.values()) else "fp32"
    for name, same in tied_weights(model).items():
        if same in weights:
            weights.setdefault(name, weights[same])
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: weights do not match "
                              f"config.json ({str(e).splitlines()[0]})") from e
    model.to(device).eval()
    return Checkpoint(path, model, model_cfg, train_cfg, tokenizer, config, read_metrics(path),
                      stored)


def load_members(paths: str | Path | Sequence[str | Path],
                 device: str | torch.device = "cpu") -> list[Checkpoint]:
    """One checkpoint, or several that share a vocabulary (to be used as one ensemble)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    cks = [load_checkpoint(p, device=device) for p in paths]
    for other in cks[1:]:
        if other.tokenizer.vocab != cks[0].tokenizer.vocab:
            raise CheckpointError(f"--checkpoint {other.path}: its vocabulary differs from "
                                  f"{cks[0].path}'s ({other.tokenizer.name} vs "
                                  f"{cks[0].tokenizer.name})")
    return cks


def common_period(cks: list[Checkpoint]) -> int:
    """Windows must start where every member's voice period starts."""
    return math.lcm(*(max(1, c.model_cfg.voice_period) for c in cks))


def key_views(ck: Checkpoint, transpositions: int = 1) -> list[torch.nn.Module]:
    """The checkpoint's model reading the music in each of ``transpositions`` keys (the
    model itself for the piece's own key), to be averaged as an ensemble."""
    shifts = transposition_shifts(transpositions)
    if len(shifts) > 1 and (ck.tokenizer.pitches < 0).all():
        raise ConfigError(f"--transpositions: the {ck.tokenizer.name} tokens of {ck.path} "
                          "carry no pitch to transpose")
    return [ck.model if k == 0 else Relabelled(ck.model, ck.tokenizer.transpose_table(k))
            for k in shifts]
