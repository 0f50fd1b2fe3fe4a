"""``cadenza infill``: regenerate a span of a piece so that it joins what comes before and
after it; every note outside the span stays exactly as it was.

Two ways to write the candidates (``--method``):

- ``fim``, for a model trained with ``train --fim``: the model reads the music before the
  span, then the music after it, then writes the span (data/fim.py has the order), so every
  candidate already heads for what follows;
- ``resample``, for any performance-token model: the candidates continue the music before
  the span, and the right side only judges them.

Either way each of K candidates is weighted by how likely the model finds the real music
after the span once it has heard the candidate (the log-probability of the right context's
first ``--right-seconds``, read left to right), and one is drawn in proportion (importance
resampling: K = 1 takes the proposal as it is). docs/infill.md has how well each joins,
measured.

Output: the input score itself (every track, tempo, pedal and note outside the span, tick
for tick) without the notes that start inside the span, plus an ``Infill`` track of new
notes that start inside it; a WAV, and a piano roll with the span marked.

Try it: ``cadenza infill --input song.mid --start 8 --end 14 --candidates 8 --out infill/``.
Python: ``infill(score, 8.0, 14.0, SampleConfig...)`` returns the new score.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import InfillConfig, Steering
from .data import fim
from .data.fim import right_side, stream
from .data.midi import (
    BadInput,
    Notes,
    Score,
    bar_span,
    load_score,
    notes_from_score,
    replace_span,
    tick_at,
    write_midi,
)
from .data.styles import Conditioning
from .data.tokenizers import BOS
from .data.tokenizers.performance import SHIFT0, STEPS_PER_SECOND, shift_steps
from .engine import sample_run
from .render import piano_roll_png
from .session import Session
from .takes import open_take, place_take, write_audio, write_sidecar

INFILL_TRACK = "Infill"
LEFT_SHARE = 8  # the left context a span needs at least: 1/8 of the model's context
MIDDLE_RATE = 60  # tokens a second of piano a span is given room for (dense playing: ~50)


@dataclass(frozen=True)
class Span:
    """A span of a piece to regenerate, in seconds and in the score's ticks."""

    start: float
    end: float
    start_tick: int
    end_tick: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Proposals:
    """How a span's candidates are written and judged: ``candidates`` per sample, weighted
    by how likely the model finds the ``right_seconds`` of music after the span given each
    (``method``: fim, resample or auto, as ``--method``)."""

    candidates: int = 8
    right_seconds: float = 4.0
    method: str = "auto"


@dataclass(frozen=True)
class InfillInfo:
    """What ``infill`` wrote for one sample (its ``sample-K.json``)."""

    sample: int
    checkpoint: str
    input: str
    span: dict[str, float]
    candidates: int
    method: str  # fim or resample
    weights: list[float]  # each candidate's log-probability of the right context
    chosen: int
    settings: dict[str, Any]
    new_notes: int
    kept_notes: int
    generation_seconds: float
    files: dict[str, str | None]
    # the notes written: the piece's kept ("Kept") and the span's (INFILL_TRACK), in memory
    # for a caller that shows them (the studio), never in the JSON
    tracks: dict[str, Notes] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, tracks=None))
        del d["tracks"]
        return d


# --- spans ---------------------------------------------------------------------------------


def make_span(score: Score, notes: Notes, start: float, end: float) -> Span:
    if not end > start:
        raise BadInput(f"--end {end:g} must be after --start {start:g}")
    if start < 0:
        raise BadInput(f"--start {start:g}: must be >= 0")
    last = float(notes.end.max())
    if start >= last:
        raise BadInput(f"--start {start:g}: the piece ends at {last:.1f} s")
    return Span(start, end, tick_at(score, start), tick_at(score, end))


# --- token streams (performance tokens) ------------------------------------------------------


def trim_to(ids: np.ndarray, seconds: float) -> np.ndarray:
    """A generated span cut to end exactly at ``seconds``: the engine stops on the shift that
    crosses it, which is shortened (or dropped)."""
    steps = int(round(seconds * STEPS_PER_SECOND))
    reach = np.cumsum(shift_steps(ids))
    over = np.flatnonzero(reach >= steps)
    if not len(over):
        return ids
    i = int(over[0])
    keep = steps - (int(reach[i - 1]) if i else 0)
    out = ids[:i]
    return np.append(out, SHIFT0 + keep - 1) if keep > 0 else out


@torch.no_grad()
def right_logprobs(model, left: np.ndarray, middles: list[np.ndarray], right: np.ndarray,
                   head: Conditioning | None = None) -> np.ndarray:
    """(len(middles), len(right)): log p of each right-context token given BOS, the left
    context, a middle and the right context before it, under ``model`` (one batch, padded
    at the end; the left context keeps its latest tokens that fit, a middle too dense to fit
    its latest tokens). ``head``: what every window starts with (a --style's tags)."""
    if not len(right):
        return np.zeros((len(middles), 0))
    head = head or Conditioning()
    room = (model.max_context or 10**9) - 1 - len(head) - max(len(m) for m in middles) \
        - len(right)
    if room < 0:  # a dense candidate: its latest tokens with the right context
        middles = [m[-(len(m) + room):] for m in middles]
        room = 0
    left = left[len(left) - room:] if room < len(left) else left
    seqs = [head.prepend(np.concatenate([[BOS], left, m, right]).astype(np.int64))
            for m in middles]
    T = max(len(s) for s in seqs)
    batch = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.as_tensor(s)
    device = next(model.parameters()).device
    logp = torch.log_softmax(model(batch.to(device)).float(), -1).cpu()
    target = torch.as_tensor(right)
    return np.stack([logp[i, torch.arange(len(s) - len(right) - 1, len(s) - 1), target].numpy()
                     for i, s in enumerate(seqs)])


# --- the method ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filled:
    """One sample's span: the new notes (seconds of the piece), the candidates' weights and
    which was drawn."""

    notes: Notes
    weights: np.ndarray
    chosen: int


def check_tokenizer(gen: Session) -> None:
    if gen.tok.name != "performance":
        raise BadInput(f"--checkpoint {gen.ck.path}: infill works with performance-token "
                       f"models (as pretrained:piano); this one reads {gen.tok.name} tokens")


def contexts(gen: Session, notes: Notes, span: Span, right_seconds: float
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """The left context's and the right context's ids, and the tokens a candidate may
    take; BadInput when the span leaves too little of the model's context around it."""
    check_tokenizer(gen)
    tok, context = gen.tok, gen.model.max_context or 10**9
    left = stream(tok, notes, span.start)
    right = right_side(tok, notes, span.end, right_seconds)[: context // fim.RIGHT_SHARE]
    budget = context - 1 - len(right) - context // LEFT_SHARE
    if budget < span.seconds * 20:  # ~20 tokens a second of piano at the least
        raise BadInput(f"--end {span.end:g}: a span of {span.seconds:g} s leaves too little of "
                       f"the model's context ({context} tokens) for the music around it; "
                       "choose a shorter span")
    return left, right, budget


def method_of(gen: Session, method: str) -> str:
    """``fim`` when the model was trained to infill (``train --fim``: it reads the marks)
    and ``method`` allows it, else ``resample``; ``fim`` asked of a model that cannot is
    one line."""
    can = gen.tags is not None and bool(gen.tags.marks)
    if method == "fim" and not can:
        raise BadInput(f"--method fim: {gen.name} was not trained to infill (train it "
                       "with --fim); --method resample works with any model")
    return "fim" if can and method != "resample" else "resample"


def fill(gen: Session, notes: Notes, span: Span, steering: Steering,
         how: Proposals = Proposals(), progress=None, ctx: tuple | None = None
         ) -> list[Filled]:
    """``steering.num_samples`` infills of ``span`` in ``notes`` (seconds), each drawn from
    ``how.candidates`` proposals weighted by the right context's likelihood. The proposals:
    ``fim``, the model writes the span after reading both sides (data/fim.py); ``resample``,
    it continues the left side. ``ctx``: what ``contexts`` returned, when the caller has it
    already."""
    tok, model = gen.tok, gen.model
    left, right, budget = ctx or contexts(gen, notes, span, how.right_seconds)
    k, samples = how.candidates, steering.num_samples
    cfg = steering.sampling(seconds=span.seconds, num_samples=k * samples)
    tags = head = gen.conditioning(cfg)  # a --style's tags (and the model's marks)
    if method_of(gen, how.method) == "fim":
        # everything up to <fim:middle> is kept by every window after the tags: the
        # engine's grammar and clock start with the span, and a slide never drops the right
        # side
        context = model.max_context or 10**9
        sides = len(tags.fim_prompt(left[:0], right, span.seconds))  # all but the left
        keep = max(context // LEFT_SHARE,
                   context - len(tags) - sides - int(span.seconds * MIDDLE_RATE))
        head = tags.with_fim(tags.fim_prompt(left[len(left) - keep:] if keep < len(left)
                                             else left, right, span.seconds))
        prompts = np.zeros((k * samples, 0), np.int64)
    else:
        prompt = np.concatenate([[BOS], left[-(budget // 2):] if len(left) > budget // 2
                                 else left])
        prompts = np.repeat(prompt[None], k * samples, 0)
    run = sample_run(gen, prompts, cfg, progress=progress, head=head)
    middles = [trim_to(t, span.seconds) for t in run.tokens]
    rng = np.random.default_rng(steering.seed)
    out = []
    for s in range(samples):
        mine = middles[s * k: (s + 1) * k]
        w = right_logprobs(model, left, mine, right, tags).sum(1)
        p = np.exp(w - w.max())
        chosen = int(rng.choice(k, p=p / p.sum()))
        new = tok.decode_notes(mine[chosen])
        new = Notes(new.start + span.start, new.end + span.start, new.pitch, new.velocity)
        out.append(Filled(new, w, chosen))
    return out


def infill(score: Score, start: float, end: float, steering: Steering | None = None,
           *, checkpoint: str = "pretrained:piano", cut_held: bool = False, **how) -> Score:
    """Python API: ``score`` with the span [start, end) seconds regenerated (one sample);
    ``how``: Proposals' fields (candidates, right_seconds, method)."""
    gen = Session.load(checkpoint)
    notes = notes_from_score(score)
    span = make_span(score, notes, start, end)
    filled = fill(gen, notes, span, steering or Steering(), Proposals(**how))[0]
    return replace_span(score, span.start_tick, span.end_tick, filled.notes, INFILL_TRACK,
                        cut_held)


# --- the command ---------------------------------------------------------------------------


def run_infill(cfg: InfillConfig, *, device: str = "cpu", progress=None,
               loaded=None) -> list[InfillInfo]:
    """The ``infill`` command: everything is checked before the first file is written; a take
    is written as ``generate`` writes one (temporary folder, moved in, JSON last)."""
    path = Path(cfg.input)
    if not path.exists():
        raise FileNotFoundError(f"--input {cfg.input}: no such file")
    try:
        score = load_score(path)
        notes = notes_from_score(score)
    except BadInput as e:
        raise BadInput(f"--input {path}: {e}") from e
    if not len(notes):
        raise BadInput(f"--input {path}: no notes")
    start, end = bar_span(score, cfg.bars) if cfg.bars else (cfg.start, cfg.end)
    span = make_span(score, notes, start, end)
    if not (notes.start < span.start).any():
        raise BadInput(f"--start {span.start:g}: no note of {path.name} starts before it; "
                       "this is a continuation from nothing: use `cadenza generate`")
    gen = loaded or Session.load(cfg.checkpoint, device=device, precision=cfg.precision)
    ctx = contexts(gen, notes, span, cfg.right_seconds)  # a span too long: before writing
    if not (notes.start >= span.end).any():
        print(f"note: no note of {path.name} starts after {span.end:g} s: the span is "
              "continued from the music before it (nothing after it to join)")
    gen.check(cfg.sample.sampling())
    how = Proposals(cfg.candidates, cfg.right_seconds, method_of(gen, cfg.method))
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        t = time.perf_counter()
        filled = fill(gen, notes, span, cfg.sample, how, progress, ctx)
        piece = _Piece(score, span, str(path), how.method, time.perf_counter() - t)
        infos = [_write(cfg, piece, f, k, take) for k, f in enumerate(filled)]
        place_take(take, Path(cfg.out), earlier, len(infos))
        return infos
    finally:
        shutil.rmtree(take, ignore_errors=True)


@dataclass(frozen=True)
class _Piece:
    """The piece a take's samples fill: its score, the span, where it came from, how the
    span was written and in how many seconds."""

    score: Score
    span: Span
    source: str
    method: str
    gen_s: float


def _write(cfg: InfillConfig, piece: _Piece, f: Filled, k: int, take: Path) -> InfillInfo:
    score, span = piece.score, piece.span
    base = take / f"sample-{k}"
    out = replace_span(score, span.start_tick, span.end_tick, f.notes, INFILL_TRACK,
                       cfg.cut_held)
    write_midi(out, base.with_suffix(".mid"))
    kept = _without_infill(out)
    both = Notes(*(np.concatenate([getattr(kept, a), getattr(f.notes, a)])
                   for a in ("start", "end", "pitch", "velocity")))
    is_new = np.r_[np.zeros(len(kept), bool), np.ones(len(f.notes), bool)]
    piano_roll_png(both, 0.0, base.with_suffix(".png"), primer=~is_new,
                   title=f"sample {k}: {span.start:g}-{span.end:g} s regenerated (orange)",
                   span=(span.start, span.end))
    wav = write_audio(base, cfg.soundfont if cfg.audio else False, warn=k == 0)
    info = InfillInfo(
        sample=k, checkpoint=cfg.checkpoint, input=piece.source,
        span={"start": span.start, "end": span.end}, candidates=cfg.candidates,
        method=piece.method,
        weights=[round(float(x), 3) for x in f.weights], chosen=f.chosen,
        settings=cfg.sample.to_dict(), new_notes=int(len(f.notes)),
        kept_notes=int(len(kept)), generation_seconds=piece.gen_s,
        files={"midi": base.with_suffix(".mid").name, "png": base.with_suffix(".png").name,
               "wav": wav.name if wav else None},
        tracks={"Kept": kept, INFILL_TRACK: f.notes})
    write_sidecar(base, info.to_dict())
    return info


def _without_infill(score: Score) -> Notes:
    kept = score.copy()
    kept.tracks = [t for t in kept.tracks if t.name != INFILL_TRACK]
    return notes_from_score(kept, sustain_pedal=False) if any(len(t.notes) for t in kept.tracks) \
        else Notes.make([], [], [], [])
