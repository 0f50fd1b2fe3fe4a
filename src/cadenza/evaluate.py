"""``cadenza evaluate``: exact negative log-likelihood of a split under a checkpoint.

NLL is scored on every *content* token of each piece (BOS is given, EOS is not scored: the
published JSB and piano-roll numbers score the music only). A piece longer than the model's
context is scored with a sliding window: windows of ``context`` tokens advance by ``stride``
(default context // 2, rounded down to the voice period), and each window scores only the
targets the previous one did not, so every target after the first window sees at least
``context - stride`` tokens of history. Per-frame (pianoroll) and per-step (chorale16) NLL
are sums of their tokens' NLL. In ``chorale16`` every token is one voice's note at one step,
so NLL per token is the paper's NLL per note. Several checkpoints are scored as one ensemble,
and ``transpositions`` averages each model over keys (models/ensemble.py); both stay exact
likelihoods.

``--data`` is a prepared dataset (one of its splits), a benchmark file (one of its splits), or
MIDI files and folders: each file is tokenized with the checkpoint's tokenizer and scored
whole, and the result lists every file's NLL (the total is their token-weighted mean).

Try it: ``cadenza evaluate --checkpoint runs/demo/best --data data/chorales --split valid``, or
``cadenza evaluate --checkpoint pretrained:piano --data my_midi/ --json``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .adapt import Adaptation, score_adapted
from .checkpoint import common_period, key_views, load_members
from .config import ConfigError, EvaluateConfig, transposition_shifts
from .data.dataset import TokenDataset
from .data.pairs import pad_batch, prefix_sequence
from .data.prepare import encode_file
from .data.sources import BENCHMARK_SUFFIXES, BadInput, SourceError, midi_files, read_benchmark
from .data.styles import Conditioning
from .data.task import Task
from .data.tokenizers import framed


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a piece of n tokens whose targets are positions 1..n-2 (no EOS):
    (start, width, first scored target position)."""
    last = n - 2  # last content position
    if last < 1:
        return []
    out, s, scored = [], 0, 0
    while scored < last:
        w = min(context, last - s)  # inputs s..s+w-1 predict targets s+1..s+w
        out.append((s, w, scored + 1))
        scored = s + w
        s += stride
    return out


class MissingSplit(ValueError):
    """The benchmark file or dataset has no such split (e.g. a train/valid-only copy)."""


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def slow_bf16(device: torch.device) -> bool:
    """True on a CPU without bf16 arithmetic (no AVX-512 BF16 or AMX: oneDNN says so), where
    bf16 autocast is emulated and runs many times slower than fp32."""
    if device.type != "cpu":
        return False
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return True


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) NLL of each label under (B, T, V) logits, in fp32."""
    return -F.log_softmax(logits.float(), -1).gather(2, labels[..., None])[..., 0]


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
    """The model in eval mode (its mode restored afterwards, also on an error); yields the
    device its weights are on."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def score_pieces(model: torch.nn.Module, pieces: list[np.ndarray], context: int, stride: int,
                 batch_size: int = 16, precision: str = "fp32", period: int = 1,
                 prefixes: list[Conditioning] | None = None) -> list[np.ndarray]:
    """Per piece, the NLL (nats) of each content token, shape (len(piece) - 2,).
    ``prefixes``: per piece, what every window of it starts with (style tags: read, not
    scored; its windows are that much shorter). Without them the windows are as always."""
    heads = prefixes or [Conditioning() for _ in pieces]
    with evaluating(model) as device:
        period = max(1, period)
        stride = min(stride, context)  # a longer stride would leave targets no window scores
        stride = max(period, stride - stride % period)
        out = [np.zeros(max(len(p) - 2, 0)) for p in pieces]
        jobs = [(i, s, w, f) for i, p in enumerate(pieces)
                for s, w, f in windows(len(p), context - len(heads[i]),
                                       min(stride, context - len(heads[i])))]
        jobs.sort(key=lambda j: -(j[2] + len(heads[j[0]])))
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b: b + batch_size]
            W = chunk[0][2] + len(heads[chunk[0][0]])
            x = torch.zeros(len(chunk), W, dtype=torch.long)
            y = torch.zeros(len(chunk), W, dtype=torch.long)
            for r, (i, s, w, _) in enumerate(chunk):
                k = len(heads[i])
                x[r, : k + w] = torch.from_numpy(heads[i].prepend(pieces[i][s: s + w]))
                y[r, k: k + w] = torch.from_numpy(pieces[i][s + 1: s + w + 1])
            with autocast(device, precision):
                logits = model(x.to(device))
            nll = label_nll(logits, y.to(device))
            nll = nll.cpu().numpy()
            for r, (i, s, w, f) in enumerate(chunk):
                # window column k + c predicts position s+1+c; keep positions f..s+w
                k = len(heads[i])
                out[i][f - 1: s + w] = nll[r, k + f - s - 1: k + w]
    return out


@torch.no_grad()
def nll_by_position(model: torch.nn.Module, pieces: list[np.ndarray], context: int,
                    stride: int = 0, batch_size: int = 16, precision: str = "fp32"
                    ) -> tuple[np.ndarray, int]:
    """Mean NLL at each position of windows read from their first token: (context,), and
    the number of windows. Windows are the full ``context + 1`` spans at 0, stride, 2 *
    stride... (default context / 4) of each piece, each read alone from its own first
    token; position p predicts its token from the p tokens before it
    in the window, so the curve shows how much a model gains from a longer past (an RNN
    from its state, a Transformer from attention)."""
    stride = stride or max(1, context // 4)
    spans = [(i, s) for i, p in enumerate(pieces)
             for s in range(0, len(p) - context - 1 + 1, stride)]
    total = np.zeros(context)
    if not spans:
        return total, 0
    with evaluating(model) as device:
        for b in range(0, len(spans), batch_size):
            w = np.stack([pieces[i][s: s + context + 1] for i, s in spans[b: b + batch_size]])
            x = torch.from_numpy(w[:, :-1]).to(device)
            y = torch.from_numpy(w[:, 1:]).to(device)
            with autocast(device, precision):
                logits = model(x)
            nll = label_nll(logits, y)
            total += nll.sum(0).cpu().numpy()
    return total / len(spans), len(spans)


@torch.no_grad()
def score_pairs(model: torch.nn.Module, sources: list[np.ndarray], targets: list[np.ndarray],
                batch_size: int = 16, precision: str = "fp32") -> list[np.ndarray]:
    """Per pair (framed source and target), the NLL of each target content token, shape
    (len(target) - 2,). An encoder-decoder reads the source with its encoder; any other
    model reads the source as a prefix, ``[BOS src EOS BOS tgt EOS]``, and is scored on the
    target's tokens only. Each pair is one forward pass (prepare keeps pairs short)."""
    encdec = hasattr(model, "encode_into")
    out: list[np.ndarray] = [np.zeros(0)] * len(targets)
    order = sorted(range(len(targets)), key=lambda i: -len(targets[i]) - len(sources[i]))
    with evaluating(model) as device:
        for b in range(0, len(order), batch_size):
            chunk = [i for i in order[b: b + batch_size] if len(targets[i]) > 2]
            if not chunk:
                continue
            rows = []  # (inputs, labels, position of the first target label)
            for i in chunk:
                q, cut = (targets[i], 0) if encdec else prefix_sequence(sources[i], targets[i])
                n = cut + len(targets[i]) - 2  # inputs up to the last content label
                rows.append((q[:n], q[1: n + 1], cut))
            kw = {"src": pad_batch([sources[i] for i in chunk]).to(device)} if encdec else {}
            with autocast(device, precision):
                logits = model(pad_batch([r[0] for r in rows]).to(device), **kw)
            nll = label_nll(logits, pad_batch([r[1] for r in rows]).to(device)).cpu().numpy()
            for r, (i, (_, _, first)) in enumerate(zip(chunk, rows)):
                out[i] = nll[r, first: first + len(targets[i]) - 2]
    return out


@dataclass
class NLLResult:
    nll: float  # nats per token
    tokens: int
    pieces: int
    frame_nll: float | None = None  # nats per frame (pianoroll) or per step (chorale16)
    frames: int | None = None
    files: list[dict] | None = None  # MIDI input: per file {path, nll, tokens}
    skipped: list[dict] | None = None  # MIDI input: files not scored {path, reason}
    adapted: dict | None = None  # --adapt: how (adapt.Adaptation), None: static weights

    @property
    def bits(self) -> float:
        return self.nll / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @classmethod
    def from_dict(cls, d: dict) -> NLLResult:
        """The result of :meth:`as_dict` (as a bench.json holds it)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def as_dict(self) -> dict:
        d = {"nll": self.nll, "bits": self.bits, "perplexity": self.perplexity,
             "tokens": self.tokens, "pieces": self.pieces}
        if self.frame_nll is not None:
            d.update(frame_nll=self.frame_nll, frames=self.frames)
        if self.files is not None:
            d.update(files=self.files, skipped=self.skipped or [])
        if self.adapted is not None:
            d.update(adapted=self.adapted)
        return d


def summarize(token_nll: list[np.ndarray], tokenizer=None,
              pieces: list[np.ndarray] | None = None) -> NLLResult:
    allv = np.concatenate(token_nll) if token_nll else np.zeros(0)
    res = NLLResult(float(allv.mean()) if len(allv) else float("nan"), len(allv), len(token_nll))
    frame_of = [tokenizer.frame_index(p[1:-1]) for p in pieces or []] if tokenizer else []
    if frame_of and frame_of[0] is not None:  # a grid scheme: NLL per frame too
        total, frames = 0.0, 0
        for nll, fi in zip(token_nll, frame_of):
            per = np.bincount(fi, weights=nll)
            total, frames = total + per.sum(), frames + len(per)
        res.frame_nll, res.frames = total / max(frames, 1), frames
    return res


def mix(members: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-token NLL of an ensemble from its members' per-token NLL on the same windows:
    -log(mean_k p_k), the mean of the members' next-token probabilities (models/ensemble.py
    does the same on logits, for sampling)."""
    k = len(members)
    return [-(np.logaddexp.reduce(-np.stack(per_piece), axis=0) - math.log(k))
            for per_piece in zip(*members)]


@dataclass
class Scores:
    """What :func:`evaluate_members` measures."""
    result: NLLResult  # the checkpoints together, each averaged over its keys
    members: list[NLLResult]  # each checkpoint alone (averaged over its keys)
    own_key: NLLResult  # the checkpoints together, reading each piece in its own key only


def evaluate_members(checkpoints: str | Path | Sequence[str | Path], data: str | Path,
                     split: str = "valid", *, batch_size: int = 16, stride: int = 0,
                     device: str = "cpu", precision: str = "fp32",
                     transpositions: int = 1, style: str | None = None,
                     adapt: Adaptation | None = None) -> Scores:
    """NLL of a split under one checkpoint or the ensemble of several, each averaged over
    ``transpositions`` keys (checkpoint.key_views), and under each checkpoint alone. Each
    model and key is scored once, on the windows every member can read (the shortest
    context, starting where every voice period starts); the ensemble's token NLL is the
    mixture of theirs. ``style``: every window starts with that style tag, or with
    ``"own"`` each piece's own tags (a dataset prepared with --tags); none: untagged.
    ``adapt``: one checkpoint in the pieces' own keys, learning each piece as it is read
    (adapt.py)."""

    cks = load_members(checkpoints, device)
    ck = cks[0]
    paths = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    names: list[str] | None = None
    skipped: list[dict] = []
    ds: TokenDataset | None = None
    data = paths[0]
    if len(paths) == 1 and (data / "manifest.json").exists():
        ds = TokenDataset(data)
        if ds.tokenizer.vocab != ck.tokenizer.vocab:
            raise ValueError(f"--data {data}: its vocabulary differs from the checkpoint's "
                             f"({ds.tokenizer.name} vs {ck.tokenizer.name})")
        task = Task.of_dataset(ds)
        if task.paired and adapt is not None:
            raise ConfigError(f"--adapt: {data} is a {task} dataset; adaptation learns "
                              "pieces a model continues")
        if task.paired:
            return _evaluate_pairs(cks, ds, task, split, batch_size, precision,
                                   transpositions)
        pieces = ds.pieces(split)
    elif len(paths) == 1 and data.is_file() and data.suffix.lower() in BENCHMARK_SUFFIXES:
        pieces = benchmark_pieces(data, split, ck.tokenizer)
    else:
        names, pieces, skipped = midi_pieces(paths, ck.tokenizer)
    prefixes = style_prefixes(cks, style, pieces, ds, split)
    if prefixes is not None and transpositions > 1:
        raise ConfigError("--style: scored in the pieces' own keys only (no --transpositions)")
    views = [key_views(c, transpositions) for c in cks]
    own = transposition_shifts(transpositions).index(0)
    ctx = min(c.train.context for c in cks)
    stride = stride or min(c.train.stride for c in cks)
    period = common_period(cks)
    if adapt is not None:
        if adapt.segment > ctx:
            raise ConfigError(f"--adapt-segment: {adapt.segment} is longer than the model's "
                              f"context ({ctx} tokens)")
        nlls = [[score_adapted(ck.model, pieces, ctx, adapt, prefixes)]]
    else:
        nlls = [[score_pieces(v, pieces, ctx, stride, batch_size, precision, period,
                              prefixes) for v in vs] for vs in views]

    def together(per_view: list[list[np.ndarray]]) -> NLLResult:
        token_nll = per_view[0] if len(per_view) == 1 else mix(per_view)
        res = summarize(token_nll, ck.tokenizer, pieces)
        res.adapted = adapt.as_dict() if adapt is not None else None
        if names is not None:
            res.files = [{"path": n, "nll": float(v.mean()) if len(v) else float("nan"),
                          "tokens": len(v)} for n, v in zip(names, token_nll)]
            res.skipped = skipped
        return res

    return Scores(together([n for per in nlls for n in per]), [together(per) for per in nlls],
                  together([per[own] for per in nlls]))


def _evaluate_pairs(cks: list, ds, task: Task, split: str, batch_size: int, precision: str,
                    transpositions: int) -> Scores:
    """A paired dataset: NLL per target token of one model trained on its task."""
    if len(cks) > 1 or transpositions > 1:
        raise ValueError(f"--data {ds.path}: a {task} dataset is scored by one checkpoint in "
                         "the pieces' own keys (no ensembles or --transpositions)")
    ck = cks[0]
    if type(ck.task) is not type(task):
        raise ValueError(f"--checkpoint {ck.path}: trained to {ck.task}, --data {ds.path} "
                         f"is a {task} dataset")
    res = summarize(score_pairs(ck.model, task.sources(ds, split), ds.pieces(split),
                                batch_size, precision))
    return Scores(res, [res], res)


def run_evaluate(cfg: EvaluateConfig, *, device: str = "cpu") -> NLLResult:
    """The ``evaluate`` command: its config, as every command takes its own."""
    adapt = Adaptation(cfg.adapt_lr, cfg.adapt_segment) if cfg.adapt else None
    return evaluate_members(list(cfg.checkpoint), list(cfg.data), cfg.split,
                            batch_size=cfg.batch_size, stride=cfg.stride, device=device,
                            transpositions=cfg.transpositions, style=cfg.style,
                            adapt=adapt).result


def style_prefixes(cks: list, style: str | None, pieces: list[np.ndarray],
                   ds: TokenDataset | None, split: str) -> list[Conditioning] | None:
    """Each piece's window prefix for ``--style`` (None without one)."""
    if not style:
        return None
    tags = cks[0].tags
    if tags is None or any(c.tags != tags for c in cks[1:]):
        raise ConfigError(f"--style: {cks[0].path} reads no style tags (or the ensemble's "
                          "models read different ones)")
    if style != "own":
        return [Conditioning(tuple(tags.prompt(style)))] * len(pieces)
    if ds is None or ds.tags is None:
        raise ConfigError("--style own: each piece's own tags come from a dataset prepared "
                          "with --tags")
    names = ds.tags.names
    return [Conditioning(tuple(tags.id(names[j]) for j in row
                               if j >= 0 and names[j] in tags.names))
            for row in ds.piece_tags(split)]


def evaluate(checkpoint: str | Path | Sequence[str | Path], data: str | Path,
             split: str = "valid", *, batch_size: int = 16, stride: int = 0,
             device: str = "cpu", precision: str = "fp32", transpositions: int = 1,
             style: str | None = None) -> NLLResult:
    """NLL of a prepared dataset's split, or of a benchmark file's split. Several checkpoints
    are scored as one ensemble (the mean of their next-token distributions), and each model
    can be averaged over keys (``transpositions``); ``style``: see evaluate_members."""
    return evaluate_members(checkpoint, data, split, batch_size=batch_size, stride=stride,
                            device=device, precision=precision,
                            transpositions=transpositions, style=style).result


def midi_pieces(paths: list[Path], tokenizer) -> tuple[list[str], list[np.ndarray],
                                                        list[dict]]:
    """MIDI files and folders, each file tokenized whole as [BOS, ..., EOS]: (names, pieces,
    files skipped with the reason)."""

    names, pieces, skipped = [], [], []
    for f in midi_files(paths):
        try:
            ids, _, _ = encode_file(str(f), tokenizer)
        except BadInput as e:
            skipped.append({"path": str(f), "reason": str(e)})
            continue
        names.append(str(f))
        pieces.append(framed(ids))
    if not pieces:
        first = f" ({skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise SourceError(f"--data {' '.join(map(str, paths))}: no MIDI file could be "
                          f"scored{first}")
    return names, pieces, skipped


def benchmark_pieces(path: Path, split: str, tokenizer) -> list[np.ndarray]:
    """Tokenize one split of a benchmark file directly, with the checkpoint's tokenizer."""

    items = [it for it in read_benchmark(path) if it.split == split]
    if not items:
        raise MissingSplit(f"--split: {path} has no '{split}' split")
    return [framed(tokenizer.encode(tokenizer.piece_from_source(it.grid))) for it in items]


def format_result(res: NLLResult, as_json: bool, split: str = "") -> str:
    if res.files is not None:
        split = ""  # MIDI files are scored whole; there is no split
    if as_json:
        return json.dumps({**res.as_dict(), **({"split": split} if split else {})}, indent=1)
    s = (f"{split} split: " if split else "") + (
        f"NLL {res.nll:.4f} nats/token ({res.bits:.4f} bits), perplexity "
        f"{res.perplexity:.3f} over {res.tokens:,} tokens in {res.pieces} pieces")
    if res.frame_nll is not None:
        s += (f"\nNLL {res.frame_nll:.4f} nats per frame (pianoroll) / per 4-voice step "
              f"(chorale16) over {res.frames:,} of them")
    if res.adapted is not None:
        s += (f"\nadapted while read (--adapt): one {res.adapted['optimizer'].upper()} step of "
              f"learning rate {res.adapted['lr']:g} after every {res.adapted['segment']} "
              "tokens scored, each piece from the trained weights")
    if res.files is not None:
        s = f"{len(res.files)} MIDI files, each whole: " + s
        for sk in res.skipped or []:
            s += f"\n  skipped {sk['path']}: {sk['reason']}"
    return s
