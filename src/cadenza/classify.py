"""A style classifier on the model's embeddings: ``cadenza classify FILE``.

A linear classifier (multinomial logistic regression with an L2 penalty, fitted by L-BFGS)
reads a window's embedding (embed.py: the unit-length mean of the model's hidden states over
the window's tokens) and names its style: pop or one of the composers the training data has
enough of. It is trained on windows of the training split's pieces, labelled with their style
tags (``scripts/train_style_classifier.py`` reproduces the shipped one), and stored beside the
model it reads (``style_classifier.npz`` in the checkpoint directory, with the digest of the
weights it was trained on: another model's features mean something else, and it is refused).

A file is classified window by window (``window_seconds`` of music each); its style
probabilities are the mean of its windows'. The same classifier is the meter of how far
``--guidance`` moves a continuation toward a style.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import resolve
from .config import ClassifyConfig
from .data.midi import BadInput
from .embed import embed_one
from .session import Session

FILE = "style_classifier.npz"


@dataclass(frozen=True)
class StyleClassifier:
    """Weights (C, d) and biases (C,) over embeddings of ``layer`` in windows of
    ``window_seconds``; ``classes`` the styles; ``model`` the digest of the weights it
    reads."""

    weights: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    layer: int
    window_seconds: float
    model: str

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, C) for (N, d) embeddings."""
        z = x @ self.weights.T + self.bias
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights.astype(np.float32),
                 bias=self.bias.astype(np.float32), classes=np.array(self.classes),
                 layer=self.layer, window_seconds=self.window_seconds, model=self.model)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> StyleClassifier:
        with np.load(path) as z:
            return StyleClassifier(z["weights"], z["bias"], tuple(str(c) for c in z["classes"]),
                                   int(z["layer"]), float(z["window_seconds"]), str(z["model"]))


def fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, steps: int = 200
        ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, classes weighted alike (each class's windows count
    as much in all as any other's, so pop's many songs do not drown the composers): (C, d)
    weights and (C,) biases. Deterministic: L-BFGS from zeros."""
    X, Y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    counts = torch.bincount(Y, minlength=classes).clamp(min=1).double()
    sample_w = (len(Y) / (classes * counts))[Y]
    W = torch.zeros(classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(X @ W.T + b, Y, reduction="none")
        total = (nll * sample_w).sum() / sample_w.sum() + l2 * (W * W).sum()
        total.backward()
        return total

    opt.step(loss)
    return W.detach().numpy(), b.detach().numpy()


def classifier_of(session: Session, checkpoint: str) -> StyleClassifier:
    """The classifier stored beside ``checkpoint``, for this session's weights; BadInput
    when there is none or it was trained on other weights."""
    path = resolve(checkpoint) / FILE
    if not path.exists():
        raise BadInput(f"--checkpoint {checkpoint}: no style classifier beside it ({FILE}; "
                       "scripts/train_style_classifier.py trains one)")
    clf = StyleClassifier.load(path)
    if clf.model != session.checkpoint_hash:
        raise BadInput(f"--checkpoint {checkpoint}: its {FILE} was trained on other weights "
                       "(train it again for these)")
    return clf


def classify_file(session: Session, clf: StyleClassifier, path: Path) -> dict[str, float]:
    """A file's style probabilities: the mean over its windows, best first."""
    e = embed_one(session, path, clf.layer, clf.window_seconds)
    p = clf.probabilities(e.windows if e.windows is not None else e.vector[None]).mean(0)
    order = np.argsort(-p)
    return {clf.classes[i]: float(p[i]) for i in order}


def run_classify(cfg: ClassifyConfig, *, device: str = "cpu") -> dict[str, Any]:
    """``cadenza classify``."""
    path = Path(cfg.file)
    if not path.is_file():
        raise BadInput(f"FILE {cfg.file}: no such file")
    session = Session.load(cfg.checkpoint, device=device)
    clf = classifier_of(session, cfg.checkpoint)
    probs = classify_file(session, clf, path)
    return {"file": str(path), "styles": [{"style": k, "probability": round(v, 4)}
                                          for k, v in list(probs.items())[: cfg.top]]}
