"""``cadenza generate``: continue a primer into new music, as MIDI, JSON, PNG and WAV.

Sampling runs on the generation engine (engine.py): the grammar keeps every sample
decodable, the controls (controls.py: key, ranges, polyphony, density, repeats, chords) and
``--guidance`` steer it, a seeded generator draws (same seed, same music), and a sample is as
long as asked (``--seconds``) unless ``--may-end`` lets the model end it; each sample's JSON
says why it stopped.

Python API, two lines (the loaded model is a session: session.py)::

    from cadenza.session import Session
    score = Session.load("runs/demo/best").continue_midi("primer.mid", seconds=20)

Try it: ``cadenza generate --checkpoint runs/demo/best --primer builtin:chorales --out out``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .adapt import Adaptation
from .config import GenerateConfig, SampleConfig
from .controls import chords_over
from .data.midi import Notes
from .engine import Progress, draw, filter_logits, sample
from .render import Roll
from .session import Session, resolve_primer
from .stats import CONTINUATION_TRACK, memorization, training_index
from .takes import open_take, place_take, write_sample, write_sidecar

__all__ = ["GenerateConfig", "Generator", "SampleConfig", "SampleInfo", "Session", "draw",
           "filter_logits", "resolve_primer", "run_generate", "sample"]


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
    # the notes written, by track (PRIMER_TRACK, CONTINUATION_TRACK): in memory for a
    # caller that shows them (the studio), never in the JSON
    tracks: dict[str, Notes] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, tracks=None))
        del d["tracks"]
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


# The loaded model was ``Generator`` before it became the session (session.py): the name
# stays for the Python API.
Generator = Session


def run_generate(cfg: GenerateConfig, *, device: str = "cpu",
                 progress: Progress | None = None,
                 loaded: Session | None = None) -> list[SampleInfo]:
    """The ``generate`` command: everything is validated before the first file is written.
    ``progress`` hears the share of the sampling done (see ``sample``); ``loaded``: the
    model already loaded for ``cfg.checkpoint`` (a server keeps its sessions), else it is
    loaded here.

    A take is one unit: each sample's files are written into a temporary folder inside
    ``cfg.out`` and moved into place, its JSON last; an ``out`` that holds an earlier take's
    samples is refused (``cfg.force`` replaces them), so old and new files never mix."""
    gen = loaded or Session.load(list(cfg.checkpoint), device=device,
                                   transpositions=cfg.transpositions, precision=cfg.precision)
    gen.check(cfg.sample)
    prompt, pinfo = gen.encode_primer(cfg.primer, cfg.primer_seconds, cfg.primer_tokens)
    if cfg.adapt:  # a copy of the weights that has learnt the primer, dropped with the take
        gen = gen.adapted(prompt, Adaptation(cfg.adapt_lr, cfg.adapt_segment),
                          cfg.adapt_passes)
    take, earlier = open_take(cfg.out, cfg.force)
    try:
        infos = _write_take(gen, prompt, pinfo, cfg, take, progress)
        place_take(take, Path(cfg.out), earlier, len(infos))
        return infos
    finally:
        shutil.rmtree(take, ignore_errors=True)


def _write_take(gen: Session, prompt: np.ndarray, pinfo: dict[str, Any], cfg: GenerateConfig,
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
        new_s = gen.seconds_of(np.concatenate([prompt[1:], new])) - t_split
        roll = Roll(full, is_primer, t_split, f"sample {k}: primer (blue) + continuation "
                    "(orange)", tuple(chords_over(cfg.sample, new_s, t_split)))
        wav = write_sample(base, tracks, roll, cfg.soundfont if cfg.audio else False,
                           warn=k == 0)
        mem = None
        if mem_index is not None:
            mem = memorization(cont, mem_index)
        info = SampleInfo(
            sample=k, checkpoint=", ".join(str(c.path) for c in gen.members),
            checkpoint_sha1=gen.checkpoint_hash, transpositions=gen.transpositions,
            precision=gen.precision, tokenizer=gen.tok.name, settings=cfg.sample.to_dict(),
            primer=pinfo, new_tokens=int(len(new)),
            new_seconds=new_s,
            stopped=done.stopped[k],
            notes=int(len(full)), continuation_notes=int(len(cont)),
            continuation_track=CONTINUATION_TRACK, generation_seconds=gen_s,
            tokens_per_second=float(sum(len(n) for n in news) / max(gen_s, 1e-9)),
            files={"midi": base.with_suffix(".mid").name, "png": base.with_suffix(".png").name,
                   "wav": wav.name if wav else None},
            memorization=mem, tracks=tracks)
        write_sidecar(base, info.to_dict())
        results.append(info)
    return results


def _memorization_index(gen: Session, reference: str | None):
    """The training set's n-gram index, when the training data is on this machine."""
    data = reference or gen.ck.config.data.path
    if not data or not (Path(data) / "manifest.json").exists():
        return None
    try:
        return training_index(str(Path(data).resolve()))
    except Exception:  # an unreadable or incompatible dataset: no memorization, no failure
        return None
