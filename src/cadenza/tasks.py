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

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_bytes
from .checkpoint import load_checkpoint
from .config import ArrangeConfig, Drawing, SampleConfig
from .data import pairs
from .data.midi import BadInput, Notes, cut_notes, load_score
from .data.tokenizers import BOS, EOS, framed
from .data.tokenizers.base import Grammar
from .data.tokenizers.chorale16 import StepGrammar, grid_ids, ids_grid
from .generate import open_take, place_take, primer_mask, sample, write_sample
from .models import Conditioned

TRACKS = {"harmonize": ("Soprano", ["Alto", "Tenor", "Bass"]),
          "accompany": ("Melody", ["Piano"])}


class ExactLength(StepGrammar):
    """Per sample, exactly ``n[b]`` content tokens (whole steps of ``period``), then EOS:
    harmonize writes three tokens a step, no more and no fewer."""

    def __init__(self, vocab_size: int, period: int, step_seconds: float,
                 lengths: np.ndarray) -> None:
        super().__init__(vocab_size, period, step_seconds)
        self.lengths = np.asarray(lengths)

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = ~self.done
        full = live & (self.count >= self.lengths)
        m[live, EOS] = False
        m[full] = False
        m[full, EOS] = True
        return m


class AfterPrefix:
    """A grammar that starts at the target: a decoder-only model's prompt ``[BOS src EOS]
    BOS`` holds the source's EOS, which must not end the sample."""

    def __init__(self, grammar: Grammar, skip: int) -> None:
        self.inner, self.skip = grammar, skip

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def feed(self, ids: np.ndarray) -> None:
        self.inner.feed(ids[:, self.skip:])


def melody_windows(task: str, tok, score, path: Path, bars: int, seconds: float
             ) -> tuple[list[np.ndarray], list[float], Any]:
    """The melody's windows as source ids, each window's start (seconds), and the melody
    (the soprano grid, or its notes)."""
    if task == "harmonize":
        sop = pairs.soprano_grid(score, tok)
        if seconds:
            sop = sop[: int(round(seconds / tok.step_seconds))]
        width = bars * pairs.STEPS_PER_BAR
        starts = list(range(0, len(sop), width))
        return ([grid_ids(sop[s: s + width, None]) for s in starts],
                [s * tok.step_seconds for s in starts], sop)
    mel = pairs.melody_notes(score)
    if seconds:
        mel = cut_notes(mel, seconds)
    src, starts = [], []
    for t0, t1 in pairs.accompany_windows(pairs.downbeats(path, score), bars, train=False):
        w = pairs.window_notes(mel, t0, t1)
        if len(w):  # a window without melody stays silent: the model never saw one
            src.append(tok.encode(w))
            starts.append((t0, t1))
    return src, starts, mel


def arrange(cfg: ArrangeConfig, task: str, *, device: str = "cpu") -> list[dict[str, Any]]:
    """The ``harmonize`` / ``accompany`` command; returns each sample's record."""
    ck = load_checkpoint(cfg.checkpoint, device=device)
    if ck.task != task:
        raise ValueError(f"--checkpoint {cfg.checkpoint}: trained to {ck.task}, not to "
                         f"{task} (train it on `cadenza prepare --task {task}` data)")
    path = Path(cfg.melody)
    if not path.is_file():
        raise FileNotFoundError(f"--melody {path}: no such file")
    try:
        score = load_score(path)
        src, starts, melody = melody_windows(task, ck.tokenizer, score, path, ck.bars, cfg.seconds)
    except BadInput as e:
        raise BadInput(f"--melody {path}: {e}") from e
    if not src:
        raise BadInput(f"--melody {path}: no melody notes to {task}")
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        t = time.perf_counter()
        news = generate_windows(ck, task, src, starts, cfg.sample)
        gen_s = time.perf_counter() - t
        records = _write(ck, task, news, starts, melody, cfg, take, gen_s)
        place_take(take, Path(cfg.out), earlier, len(records))
        return records
    finally:
        shutil.rmtree(take, ignore_errors=True)


def generate_windows(ck, task: str, src: list[np.ndarray], starts: list, drawing: Drawing
                     ) -> list[list[np.ndarray]]:
    """Per sample, each window's new tokens. An encoder-decoder writes every window of every
    sample in one batch (padded sources are masked); a decoder-only model reads
    ``[BOS src EOS] BOS`` and continues it, one window (all samples) at a time."""
    model, tok = ck.model.eval(), ck.tokenizer
    n, k = len(src), drawing.num_samples
    sources = [framed(s) for s in src]
    if task == "harmonize":  # exactly three tokens a step
        lengths = np.array([len(s) * pairs.LOWER_VOICES for s in src])

        def draw(net, prompt, rows):
            need = np.repeat(lengths[rows], len(prompt) // len(rows))
            scfg = SampleConfig(tokens=int(need.max()) + 1, may_end=True, **drawing.to_dict())
            grammar = AfterPrefix(ExactLength(tok.vocab_size, pairs.LOWER_VOICES,
                                              tok.step_seconds, need), prompt.shape[1] - 1)
            return sample(net, prompt, grammar, scfg, int(need.max()) + 1)
    else:  # piano events until the window's length in time
        span = max(t1 - t0 for t0, t1 in starts)

        def draw(net, prompt, rows):
            # a window ends where the model writes EOS (it learnt each window's end)
            scfg = SampleConfig(seconds=span, may_end=True, **drawing.to_dict())
            return sample(net, prompt, AfterPrefix(tok.grammar(), prompt.shape[1] - 1), scfg,
                          model.max_context - prompt.shape[1])
    with torch.no_grad():
        if hasattr(model, "encode_into"):  # row = window * k + sample
            rows = np.repeat(np.arange(n), k)
            got = draw(Conditioned(model, pairs.pad_batch([sources[w] for w in rows])),
                       np.full((n * k, 1), BOS), rows)
        else:
            got = []
            for w in range(n):
                prompt = np.repeat(np.concatenate([sources[w], [BOS]])[None], k, 0)
                got += draw(model, prompt, np.array([w]))
    return [[got[w * k + s] for w in range(n)] for s in range(k)]


def _parts(task: str, tok, new: list[np.ndarray], starts: list, melody) -> tuple[Notes, dict]:
    """The melody and the generated parts of one sample, as notes on named tracks."""
    mel_track, names = TRACKS[task]
    if task == "harmonize":
        lower = np.concatenate([ids_grid(ids, pairs.LOWER_VOICES) for ids in new])
        grid = np.full((len(melody), 4), -1, np.int64)
        grid[:, 0] = melody
        grid[: len(lower), 1:] = lower[: len(melody)]
        tracks = {name: tok.notes_of(np.where(np.arange(4) == v, grid, -1))
                  for v, name in enumerate([mel_track, *names])}
        return tracks[mel_track], tracks
    piano = []
    for ids, (t0, t1) in zip(new, starts):
        notes = cut_notes(tok.decode_notes(ids), t1 - t0)
        piano.append(Notes(notes.start + t0, notes.end + t0, notes.pitch, notes.velocity))
    return melody, {mel_track: melody, names[0]: Notes.concat(piano)}


def _write(ck, task: str, news: list[list[np.ndarray]], starts: list, melody,
           cfg: ArrangeConfig, take: Path, gen_s: float) -> list[dict[str, Any]]:
    records = []
    for k, new in enumerate(news):
        mel, tracks = _parts(task, ck.tokenizer, new, starts, melody)
        every = Notes.concat(list(tracks.values()))
        base = take / f"sample-{k}"
        parts = "alto, tenor and bass" if task == "harmonize" else "accompaniment"
        wav = write_sample(base, tracks, every, primer_mask(every, mel), 0.0,
                           f"sample {k}: melody (blue) + {parts} (orange)",
                           cfg.soundfont if cfg.audio else False, warn=k == 0)
        rec = {"sample": k, "task": task, "checkpoint": str(ck.path), "melody": cfg.melody,
               "seconds": cfg.seconds, "windows": len(new), "bars_per_window": ck.bars,
               "settings": cfg.sample.to_dict(), "tracks": {n: int(len(t))
                                                           for n, t in tracks.items()},
               "new_tokens": int(sum(len(w) for w in new)), "generation_seconds": gen_s,
               "files": {"midi": base.with_suffix(".mid").name,
                         "png": base.with_suffix(".png").name,
                         "wav": wav.name if wav else None}}
        write_bytes(base.with_suffix(".json"), (json.dumps(rec, indent=1) + "\n").encode())
        records.append(rec)
    return records

