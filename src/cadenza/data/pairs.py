"""Paired data for source -> target tasks: a melody in, its harmony or accompaniment out.

``cadenza prepare --task harmonize`` reads the JSB 16th-note chorales: the source is the
soprano line (one chorale16 token per 16th step), the target the alto, tenor and bass of the
same steps (three tokens a step, in that order). ``--task accompany`` reads POP909: the source
is a song's ``MELODY`` track, the target its ``PIANO`` track over the same bars, both in
performance tokens whose time starts at the window's first downbeat. Bars come from the
song's ``beat_midi.txt`` (its downbeat column) when it has one, else from the MIDI file's own
beats (four quarter notes a bar), as they do for a user's melody.

Each pair is one window of ``bars`` bars. Training windows start on every bar (neighbours
overlap: more windows, each a real context); valid and test windows tile each piece once,
so every target note is scored exactly once. A dataset stores the targets where a plain
dataset stores its pieces (``{split}.tokens.npy``), so everything that reads pieces reads
the targets, and the sources beside them (``{split}.source.tokens.npy``).

:class:`PairSampler` draws training pairs and augments both sides of a pair alike (one
transposition, one velocity shift, one time stretch), so they stay aligned. For an
encoder-decoder model a batch is the source for the encoder and the target for the decoder;
for a decoder-only Transformer it is one sequence, the source as a prefix and then the target
(``[BOS source EOS BOS target EOS]``), scored on the target only: the baseline the encoder-
decoder is measured against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import symusic
import torch

from .dataset import IGNORE
from .midi import BadInput, Notes, load_score, notes_from_score, only_track, seconds_at
from .tokenizers import PAD, Tokenizer, framed
from .tokenizers.chorale16 import grid_ids

STEPS_PER_BAR = 16  # chorale16: 16th notes, chorales in 4/4
LOWER_VOICES = 3  # harmonize targets: alto, tenor, bass
QUARTERS_PER_BAR = 4


@dataclass
class Pair:
    source: np.ndarray  # content ids, no BOS/EOS
    target: np.ndarray
    start: float = 0.0  # seconds (accompany) or steps (harmonize) into the piece


def starts(n: int, width: int, train: bool) -> list[int]:
    """Window starts over a piece of n units: every bar for training (the last window ends
    with the piece); a tiling for evaluation (the last window may be shorter)."""
    if not train:
        return list(range(0, n, width))
    last = max(n - width, 0)
    return sorted(set(range(0, last + 1, STEPS_PER_BAR)) | {last})


def harmonize_pairs(grid: np.ndarray, bars: int, train: bool) -> list[Pair]:
    """(steps, 4) chorale grid -> soprano / alto-tenor-bass pairs of ``bars`` bars."""
    g = np.asarray(grid, np.int64)
    width = bars * STEPS_PER_BAR
    out = []
    for s in starts(len(g), width, train):
        w = g[s: s + width]
        if len(w) < 4 or (w[:, 0] < 0).all():  # under a beat, or no melody
            continue
        out.append(Pair(grid_ids(w[:, :1]), grid_ids(w[:, 1:]), float(s)))
    return out


def soprano_grid(score: symusic.Score, tok: Tokenizer) -> np.ndarray:
    """The melody of a score on the chorale16 grid: its highest sounding pitch at each 16th
    (-1 where it rests): (steps,)."""
    return tok.piece_from_notes(tok.score_notes(score))[:, 0]


def window_notes(notes: Notes, t0: float, t1: float) -> Notes:
    """The notes starting in [t0, t1), released by t1, with t0 as time zero."""
    keep = (notes.start >= t0) & (notes.start < t1)
    return Notes(notes.start[keep] - t0, np.minimum(notes.end[keep], t1) - t0,
                 notes.pitch[keep], notes.velocity[keep])


def downbeats(path: Path, score: symusic.Score) -> np.ndarray:
    """Times (s) of a song's downbeats: from its beat_midi.txt (POP909: time, beat,
    downbeat columns), else every QUARTERS_PER_BAR quarter notes of the file's tempo map."""
    beat_file = Path(path).parent / "beat_midi.txt"
    if beat_file.exists():
        try:
            rows = np.loadtxt(beat_file, ndmin=2)
            if rows.shape[1] >= 3 and (rows[:, 2] == 1).sum() >= 2:
                return rows[rows[:, 2] == 1, 0]
        except ValueError:
            pass  # unreadable: fall back to the MIDI's beats
    end = score.to("second").end()
    bars, t, out = 0, 0.0, []
    while t <= end:
        out.append(t)
        bars += 1
        t = seconds_at(score, bars * QUARTERS_PER_BAR)
    out.append(t)
    return np.array(out)


def melody_notes(score: symusic.Score) -> Notes:
    """A score's melody: its MELODY track when it has one, else all of its notes."""
    mel = only_track(score, "MELODY")
    return notes_from_score(mel if mel is not None else score)


def accompany_windows(bar_times: np.ndarray, bars: int, train: bool) -> list[tuple[float, float]]:
    """(t0, t1) of each window of ``bars`` bars between consecutive downbeats."""
    n = len(bar_times) - 1  # complete bars
    if n < 1:
        return []
    return [(float(bar_times[k]), float(bar_times[min(k + bars, n)]))
            for k in (range(0, max(n - bars, 0) + 1) if train else range(0, n, bars))]


@dataclass
class Song:
    """What accompany pairs are cut from: the melody, the piano and the downbeats (s), and
    every note of the song (for its digest)."""

    melody: Notes
    piano: Notes
    bars: np.ndarray
    notes: Notes


def load_song(path: str, max_mb: float = 20.0) -> Song:
    """A POP909-style song; BadInput when it has no MELODY or PIANO track."""
    score = load_score(path, max_mb)
    mel, pno = only_track(score, "MELODY"), only_track(score, "PIANO")
    missing = [n for n, t in (("MELODY", mel), ("PIANO", pno)) if t is None]
    if missing:
        raise BadInput(f"no {' or '.join(missing)} track (accompany needs both)")
    return Song(notes_from_score(mel), notes_from_score(pno), downbeats(Path(path), score),
                notes_from_score(score))


def song_pairs(song: Song, tok: Tokenizer, bars: int, train: bool) -> list[Pair]:
    """Melody / piano pairs of ``bars`` bars (every bar for training, a tiling otherwise);
    BadInput when no window has both."""
    out = []
    for t0, t1 in accompany_windows(song.bars, bars, train):
        wm, wp = window_notes(song.melody, t0, t1), window_notes(song.piano, t0, t1)
        if len(wm) and len(wp):  # a window with nothing to accompany, or no accompaniment
            out.append(Pair(tok.encode(wm), tok.encode(wp), t0))
    if not out:
        raise BadInput("no bar with both melody and piano notes")
    return out


def accompany_pairs(path: str, tok: Tokenizer, bars: int, train: bool,
                    max_mb: float = 20.0) -> tuple[list[Pair], Notes]:
    """A song's pairs, and all its notes."""
    song = load_song(path, max_mb)
    return song_pairs(song, tok, bars, train), song.notes


def pad_batch(seqs: list[np.ndarray]) -> torch.Tensor:
    """(B, longest) int64, each sequence left-aligned and padded with PAD (masked by the
    encoder; for targets and labels, positions no score reads)."""
    out = torch.full((len(seqs), max(len(q) for q in seqs)), PAD, dtype=torch.long)
    for i, q in enumerate(seqs):
        out[i, : len(q)] = torch.as_tensor(q)
    return out


def prefix_sequence(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int]:
    """The decoder-only form of a framed pair, [BOS src EOS BOS tgt EOS], and the index of
    the target's BOS (positions after it are the target's tokens)."""
    return np.concatenate([source, target]), len(source)


class PairSampler:
    """Random training pairs, augmented alike on both sides; state is its numpy Generator.

    ``prefix`` False: batches for an encoder-decoder, inputs ``{"idx": (B, Lt), "src":
    (B, Ls)}``; True: one sequence per pair for a decoder-only model, inputs ``{"idx":
    (B, L)}``, the source's positions ignored by the loss.
    """

    def __init__(self, ds, plan, prefix: bool) -> None:  # plan: dataset.BatchPlan
        context, batch_size, augment = plan.context, plan.batch_size, plan.augment
        seed, rank, world = plan.seed, plan.rank, plan.world
        self.sources, self.targets = ds.pieces("train", "source"), ds.pieces("train")
        self.tok = ds.tokenizer
        self.context, self.batch_size, self.augment = context, batch_size, augment
        self.prefix, self.rank, self.world = prefix, rank, world
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def draw(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in self.rng.integers(0, len(self.targets), size=self.batch_size):
            s, t = self.sources[i], self.targets[i]
            if self.augment is not None:  # content only: BOS and EOS stay
                s, t = self.tok.augment_together([s[1:-1], t[1:-1]], self.rng, self.augment)
                s, t = framed(s), framed(t)
            yield s, t

    def next_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """This rank's slice of the global batch: model inputs, targets, and the number of
        real targets in the global batch (as WindowSampler.next_batch)."""
        pairs = list(self.draw())
        T = self.context
        if self.prefix:
            seqs = [prefix_sequence(s, t) for s, t in pairs]
            L = min(T, max(len(q) for q, _ in seqs) - 1)
            x = np.full((len(seqs), L), PAD, np.int64)
            y = np.full((len(seqs), L), IGNORE, np.int64)
            for b, (q, cut) in enumerate(seqs):
                q = q[: L + 1]
                x[b, : len(q) - 1] = q[:-1]
                y[b, cut: len(q) - 1] = q[cut + 1:]
            inputs = {"idx": x}
        else:
            Ls = min(T, max(len(s) for s, _ in pairs))
            Lt = min(T, max(len(t) for _, t in pairs) - 1)
            src = np.full((len(pairs), Ls), PAD, np.int64)
            x = np.full((len(pairs), Lt), PAD, np.int64)
            y = np.full((len(pairs), Lt), IGNORE, np.int64)
            for b, (s, t) in enumerate(pairs):
                s, t = s[:Ls], t[: Lt + 1]
                src[b, : len(s)] = s
                x[b, : len(t) - 1] = t[:-1]
                y[b, : len(t) - 1] = t[1:]
            inputs = {"idx": x, "src": src}
        lo = self.rank * self.batch_size // self.world
        hi = (self.rank + 1) * self.batch_size // self.world
        n = int((y != IGNORE).sum())
        return ({k: torch.from_numpy(v[lo:hi]) for k, v in inputs.items()},
                torch.from_numpy(y[lo:hi]), n)

