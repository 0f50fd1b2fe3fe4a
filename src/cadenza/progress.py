"""What a training run reports as it goes: the progress line's parts, ``metrics.csv`` (and
TensorBoard when installed), ``loss.png``, and for a time budget the steps it should buy.
train.py calls these; nothing here touches the model.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .config import TrainConfig


def fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class Window:
    """Training losses and tokens since the last progress line."""

    t0: float
    loss: float = 0.0
    n: int = 0
    tokens: int = 0

    def add(self, loss: float, tokens: int) -> None:
        self.loss, self.n, self.tokens = self.loss + loss, self.n + 1, self.tokens + tokens

    @property
    def mean(self) -> float:
        return self.loss / max(self.n, 1)


class MetricsLog:
    """``metrics.csv`` (and TensorBoard, when installed), written by rank 0 only. On resume,
    rows logged after ``last/`` was saved are dropped: those steps are about to run again."""

    HEADER = ["step", "train_loss", "val_nll", "lr", "tokens_per_s", "elapsed_s"]

    def __init__(self, out: Path, resume: bool, step: int, main: bool) -> None:
        self.file = self.writer = self.tb = None
        if not main:
            return
        path = out / "metrics.csv"
        if resume and path.exists():
            rows = list(csv.reader(open(path, newline="")))
            keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)
        new = not path.exists() or not resume
        self.file = open(path, "w" if new else "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(self.HEADER)
        self.tb = _tensorboard(out)

    def row(self, step: int, loss: float | None, val: float | None, lr: float | None,
            tps: float | None, elapsed: float) -> None:
        if self.writer is None:
            return
        self.writer.writerow([step, "" if loss is None else f"{loss:.5f}",
                              "" if val is None else f"{val:.5f}",
                              "" if lr is None else f"{lr:.3e}",
                              "" if tps is None else f"{tps:.0f}", f"{elapsed:.1f}"])
        self.file.flush()
        if self.tb:
            for tag, v in (("loss/train", loss), ("lr", lr), ("nll/valid", val)):
                if v is not None:
                    self.tb.add_scalar(tag, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


class Pace:
    """For a time budget: says how many steps the budget should buy at this session's
    average pace, and says again when that changes by more than a quarter (the schedule
    itself follows the clock, see ``progress``)."""

    def __init__(self, cfg: TrainConfig, log) -> None:
        self.budget, self.log = cfg.minutes * 60, log
        self.n = 0  # ticks this session
        self.origin = (0, 0.0)  # (step, elapsed) at the fourth tick, once caches are warm
        self.said = 0

    def tick(self, step: int, elapsed: float) -> None:
        self.n += 1
        if self.n == 4:
            self.origin = (step, elapsed)
        if self.n < 9 or (self.n - 9) % 50:  # first after 8 steps, then every 50
            return
        # the average since the fourth step: evaluations are part of the cost, and one
        # falling into a short window must not read as a change of pace
        per_step = (elapsed - self.origin[1]) / max(step - self.origin[0], 1)
        total = step + int(max(self.budget - elapsed, 0) / max(per_step, 1e-9))
        if not self.said:
            self.log(f"time budget: about {total} steps at {per_step * 1000:.0f} ms/step "
                     "(the learning-rate schedule follows the clock)")
            self.said = total
        elif abs(total - self.said) > 0.25 * self.said:
            self.log(f"pace changed: {per_step * 1000:.0f} ms/step, now about {total} steps "
                     f"in the budget (was {self.said})")
            self.said = total


def show_val(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(out / "tensorboard"))
    except Exception:  # tensorboard not installed: the CSV and the PNG remain
        return None


def plot_losses(out: Path) -> Path | None:
    """loss.png from metrics.csv: training loss and validation NLL against step."""
    path = out / "metrics.csv"
    if not path.exists():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(path)))
    if not rows:
        return None
    trained = [r for r in rows if r["train_loss"]]  # a fine-tuning run's step 0 has none
    steps = np.array([int(r["step"]) for r in trained])
    loss = np.array([float(r["train_loss"]) for r in trained])
    vrows = [(int(r["step"]), float(r["val_nll"])) for r in rows if r["val_nll"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, label="train loss", lw=1)
    if vrows:
        ax.plot(*zip(*vrows), "o-", label="valid NLL", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = out / "loss.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
