"""The fill-in-the-middle order of performance tokens: how a model learns to infill.

A decoder-only model writes left to right, so to fill a span it must hear what comes after
the span before it writes the span. In the fill-in-the-middle order (Bavarian et al. 2022,
"Efficient training of language models to fill in the middle"; for music, the Anticipatory
Music Transformer's reordering does the same job) a piece cut at ``start`` and ``end`` is
read as

    BOS  left  <fim:right>  gap  right  <fim:middle>  middle

- ``left``: the notes that start before ``start``, released there at the latest, and the
  TIME_SHIFTs up to ``start`` (exactly what a continuation from ``start`` is prompted with);
- ``gap``: TIME_SHIFTs as long as the span, so the model knows where the right side sits;
- ``right``: the notes that start in ``[end, end + seconds)``, from ``end`` on, released by
  ``end + seconds``;
- ``middle``: the notes that start inside the span, from ``start`` on, released by ``end``.

The two marks are input-only ids after the tokenizer's (as style tags are, data/styles.py):
a model reads them and never writes them. ``train --fim RATE`` puts that share of training
windows in this order (every token but the marks a target), the rest stay as they were; a
rate of a half costs left-to-right models little (Bavarian et al.). ``cadenza infill``
prompts such a model with everything up to ``<fim:middle>`` and lets it write the middle.

Only ``data/`` touches notes: these functions turn notes into the streams, and a training
window (token ids) into its reordered form.
"""

from __future__ import annotations

import numpy as np

from .midi import Notes, cut_notes
from .tokenizers import BOS, EOS
from .tokenizers.performance import STEPS_PER_SECOND, shift_steps, shift_tokens

SPAN_SECONDS = (1.0, 12.0)  # a training span's length is drawn from this range
RIGHT_SECONDS = (1.0, 8.0)  # and the right side's
RIGHT_SHARE = 4  # the right side keeps at most 1/4 of the window's tokens


def after(notes: Notes, t: float, seconds: float) -> Notes:
    """The notes that start in [t, t + seconds), shifted to start from 0."""
    keep = (notes.start >= t - 1e-9) & (notes.start < t + seconds)
    return Notes(notes.start[keep] - t, notes.end[keep] - t, notes.pitch[keep],
                 notes.velocity[keep])


def stream(tok, notes: Notes, seconds: float) -> np.ndarray:
    """Ids of ``notes`` (times from 0) whose stream reaches ``seconds`` exactly: notes cut
    there, TIME_SHIFTs up to it."""
    return tok.encode_until(cut_notes(notes, seconds), seconds)


def right_side(tok, notes: Notes, end: float, seconds: float) -> np.ndarray:
    """The stream of the notes that start in [end, end + seconds), from ``end`` on."""
    if seconds <= 0:
        return np.zeros(0, np.int64)
    return stream(tok, after(notes, end, seconds), seconds)


def middle(tok, notes: Notes, start: float, end: float) -> np.ndarray:
    """The stream of the notes that start in [start, end), from ``start`` on."""
    return stream(tok, after(notes, start, end - start), end - start)


def prompt(left: np.ndarray, right: np.ndarray, span_seconds: float, marks: tuple[int, int]
           ) -> np.ndarray:
    """``BOS left <fim:right> gap right <fim:middle>``: what an infilling model reads before
    it writes the middle (``marks``: the two marks' ids)."""
    gap = shift_tokens(int(round(span_seconds * STEPS_PER_SECOND)))
    return np.concatenate([[BOS], left, [marks[0]], gap, right, [marks[1]]]).astype(np.int64)


def reorder(tok, window: np.ndarray, rng: np.random.Generator, room: int,
            marks: tuple[int, int]) -> np.ndarray | None:
    """A training window of performance tokens in the fill-in-the-middle order, at most
    ``room`` tokens (the left side loses its earliest tokens to fit), with a span and a
    right side of random lengths; None when the window is too short to cut (under 4 s or
    under 8 notes), so that it stays as it is."""
    ids = np.asarray(window, np.int64)
    eos = np.flatnonzero(ids == EOS)
    body = ids[: eos[0]] if len(eos) else ids
    seconds = float(shift_steps(body).sum()) / STEPS_PER_SECOND
    notes = tok.decode(body)
    if seconds < 4.0 or len(notes) < 8:
        return None
    d = rng.uniform(SPAN_SECONDS[0], min(SPAN_SECONDS[1], 0.4 * seconds))
    r = min(rng.uniform(*RIGHT_SECONDS), seconds * 0.3)
    start = rng.uniform(0.15 * seconds, seconds - d - r)
    start, end = round(start, 2), round(start + d, 2)  # on the 10 ms grid
    r = round(min(r, seconds - end), 2)
    left = stream(tok, notes, start)
    right = right_side(tok, notes, end, r)[: room // RIGHT_SHARE]
    mid = middle(tok, notes, start, end)
    keep = room - len(prompt(left[:0], right, end - start, marks)) - len(mid)
    if keep < 0:  # a middle too dense to fit with its surroundings: leave the window as is
        return None
    left = left[len(left) - keep:] if keep < len(left) else left
    return np.concatenate([prompt(left, right, end - start, marks), mid])
