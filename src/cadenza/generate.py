"""``cadenza generate``: continue a primer into new music, as MIDI, JSON, PNG and WAV.

Sampling runs on the generation engine (engine.py): the grammar keeps every sample
decodable, the controls (controls.py: key, ranges, polyphony, density, repeats) steer it, a
seeded generator draws (same seed, same music), and a sample is as long as asked (``--seconds``)
unless ``--may-end`` lets the model end it; each sample's JSON says why it stopped.

Python API, two lines::

    from cadenza.generate import Generator
    score = Generator.load("runs/demo/best").continue_midi("primer.mid", seconds=20)

Try it: ``cadenza generate --checkpoint runs/demo/best --primer builtin:chorales --out out``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, common_period, key_views, load_members, weights_digest
from .config import ConfigError, GenerateConfig, SampleConfig, Steering
from .controls import Controls
from .data.corpus import build_corpus
from .data.midi import (
    BadInput,
    Notes,
    Score,
    load_score,
    score_from_notes,
)
from .data.tokenizers import BOS
from .engine import Progress, Run, draw, filter_logits, sample, sample_run
from .models.ensemble import Ensemble
from .models.layers import use_half_weights
from .stats import CONTINUATION_TRACK, memorization, training_index
from .takes import open_take, place_take, write_sample, write_sidecar

__all__ = ["GenerateConfig", "Generator", "SampleConfig", "SampleInfo", "draw",
           "filter_logits", "run_generate", "sample"]


@dataclass(frozen=True)
class SampleInfo:
    """What ``generate`` wrote for one sample, and how (its ``sample-K.json``)."""

    sample: int
    checkpoint: str
    checkpoint_sha1: str
    transpositions: int
    precision: str
    tokenizer: str
    settings: dict[str, Any]  # the SampleConfig
    primer: dict[str, Any]  # source, seconds and tokens of the primer used
    new_tokens: int
    new_seconds: float
    stopped: str  # why: engine.SECONDS, TOKENS, EOS_STOP, DEAD_END or TOKEN_LIMIT
    notes: int
    continuation_notes: int
    continuation_track: str
    generation_seconds: float
    tokens_per_second: float
    files: dict[str, str | None]  # midi, png, wav (None: not written)
    memorization: dict[str, Any] | None = None  # stats.memorization, with training data

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["memorization"] is None:
            del d["memorization"]
        return d


PRIMER_TRACK = "Primer"


def primer_mask(full: Notes, primer: Notes) -> np.ndarray:
    """(N,) bool: which of a sample's notes the primer's tokens started (the rest are the
    continuation; harmonize/accompany mark the melody's notes the same way). Decoding the
    primer alone gives its notes' onsets exactly (only the end of a note held across the
    boundary can differ), so each primer note is matched by (onset, pitch); a time cut
    would misplace notes struck at the boundary."""
    left: dict[tuple[int, int], int] = {}
    for t, p in zip(np.round(primer.start * 1e6).tolist(), primer.pitch.tolist()):
        left[(t, p)] = left.get((t, p), 0) + 1
    is_primer = np.zeros(len(full), bool)
    for i, key in enumerate(zip(np.round(full.start * 1e6).tolist(), full.pitch.tolist())):
        if left.get(key, 0):
            left[key] -= 1
            is_primer[i] = True
    return is_primer


def _pick(n: Notes, m: np.ndarray) -> Notes:
    return Notes(n.start[m], n.end[m], n.pitch[m], n.velocity[m])


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


class Generator:
    """Samples from one checkpoint, or from several as one ensemble (``ck`` is the first:
    its tokenizer, shared by all, and its training data for memorization); each model can
    be averaged over ``transpositions`` keys (checkpoint.key_views)."""

    def __init__(self, ck: Checkpoint, *others: Checkpoint, transpositions: int = 1,
                 precision: str = "auto") -> None:
        self.ck, self.members = ck, [ck, *others]
        for c in self.members:
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
                if all(c.stored_dtype == "bf16" for c in self.members) else "fp32"
        if precision not in ("fp32", "fp16w", "bf16"):
            raise ValueError(f"--precision: must be auto, fp32, fp16w or bf16, got "
                             f"{precision!r}")
        if precision == "fp16w" and not cpu:
            raise ValueError("--precision fp16w: a CPU decoding path; on a GPU use bf16 or "
                             "fp32")
        self.precision = precision
        for c in self.members:
            c.model.to(torch.bfloat16 if precision == "bf16" else torch.float32)
            use_half_weights(c.model, precision == "fp16w")
        views = [v for c in self.members for v in key_views(c, transpositions)]
        self.model = Ensemble(views) if len(views) > 1 else ck.model
        self.transpositions = transpositions
        self.tok = ck.tokenizer
        self.period = common_period(self.members)
        # the weights' SHA-1 (an ensemble's: of its members' digests, in order)
        digests = [weights_digest(c.path, "sha1") for c in self.members]
        self.checkpoint_hash = digests[0] if len(digests) == 1 else \
            hashlib.sha1("".join(digests).encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], *, device: str = "cpu",
             transpositions: int = 1, precision: str = "auto") -> Generator:
        return cls(*load_members(path, device), transpositions=transpositions,
                   precision=precision)

    @torch.no_grad()
    def features(self, ids: np.ndarray, layers: tuple[int, ...] = (-1,),
                 window: int | None = None) -> list[np.ndarray]:
        """A piece's features from the (first) model: for token ids (BOS first), the hidden
        states after the blocks named in ``layers`` (-1: the last, after the final norm),
        (T, d_model) each, read in consecutive windows of the model's context (or
        ``window``) that each start afresh with BOS. A model without hidden states to give
        (recurrent, encoder-decoder) raises ValueError."""
        model = self.ck.model
        if not hasattr(model, "hidden"):
            raise ValueError(f"--checkpoint {self.ck.path}: a {type(model).__name__} gives no "
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

    def check(self, cfg: SampleConfig) -> None:
        """Refuse controls this model's tokenizer cannot carry, and a style it does not
        know, before anything is written (ConfigError naming the flag)."""
        if cfg.controls:
            Controls(cfg, self.tok.note_roles(), self.tok.name)
        self.head(cfg)

    def head(self, cfg: Steering) -> list[int]:
        """The tag ids of ``--style`` every window starts with ([] without one)."""
        if not cfg.style:
            return []
        tags = self.ck.tags
        if tags is None:
            raise ConfigError(f"--style: {self.ck.path} reads no style tags (train a model on "
                              "data prepared with --tags)")
        if any(c.tags != tags for c in self.members[1:]):
            raise ConfigError("--style: the ensemble's models read different style tags")
        return tags.prompt(cfg.style)

    def run(self, prompt: np.ndarray, cfg: SampleConfig, use_cache: bool = True,
            progress: Progress | None = None) -> Run:
        """``cfg.num_samples`` continuations of ``prompt`` (BOS + ids) on the engine, with
        why each stopped."""
        prompts = np.repeat(prompt[None], cfg.num_samples, 0)
        return sample_run(self.model, prompts, self.tok.grammar(), cfg, 0, use_cache,
                          period=self.period, progress=progress,
                          roles=self.tok.note_roles(), scheme=self.tok.name,
                          head=self.head(cfg))

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


def run_generate(cfg: GenerateConfig, *, device: str = "cpu",
                 progress: Progress | None = None,
                 loaded: Generator | None = None) -> list[SampleInfo]:
    """The ``generate`` command: everything is validated before the first file is written.
    ``progress`` hears the share of the sampling done (see ``sample``); ``loaded``: the
    model already loaded for ``cfg.checkpoint`` (a server keeps its sessions), else it is
    loaded here.

    A take is one unit: each sample's files are written into a temporary folder inside
    ``cfg.out`` and moved into place, its JSON last; an ``out`` that holds an earlier take's
    samples is refused (``cfg.force`` replaces them), so old and new files never mix."""
    gen = loaded or Generator.load(list(cfg.checkpoint), device=device,
                                   transpositions=cfg.transpositions, precision=cfg.precision)
    gen.check(cfg.sample)
    prompt, pinfo = gen.encode_primer(cfg.primer, cfg.primer_seconds, cfg.primer_tokens)
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        infos = _write_take(gen, prompt, pinfo, cfg, take, progress)
        place_take(take, Path(cfg.out), earlier, len(infos))
        return infos
    finally:
        shutil.rmtree(take, ignore_errors=True)


def _write_take(gen: Generator, prompt: np.ndarray, pinfo: dict[str, Any], cfg: GenerateConfig,
                take: Path, progress: Progress | None) -> list[SampleInfo]:
    """Generate the samples into ``take``."""

    t = time.perf_counter()
    done = gen.run(prompt, cfg.sample, progress=progress)
    news = done.tokens
    gen_s = time.perf_counter() - t
    primer_notes = gen.tok.decode_notes(prompt[1:])
    t_split = pinfo["seconds"]  # where the primer's stream ends: the continuation's start
    mem_index = _memorization_index(gen, cfg.reference)
    results = []
    for k, new in enumerate(news):
        full = gen.tok.decode_notes(np.concatenate([prompt[1:], new]))
        # The primer and the continuation go on their own tracks, so that `stats` (and a
        # listener muting a track) can tell them apart; the memorization below and `stats`
        # score exactly the notes of the continuation track.
        is_primer = primer_mask(full, primer_notes)
        cont = _pick(full, ~is_primer)
        if cfg.continuation_only:
            cont = gen.tok.decode_notes(new)
            tracks = {CONTINUATION_TRACK: cont}
        else:
            tracks = {PRIMER_TRACK: _pick(full, is_primer), CONTINUATION_TRACK: cont}
        base = take / f"sample-{k}"
        wav = write_sample(base, tracks, full, is_primer, t_split,
                           f"sample {k}: primer (blue) + continuation (orange)",
                           cfg.soundfont if cfg.audio else False, warn=k == 0)
        mem = None
        if mem_index is not None:
            mem = memorization(cont, mem_index)
        info = SampleInfo(
            sample=k, checkpoint=", ".join(str(c.path) for c in gen.members),
            checkpoint_sha1=gen.checkpoint_hash, transpositions=gen.transpositions,
            precision=gen.precision, tokenizer=gen.tok.name, settings=cfg.sample.to_dict(),
            primer=pinfo, new_tokens=int(len(new)),
            new_seconds=gen.seconds_of(np.concatenate([prompt[1:], new])) - t_split,
            stopped=done.stopped[k],
            notes=int(len(full)), continuation_notes=int(len(cont)),
            continuation_track=CONTINUATION_TRACK, generation_seconds=gen_s,
            tokens_per_second=float(sum(len(n) for n in news) / max(gen_s, 1e-9)),
            files={"midi": base.with_suffix(".mid").name, "png": base.with_suffix(".png").name,
                   "wav": wav.name if wav else None},
            memorization=mem)
        write_sidecar(base, info.to_dict())
        results.append(info)
    return results


def _memorization_index(gen: Generator, reference: str | None):
    """The training set's n-gram index, when the training data is on this machine."""
    data = reference or gen.ck.config.data.path
    if not data or not (Path(data) / "manifest.json").exists():
        return None
    try:
        return training_index(str(Path(data).resolve()))
    except Exception:  # an unreadable or incompatible dataset: no memorization, no failure
        return None
