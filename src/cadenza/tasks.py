"""``cadenza harmonize`` and ``cadenza accompany``: a melody in, the parts under it out.

The checkpoint must be trained on the task's pairs (``prepare --task``; data/pairs.py): an
encoder-decoder, or a decoder-only model that reads the source as a prefix. The melody is cut
into the windows the model was trained on (bars of chorale16 steps to harmonize; bars of the
song, from a ``beat_midi.txt`` beside it or the file's own beats, to accompany). An
encoder-decoder writes every window of every sample in one batch; a decoder-only model one
window (all samples) at a time, since its prompt holds the window's melody:

- harmonize: the melody's highest line on the 16th-note grid is the soprano; the model writes
  exactly three tokens (alto, tenor, bass) per step, no more and no fewer;
- accompany: the model writes piano events until the window's length in time is reached (or
  it ends the window itself); notes still held at the bar line are released there.

Each sample is a MIDI file with the melody and the new parts on their own tracks, its piano
roll (melody blue, new parts orange), its WAV, and a JSON record of how it was made. As
``generate``, a take is written whole or not at all, and an earlier take is replaced only
with ``--force``.

Try it: ``cadenza harmonize --checkpoint runs/harm/best --melody tune.mid --out harm/``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import ArrangeConfig, ConfigError, Steering, flag
from .data import pairs
from .data.midi import BadInput, Notes, load_score
from .data.task import Windows
from .data.tokenizers import BOS, framed
from .data.tokenizers.base import Grammar
from .generate import primer_mask, sample
from .models import Conditioned
from .render import Roll
from .session import Session
from .takes import open_take, place_take, write_sample, write_sidecar


class AfterPrefix:
    """A grammar that starts at the target: a decoder-only model's prompt ``[BOS src EOS]
    BOS`` holds the source's EOS, which must not end the sample."""

    def __init__(self, grammar: Grammar, skip: int) -> None:
        self.inner, self.skip = grammar, skip

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def feed(self, ids: np.ndarray) -> None:
        self.inner.feed(ids[:, self.skip:])


def arrange(cfg: ArrangeConfig, command: str, *, device: str = "cpu") -> list[ArrangeRecord]:
    """The ``harmonize`` / ``accompany`` command; returns each sample's record."""
    ck = load_checkpoint(cfg.checkpoint, device=device)
    task = ck.task
    if not task.paired or task.command != command:
        raise ValueError(f"--checkpoint {cfg.checkpoint}: trained to {task}, not to "
                         f"{command} (train it on `cadenza prepare --task {command}` data)")
    path = Path(cfg.melody)
    if not path.is_file():
        raise FileNotFoundError(f"--melody {path}: no such file")
    try:
        score = load_score(path)
        windows = task.windows(ck.tokenizer, score, path, cfg.melody_seconds)
    except BadInput as e:
        raise BadInput(f"--melody {path}: {e}") from e
    if not windows.sources:
        raise BadInput(f"--melody {path}: no melody notes to {task}")
    if cfg.sample.controls and ck.tokenizer.name != "performance":
        name = next(iter(cfg.sample.controls))
        raise ConfigError(f"{flag(name)}: {command} writes {ck.tokenizer.name} voices on an "
                          "exact grid, which no control steers; controls steer accompany's "
                          "performance model")
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        t = time.perf_counter()
        news = generate_windows(ck, windows, cfg.sample)
        gen_s = time.perf_counter() - t
        records = _write(ck, news, windows, cfg, take, gen_s)
        place_take(take, Path(cfg.out), earlier, len(records))
        return records
    finally:
        shutil.rmtree(take, ignore_errors=True)


def generate_windows(ck, windows: Windows, steering: Steering) -> list[list[np.ndarray]]:
    """Per sample, each window's new tokens. An encoder-decoder writes every window of every
    sample in one batch (padded sources are masked); a decoder-only model reads
    ``[BOS src EOS] BOS`` and continues it, one window (all samples) at a time. The task
    says how long each window's answer is and what grammar holds it there. A chord schedule
    runs in the melody's time: each window's answer reads it from the window's start (so an
    encoder-decoder then writes a window at a time too)."""
    model, tok, task = ck.model.eval(), ck.tokenizer, ck.task
    n, k = len(windows.sources), steering.num_samples
    sources = [framed(s) for s in windows.sources]
    # the engine reads the tokenizer's note roles only for controls (none: as before)
    roles_tok = tok if steering.controls else None

    def draw(net, prompt, rows, start=0.0):
        per_row = np.repeat(rows, len(prompt) // len(rows))
        length, grammar = task.answer_limits(tok, windows, per_row)
        scfg = steering.sampling(may_end=True, **length)
        if steering.has_chords:
            scfg = scfg.replace(chord_offset=steering.chord_offset + start)
        limit = length["tokens"] if "tokens" in length \
            else model.max_context - prompt.shape[1]
        # the task's own grammar holds the answer; the melody's model reads no tags
        return sample(Session(net, roles_tok), prompt, scfg, limit,
                      grammar=AfterPrefix(grammar(), prompt.shape[1] - 1))

    with torch.no_grad():
        if ck.model_cfg.kind == "encoder-decoder" and not steering.has_chords:
            rows = np.repeat(np.arange(n), k)  # row = window * k + sample
            return _by_sample(draw(Conditioned(model, pairs.pad_batch(
                [sources[w] for w in rows])), np.full((n * k, 1), BOS), rows), n, k)
        got = []
        for w in range(n):
            start = task.place_seconds(tok, windows.places[w])
            if ck.model_cfg.kind == "encoder-decoder":
                got += draw(Conditioned(model, pairs.pad_batch([sources[w]] * k)),
                            np.full((k, 1), BOS), np.full(k, w), start)
            else:
                prompt = np.repeat(np.concatenate([sources[w], [BOS]])[None], k, 0)
                got += draw(model, prompt, np.array([w]), start)
    return _by_sample(got, n, k)


def _by_sample(got: list[np.ndarray], n: int, k: int) -> list[list[np.ndarray]]:
    """Rows in window-major order (window * k + sample) as each sample's windows."""
    return [[got[w * k + s] for w in range(n)] for s in range(k)]


@dataclass(frozen=True)
class ArrangeRecord:
    """One harmonize / accompany sample: how it was made and its files (``sample-K.json``)."""

    sample: int
    task: str
    checkpoint: str
    melody: str
    melody_seconds: float  # of the melody arranged (0: all of it)
    windows: int
    bars_per_window: int
    settings: dict[str, Any]
    tracks: dict[str, int]  # notes per track
    new_tokens: int
    generation_seconds: float
    files: dict[str, str | None]  # midi, png, wav (None: no audio)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _write(ck, news: list[list[np.ndarray]], windows: Windows, cfg: ArrangeConfig,
           take: Path, gen_s: float) -> list[ArrangeRecord]:
    task = ck.task
    records = []
    for k, new in enumerate(news):
        tracks = task.tracks(ck.tokenizer, new, windows)
        mel = tracks[task.source_track]
        every = Notes.concat(list(tracks.values()))
        base = take / f"sample-{k}"
        roll = Roll(every, primer_mask(every, mel), 0.0,
                    f"sample {k}: melody (blue) + {task.parts} (orange)")
        wav = write_sample(base, tracks, roll, cfg.soundfont if cfg.audio else False,
                           warn=k == 0)
        rec = ArrangeRecord(
            k, task.name, str(ck.path), cfg.melody, cfg.melody_seconds, len(new), task.bars,
            cfg.sample.to_dict(), {n: int(len(t)) for n, t in tracks.items()},
            int(sum(len(w) for w in new)), gen_s,
            {"midi": base.with_suffix(".mid").name, "png": base.with_suffix(".png").name,
             "wav": wav.name if wav else None})
        write_sidecar(base, rec.to_json())
        records.append(rec)
    return records
