"""``cadenza train``: one training loop for every model, on CPU, GPU or several processes.

AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay to
``min_lr_frac * lr``, gradient clipping, dropout. The budget is ``--max-steps`` and/or
``--minutes``; with minutes alone, the cosine follows the clock (the share of the budget
spent, saved with the run, so a resumed run continues the same schedule), and training runs
until the budget is spent however the pace changes. Validation NLL (exact, over the
whole valid split, see evaluate.py) every ``--eval-every`` steps decides ``best/`` and early
stopping (``--patience``). ``last/`` also holds optimizer, scheduler, RNG and sampler state:
``--resume`` continues exactly (on CPU in fp32, bit for bit). With ``--ema D`` an
exponential moving average of the weights (decay D, Polyak averaging) is what is evaluated
and saved; the raw weights travel in ``last/state.pt``.

Under ``torchrun --nproc-per-node N`` this runs DistributedDataParallel (gloo on CPU, NCCL
on GPU): every rank draws the same global batch and trains on its slice; the loss is a sum
over the slice divided by the global number of targets, so the averaged gradient equals the
single-process one. Rank 0 logs and checkpoints.

Debug preset, about a minute on 2 CPU cores::

    cadenza prepare builtin:chorales --out data/chorales
    cadenza train --data data/chorales --out runs/debug --preset debug
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .atomic import atomic_path, locked_dir
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    FORMAT_VERSION,
    INVOCATION,
    RESUMABLE,
    ConfigError,
    ModelConfig,
    TrainConfig,
    flag,
)
from .data.dataset import IGNORE, TokenDataset, WindowSampler
from .data.tokenizers.base import Tokenizer
from .evaluate import autocast, score_pieces, summarize
from .models import build_model, count_params


class TrainingError(RuntimeError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.startswith("cuda"):
        torch.cuda.set_device(d.local_rank)
    return d


def lr_at(step: int, cfg: TrainConfig, frac: float) -> float:
    """Multiplier of cfg.lr: linear warm-up over steps, then cosine down to min_lr_frac as
    ``frac`` (the share of the budget spent, see ``progress``) goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = min(max(frac, 0.0), 1.0)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac))


def progress(step: int, elapsed: float, cfg: TrainConfig, horizon: int,
             warm_elapsed: float) -> float:
    """Share of the budget after warm-up spent: of the steps for a step budget; of the time
    for ``--minutes`` alone (``warm_elapsed``: seconds at the end of warm-up). A time
    budget's schedule follows the clock, so a slow stretch (another program on the machine)
    costs steps but never ends the run early or leaves it on a stale horizon; both times
    travel in the resume state, so resume continues the same schedule."""
    if horizon:
        return (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps)
    budget = cfg.minutes * 60
    return (elapsed - warm_elapsed) / max(budget - warm_elapsed, 1e-9)


def tokenizer_facts(model_cfg: ModelConfig, tok: Tokenizer) -> ModelConfig:
    """The model config with what it must know of the tokenizer, as token ids: the vocabulary
    size, and where asked for, the step token and each token's pitch."""
    model_cfg = model_cfg.replace(vocab_size=tok.vocab_size)
    if model_cfg.step_positions:
        if tok.step_token is None:
            raise ConfigError(f"--step-positions: tokenizer {tok.name} has no step token "
                              "(use it with pianoroll)")
        model_cfg = model_cfg.replace(step_token=tok.step_token)
    if model_cfg.pitch_dims:
        pitch_of = tuple(int(p) for p in tok.pitches)
        if max(pitch_of) < 0:
            raise ConfigError(f"--pitch-dims: tokenizer {tok.name} has no pitch tokens")
        model_cfg = model_cfg.replace(pitch_of=pitch_of)
    return model_cfg


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "rel" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "rel" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
                             **({"fused": True} if fused else {}))


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


CHECKPOINTS = ("best", "last", ".best.old", ".last.old")  # .old: a swap in progress
RUN_FILES = CHECKPOINTS + ("metrics.csv", "loss.png", "tensorboard")


def holds_run(out: Path) -> bool:
    return any((out / n).exists() for n in CHECKPOINTS)


def train(model_cfg: ModelConfig, cfg: TrainConfig, device: str = "cpu",
          stop_at: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train; returns the final metrics. ``stop_at`` ends the run after that step as if it
    were killed there (after saving ``last/``): resume tests and interruptions use it.

    The run directory is locked for the life of the process (a second ``train`` into it
    stops at once), and one that already holds a run is continued only with ``resume``
    and replaced only with ``force``: a user's run is never overwritten by accident."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out}: is a file, not a run directory")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 owns the directory
        return _train(model_cfg, cfg, device, stop_at, quiet)
    with locked_dir(out, "--out"):
        if holds_run(out) and not cfg.resume:
            if not cfg.force:
                raise TrainingError(f"--out {out}: already holds a run; continue it with "
                                    "--resume, or start over with --force (replaces it)")
            for name in RUN_FILES:
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return _train(model_cfg, cfg, device, stop_at, quiet)


def resume_conflicts(ck_model: ModelConfig, model_cfg: ModelConfig, ck_train: TrainConfig,
                     cfg: TrainConfig) -> list[str]:
    """Flags that differ from the run being resumed and cannot change on resume."""
    out = []
    for a, b in ((ck_model, model_cfg), (ck_train, cfg)):
        for f in dataclasses.fields(a):
            if f.name in RESUMABLE + INVOCATION:
                continue
            old, new = getattr(a, f.name), getattr(b, f.name)
            if old != new:
                out.append(f"{flag(f.name)} {_show(new)} (the run has {_show(old)})")
    return out


def init_model(cfg: TrainConfig, tok: Tokenizer, dropout: float
               ) -> tuple[ModelConfig, torch.nn.Module]:
    """``--init``: the checkpoint's model config (with this run's dropout) and a model
    holding its weights exactly; its tokenizer must be the data's."""
    try:
        ck = load_checkpoint(cfg.init)
    except Exception as e:
        raise TrainingError(f"--init {cfg.init}: cannot load it: {e}") from e
    if ck.tokenizer.vocab != tok.vocab:
        raise TrainingError(f"--init {cfg.init}: its tokenizer is {_tok_desc(ck.tokenizer)}, "
                            f"--data {cfg.data} has {_tok_desc(tok)}; prepare the data with "
                            f"--tokenizer {ck.tokenizer.name}")
    model_cfg = ck.model_cfg.replace(dropout=dropout)
    if model_cfg.kind == "transformer" and model_cfg.max_context < cfg.context:
        raise ConfigError(f"--context: {cfg.context} exceeds --init {cfg.init}'s maximum "
                          f"{model_cfg.max_context}")
    model = build_model(model_cfg)
    model.load_state_dict(ck.model.state_dict())
    return model_cfg, model


def _tok_desc(tok: Tokenizer) -> str:
    return f"{tok.name} ({tok.vocab_size} tokens)"


def _show(v: Any) -> str:
    if dataclasses.is_dataclass(v):
        return ", ".join(f"{k}={x}" for k, x in dataclasses.asdict(v).items())
    return str(v)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, device: str, stop_at: int | None,
           quiet: bool) -> dict[str, Any]:
    d = setup_distributed(device)
    if d.world > 1 and device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"
    dev = torch.device(device)
    log = (lambda *a: print(*a, flush=True)) if d.main and not quiet else (lambda *a: None)
    ds = TokenDataset(cfg.data)
    if "valid" not in ds.splits:
        raise TrainingError(f"--data {cfg.data}: no valid split to evaluate on")
    out = Path(cfg.out)
    state: dict[str, Any] | None = None
    if cfg.resume:
        last = out / "last"
        try:
            ck = load_checkpoint(last)
        except Exception as e:
            raise TrainingError(f"--resume: cannot load {last}: {e}") from e
        if ck.tokenizer.vocab != ds.tokenizer.vocab:
            raise TrainingError(f"--resume: {ck.path}/config.json was trained on another "
                                f"vocabulary than --data {cfg.data}")
        given = tokenizer_facts(model_cfg, ds.tokenizer)
        conflicts = resume_conflicts(ck.model_cfg, given, ck.train, cfg)
        if conflicts:
            raise TrainingError(f"--resume: {'; '.join(conflicts)}: the model, data and "
                                "training settings of a run cannot change when it resumes "
                                "(only its budget, logging and patience); drop those flags, "
                                "or start over with --force")
        model_cfg = ck.model_cfg
        keep = {k: getattr(cfg, k) for k in RESUMABLE + INVOCATION}
        cfg = ck.train.replace(**keep)
        model = ck.model.train()
        state = torch.load(ck.path / "state.pt", weights_only=False)
        state_val = float(ck.metrics.get("val_nll", math.nan))
    elif cfg.init:  # fine-tuning: the checkpoint's model and weights, a fresh optimizer
        torch.manual_seed(cfg.seed)
        model_cfg, model = init_model(cfg, ds.tokenizer, model_cfg.dropout)
    else:
        model_cfg = tokenizer_facts(model_cfg, ds.tokenizer)
        if model_cfg.kind == "transformer" and model_cfg.max_context < cfg.context:
            raise ConfigError(f"--context: {cfg.context} exceeds the {model_cfg.position} "
                              f"positions' maximum {model_cfg.max_context}")
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg)
    model.to(dev)
    raw = model
    ema = None  # the averaged weights: evaluated and saved instead of the raw ones
    if cfg.ema:
        ema = copy.deepcopy(raw).requires_grad_(False)
        if state is not None:  # last/ holds the average; state.pt the raw weights
            raw.load_state_dict(state["raw_model"])
        ema_pairs = list(ema.parameters()), list(raw.parameters())
    scored = ema if ema is not None else raw
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if dev.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    opt = make_optimizer(raw, cfg, fused=dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and dev.type == "cuda")
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("--precision: fp16 needs a GPU; use bf16 on CPU")
    sampler = WindowSampler(ds, cfg.context, cfg.batch_size, cfg.augment, cfg.seed,
                            period=model_cfg.voice_period, rank=d.rank, world=d.world)
    valid = ds.pieces("valid")
    step, best, since_best, elapsed0 = 0, math.inf, 0, 0.0
    horizon = cfg.max_steps or 0
    warm_elapsed = 0.0  # seconds at the end of warm-up (the time schedule starts there)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, best, since_best = state["step"], state["best"], state["since_best"]
        elapsed0, horizon = state["elapsed"], cfg.max_steps or state["horizon"]
        warm_elapsed = state.get("warm_elapsed", 0.0)
    config = {
        "format_version": FORMAT_VERSION,
        "model": model_cfg.to_dict(), "train": cfg.to_dict(),
        "tokenizer": ds.manifest["tokenizer"],
        "data": {"path": str(cfg.data), "sources": ds.manifest["sources"],
                 "splits": ds.manifest["splits"]},
        "parameters": count_params(raw),
    }
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    log(f"model {model_cfg.kind} ({model_cfg.position if model_cfg.kind == 'transformer' else ''})"
        f" {count_params(raw) / 1e6:.2f}M parameters | data {cfg.data} "
        f"{ds.manifest['splits']['train']['tokens']:,} train tokens | device {dev} "
        f"{cfg.precision} | world {d.world}")
    metrics_path = out / "metrics.csv"
    if d.main and cfg.resume and metrics_path.exists():
        # rows logged after last/ was saved are about to be trained again: drop them
        rows = list(csv.reader(open(metrics_path, newline="")))
        keep_rows = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit()
                                and int(r[0]) <= step]
        with atomic_path(metrics_path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep_rows)
    new_csv = d.main and (not metrics_path.exists() or not cfg.resume)
    csv_file = open(metrics_path, "w" if new_csv else "a", newline="") if d.main else None
    writer = csv.writer(csv_file) if csv_file else None
    if new_csv and writer:
        writer.writerow(["step", "train_loss", "val_nll", "lr", "tokens_per_s", "elapsed_s"])
    tb = _tensorboard(out) if d.main else None

    def evaluate_now() -> float:
        nll = score_pieces(scored, valid, cfg.context, cfg.stride, batch_size=cfg.batch_size,
                           precision=cfg.precision, period=model_cfg.voice_period)
        return summarize(nll).nll

    def checkpoint(name: str, metrics: dict[str, Any], with_state: bool) -> None:
        if not d.main:
            return
        st = None
        if with_state:
            st = {"optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
                  "torch_rng": torch.get_rng_state(), "step": step, "best": best,
                  "since_best": since_best, "elapsed": elapsed, "horizon": horizon,
                  "warm_elapsed": warm_elapsed}
            if ema is not None:
                st["raw_model"] = raw.state_dict()
        save_checkpoint(out / name, scored, config, metrics, st)

    def evaluate_and_save(loss: float | None) -> None:
        """Score the valid split; save best/ when it improved, and last/ (with all that
        resuming needs) every time."""
        nonlocal val, best, since_best
        val = evaluate_now()
        improved = val < best
        best, since_best = (val, 0) if improved else (best, since_best + 1)
        m = _metrics(step, val, best, elapsed, sampler, cfg, loss)
        if improved:
            checkpoint("best", m, with_state=False)
        checkpoint("last", m, with_state=True)

    t_start = time.perf_counter() - elapsed0
    t_log, tokens_log = time.perf_counter(), 0
    loss_acc, loss_n = 0.0, 0
    # the last validation NLL: the checkpoint's when resuming, none before the first one
    val = state_val if state is not None else math.nan
    elapsed = elapsed0
    stop_reason = ""
    model.train()
    if horizon and horizon - step < max(cfg.log_every, cfg.eval_every, cfg.warmup_steps):
        log(f"note: {horizon - step} steps to go is fewer than --log-every {cfg.log_every}, "
            f"--eval-every {cfg.eval_every} or --warmup-steps {cfg.warmup_steps}; the run "
            "logs, evaluates and saves at its end (and warms up for all of it if need be)")
    if cfg.init and state is None:  # fine-tuning: best/ starts as the weights given
        evaluate_and_save(None)
        log(f"step      0 | val {_val(val)} (the --init weights, saved as best/)")
        if writer:
            writer.writerow([0, "", f"{val:.5f}", "", "", "0.0"])
    logged = step
    pace = Pace(cfg, log) if not horizon else None
    while True:
        elapsed = time.perf_counter() - t_start
        if cfg.minutes and elapsed >= cfg.minutes * 60:
            stop_reason = "time budget reached"
        if horizon and step >= horizon:
            stop_reason = stop_reason or "step budget reached"
        if stop_reason or (stop_at is not None and step >= stop_at):
            break
        if pace:
            pace.tick(step, elapsed)
        if step <= cfg.warmup_steps:
            warm_elapsed = elapsed
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_at(step, cfg, progress(step, elapsed, cfg, horizon,
                                                         warm_elapsed))
        x, y, n_global = sampler.next_batch()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with autocast(dev, cfg.precision):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                   ignore_index=IGNORE, reduction="sum")
        loss = loss_sum * d.world / n_global  # DDP averages over ranks -> global mean
        if not torch.isfinite(loss):
            raise TrainingError(f"step {step}: loss is {loss.item()}; stopped. The last good "
                                f"checkpoint is {out / 'last'} (try a lower --lr)")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        if ema is not None:  # short memory at first, so early evaluations are not stale
            with torch.no_grad():
                decay = min(cfg.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(*ema_pairs, 1 - decay)
        step += 1
        lval = loss.detach()
        if d.world > 1:
            dist.all_reduce(lval)
            lval /= d.world
        last_loss = lval.item()  # the step's one host sync
        loss_acc += last_loss
        loss_n += 1
        tokens_log += n_global
        is_eval = step % cfg.eval_every == 0
        if step % cfg.log_every == 0 or is_eval:
            now = time.perf_counter()
            tps = tokens_log / max(now - t_log, 1e-9)
            elapsed = now - t_start
            if is_eval:
                evaluate_and_save(last_loss)
                if cfg.patience and since_best >= cfg.patience:
                    stop_reason = f"no improvement in {cfg.patience} evaluations"
            lr = opt.param_groups[0]["lr"]
            left = []
            if horizon:
                left.append((horizon - step) * elapsed / max(step, 1))
            if cfg.minutes:
                left.append(cfg.minutes * 60 - elapsed)
            eta = min(left) if left else 0
            logged = step
            log(f"step {step:>6} | loss {loss_acc / loss_n:.4f} | val "
                f"{_val(val)} | lr {lr:.2e} | {tps:,.0f} tok/s | {_fmt_time(elapsed)} | "
                f"eta {_fmt_time(eta)}")
            if writer:
                writer.writerow([step, f"{loss_acc / loss_n:.5f}",
                                 f"{val:.5f}" if is_eval else "", f"{lr:.3e}", f"{tps:.0f}",
                                 f"{elapsed:.1f}"])
                csv_file.flush()
            if tb:
                tb.add_scalar("loss/train", loss_acc / loss_n, step)
                tb.add_scalar("lr", lr, step)
                if is_eval:
                    tb.add_scalar("nll/valid", val, step)
            loss_acc, loss_n, tokens_log, t_log = 0.0, 0, 0, time.perf_counter()
    elapsed = time.perf_counter() - t_start
    if step % cfg.eval_every != 0 and step > 0:  # final evaluation and checkpoint
        evaluate_and_save(loss_acc / max(loss_n, 1))
    if writer and step > logged:  # the steps since the last progress line, and the final eval
        tps = tokens_log / max(time.perf_counter() - t_log, 1e-9)
        writer.writerow([step, f"{loss_acc / max(loss_n, 1):.5f}", f"{val:.5f}",
                         f"{opt.param_groups[0]['lr']:.3e}", f"{tps:.0f}", f"{elapsed:.1f}"])
    if csv_file:
        csv_file.close()
    if tb:
        tb.close()
    if d.main and not stop_at:
        plot_losses(out)
    log(f"done: {stop_reason or f'stopped at step {step}'} | step {step} | best val NLL "
        f"{best:.4f} | {_fmt_time(elapsed)} | checkpoints in {out}/best and {out}/last")
    if d.world > 1:
        dist.barrier()
    return {"step": step, "val_nll": val, "best_val_nll": best, "elapsed": elapsed,
            "parameters": count_params(raw)}


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


def _val(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def _metrics(step, val, best, elapsed, sampler, cfg, loss) -> dict[str, Any]:
    return {"step": step, "val_nll": val, "best_val_nll": best, "train_loss": loss,
            "elapsed_s": round(elapsed, 2), "tokens_seen": step * cfg.batch_size * cfg.context}


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
