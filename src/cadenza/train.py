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
import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .atomic import locked_dir
from .checkpoint import DataRecord, RunRecord, load_checkpoint, read_config, save_checkpoint
from .config import (
    ATTENTION_KINDS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    resume_conflicts,
    resumed,
)
from .data.dataset import IGNORE, BatchPlan, Prefetcher, TokenDataset, WindowSampler
from .data.pairs import PairSampler
from .data.styles import Tags
from .data.task import Task
from .data.tokenizers.base import Tokenizer
from .evaluate import autocast, score_pairs, score_pieces, slow_bf16, summarize
from .models import build_model, count_params
from .progress import MetricsLog, Pace, Window, fmt_time, plot_losses, show_val


class TrainingError(RuntimeError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    ddp: bool = False  # under torchrun: a process group and DDP, even for one process

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Under torchrun (RANK set), a process group and DDP even for one process: a one-GPU
    `torchrun --nproc-per-node 1` runs the same NCCL path as eight GPUs."""
    if "RANK" not in os.environ:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        dist.init_process_group(backend, device_id=torch.device("cuda", local)
                                if backend == "nccl" else None)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
             ddp=True)
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


def progress(step: int, elapsed: float, cfg: TrainConfig, warm_elapsed: float) -> float:
    """Share of the budget after warm-up spent: of the steps for a step budget; of the time
    for ``--minutes`` alone (``warm_elapsed``: seconds at the end of warm-up). A time
    budget's schedule follows the clock, so a slow stretch (another program on the machine)
    costs steps but never ends the run early or leaves it on a stale horizon; both times
    travel in the resume state, so resume continues the same schedule."""
    if cfg.max_steps:
        return (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    budget = cfg.minutes * 60
    return (elapsed - warm_elapsed) / max(budget - warm_elapsed, 1e-9)


def tokenizer_facts(model_cfg: ModelConfig, tok: Tokenizer, tags: Tags | None = None
                    ) -> ModelConfig:
    """The model config with what it must know of the tokenizer, as token ids: the vocabulary
    size, and where asked for, the step token and each token's pitch; and the number of
    the data's style tags."""
    model_cfg = model_cfg.replace(vocab_size=tok.vocab_size, tags=len(tags) if tags else 0)
    if tags and model_cfg.kind != "transformer":
        raise ConfigError(f"--model {model_cfg.kind}: style tags (prepare --tags) are read by "
                          "the Transformer only; prepare the data without --tags")
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


CHECKPOINTS = ("best", "last", ".best.old", ".last.old")  # .old: a swap in progress
RUN_FILES = CHECKPOINTS + ("metrics.csv", "loss.png", "tensorboard")


def holds_run(out: Path) -> bool:
    return any((out / n).exists() for n in CHECKPOINTS)


@dataclass
class TrainState:
    """Where a run is. ``last/state.pt`` holds these fields (beside the optimizer's,
    sampler's and RNG's state), so ``--resume`` continues exactly. What follows from the
    configs is not kept here: the step budget is ``cfg.max_steps``, the tokens seen are
    step x batch x context (neither batch nor context can change on resume)."""

    step: int = 0
    best: float = math.inf  # best validation NLL so far
    since_best: int = 0  # evaluations since it improved (for --patience)
    elapsed: float = 0.0  # seconds of training, over all sessions of the run
    warm_elapsed: float = 0.0  # seconds at the end of warm-up (a time schedule starts there)
    val: float = math.nan  # the latest validation NLL

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> TrainState:
        """From a state.pt (older ones also hold keys no longer kept, e.g. ``horizon``)."""
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k in saved})


@dataclass(frozen=True)
class TrainResult:
    step: int
    val_nll: float  # the last validation NLL
    best_val_nll: float
    elapsed: float  # seconds of training
    parameters: int


@dataclass
class Run:
    """Everything the loop works with, made by :func:`setup`."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    dist: Dist
    device: torch.device
    out: Path
    raw: torch.nn.Module  # the weights that train
    model: torch.nn.Module  # raw wrapped for the forward pass (DDP, compile)
    scored: torch.nn.Module  # what is evaluated and saved: raw, or its moving average
    ema_pairs: tuple[list, list] | None  # (averaged, raw) parameters with --ema
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    task: Task  # what the data trains: its batches and how the valid split is scored
    sampler: WindowSampler | PairSampler | Prefetcher
    valid: list[np.ndarray]  # the valid split's pieces (of a paired task: its targets)
    valid_sources: list[np.ndarray] | None  # a paired task's sources, one per target
    config: RunRecord  # the checkpoints' config.json
    state: TrainState
    log: Callable[..., None]
    metrics: MetricsLog


def train(model_cfg: ModelConfig, cfg: TrainConfig, device: str = "cpu", *,
          stop_at: int | None = None, quiet: bool = False) -> TrainResult:
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


def _train(model_cfg: ModelConfig, cfg: TrainConfig, device: str, stop_at: int | None,
           quiet: bool) -> TrainResult:
    run = setup(model_cfg, cfg, device, quiet)
    try:
        reason = fit(run, stop_at)
    finally:
        run.metrics.close()
        if isinstance(run.sampler, Prefetcher):
            run.sampler.close()
    st, out = run.state, run.out
    if run.dist.main and not stop_at:
        plot_losses(out)
    run.log(f"done: {reason or f'stopped at step {st.step}'} | step {st.step} | best val NLL "
            f"{st.best:.4f} | {fmt_time(st.elapsed)} | checkpoints in {out}/best and "
            f"{out}/last")
    if run.dist.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(st.step, st.val, st.best, st.elapsed, count_params(run.raw))


def fit(run: Run, stop_at: int | None = None) -> str:
    """The loop: train steps until a budget is spent (or early stopping), logging every
    ``log_every`` steps and evaluating (and saving) every ``eval_every``; returns why it
    stopped ("" for ``stop_at``)."""
    cfg, st, log = run.cfg, run.state, run.log
    if cfg.max_steps and cfg.max_steps - st.step < max(cfg.log_every, cfg.eval_every,
                                                       cfg.warmup_steps):
        log(f"note: {cfg.max_steps - st.step} steps to go is fewer than --log-every "
            f"{cfg.log_every}, --eval-every {cfg.eval_every} or --warmup-steps "
            f"{cfg.warmup_steps}; the run logs, evaluates and saves at its end (and warms up "
            "for all of it if need be)")
    if cfg.init and not cfg.resume:  # fine-tuning: best/ starts as the weights given
        evaluate_and_save(run, None)
        log(f"step      0 | val {show_val(st.val)} (the --init weights, saved as best/)")
        run.metrics.row(0, None, st.val, None, None, 0.0)
    t_start = time.perf_counter() - st.elapsed
    since = Window(time.perf_counter())  # what the next progress line averages
    logged, reason = st.step, ""
    pace = Pace(cfg, log) if not cfg.max_steps else None
    run.model.train()
    while True:
        st.elapsed = time.perf_counter() - t_start
        reason = reason or budget_spent(cfg, st)
        if reason or (stop_at is not None and st.step >= stop_at):
            break
        if pace:
            pace.tick(st.step, st.elapsed)
        if st.step <= cfg.warmup_steps:
            st.warm_elapsed = st.elapsed
        loss, n_tokens = train_step(run)
        since.add(loss, n_tokens)
        is_eval = st.step % cfg.eval_every == 0
        if st.step % cfg.log_every == 0 or is_eval:
            now = time.perf_counter()
            tps = since.tokens / max(now - since.t0, 1e-9)
            st.elapsed = now - t_start
            if is_eval:
                evaluate_and_save(run, loss)
                if cfg.patience and st.since_best >= cfg.patience:
                    reason = f"no improvement in {cfg.patience} evaluations"
            lr = run.opt.param_groups[0]["lr"]
            left = [(cfg.max_steps - st.step) * st.elapsed / max(st.step, 1)] \
                if cfg.max_steps else []
            left += [cfg.minutes * 60 - st.elapsed] if cfg.minutes else []
            log(f"step {st.step:>6} | loss {since.mean:.4f} | val {show_val(st.val)} | lr "
                f"{lr:.2e} | {tps:,.0f} tok/s | {fmt_time(st.elapsed)} | eta "
                f"{fmt_time(min(left) if left else 0)}")
            run.metrics.row(st.step, since.mean, st.val if is_eval else None, lr, tps,
                            st.elapsed)
            logged, since = st.step, Window(time.perf_counter())
    st.elapsed = time.perf_counter() - t_start
    if st.step % cfg.eval_every != 0 and st.step > 0:  # final evaluation and checkpoint
        evaluate_and_save(run, since.mean)
    if st.step > logged:  # the steps since the last progress line, and the final evaluation
        tps = since.tokens / max(time.perf_counter() - since.t0, 1e-9)
        run.metrics.row(st.step, since.mean, st.val,
                        run.opt.param_groups[0]["lr"], tps, st.elapsed)
    return reason


def budget_spent(cfg: TrainConfig, st: TrainState) -> str:
    if cfg.minutes and st.elapsed >= cfg.minutes * 60:
        return "time budget reached"
    if cfg.max_steps and st.step >= cfg.max_steps:
        return "step budget reached"
    return ""


def train_step(run: Run) -> tuple[float, int]:
    """One optimizer step on the next global batch: (its mean loss, tokens it had)."""
    cfg, st, dev = run.cfg, run.state, run.device
    for g in run.opt.param_groups:
        g["lr"] = cfg.lr * lr_at(st.step, cfg, progress(st.step, st.elapsed, cfg,
                                                        st.warm_elapsed))
    x, y, n_global = run.sampler.next_batch()
    y = y.to(dev, non_blocking=True)
    with autocast(dev, cfg.precision):
        # x: the model's inputs by name: {"idx"} (and a paired task's {"src"} for an
        # encoder-decoder); logits (B, T, V)
        logits = run.model(**{k: v.to(dev, non_blocking=True) for k, v in x.items()})
    loss_sum = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                               ignore_index=IGNORE, reduction="sum")
    loss = loss_sum * run.dist.world / n_global  # DDP averages over ranks -> global mean
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.grad_clip:
        run.scaler.unscale_(run.opt)
        torch.nn.utils.clip_grad_norm_(run.raw.parameters(), cfg.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    if run.ema_pairs is not None:  # short memory at first, so early evaluations are not stale
        with torch.no_grad():
            decay = min(cfg.ema, (1 + st.step) / (10 + st.step))
            torch._foreach_lerp_(*run.ema_pairs, 1 - decay)
    lval = loss.detach()
    if run.dist.ddp:
        dist.all_reduce(lval)
        lval /= run.dist.world
    value = lval.item()  # the step's one host sync
    if not math.isfinite(value):
        # checked here, not before the update: a check there waits for the GPU a second
        # time each step. Nothing of this step is saved; every rank sees the same mean
        # (a NaN on one rank stops them all, instead of leaving the others waiting).
        raise TrainingError(f"step {st.step}: loss is {value}; stopped. The last good "
                            f"checkpoint is {run.out / 'last'} (try a lower --lr)")
    st.step += 1
    return value, n_global


def eval_subset(pieces: list[np.ndarray], sources: list[np.ndarray] | None, budget: int,
                context: int) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The valid pieces scored at each evaluation (``--eval-tokens``): all of them within
    the budget; else evenly spaced pieces (every corpus of the split keeps its share), each
    cut to its first ``max(2 x context, budget / pieces)`` tokens. A paired task's pairs
    are scored whole, so only their number is cut."""
    total = sum(len(p) for p in pieces)
    if not budget or total <= budget or not pieces:
        return pieces, sources
    per = max(2 * context, budget // len(pieces))
    if sources is not None:
        per = max(len(p) for p in pieces)
    keep = np.unique(np.linspace(0, len(pieces) - 1, max(1, min(len(pieces), budget // per)))
                     .round().astype(int))
    return ([pieces[i][:per] for i in keep],
            None if sources is None else [sources[i] for i in keep])


def evaluate_and_save(run: Run, loss: float | None) -> None:
    """Score the valid split (every rank); rank 0 saves best/ when it improved, and last/
    (with all that resuming needs) every time."""
    cfg, st = run.cfg, run.state
    if run.task.paired:
        nll = score_pairs(run.scored, run.valid_sources, run.valid,
                          batch_size=cfg.batch_size, precision=cfg.precision)
    else:
        nll = score_pieces(run.scored, run.valid, cfg.context, cfg.stride,
                           batch_size=cfg.batch_size, precision=cfg.precision,
                           period=run.model_cfg.voice_period)
    st.val = summarize(nll).nll
    improved = st.val < st.best
    st.best, st.since_best = (st.val, 0) if improved else (st.best, st.since_best + 1)
    if not run.dist.main:
        return
    metrics = {"step": st.step, "val_nll": st.val, "best_val_nll": st.best, "train_loss": loss,
               "elapsed_s": round(st.elapsed, 2),
               "tokens_seen": st.step * cfg.batch_size * cfg.context}
    if improved:
        save_checkpoint(run.out / "best", run.scored, run.config, metrics)
    resume = {"optimizer": run.opt.state_dict(), "sampler": run.sampler.state_dict(),
              "torch_rng": torch.get_rng_state(), **dataclasses.asdict(st)}
    if run.ema_pairs is not None:
        resume["raw_model"] = run.raw.state_dict()
    save_checkpoint(run.out / "last", run.scored, run.config, metrics, resume)


def setup(model_cfg: ModelConfig, cfg: TrainConfig, device: str = "cpu",
          quiet: bool = False) -> Run:
    """Processes, data, the model (fresh, resumed from OUT/last or initialised from --init),
    its wrappers, the optimizer, the sampler and the logs: a :class:`Run` ready for
    :func:`fit`."""
    d = setup_distributed(device)
    if d.ddp and device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"
    dev = torch.device(device)
    log = (lambda *a: print(*a, flush=True)) if d.main and not quiet else (lambda *a: None)
    ds = TokenDataset(cfg.data)
    if "valid" not in ds.splits:
        raise TrainingError(f"--data {cfg.data}: no valid split to evaluate on")
    tags = train_tags(ds, cfg)
    model_cfg, cfg, raw, saved = _model(model_cfg, cfg, ds.tokenizer, tags)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("--precision: fp16 needs a GPU; use bf16 on CPU")
    if cfg.precision == "bf16" and slow_bf16(dev):
        log(f"note: --precision bf16: this CPU has no bf16 arithmetic (PyTorch sees "
            f"{torch.backends.cpu.get_cpu_capability()}), so bf16 is emulated and runs many "
            "times slower than fp32 here; use --precision fp32")
    raw.to(dev)
    ema = None  # the averaged weights: evaluated and saved instead of the raw ones
    if cfg.ema:
        ema = copy.deepcopy(raw).requires_grad_(False)
        if saved is not None:  # last/ holds the average; state.pt the raw weights
            raw.load_state_dict(saved["raw_model"])
    model = raw
    if d.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if dev.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    # fused: one kernel for every parameter, on a CPU too (1.8 instead of 14 ms a step for
    # the 5M-parameter benchmark model: 4% of a bf16 step)
    opt = torch.optim.AdamW(raw.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                            eps=1e-8, fused=dev.type in ("cpu", "cuda"))
    task = Task.of_dataset(ds)
    task.check_model(model_cfg.kind, cfg.data)
    if task.paired:
        check_pairs_fit(ds, model_cfg, cfg)
    plan = BatchPlan(cfg.context, cfg.batch_size, cfg.augment, cfg.seed,
                     period=model_cfg.voice_period, rank=d.rank, world=d.world, fim=cfg.fim,
                     tags=tags)
    sampler = task.sampler(ds, plan, decoder_only=model_cfg.kind != "encoder-decoder")
    if cfg.prefetch:  # the next batches are drawn while the model steps: same stream
        sampler = Prefetcher(sampler, cfg.prefetch)
    state = TrainState()
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        state = TrainState.restore(saved)
    out = Path(cfg.out)
    config = RunRecord(model_cfg.to_dict(), cfg.to_dict(), ds.manifest["tokenizer"],
                       DataRecord(str(cfg.data), ds.manifest["sources"],
                                  ds.manifest["splits"], task, tags),
                       count_params(raw))
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    log(f"model {model_cfg.kind} ({model_cfg.position if model_cfg.kind == 'transformer' else ''})"
        f" {count_params(raw) / 1e6:.2f}M parameters | data {cfg.data} "
        f"{ds.manifest['splits']['train']['tokens']:,} train tokens | device {dev} "
        f"{cfg.precision} | world {d.world}")
    run = Run(cfg, model_cfg, d, dev, out, raw, model, ema if ema is not None else raw,
              (list(ema.parameters()), list(raw.parameters())) if ema is not None else None,
              opt, torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16"
                                        and dev.type == "cuda"),
              task, sampler, *eval_subset(ds.pieces("valid"), task.sources(ds, "valid"),
                                          cfg.eval_tokens, cfg.context), config, state,
              log,
              MetricsLog(out, cfg.resume, state.step, d.main))
    return run


def train_tags(ds: TokenDataset, cfg: TrainConfig) -> Tags | None:
    """The tags the run's model reads, read once for the model, the sampler and the record:
    the data's, or on untagged data those of the --init/--resume checkpoint (kept for
    --style); with ``--fim``, or from a checkpoint that reads them, the infilling marks
    after them (so that every id before stays)."""
    if cfg.fim:
        paired = Task.of_dataset(ds).paired
        if ds.tokenizer.name != "performance" or paired:
            raise ConfigError(f"--fim: infilling is for performance tokens of whole pieces; "
                              f"--data {cfg.data} holds {ds.tokenizer.name} tokens"
                              + (" in pairs" if paired else ""))
    old = _checkpoint_tags(cfg) if cfg.init or cfg.resume else None
    tags = ds.tags if ds.tags is not None else old
    if not (cfg.fim or (old is not None and old.marks)):
        return tags
    return (tags or Tags((), (), ds.tokenizer.vocab_size)).with_marks()


def _checkpoint_tags(cfg: TrainConfig) -> Tags | None:
    try:
        return read_config(Path(cfg.out) / "last" if cfg.resume else cfg.init).data.tags
    except Exception:  # an unreadable checkpoint is reported where it is loaded (_model)
        return None


def check_pairs_fit(ds: TokenDataset, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Every valid pair must fit one window, so its score is exact: the target (and for an
    encoder-decoder the source) within --context, or for a decoder-only model the source
    and target together. Longer training pairs are cut at --context."""
    valid = ds.manifest["splits"]["valid"]
    src, tgt = valid["source_longest"], valid["longest"]
    need = max(src, tgt - 1) if model_cfg.kind == "encoder-decoder" else src + tgt - 1
    if cfg.context < need:
        what = "its longest source or target" if model_cfg.kind == "encoder-decoder" else \
            "its longest source and target together (a decoder-only model reads the source " \
            "as a prefix)"
        raise ConfigError(f"--context: {cfg.context} is too short for --data {cfg.data}: "
                          f"{what} needs {need}")


def _model(model_cfg: ModelConfig, cfg: TrainConfig, tok: Tokenizer, tags: Tags | None
           ) -> tuple[ModelConfig, TrainConfig, torch.nn.Module, dict[str, Any] | None]:
    """(model config, train config, model, saved state) of a resumed run (its own configs,
    with the budget and logging given), a fine-tuning run (--init) or a fresh one."""
    if cfg.resume:
        last = Path(cfg.out) / "last"
        try:
            ck = load_checkpoint(last)
        except Exception as e:
            raise TrainingError(f"--resume: cannot load {last}: {e}") from e
        if ck.tokenizer.vocab != tok.vocab:
            raise TrainingError(f"--resume: {ck.path}/config.json was trained on another "
                                f"vocabulary than --data {cfg.data}")
        conflicts = resume_conflicts(ck.model_cfg, tokenizer_facts(
            model_cfg, tok, tags or ck.tags), ck.train, cfg)
        if conflicts:
            raise TrainingError(f"--resume: {'; '.join(conflicts)}: the model, data and "
                                "training settings of a run cannot change when it resumes "
                                "(only its budget, logging and patience); drop those flags, "
                                "or start over with --force")
        cfg = resumed(ck.train, cfg)
        saved = torch.load(ck.path / "state.pt", weights_only=False)
        saved.setdefault("val", float(ck.metrics.get("val_nll", math.nan)))
        return ck.model_cfg, cfg, ck.model.train(), saved
    if cfg.init:  # fine-tuning: the checkpoint's model and weights, a fresh optimizer
        torch.manual_seed(cfg.seed)
        model_cfg, model = init_model(cfg, tok, model_cfg.dropout, tags)
        return model_cfg, cfg, model, None
    model_cfg = tokenizer_facts(model_cfg, tok, tags)
    if model_cfg.kind in ATTENTION_KINDS and model_cfg.max_context < cfg.context:
        raise ConfigError(f"--context: {cfg.context} exceeds the {model_cfg.position} "
                          f"positions' maximum {model_cfg.max_context}")
    torch.manual_seed(cfg.seed)
    return model_cfg, cfg, build_model(model_cfg), None


def init_model(cfg: TrainConfig, tok: Tokenizer, dropout: float, tags: Tags | None = None
               ) -> tuple[ModelConfig, torch.nn.Module]:
    """``--init``: the checkpoint's model config (with this run's dropout) and a model
    holding its weights exactly; its tokenizer must be the data's. Data whose style tags
    extend the checkpoint's (none, or some of them) adds their embeddings: each tag the
    checkpoint knows keeps its row, a new one starts at the mean token embedding (plus a
    little noise, so that no two start alike)."""
    try:
        ck = load_checkpoint(cfg.init)
    except Exception as e:
        raise TrainingError(f"--init {cfg.init}: cannot load it: {e}") from e
    if ck.tokenizer.vocab != tok.vocab:
        raise TrainingError(f"--init {cfg.init}: its tokenizer is {_tok_desc(ck.tokenizer)}, "
                            f"--data {cfg.data} has {_tok_desc(tok)}; prepare the data with "
                            f"--tokenizer {ck.tokenizer.name}")
    old = ck.tags
    if tags is None:  # untagged data: the model keeps the tags it has, for --style
        tags = old
    if old is not None and not set(old.names) <= set(tags.names):
        raise TrainingError(f"--init {cfg.init}: it reads the style tags "
                            f"{', '.join(old.names)}; --data {cfg.data} has "
                            f"{', '.join(tags.names) if tags else 'none'} (the data's tags "
                            "may add to the checkpoint's, not drop any)")
    model_cfg = tokenizer_facts(ck.model_cfg.replace(dropout=dropout), tok, tags)
    if model_cfg.kind in ATTENTION_KINDS and model_cfg.max_context < cfg.context:
        raise ConfigError(f"--context: {cfg.context} exceeds --init {cfg.init}'s maximum "
                          f"{model_cfg.max_context}")
    model = build_model(model_cfg)
    weights = ck.model.state_dict()
    if tags is not None and tags != old:
        rows = weights["tok.weight"].mean(0) + 0.02 * torch.randn(len(tags), model_cfg.d_model)
        for i, name in enumerate(tags.names):
            if old is not None and name in old.names:
                rows[i] = weights["tag.weight"][old.names.index(name)]
        weights["tag.weight"] = rows
    model.load_state_dict(weights)
    return model_cfg, model


def _tok_desc(tok: Tokenizer) -> str:
    return f"{tok.name} ({tok.vocab_size} tokens)"
