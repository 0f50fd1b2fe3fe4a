"""A generation session: one loaded model, ready to write music, loaded once.

A :class:`Session` holds the model (one checkpoint's, or several as an ensemble, each read in
one key or several), its tokenizer, the style tags it reads, its precision and device. It
gives what a model gives for token ids: the next-token logits (``logits``, with or without a
cache) and a piece's features (``features``: the hidden states); and it is what every way
of writing music runs on: the engine (engine.py) reads its model, tokenizer and
conditioning; ``generate``, ``infill``, the duet and the studio each hold one session for as
long as they need it (the studio keeps a few across jobs).

Python API::

    from cadenza.session import Session
    s = Session.load("pretrained:piano")
    score = s.continue_midi("primer.mid", seconds=20)

A bare model with its tokenizer is a session too (``Session(model, tok)``): the tests and
the benchmarks drive the engine that way.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapt import Adaptation, learn
from .checkpoint import Checkpoint, common_period, key_views, load_members, weights_digest
from .config import ConfigError, GenerateConfig, SampleConfig, Steering
from .controls import Controls
from .data.corpus import build_corpus
from .data.midi import BadInput, Score, load_score, score_from_notes
from .data.styles import Conditioning, Tags
from .data.tokenizers import BOS
from .data.tokenizers.base import Tokenizer
from .engine import Progress, Run, sample_run
from .evaluate import label_nll
from .models import TokenModel
from .models.ensemble import Ensemble
from .models.layers import use_half_weights


def resolve_primer(spec: str, flag: str = "--primer") -> Path:
    """A MIDI path, or ``builtin:CORPUS[/NAME]`` (the first file whose name contains NAME);
    errors name ``flag``."""
    if spec.startswith("builtin:"):
        corpus, _, name = spec[len("builtin:"):].partition("/")
        folder = build_corpus(corpus)
        files = sorted(f for f in folder.glob("*.mid") if name in f.name)
        if not files:
            raise BadInput(f"{flag} {spec}: no piece matching '{name}' in builtin:{corpus}")
        return files[0]
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {spec}: no such file")
    if p.is_dir():
        raise BadInput(f"{flag} {spec}: is a folder; give one MIDI file")
    return p


class Session:
    """A loaded model and what it reads: ``model`` (a TokenModel), ``tok`` (its tokenizer;
    None only for a caller that hands the engine its own grammar), ``period`` (the voice
    period windows start on), ``tags`` (the style tags it reads, None without). A session
    loaded from checkpoints (``load``) also knows them (``ck``: the first, ``members``: all),
    its precision, keys and weights' digest."""

    def __init__(self, model: TokenModel, tok: Tokenizer | None, *, period: int = 1,
                 tags: Tags | None = None) -> None:
        self.model, self.tok, self.period, self.tags = model, tok, max(1, period), tags
        self.ck: Checkpoint | None = None
        self.members: list[Checkpoint] = []
        self.precision = "fp32"
        self.transpositions = 1
        self.checkpoint_hash = ""

    @classmethod
    def from_checkpoints(cls, ck: Checkpoint, *others: Checkpoint, transpositions: int = 1,
                         precision: str = "auto") -> Session:
        """One checkpoint, or several as one ensemble (``ck`` is the first: its tokenizer,
        shared by all, and its training data for memorization); each model can be averaged
        over ``transpositions`` keys (checkpoint.key_views)."""
        members = [ck, *others]
        for c in members:
            if c.task.paired:
                raise ValueError(f"--checkpoint {c.path}: trained to {c.task} a melody, not "
                                 f"to continue a piece; use `cadenza {c.task.command}`")
        # "auto": weights stored in bf16 (the shipped models) lose nothing as fp16 copies
        # (models/layers.use_half_weights): on a CPU they decode reading those, with fp32
        # arithmetic, half the bytes of fp32 and faster than bf16 arithmetic, whose CPU
        # attention is slow at batch 1 (pretrained:piano: see the README); on a GPU in bf16.
        # Weights stored in fp32 run in fp32: the reference, sample for sample.
        cpu = next(ck.model.parameters()).device.type == "cpu"
        if precision == "auto":
            precision = ("fp16w" if cpu else "bf16") \
                if all(c.stored_dtype == "bf16" for c in members) else "fp32"
        if precision not in ("fp32", "fp16w", "bf16"):
            raise ValueError(f"--precision: must be auto, fp32, fp16w or bf16, got "
                             f"{precision!r}")
        if precision == "fp16w" and not cpu:
            raise ValueError("--precision fp16w: a CPU decoding path; on a GPU use bf16 or "
                             "fp32")
        for c in members:
            c.model.to(torch.bfloat16 if precision == "bf16" else torch.float32)
            use_half_weights(c.model, precision == "fp16w")
        views = [v for c in members for v in key_views(c, transpositions)]
        model = Ensemble(views) if len(views) > 1 else ck.model
        session = cls(model, ck.tokenizer, period=common_period(members), tags=ck.tags)
        session.ck, session.members = ck, members
        session.precision, session.transpositions = precision, transpositions
        # the weights' SHA-1 (an ensemble's: of its members' digests, in order)
        digests = [weights_digest(c.path, "sha1") for c in members]
        session.checkpoint_hash = digests[0] if len(digests) == 1 else \
            hashlib.sha1("".join(digests).encode()).hexdigest()
        return session

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], *, device: str = "cpu",
             transpositions: int = 1, precision: str = "auto") -> Session:
        """The checkpoint(s) at ``path`` (a run's folder, ``pretrained:NAME``, or several)."""
        return cls.from_checkpoints(*load_members(path, device), transpositions=transpositions,
                                    precision=precision)

    @property
    def name(self) -> str:
        """How errors name the model: its (first) checkpoint's path."""
        return str(self.ck.path) if self.ck is not None else "the model"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- what the model gives for token ids -----------------------------------------------

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T, V) next-token logits for (B, T) ids; with ``cache`` (``model.new_cache``)
        the ids extend what the cache has read."""
        return self.model(ids.to(self.device), cache)

    @torch.no_grad()
    def features(self, ids: np.ndarray, layers: tuple[int, ...] = (-1,),
                 window: int | None = None) -> list[np.ndarray]:
        """A piece's features from the (first) model: for token ids (BOS first), the hidden
        states after the blocks named in ``layers`` (-1: the last, after the final norm),
        (T, d_model) each, read in consecutive windows of the model's context (or
        ``window``) that each start afresh with BOS. A model without hidden states to give
        (recurrent, encoder-decoder) raises ValueError."""
        model = self.ck.model if self.ck is not None else self.model
        if not hasattr(model, "hidden"):
            raise ValueError(f"--checkpoint {self.name}: a {type(model).__name__} gives no "
                             "features; a Transformer does")
        ids = np.asarray(ids, np.int64)
        body = ids[1:] if len(ids) and ids[0] == BOS else ids
        room = (window or model.max_context) - 1
        device = next(model.parameters()).device
        parts: list[list[np.ndarray]] = [[] for _ in layers]
        for a in range(0, max(len(body), 1), room):
            x = torch.as_tensor(np.r_[BOS, body[a: a + room]][None], device=device)
            for k, h in enumerate(model.hidden(x, layers)):
                parts[k].append(h[0, 1:].float().cpu().numpy())  # the window's tokens
        return [np.concatenate(p) for p in parts]

    def adapted(self, prompt: np.ndarray, how: Adaptation, passes: int) -> Session:
        """A session on a copy of the weights that has learnt ``prompt`` (``generate
        --adapt``: ``passes`` times through it, one SGD step per segment; adapt.py). The
        copy (one model's weights, in fp32 while it learns) lives as long as the returned
        session: the caller drops it with the piece; this session's model is untouched."""
        if len(self.members) > 1 or self.transpositions > 1 or self.ck is None:
            raise ConfigError("--adapt: adapts one checkpoint's model in the primer's own key")
        model = copy.deepcopy(self.ck.model).float()  # learns in fp32
        use_half_weights(model, False)
        if len(prompt) > 2:
            learn(model, prompt, self.ck.train.context, how, passes)
        if self.precision == "bf16":
            model.to(torch.bfloat16)
        use_half_weights(model, self.precision == "fp16w")  # as this session decodes
        out = Session(model, self.tok, period=self.period, tags=self.tags)
        out.ck, out.members = self.ck, self.members
        out.precision, out.checkpoint_hash = self.precision, self.checkpoint_hash
        return out

    @torch.no_grad()
    def continuation_nll(self, prompt: np.ndarray, new: np.ndarray) -> float:
        """Nats per token of ``new`` after ``prompt`` (BOS first), read untagged in one
        window of the model's context (its end: the new tokens still inside it): what a
        steered continuation costs against what the model would play on its own."""
        ids = torch.as_tensor(np.concatenate([prompt, new]).astype(np.int64)[
            -(self.model.max_context or 10**9):][None], device=self.device)
        nll = label_nll(self.logits(ids)[:, :-1], ids[:, 1:])[0]
        return float(nll[-min(len(new), len(nll)):].mean())

    # --- what it reads before the music -----------------------------------------------------

    def conditioning(self, cfg: Steering) -> Conditioning:
        """What every window starts with for these settings: ``--style``'s tags (none
        without one), and the model's fill-in-the-middle marks when it has them; a style this
        model cannot read is a ConfigError naming the flag."""
        tags = self.tags
        if cfg.style:
            if tags is None:
                raise ConfigError(f"--style: {self.name} reads no style tags (train a model "
                                  "on data prepared with --tags)")
            if any(c.tags != tags for c in self.members[1:]):
                raise ConfigError("--style: the ensemble's models read different style tags")
        return tags.conditioning(cfg.style) if tags is not None else Conditioning()

    def check(self, cfg: SampleConfig) -> None:
        """Refuse controls this model's tokenizer cannot carry, and a style it does not
        know, before anything is written (ConfigError naming the flag)."""
        if cfg.controls:
            Controls(cfg, self.tok.note_roles(), self.tok.name)
        self.conditioning(cfg)

    def encode_primer(self, primer: str | None, seconds: float = 0.0,
                      tokens: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        """BOS + the primer's tokens, cut to its first seconds/tokens and to the context."""
        info: dict[str, Any] = {"source": primer, "seconds": 0.0, "tokens": 0}
        ids = np.zeros(0, np.int64)
        if primer:
            path = resolve_primer(primer)
            try:
                score = load_score(path)
                # the tokenizer reads the primer as it reads training data: a beat grid on
                # the score's own beats, the performance scheme in seconds with the pedal
                ids = self.tok.encode_primer(score, seconds)
            except BadInput as e:
                raise BadInput(f"--primer {path}: {e}") from e
            if tokens:
                ids = ids[:tokens]
            info["source"] = str(path)
        limit = self.model.max_context
        if limit is not None and len(ids) + 1 > limit - 1:
            keep = limit // 2
            print(f"notice: primer of {len(ids)} tokens exceeds the context ({limit}); "
                  f"using its last {keep}")
            ids = ids[-keep:]
            # start on a whole step/frame for grid schemes
            ids = ids[len(ids) % self.period:]
        info["tokens"] = int(len(ids))
        info["seconds"] = self.seconds_of(ids)
        return np.concatenate([[BOS], ids]).astype(np.int64), info

    def seconds_of(self, ids: np.ndarray) -> float:
        """How far in time a token stream reaches (the grammar's clock, as --seconds uses)."""
        g = self.tok.grammar()
        g.reset(1)
        g.feed(np.asarray(ids, np.int64)[None])
        return float(g.elapsed()[0])

    # --- writing music ----------------------------------------------------------------------

    def run(self, prompt: np.ndarray, cfg: SampleConfig, use_cache: bool = True,
            progress: Progress | None = None) -> Run:
        """``cfg.num_samples`` continuations of ``prompt`` (BOS + ids) on the engine, with
        why each stopped."""
        prompts = np.repeat(prompt[None], cfg.num_samples, 0)
        return sample_run(self, prompts, cfg, use_cache=use_cache, progress=progress)

    def generate(self, prompt: np.ndarray, cfg: SampleConfig, use_cache: bool = True,
                 progress: Progress | None = None) -> list[np.ndarray]:
        """``run``'s new tokens only."""
        return self.run(prompt, cfg, use_cache, progress).tokens

    def continue_midi(self, primer: str | None = None, seconds: float | None = None,
                      primer_seconds: float = GenerateConfig.primer_seconds, **kw) -> Score:
        """One continuation (primer included) as a symusic Score: as ``generate`` with
        the same defaults (the whole primer; 20 s of new music); ``kw``: SampleConfig's
        other fields."""
        prompt, _ = self.encode_primer(primer, primer_seconds)
        new = self.generate(prompt, SampleConfig(seconds=seconds, **kw))[0]
        return score_from_notes(self.tok.decode_notes(np.concatenate([prompt[1:], new])))
