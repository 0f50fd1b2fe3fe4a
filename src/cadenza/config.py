"""Frozen, typed configuration for every stage, validated at construction.

Each dataclass is one concern. A bad value raises :class:`ConfigError` whose message names
the CLI flag that sets the field and shows the value, e.g.
``--dropout: must be in [0, 1), got 1.5``. The CLI builds these objects from its flags;
the Python API builds them directly. ``to_dict``/``from_dict`` round-trip them through the
checkpoint's ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

FORMAT_VERSION = 1  # bump when checkpoint or dataset layouts change incompatibly

MODEL_KINDS = ("transformer", "rnn", "lstm", "gru")
POSITIONS = ("sinusoidal", "learned", "rope", "relative")
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """User-facing configuration error; the message starts with the offending flag."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, msg: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)}: {msg}, got {value!r}")


def transposition_shifts(transpositions: int) -> list[int]:
    """The semitone shifts a model is averaged over (``--transpositions``), centred on the
    piece's own key: 1 -> [0], 7 -> -3..3, 12 -> -6..5 (the default augmentation's range)."""
    _check(1 <= transpositions <= 12, "transpositions", "must be in 1..12", transpositions)
    return list(range(-(transpositions // 2), transpositions - transpositions // 2))


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class AugmentConfig(_Config):
    """Training-time augmentation, applied on the fly by the loader (train split only)."""

    transpose: tuple[int, int] = (-6, 5)  # inclusive semitone range; (0, 0) disables
    stretch: tuple[float, float] = (0.95, 1.05)  # time-stretch factors (performance only)
    velocity_shift: int = 2  # +-bins of the 32 velocity bins (performance only)

    def __post_init__(self) -> None:
        lo, hi = self.transpose
        _check(-24 <= lo <= hi <= 24, "transpose", "need -24 <= LO <= HI <= 24", self.transpose)
        a, b = self.stretch
        _check(0.5 <= a <= b <= 2.0, "stretch", "need 0.5 <= LO <= HI <= 2", self.stretch)
        _check(0 <= self.velocity_shift <= 8, "velocity_shift", "must be in 0..8",
               self.velocity_shift)


@dataclass(frozen=True)
class PrepareConfig(_Config):
    """``cadenza prepare``: sources -> tokenized, split dataset directory."""

    sources: tuple[str, ...]
    out: str
    tokenizer: str = "performance"
    valid_frac: float = 0.05
    test_frac: float = 0.05
    workers: int = 1
    strict: bool = False
    max_file_mb: float = 20.0
    sustain_pedal: bool = True
    force: bool = False  # replace a dataset already in --out
    programs: str = "all"  # multitrack files: "all" pitched tracks merged, or "piano" only
    exclude: tuple[str, ...] = ()  # globs of files to leave out (e.g. pieces held out)

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "give at least one source", self.sources)
        _check(0 <= self.valid_frac < 0.5, "valid_frac", "must be in [0, 0.5)", self.valid_frac)
        _check(0 <= self.test_frac < 0.5, "test_frac", "must be in [0, 0.5)", self.test_frac)
        _check(self.workers >= 1, "workers", "must be >= 1", self.workers)
        _check(self.max_file_mb > 0, "max_file_mb", "must be > 0", self.max_file_mb)
        _check(self.programs in ("all", "piano"), "programs", "must be all or piano",
               self.programs)


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Architecture. ``vocab_size`` comes from the dataset, never from the user."""

    kind: str = "transformer"
    vocab_size: int = 0
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    position: str = "relative"
    max_context: int = 512  # longest window the positional scheme must cover
    voice_period: int = 0  # >0: add a learned embedding of (position mod P), e.g. 4 voices
    # rope only: rotary positions count time steps (step * STEP_WIDTH + index within the
    # step) instead of tokens; step_token (the token that ends a step, e.g. pianoroll's
    # FRAME) comes from the tokenizer, never from the user.
    step_positions: bool = False
    step_token: int = -1
    # rope only: this many of each head's dimensions rotate by the token's pitch instead of
    # its position, so attention also depends on the interval between query and key (the
    # "relative pitch" of Huang et al. 2018). pitch_of (token id -> MIDI pitch, -1 for
    # tokens without one) comes from the tokenizer, never from the user.
    pitch_dims: int = 0
    pitch_of: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.kind in MODEL_KINDS, "model", f"must be one of {MODEL_KINDS}", self.kind)
        _check(self.vocab_size >= 0, "vocab_size", "must be >= 0", self.vocab_size)
        _check(self.n_layer >= 1, "n_layer", "must be >= 1", self.n_layer)
        _check(self.d_model >= 1, "d_model", "must be >= 1", self.d_model)
        _check(self.d_ff >= 1, "d_ff", "must be >= 1", self.d_ff)
        _check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)", self.dropout)
        _check(self.max_context >= 2, "context", "must be >= 2", self.max_context)
        _check(self.voice_period >= 0, "voice_period", "must be >= 0", self.voice_period)
        if self.kind == "transformer":
            _check(self.position in POSITIONS, "position", f"must be one of {POSITIONS}",
                   self.position)
            _check(self.n_head >= 1 and self.d_model % self.n_head == 0, "n_head",
                   f"must divide --d-model {self.d_model}", self.n_head)
            if self.position == "rope":
                _check((self.d_model // self.n_head) % 2 == 0, "n_head",
                       "rope needs an even head size (d_model / n_head)", self.n_head)
            _check(not self.step_positions or self.position == "rope", "step_positions",
                   "needs --position rope", self.position)
            _check(not self.pitch_dims or self.position == "rope", "pitch_dims",
                   "needs --position rope", self.position)
            hs = self.d_model // self.n_head
            _check(self.pitch_dims % 2 == 0 and 0 <= self.pitch_dims < hs, "pitch_dims",
                   f"must be even and below the head size {hs}", self.pitch_dims)


@dataclass(frozen=True)
class TrainConfig(_Config):
    """``cadenza train``: optimisation, budget, evaluation and checkpointing."""

    data: str = ""
    out: str = ""
    context: int = 512
    batch_size: int = 16  # global batch, split across processes under torchrun
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 0  # 0: decided by --minutes
    minutes: float = 0.0  # 0: decided by --max-steps
    eval_every: int = 200
    eval_stride: int = 0  # sliding-window stride for long pieces; 0 = context // 2
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    ema: float = 0.0  # >0: decay of a moving average of the weights, which is evaluated and saved
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    log_every: int = 20
    resume: bool = False
    force: bool = False  # start over in an --out that already holds a run (replacing it)
    init: str = ""  # fine-tune: start from this checkpoint's weights (dir or pretrained:NAME)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # from_dict of a nested config
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        _check(self.context >= 2, "context", "must be >= 2", self.context)
        _check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        _check(self.lr > 0, "lr", "must be > 0", self.lr)
        _check(0 <= self.min_lr_frac <= 1, "min_lr_frac", "must be in [0, 1]", self.min_lr_frac)
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", self.warmup_steps)
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0", self.grad_clip)
        _check(self.max_steps >= 0, "max_steps", "must be >= 0", self.max_steps)
        _check(self.minutes >= 0, "minutes", "must be >= 0", self.minutes)
        _check(self.max_steps > 0 or self.minutes > 0, "max_steps",
               "give a budget with --max-steps or --minutes", self.max_steps)
        _check(self.eval_every >= 1, "eval_every", "must be >= 1", self.eval_every)
        _check(0 <= self.eval_stride < self.context, "eval_stride", "must be in [0, context)",
               self.eval_stride)
        _check(self.patience >= 0, "patience", "must be >= 0", self.patience)
        _check(0 <= self.ema < 1, "ema", "must be in [0, 1)", self.ema)
        _check(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}",
               self.precision)
        _check(self.log_every >= 1, "log_every", "must be >= 1", self.log_every)
        _check(not (self.resume and self.force), "force", "contradicts --resume (continue "
               "the run, or start over: not both)", self.force)

    @property
    def stride(self) -> int:
        return self.eval_stride or max(1, self.context // 2)


# Fine-tuning (--init): the model is the checkpoint's; training keeps its windows, precision,
# augmentation and regularisation, with what suits a few minutes on a small folder: a low
# learning rate, a short warm-up, CPU-sized batches, frequent evaluation (best/ keeps the
# best, starting with the weights given). Measured on 16 Grieg pieces with pretrained:piano:
# by step 20, lr 3e-5 gained 0.03 nats and 1e-4 0.01; 3e-4 was worse at every evaluation.
FINETUNE = dict(batch_size=8, lr=3e-5, warmup_steps=10, eval_every=20, log_every=10)
ARCHITECTURE = ("kind", "n_layer", "d_model", "n_head", "d_ff", "position", "voice_period",
                "step_positions", "pitch_dims")  # fixed by --init; dropout may change


# A run's saved configs hold more than its settings: model fields the tokenizer decides
# (train.tokenizer_facts sets them) and train fields of one invocation rather than of the
# run. Of the rest, --resume may change only RESUMABLE.
TOKENIZER_FIELDS = ("vocab_size", "step_token", "pitch_of")
INVOCATION = ("data", "out", "resume", "force", "compile")
RESUMABLE = ("max_steps", "minutes", "patience", "log_every", "eval_every")


def run_settings(model: dict[str, Any], train: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (model, train) settings of a run's config.json, without what is not a setting."""
    return ({k: v for k, v in model.items() if k not in TOKENIZER_FIELDS},
            {k: v for k, v in train.items() if k not in INVOCATION})


def finetune_settings(ck_model: dict[str, Any], ck_train: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, train) settings a fine-tuning run of a checkpoint starts from: its own,
    without its budget, early stopping and origin, with FINETUNE on top."""
    m, t = run_settings(ck_model, ck_train)
    for k in ("init", "max_steps", "minutes", "eval_stride", "patience"):
        t.pop(k, None)
    return m, {**t, **FINETUNE}


# Presets: (model overrides, train overrides). The CLI applies explicit flags on top.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # Learns visible structure in about a minute on 2 CPU cores.
    "debug": (dict(n_layer=2, d_model=128, n_head=4, d_ff=512, dropout=0.0, position="rope"),
              dict(context=256, batch_size=16, lr=3e-3, warmup_steps=30, max_steps=500,
                   eval_every=100, log_every=50)),
    # The CPU default: ~3M parameters, relative attention.
    "small": (dict(n_layer=4, d_model=256, n_head=4, d_ff=1024, dropout=0.1,
                   position="relative"),
              dict(context=512, batch_size=16, lr=1e-3, warmup_steps=100, eval_every=200)),
    # Huang et al. 2018, JSB chorales: 5 layers, 256 hidden, 1024 feed-forward, 8 heads.
    "music-transformer-jsb": (dict(n_layer=5, d_model=256, n_head=8, d_ff=1024, dropout=0.2,
                                   position="relative", voice_period=4),
                              dict(context=512, batch_size=16, lr=1e-3, warmup_steps=200,
                                   eval_every=250, weight_decay=0.1)),
    # The shipped pretrained piano model (pretrained:piano): performance tokens of the
    # piano corpora. Four layers of 384 keep batch-1 generation on 2 CPU cores near 10x real
    # time for live playing (~41 tokens/s); rope runs through flash attention on a GPU.
    # max_steps: its first stage; scripts/pretrain_piano.sh runs both (see its model card).
    "piano": (dict(n_layer=4, d_model=384, n_head=6, d_ff=1536, dropout=0.1, position="rope"),
              dict(context=1024, batch_size=64, lr=1e-3, warmup_steps=500, max_steps=9000,
                   eval_every=1000, log_every=100, precision="bf16")),
    # For GPUs.
    "base": (dict(n_layer=8, d_model=512, n_head=8, d_ff=2048, dropout=0.1, position="relative"),
             dict(context=1024, batch_size=32, lr=6e-4, warmup_steps=500, eval_every=500)),
}
