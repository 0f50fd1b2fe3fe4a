"""Reading a prepared dataset and sampling training windows from it.

:class:`TokenDataset` memory-maps the shards written by ``prepare``. :class:`WindowSampler`
draws random windows of ``context + 1`` tokens from training pieces (windows never cross a
piece boundary; a piece shorter than the window is padded, and its padding is ignored by the
loss), chosen so that every token of every piece is about equally likely to be a target
(see ``draw``), and augments each window on the fly with the tokenizer's ``augment``.

Why on the fly rather than at prepare time: every epoch sees fresh transpositions, stretches
and velocity shifts, the dataset on disk stays one copy of the music (12x smaller than
storing every transposition), and valid/test cannot be touched because only this sampler,
which only ever reads the train split, augments. ``augment`` is a pure function of
(window, rng), so tests check it directly.

The sampler's whole state is its numpy Generator state, saved in checkpoints for exact
resume. Under DDP every rank draws the same *global* batch and keeps its own slice.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FORMAT_VERSION, AugmentConfig
from . import fim as fim_order
from .styles import Conditioning, Tags
from .tokenizers import PAD, Tokenizer, build_tokenizer

IGNORE = -100  # target id the loss skips (padding)


class DatasetError(ValueError):
    pass


class TokenDataset:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not self.path.is_dir():
            raise DatasetError(f"--data {self.path}: no such dataset directory "
                               "(create one with `cadenza prepare`)")
        if not mf.exists():
            raise DatasetError(f"--data {self.path}: no manifest.json; not a prepared dataset "
                               "or an interrupted one (run `cadenza prepare` again)")
        self.manifest: dict[str, Any] = json.loads(mf.read_text())
        v = self.manifest.get("format_version")
        if v != FORMAT_VERSION:
            raise DatasetError(f"--data {self.path}: dataset format {v}, this Cadenza reads "
                               f"{FORMAT_VERSION}; prepare it again")
        t = self.manifest["tokenizer"]
        self.tokenizer: Tokenizer = build_tokenizer(t["name"], **t["config"])
        if self.tokenizer.vocab != t["vocab"]:
            raise DatasetError(f"--data {self.path}: vocabulary differs from tokenizer "
                               f"{t['name']} of this version; prepare it again")
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def files(self, split: str | None = None) -> list[dict[str, Any]]:
        """The manifest's row of each source file (its path, source, split, style, ...), of
        one split or all."""
        return [r for r in self.manifest["files"] if split is None or r["split"] == split]

    @property
    def tags(self) -> Tags | None:
        """The style tags its pieces carry (``prepare --tags``), or None."""
        return Tags.of(self.manifest.get("tags"))

    def piece_tags(self, name: str) -> np.ndarray:
        """(pieces, 2): each piece's style and kind as positions in ``tags.names`` (-1:
        none) of a tagged dataset's split."""
        return np.load(self.path / f"{name}.tags.npy").astype(np.int64)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str, side: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(tokens uint16 memmap, offsets int64) of a split; ``side="source"``: a paired
        dataset's sources (the pieces are its targets)."""
        key = f"{name}.{side}" if side else name
        if key not in self._splits:
            tok, off = self.path / f"{key}.tokens.npy", self.path / f"{key}.offsets.npy"
            if name not in self.manifest["splits"]:
                raise DatasetError(f"--data {self.path}: has no '{name}' split "
                                   f"(it has {', '.join(self.splits)})")
            if side and not self.manifest.get("task"):  # data/task.py reads the record
                raise DatasetError(f"--data {self.path}: not a paired dataset (prepare it "
                                   "with --task harmonize or --task accompany)")
            if not tok.exists() or not off.exists():
                raise DatasetError(f"--data {self.path}: {tok.name} or {off.name} is missing")
            self._splits[key] = (np.load(tok, mmap_mode="r"), np.load(off))
        return self._splits[key]

    def pieces(self, name: str, side: str = "") -> list[np.ndarray]:
        """Every piece of a split as int64 [BOS, content..., EOS] (of a paired dataset: its
        targets, or with ``side="source"`` its sources)."""
        tokens, off = self.split(name, side)
        return [np.asarray(tokens[a:b], np.int64) for a, b in zip(off[:-1], off[1:])]


@dataclass(frozen=True)
class BatchPlan:
    """How training batches are drawn: windows of ``context`` tokens, ``batch_size`` of them
    a step (the global batch: this process draws its share, ``rank`` of ``world``),
    augmented by ``augment``, from a generator seeded with ``seed``, starting on multiples
    of ``period``; ``tags``: the run's tag vocabulary (a tagged dataset's windows start
    with their piece's tags, each dropped with probability ``tag_dropout``), with the
    fill-in-the-middle marks when ``fim`` (the share of windows in that order) is set."""

    context: int
    batch_size: int
    augment: AugmentConfig | None = None
    seed: int = 0
    period: int = 0
    rank: int = 0
    world: int = 1
    tag_dropout: float = 0.2
    fim: float = 0.0
    tags: Tags | None = None


class WindowSampler:
    def __init__(self, ds: TokenDataset, plan: BatchPlan) -> None:
        context, batch_size, period = plan.context, plan.batch_size, plan.period
        fim, tags, augment = plan.fim, plan.tags, plan.augment
        seed, rank, world, tag_dropout = plan.seed, plan.rank, plan.world, plan.tag_dropout
        self.tokens, self.offsets = ds.split("train")
        # a tagged dataset's windows start with their piece's tags (styles.py)
        self.tags, self.tag_dropout = tags or ds.tags, tag_dropout
        self.piece_tags = ds.piece_tags("train") if ds.tags is not None else None
        # a share of the windows in the fill-in-the-middle order (fim.py); the run's tags
        # (``tags``) then end with its marks
        self.fim = fim
        self.marks = self.tags.mark_ids() if fim else (0, 0)
        self.tok = ds.tokenizer
        self.context, self.batch_size = context, batch_size
        self.augment = augment
        self.rank, self.world = rank, world
        # Windows start at multiples of `period` from the piece start, so that a voice
        # embedding (position mod period) means the same voice in every window.
        self.period = p = max(1, period)
        # Every target token about equally likely to be trained on, whatever the length of
        # its piece and its place in it. A "virtual" start s = p*k is drawn uniformly among
        # all that reach a target of the piece: s in [1 - T, L - 2]; each target is reached
        # by T of them. The window actually read starts at s clipped into the piece
        # (0 .. s_max, the first start whose window reaches EOS), so windows are full
        # where the piece allows, and its first and last T tokens are trained on 1-2x as
        # often as the middle (not 1/T as often, as when starts ran over 0..L-T-1 only; a
        # piece shorter than the window then got one draw for all its tokens). The last
        # window ends on EOS even with a period, so models learn to stop.
        self.lengths = L = np.diff(self.offsets)
        T = context
        self.k_lo = -((T - 1) // p)
        k_hi = (L - 2) // p
        self.s_max = -(-np.maximum(L - (T + 1), 0) // p) * p
        self.cum = np.cumsum(k_hi - self.k_lo + 1)
        self.rng = np.random.default_rng(seed)
        # time-stretch may shorten a window: read a margin of extra tokens
        self.margin = context // 8 + 8 if augment and augment.stretch != (1.0, 1.0) else 0

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(piece index, start within the piece) of n windows of context + 1 tokens."""
        u = self.rng.integers(0, self.cum[-1], size=n)
        piece = np.searchsorted(self.cum, u, side="right")
        k = self.k_lo + u - np.concatenate([[0], self.cum[:-1]])[piece]
        return piece, np.clip(k * self.period, 0, self.s_max[piece])

    def next_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """This rank's slice of the global batch: the model's inputs by name (``idx``, (B,
        context)) and the targets (B, context), and the number of real targets in the
        *global* batch (so a sum-then-divide loss averaged by DDP equals the single-process
        loss exactly)."""
        T = self.context
        piece, start = self.draw(self.batch_size)
        x = np.full((self.batch_size, T + 1), PAD, np.int64)
        mask = np.zeros((self.batch_size, T + 1), bool)
        for b in range(self.batch_size):  # B is small; each row is one numpy slice
            a = self.offsets[piece[b]] + start[b]
            end = self.offsets[piece[b] + 1]
            # a window in the fill-in-the-middle order loses its tail after the right side:
            # it reads up to T / 2 tokens before its start, to fill the left side instead
            infill = self.fim > 0 and self.rng.random() < self.fim
            lo = max(self.offsets[piece[b]], a - T // 2) if infill else a
            w = np.asarray(self.tokens[lo: min(a + T + 1 + self.margin, end)], np.int64)
            if self.augment is not None:
                w = self.tok.augment(w, self.rng, self.augment)
            head = Conditioning() if self.piece_tags is None else Conditioning(tuple(
                self.tags.window_prefix(*self.piece_tags[piece[b]], self.rng,
                                        self.tag_dropout)))
            if infill:
                fw = fim_order.reorder(self.tok, w, self.rng, T + 1 - len(head), self.marks)
                w = w[a - lo:] if fw is None else fw
            w = head.prepend(w, T + 1)
            x[b, : len(w)] = w
            # targets: the content's next tokens (a tag is read, never predicted, and
            # predicts nothing: the first content token is a target only within the piece;
            # nor is a mark of the fill-in-the-middle order ever predicted)
            mask[b, len(head) + 1: len(w)] = w[len(head) + 1:] < self.tok.vocab_size
        lo = self.rank * self.batch_size // self.world
        hi = (self.rank + 1) * self.batch_size // self.world
        inp = torch.from_numpy(x[lo:hi, :-1])
        tgt = torch.from_numpy(np.where(mask[lo:hi, 1:], x[lo:hi, 1:], IGNORE))
        return {"idx": inp}, tgt, int(mask[:, 1:].sum())


class Prefetcher:
    """Draws a sampler's next batches in a background thread while the model steps, so
    sampling windows, augmenting and batching leave the step's critical path.

    The stream is the sampler's own, batch for batch: one thread draws them in order from
    its one generator. ``state_dict()`` is the sampler's state just after the last batch
    handed out (not after those drawn ahead), so a run saved and resumed continues with
    the same batches it would have had."""

    def __init__(self, sampler, depth: int = 2) -> None:
        self.sampler, self.depth = sampler, depth
        self.queue: queue.Queue = queue.Queue(depth)
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.state = sampler.state_dict()

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                item: Any = (self.sampler.next_batch(), self.sampler.state_dict())
                while not self.stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, raised in its thread
            self.queue.put(e)

    def next_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="cadenza-batches",
                                           daemon=True)
            self.thread.start()
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self.state = item
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.thread is not None:
            raise RuntimeError("a prefetcher's state is set before its first batch")
        self.sampler.load_state_dict(state)
        self.state = self.sampler.state_dict()

    def close(self) -> None:
        """Stop the thread (the batches drawn ahead are dropped)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
