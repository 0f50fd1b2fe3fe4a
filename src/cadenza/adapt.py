"""Learning the piece while it is read: dynamic evaluation (Krause et al., 2018).

A 7M-parameter model cannot hold a whole sonata in its weights, nor more than about 30 s of
live playing in its context. Dynamic evaluation lets the weights follow the piece: the piece
is read in segments of ``segment`` tokens, in order; each segment is first **scored** (with
up to the model's context of history before it, by the weights as they stand), and only
then the weights take **one plain SGD step** (learning rate ``lr``) on that segment's loss,
from the same forward pass. So no token is ever predicted by weights that have seen it: the
NLL stays an honest prediction of every token, as the static figure is.

Each piece starts from the trained weights (a copy of them is kept and put back after every
piece, and at the end): the order of the pieces changes no piece's figure, and the model
object is what it was before. Nothing is written to a checkpoint.

Plain SGD is the simplest choice; the literature's RMS-normalised updates with a decay back
to the trained weights are not implemented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data.styles import Conditioning


@dataclass(frozen=True)
class Adaptation:
    """How the weights follow a piece: one SGD step of ``lr`` after each ``segment`` tokens
    are scored."""

    lr: float
    segment: int
    optimizer: str = "sgd"

    def as_dict(self) -> dict:
        return asdict(self)


def score_adapted(model: torch.nn.Module, pieces: list[np.ndarray], context: int,
                  how: Adaptation, prefixes: list[Conditioning] | None = None
                  ) -> list[np.ndarray]:
    """Per piece, the NLL (nats) of each content token (shape ``(len(piece) - 2,)``, as
    evaluate.score_pieces gives them) under dynamic evaluation: see the module's doc.
    ``prefixes``: per piece, what every window starts with (read, not scored)."""
    heads = prefixes or [Conditioning() for _ in pieces]
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = []
    with _learning(model):
        try:
            for piece, head in zip(pieces, heads):
                out.append(_one(model, piece, context - len(head), how, head))
                model.load_state_dict(base)  # the next piece starts from the trained weights
        finally:
            model.load_state_dict(base)  # also after an error: the model is as it was
    return out


@contextlib.contextmanager
def _learning(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout: the function the static figure scores) while it
    learns; its mode restored and its gradients dropped afterwards, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _one(model: torch.nn.Module, piece: np.ndarray, context: int, how: Adaptation,
         head: Conditioning) -> np.ndarray:
    device = next(model.parameters()).device
    last = len(piece) - 2  # the last content position (EOS is not scored)
    nll = np.zeros(max(last, 0))
    params = [p for p in model.parameters() if p.requires_grad]
    k = len(head)
    learns = how.lr > 0  # lr 0: the same segments, scored without a step (benchmarks)
    for a in range(1, last + 1, how.segment):
        e = min(a + how.segment, last + 1)  # this segment's targets: positions a..e-1
        s = max(0, e - 1 - context)  # inputs s..e-2 predict positions s+1..e-1
        x = torch.from_numpy(head.prepend(piece[s: e - 1]))[None].to(device)
        y = torch.from_numpy(np.asarray(piece[a: e], np.int64))[None].to(device)
        with torch.set_grad_enabled(learns):
            logits = model(x)[:, k + a - s - 1:]  # the columns that predict a..e-1
            tok = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")[0]
        nll[a - 1: e - 1] = tok.detach().cpu().numpy()  # scored before any step on it
        if not learns:
            continue
        model.zero_grad(set_to_none=True)
        tok.mean().backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-how.lr)
    return nll


def learn(model: torch.nn.Module, ids: np.ndarray, context: int, how: Adaptation,
          passes: int) -> None:
    """Train ``model`` in place on ``ids`` (BOS first: a primer): ``passes`` times through
    it, one SGD step per segment in order, as score_adapted steps (its scores unused)."""
    with _learning(model):
        for _ in range(passes):
            _one(model, np.r_[ids, 0], context, how, Conditioning())  # every token a target
