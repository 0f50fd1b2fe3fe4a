"""``cadenza generate``: continue a primer into new music, as MIDI, JSON, PNG and WAV.

The sampler works on token ids: the model gives logits, the tokenizer's grammar masks every
token that would make the sequence undecodable, then temperature, top-k and top-p shape the
distribution and a seeded ``torch.Generator`` draws (same seed, same music). With a cache
(key/value for the Transformer, hidden state for RNNs) each new token costs one position;
past the model's context the Transformer keeps the most recent half and re-reads it.

Python API, two lines::

    from cadenza.generate import Generator
    score = Generator.load("runs/demo/best").continue_midi("primer.mid", seconds=20)

Try it: ``cadenza generate --checkpoint runs/demo/best --primer builtin:chorales --out out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import symusic
import torch

from .atomic import process_dir, write_bytes
from .checkpoint import Checkpoint, common_period, key_views, load_members, weights_digest
from .config import GenerateConfig, SampleConfig
from .data.midi import (
    BadInput,
    Notes,
    load_score,
    score_from_notes,
    score_from_tracks,
    write_midi,
)
from .data.tokenizers import BOS, EOS, PAD
from .models import TokenModel
from .models.ensemble import Ensemble
from .models.layers import use_half_weights
from .stats import CONTINUATION_TRACK

Progress = Callable[[float], None]  # hears the share of the sampling done, 0..1


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


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the k most likely tokens and/or the smallest set with mass >= top_p."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_l, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_l, -1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, allowed: torch.Tensor, cfg: SampleConfig,
         gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` (B, V), among the ``allowed`` ones, at the
    temperature, after top-k/top-p: (B,) on the CPU.

    ``torch.multinomial(probs, 1)`` draws q ~ Exp(1) per token and takes argmax(probs / q);
    this does exactly that, with the same generator, so the tokens are the same, with one
    check of the distribution instead of multinomial's three (decoding pays per operation)."""
    lg = torch.where(allowed, logits.float(), float("-inf"))
    if cfg.temperature != 1.0:
        lg = lg / cfg.temperature
    probs = torch.softmax(filter_logits(lg, cfg.top_k, cfg.top_p), -1).cpu()
    if not bool(probs.isfinite().all()):  # NaN logits, or no token allowed
        raise RuntimeError("sampling: the model's next-token distribution is not finite")
    q = torch.empty_like(probs).exponential_(1.0, generator=gen)
    return (probs / q).argmax(-1)


@torch.no_grad()
def sample(model: TokenModel, prompt: np.ndarray, grammar, cfg: SampleConfig,
           max_new: int, use_cache: bool = True, period: int = 1,
           progress: Progress | None = None) -> list[np.ndarray]:
    """Continue ``prompt`` ((B, T0) ids starting with BOS) by up to ``max_new`` tokens.

    Returns each sample's new tokens, cut at EOS or where ``cfg.seconds`` is reached.
    ``progress``, when given, hears the share done (0..1) every few tokens; an exception it
    raises stops sampling (the studio cancels that way).
    """
    device = next(model.parameters()).device
    B = prompt.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    grammar.reset(B)
    grammar.feed(prompt)
    t0_seconds = grammar.elapsed().copy()
    max_len = model.max_context
    T0 = prompt.shape[1]
    # one buffer for prompt + everything new: appending is a column write, not a re-copy
    buf = torch.empty((B, T0 + max_new), dtype=torch.long, device=device)
    buf[:, :T0] = torch.as_tensor(prompt, dtype=torch.long)
    n = T0
    ends = np.full(B, -1)

    def window(s: torch.Tensor) -> torch.Tensor:
        """The latest tokens that fit, starting on a voice-period boundary."""
        if max_len is None or s.shape[1] <= max_len:
            return s
        keep = max_len // 2 if use_cache else max_len
        drop = s.shape[1] - keep
        drop += (-drop) % max(1, period)
        return s[:, drop:]

    cache = model.new_cache(B) if use_cache else None
    logits = model(window(buf[:, :n]), cache)[:, -1] if use_cache else None
    for i in range(max_new):
        if not use_cache:
            logits = model(window(buf[:, :n]))[:, -1]
        nxt = draw(logits, torch.from_numpy(grammar.allowed()).to(device), cfg, gen)
        tokens = nxt.numpy()
        grammar.advance(tokens)
        step = nxt.to(device)[:, None]
        buf[:, n: n + 1] = step
        n += 1
        new_end = (ends < 0) & ((tokens == EOS) | (tokens == PAD))
        if cfg.seconds:
            new_end |= (ends < 0) & (grammar.elapsed() - t0_seconds >= cfg.seconds)
        ends[new_end] = i + 1
        if (ends >= 0).all():
            break
        if progress is not None and i % 8 == 0:
            if cfg.seconds:  # the slowest sample still running decides
                done = np.where(ends >= 0, 1.0, (grammar.elapsed() - t0_seconds) / cfg.seconds)
                progress(float(np.clip(done.min(), 0.0, 1.0)))
            else:
                progress(i / max_new)
        if use_cache:
            if max_len is not None and cache.length >= max_len:  # slide: re-read recent half
                cache = model.new_cache(B)
                logits = model(window(buf[:, :n]), cache)[:, -1]
            else:
                logits = model(step, cache)[:, -1]
    if progress is not None:
        progress(1.0)
    new = buf[:, T0:n].cpu().numpy()
    return [new[b, : ends[b] if ends[b] >= 0 else new.shape[1]] for b in range(B)]


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


def resolve_primer(spec: str) -> Path:
    """A MIDI path, or ``builtin:CORPUS[/NAME]`` (the first file whose name contains NAME)."""
    if spec.startswith("builtin:"):
        from .data.corpus import build_corpus
        corpus, _, name = spec[len("builtin:"):].partition("/")
        folder = build_corpus(corpus)
        files = sorted(f for f in folder.glob("*.mid") if name in f.name)
        if not files:
            raise BadInput(f"--primer {spec}: no piece matching '{name}' in builtin:{corpus}")
        return files[0]
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"--primer {spec}: no such file")
    if p.is_dir():
        raise BadInput(f"--primer {spec}: is a folder; give one MIDI file")
    return p


class Generator:
    """Samples from one checkpoint, or from several as one ensemble (``ck`` is the first:
    its tokenizer, shared by all, and its training data for memorization); each model can
    be averaged over ``transpositions`` keys (checkpoint.key_views)."""

    def __init__(self, ck: Checkpoint, *others: Checkpoint, transpositions: int = 1,
                 precision: str = "auto") -> None:
        self.ck, self.members = ck, [ck, *others]
        for c in self.members:
            if c.task != "continue":
                raise ValueError(f"--checkpoint {c.path}: trained to {c.task} a melody, not "
                                 f"to continue a piece; use `cadenza {c.task}`")
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

    def generate(self, prompt: np.ndarray, cfg: SampleConfig, use_cache: bool = True,
                 progress: Progress | None = None) -> list[np.ndarray]:
        max_new = cfg.tokens or int(max(cfg.seconds, 1) * 200)  # a generous token ceiling
        prompts = np.repeat(prompt[None], cfg.num_samples, 0)
        return sample(self.model, prompts, self.tok.grammar(), cfg, max_new, use_cache,
                      period=self.period, progress=progress)

    def continue_midi(self, primer: str | None = None, seconds: float = 20.0,
                      primer_seconds: float = 10.0, **kw) -> symusic.Score:
        """One continuation (primer included) as a symusic Score."""
        prompt, _ = self.encode_primer(primer, primer_seconds)
        new = self.generate(prompt, SampleConfig(seconds=seconds, **kw))[0]
        return score_from_notes(self.tok.decode_notes(np.concatenate([prompt[1:], new])))


def run_generate(cfg: GenerateConfig, *, device: str = "cpu",
                 progress: Progress | None = None) -> list[SampleInfo]:
    """The ``generate`` command: everything is validated before the first file is written.
    ``progress`` hears the share of the sampling done (see ``sample``).

    A take is one unit: each sample's files are written into a temporary folder inside
    ``cfg.out`` and moved into place, its JSON last; an ``out`` that holds an earlier take's
    samples is refused (``cfg.force`` replaces them), so old and new files never mix."""
    gen = Generator.load(list(cfg.checkpoint), device=device,
                         transpositions=cfg.transpositions, precision=cfg.precision)
    prompt, pinfo = gen.encode_primer(cfg.primer, cfg.primer_seconds, cfg.primer_tokens)
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        infos = _write_take(gen, prompt, pinfo, cfg, take, progress)
        place_take(take, Path(cfg.out), earlier, len(infos))
        return infos
    finally:
        shutil.rmtree(take, ignore_errors=True)


def open_take(out: str, force: bool) -> tuple[Path, list[Path]]:
    """Before anything is generated: ``out`` must be a folder (made if need be) without an
    earlier take's samples, unless ``force``. Returns the new take's temporary folder inside
    it (a killed command's is removed by the next) and the earlier take's files."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise PermissionError(f"--out {out}: is a file, not a folder")
    earlier = sorted(p for p in out_dir.glob("sample-*") if p.is_file()) \
        if out_dir.is_dir() else []
    if earlier and not force:
        raise FileExistsError(f"--out {out}: holds samples of an earlier take "
                              f"({earlier[0].name}, ...); choose another folder, or pass "
                              "--force to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return process_dir(out_dir, ".cadenza-take-"), earlier
    except OSError as e:
        raise PermissionError(f"--out {out}: cannot write there ({e.strerror})") from e


def place_take(take: Path, out_dir: Path, earlier: list[Path], samples: int) -> None:
    """A complete take into ``out_dir``: the earlier take's files go first (``--force``),
    then each sample's files are moved in, its JSON last."""
    for old in earlier:
        old.unlink(missing_ok=True)
    for k in range(samples):
        for f in sorted(take.glob(f"sample-{k}.*"), key=lambda f: f.suffix == ".json"):
            os.replace(f, out_dir / f.name)


def _write_take(gen: Generator, prompt: np.ndarray, pinfo: dict[str, Any], cfg: GenerateConfig,
                take: Path, progress: Progress | None) -> list[SampleInfo]:
    """Generate the samples into ``take``."""

    t = time.perf_counter()
    news = gen.generate(prompt, cfg.sample, progress=progress)
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
            from .stats import memorization
            mem = memorization(cont, mem_index)
        info = SampleInfo(
            sample=k, checkpoint=", ".join(str(c.path) for c in gen.members),
            checkpoint_sha1=gen.checkpoint_hash, transpositions=gen.transpositions,
            precision=gen.precision, tokenizer=gen.tok.name, settings=cfg.sample.to_dict(),
            primer=pinfo, new_tokens=int(len(new)),
            new_seconds=gen.seconds_of(np.concatenate([prompt[1:], new])) - t_split,
            notes=int(len(full)), continuation_notes=int(len(cont)),
            continuation_track=CONTINUATION_TRACK, generation_seconds=gen_s,
            tokens_per_second=float(sum(len(n) for n in news) / max(gen_s, 1e-9)),
            files={"midi": base.with_suffix(".mid").name, "png": base.with_suffix(".png").name,
                   "wav": wav.name if wav else None},
            memorization=mem)
        write_bytes(base.with_suffix(".json"),
                    (json.dumps(info.to_dict(), indent=1) + "\n").encode())
        results.append(info)
    return results


def write_sample(base: Path, tracks: dict[str, Notes], notes: Notes, blue: np.ndarray,
                 split_seconds: float, title: str, soundfont: str | None | bool,
                 warn: bool = True) -> Path | None:
    """BASE.mid (one track per entry), BASE.png (the ``blue`` notes blue, the others
    orange) and, unless ``soundfont`` is False, BASE.wav; returns the WAV (None when no
    synthesizer or SoundFont is found, said once when ``warn``)."""
    from .render import piano_roll_png, render_wav
    write_midi(score_from_tracks(tracks), base.with_suffix(".mid"))
    piano_roll_png(notes, split_seconds, base.with_suffix(".png"), primer=blue, title=title)
    if soundfont is False:
        return None
    wav, why = render_wav(base.with_suffix(".mid"), base.with_suffix(".wav"), soundfont)
    if wav is None and warn:
        print(f"note: no WAV written: {why}")
    return wav


def _memorization_index(gen: Generator, reference: str | None):
    """The training set's n-gram index, when the training data is on this machine."""
    from .stats import training_index
    data = reference or gen.ck.config.get("data", {}).get("path")
    if not data or not (Path(data) / "manifest.json").exists():
        return None
    try:
        return training_index(str(Path(data).resolve()))
    except Exception:  # an unreadable or incompatible dataset: no memorization, no failure
        return None
