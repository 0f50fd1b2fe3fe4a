"""Frozen, typed configuration for every command, validated at construction: the single
source of every option.

Each dataclass is one concern, and each field carries its flag's help (and, where the flag's
name or form differs from the field's, that too) in its metadata: ``cli.py`` builds every
command's flags from these fields and nothing else, so a default, a choice list or a help
text lives in one place, and the Python API sees the same defaults and the same checks as
the command line. A bad value raises :class:`ConfigError` naming the flag and showing the
value, e.g. ``--dropout: must be in [0, 1), got 1.5``. ``to_dict``/``from_dict`` round-trip
them through a checkpoint's ``config.json``.

Fields a user never sets (the vocabulary size, and what else the tokenizer or another flag
decides) say so in ``derived``; they have no flag.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import theory

FORMAT_VERSION = 1  # bump when checkpoint or dataset layouts change incompatibly

MODEL_KINDS = ("transformer", "encoder-decoder", "rnn", "lstm", "gru")
ATTENTION_KINDS = ("transformer", "encoder-decoder")
NORMS = ("pre", "post")
POSITIONS = ("sinusoidal", "learned", "rope", "relative")
PRECISIONS = ("fp32", "bf16", "fp16")
SPLITS = ("train", "valid", "test")
PIANOROLL_SETS = ("jsb", "nottingham", "musedata", "piano-midi")
BENCHMARKS = ("jsb16", "pianoroll", "models", "tasks")
class ConfigError(ValueError):
    """User-facing configuration error; the message starts with the offending flag."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, msg: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)}: {msg}, got {value!r}")


def option(default: Any = MISSING, help: str = "", *, flag: str = "",
           choices: tuple[str, ...] | Callable[[], Any] = (), metavar: str = "",
           positional: bool = False, required: bool = False, repeat: bool = False,
           derived: str = "", factory: Callable[[], Any] | None = None) -> Any:
    """A config field and its command-line flag, described once.

    ``flag``: the flag when it is not ``--field-name`` (``--no-audio`` for ``audio=True``);
    ``choices``: the allowed values, or a function giving them (read when the CLI is built);
    ``positional``/``required``: how the CLI asks for a field with no sensible default;
    ``repeat``: a tuple given by repeating the flag (``--exclude A --exclude B``) rather than
    as several values after it; ``derived``: no flag, the value comes from elsewhere (said).
    """
    meta = dict(help=help, flag=flag, choices=choices, metavar=metavar, positional=positional,
                required=required, repeat=repeat, derived=derived)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


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
        """The config from JSON-like values (a checkpoint's config.json, a page's request),
        each checked against its field's type first, so that a wrong type is one line
        naming the flag (``--temperature: must be a number, got 'abc'``)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            check_type(k, hints[k], v)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def _nest(self) -> None:
        """Nested configs given as dicts (a config.json, a request) become configs."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            v, tp = getattr(self, f.name), hints[f.name]
            if isinstance(v, dict) and dataclasses.is_dataclass(tp):
                object.__setattr__(self, f.name, tp.from_dict(v))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


_KINDS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda x: isinstance(x, bool)),
    int: ("a whole number", lambda x: isinstance(x, int) and not isinstance(x, bool)),
    float: ("a number", lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)),
    str: ("text", lambda x: isinstance(x, str)),
    dict: ("an object", lambda x: isinstance(x, dict)),
}


def check_type(name: str, tp: Any, v: Any, shown: str | None = None) -> None:
    """``v`` may be stored in a field of type ``tp`` (ints count as floats, lists as
    tuples; None is left to the config, some of which read it as "the default"); else
    ConfigError naming the flag (or ``shown``, e.g. a request's field)."""
    if v is None:
        return
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    named = shown or flag(name)
    if tp in _KINDS:
        what, ok = _KINDS[tp]
        if not ok(v):
            raise ConfigError(f"{named}: must be {what}, got {v!r}")
    elif typing.get_origin(tp) is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{named}: must be a list, got {v!r}")
        args = typing.get_args(tp)
        kinds = [args[0]] * len(v) if args and args[-1] is Ellipsis else args
        for x, kind in zip(v, kinds):
            check_type(name, kind, x, shown)


# Choice lists defined above this module (the tokenizers, the recipes, the download catalogue)
# are registered by the modules that define them, so that config.py imports nothing above it.
_NAMES: dict[str, Callable[[], list[str]]] = {}


def register_names(kind: str, names: Callable[[], list[str]]) -> None:
    """Called by the module that owns a choice list (``"tokenizer"``, ``"recipe"``,
    ``"corpus"``), at its import."""
    _NAMES[kind] = names


def names_of(kind: str) -> Callable[[], list[str]]:
    """A flag's choices that a higher layer registers; read when the CLI is built."""
    def names() -> list[str]:
        if kind not in _NAMES:
            raise LookupError(f"no {kind} names registered: import the module that defines "
                              "them before building the command line")
        return list(_NAMES[kind]())
    return names


TRANSPOSITIONS_HELP = ("average each model's next-token distribution over K keys of the "
                       "music, centred on its own (7: -3..+3 semitones, 12: -6..+5); K passes "
                       "a token")


@dataclass(frozen=True)
class Runtime(_Config):
    """Where a command runs (every command that runs a model has this one flag)."""

    device: str = option("auto", "cpu, cuda or cuda:N; auto: cuda when this PyTorch sees a "
                         "GPU, else cpu")


@dataclass(frozen=True)
class AugmentConfig(_Config):
    """Training-time augmentation, applied on the fly by the loader (train split only)."""

    transpose: tuple[int, int] = option((-6, 5), "augmentation: transpose each window by "
                                        "LO..HI semitones (write --transpose=-5,6 when LO is "
                                        "negative; 0,0: off)")
    stretch: tuple[float, float] = option((0.95, 1.05), "augmentation: time-stretch factors "
                                          "LO,HI (performance tokens)")
    velocity_shift: int = option(2, "augmentation: shift velocities by up to +-N of the 32 "
                                 "bins (performance tokens)")

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

    sources: tuple[str, ...] = option(help="MIDI files, folders, builtin:NAME, benchmark files "
                                      "(.json chorales, .mat/.pickle piano rolls)",
                                      positional=True)
    out: str = option(help="dataset directory to write", required=True)
    tokenizer: str | None = option(None, "tokenization scheme (default: performance; --task "
                                   "harmonize uses chorale16, accompany performance)",
                            choices=names_of("tokenizer"))
    task: str = option("continue", "what the dataset trains: continue pieces, or source -> "
                       "target pairs: harmonize (a chorale's soprano -> alto, tenor, bass; the "
                       "JSB16 JSON), accompany (a song's MELODY -> PIANO track; POP909)",
                       choices=names_of("task"))
    bars: int = option(0, "paired tasks: bars per pair (0: 4 to harmonize, 2 to accompany)")
    valid_frac: float = option(0.05, "share of pieces for the valid split")
    test_frac: float = option(0.05, "share of pieces for the test split")
    workers: int = option(1, "parallel processes")
    strict: bool = option(False, "stop at the first bad file")
    max_file_mb: float = option(20.0, "skip larger MIDI files")
    sustain_pedal: bool = option(True, "do not extend notes held by the sustain pedal",
                                 flag="--no-sustain-pedal")
    force: bool = option(False, "replace a dataset already in --out")
    programs: str = option("all", "tracks of multitrack files to keep: all pitched "
                           "instruments merged into one part, or the piano programs (GM 0-7) "
                           "only; drums never", choices=("all", "piano"))
    tags: bool = option(False, "tag each piece with its style (the folder under its source: a "
                        "composer or genre; pop for POP909) and kind (live for ASAP/MAESTRO, "
                        "arrangement for POP909, else --kind) for --style (data/styles.py)")
    kind: str = option("", "with --tags: the kind of pieces whose layout does not say it "
                       "(e.g. score for hand-sequenced files)")
    exclude: tuple[str, ...] = option((), "leave out files whose path ends like GLOB "
                                      "(repeatable), e.g. 'piano-midi.de/Grieg/*' to keep a "
                                      "composer out of training", metavar="GLOB", repeat=True)

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "give at least one source", self.sources)
        _check(0 <= self.valid_frac < 0.5, "valid_frac", "must be in [0, 0.5)", self.valid_frac)
        _check(0 <= self.test_frac < 0.5, "test_frac", "must be in [0, 0.5)", self.test_frac)
        _check(self.workers >= 1, "workers", "must be >= 1", self.workers)
        _check(self.max_file_mb > 0, "max_file_mb", "must be > 0", self.max_file_mb)
        _check(self.programs in ("all", "piano"), "programs", "must be all or piano",
               self.programs)
        _check(0 <= self.bars <= 16, "bars", "must be in 0..16", self.bars)
        _check(not self.kind or self.tags, "kind", "names the kind of tagged pieces: add "
               "--tags", self.kind)
        # --task and its tokenizer are checked by the task (data/task.py) when prepare runs


FROM_TOKENIZER = "the dataset's tokenizer"


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Architecture. What the tokenizer decides (``vocab_size``, ``step_token``,
    ``pitch_of``) is set by ``train.tokenizer_facts``, never by the user."""

    kind: str = option("transformer", "architecture", flag="--model", choices=MODEL_KINDS)
    vocab_size: int = option(0, derived=FROM_TOKENIZER)
    n_layer: int = option(4, "layers")
    d_model: int = option(256, "hidden size")
    n_head: int = option(4, "attention heads")
    d_ff: int = option(1024, "feed-forward size")
    dropout: float = option(0.1, "dropout probability")
    position: str = option(None, "Transformer positional scheme (default: relative; "
                           "sinusoidal for the encoder-decoder, as in the paper)",
                           choices=POSITIONS)
    norm: str = option("pre", "LayerNorm before each sublayer (pre, GPT-2) or after the "
                       "residual sum (post, as in the paper)", choices=NORMS)
    # the longest window the positional scheme must cover: a fresh run's --context
    max_context: int = option(512, derived="--context")
    voice_period: int = option(0, "add a learned embedding of (position mod P), e.g. 4 for "
                               "chorale16's voices (0: off)")
    # rope only: rotary positions count time steps (step * STEP_WIDTH + index within the
    # step) instead of tokens; step_token (the token that ends a step, e.g. pianoroll's
    # FRAME) comes from the tokenizer.
    step_positions: bool = option(False, "rope positions count time steps, not tokens "
                                  "(pianoroll frames)")
    step_token: int = option(-1, derived=FROM_TOKENIZER)
    # rope only: this many of each head's dimensions rotate by the token's pitch instead of
    # its position, so attention also depends on the interval between query and key (the
    # "relative pitch" of Huang et al. 2018). pitch_of (token id -> MIDI pitch, -1 for
    # tokens without one) comes from the tokenizer.
    pitch_dims: int = option(0, "rope: head dimensions rotated by pitch instead of position, "
                             "so attention sees intervals (e.g. 16 of 32)")
    pitch_of: tuple[int, ...] = option((), derived=FROM_TOKENIZER)
    # style tags (prepare --tags) and infilling marks (train --fim): input-only ids
    # vocab_size .. vocab_size + tags - 1
    tags: int = option(0, derived="the dataset's style tags and --fim's marks")

    def __post_init__(self) -> None:
        _check(self.kind in MODEL_KINDS, "model", f"must be one of {MODEL_KINDS}", self.kind)
        _check(self.vocab_size >= 0, "vocab_size", "must be >= 0", self.vocab_size)
        _check(self.n_layer >= 1, "n_layer", "must be >= 1", self.n_layer)
        _check(self.d_model >= 1, "d_model", "must be >= 1", self.d_model)
        _check(self.d_ff >= 1, "d_ff", "must be >= 1", self.d_ff)
        _check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)", self.dropout)
        _check(self.max_context >= 2, "context", "must be >= 2", self.max_context)
        _check(self.voice_period >= 0, "voice_period", "must be >= 0", self.voice_period)
        if self.position is None:
            object.__setattr__(self, "position", "sinusoidal" if self.kind == "encoder-decoder"
                               else "relative")
        _check(self.norm in NORMS, "norm", f"must be one of {NORMS}", self.norm)
        if self.kind == "encoder-decoder":
            _check(self.position != "relative", "position", "relative attention is built "
                   "for a causal decoder (the skewing trick); the encoder-decoder takes "
                   "sinusoidal, learned or rope", self.position)
            for name in ("step_positions", "pitch_dims", "voice_period"):
                _check(not getattr(self, name), name, "is for the decoder-only transformer",
                       getattr(self, name))
        if self.kind in ATTENTION_KINDS:
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

    data: str = option("", "dataset directory from `cadenza prepare`", required=True)
    out: str = option("", "run directory (OUT/best, OUT/last, OUT/metrics.csv, OUT/loss.png)",
                      required=True)
    context: int = option(512, "tokens per training window")
    batch_size: int = option(16, "global batch (windows per step), split across processes "
                             "under torchrun")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_frac: float = option(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = option(100, "linear warm-up steps")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "gradient norm clip (0: off)")
    max_steps: int = option(0, "step budget (0: --minutes decides; given alone, it replaces "
                            "the preset's time budget)")
    minutes: float = option(0.0, "time budget in minutes (0: --max-steps decides; given "
                            "alone, it replaces the preset's step budget)")
    eval_every: int = option(200, "validate (and save last/, best/) every N steps")
    eval_stride: int = option(0, "sliding-window stride for long pieces (0: context / 2)")
    eval_tokens: int = option(0, "score at most about this many tokens of the valid split at "
                              "each evaluation: evenly spaced pieces, each its first "
                              "max(2 x context, N / pieces) tokens, the same every time, so a "
                              "large valid split costs minutes less per evaluation (0: all)")
    patience: int = option(0, "early stop after N evaluations without gain (0: never)")
    ema: float = option(0.0, "evaluate and save a moving average of the weights with this "
                        "decay, e.g. 0.999 (0: off)")
    precision: str = option("fp32", "numeric precision (bf16 autocast is ~2x faster on recent "
                            "CPUs)", choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model")
    prefetch: int = option(2, "training batches drawn ahead in a background thread while the "
                           "model steps (0: each drawn in the step's path); the batches are "
                           "the same either way")
    seed: int = option(0, "random seed")
    log_every: int = option(20, "progress line every N steps")
    resume: bool = option(False, "continue from OUT/last exactly")
    force: bool = option(False, "start over in an --out that already holds a run, "
                         "replacing it")
    init: str = option("", "fine-tune: start from this checkpoint's weights (RUN/best or "
                       "pretrained:piano), same tokenizer as --data; a fresh optimizer and "
                       "schedule, with fine-tuning defaults (lr 3e-5, 10 warm-up steps, 8 "
                       "windows of its context, evaluation every 20 steps, starting with the "
                       "weights given)", metavar="CHECKPOINT")
    fim: float = option(0.0, "infilling objective: this share of the training windows in the "
                        "fill-in-the-middle order (left, right, then the middle; performance "
                        "tokens), so the model can fill a span for `cadenza infill` (0: off)")
    augment: AugmentConfig = option(help="training-time augmentation", factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # from_dict of a nested config
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        _check(self.context >= 2, "context", "must be >= 2", self.context)
        _check(0 <= self.fim <= 1, "fim", "must be in [0, 1]", self.fim)
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
        _check(self.eval_tokens >= 0, "eval_tokens", "must be >= 0", self.eval_tokens)
        _check(self.patience >= 0, "patience", "must be >= 0", self.patience)
        _check(0 <= self.ema < 1, "ema", "must be in [0, 1)", self.ema)
        _check(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}",
               self.precision)
        _check(self.log_every >= 1, "log_every", "must be >= 1", self.log_every)
        _check(0 <= self.prefetch <= 64, "prefetch", "must be in 0..64", self.prefetch)
        _check(not (self.resume and self.force), "force", "contradicts --resume (continue "
               "the run, or start over: not both)", self.force)

    @property
    def stride(self) -> int:
        return self.eval_stride or max(1, self.context // 2)


@dataclass(frozen=True)
class PresetChoice(_Config):
    """``cadenza train --preset``: the recipe (recipes.py) the model and training settings
    start from; the flags given change it."""

    preset: str | None = option(None, "named recipe the settings start from (`cadenza "
                                "presets` lists them): small when none is named; on --resume "
                                "the run's own settings, on --init the checkpoint's",
                                choices=names_of("recipe"))


# Fine-tuning (--init): the model is the checkpoint's; training keeps its windows, precision,
# augmentation and regularisation, with what suits a few minutes on a small folder: a low
# learning rate, a short warm-up, CPU-sized batches, frequent evaluation (best/ keeps the
# best, starting with the weights given), five minutes unless a budget is given. Measured
# on 16 Grieg pieces with pretrained:piano: by step 20, lr 3e-5 gained 0.03 nats and 1e-4
# 0.01; 3e-4 was worse at every evaluation.
FINETUNE = dict(batch_size=8, lr=3e-5, warmup_steps=10, eval_every=20, log_every=10,
                max_steps=0, minutes=5.0)
ARCHITECTURE = ("kind", "n_layer", "d_model", "n_head", "d_ff", "position", "voice_period",
                "step_positions", "pitch_dims")  # fixed by --init; dropout may change


# A run's saved configs hold more than its settings: model fields the tokenizer decides
# (train.tokenizer_facts sets them) and train fields of one invocation rather than of the
# run. Of the rest, --resume may change only RESUMABLE.
TOKENIZER_FIELDS = ("vocab_size", "step_token", "pitch_of", "tags")
INVOCATION = ("data", "out", "resume", "force", "compile", "prefetch")
RESUMABLE = ("max_steps", "minutes", "patience", "log_every", "eval_every")


# --- resuming: what a run keeps, what may change (train.py and recipes.py ask here) --------


def resume_conflicts(ck_model: ModelConfig, model_cfg: ModelConfig, ck_train: TrainConfig,
                     cfg: TrainConfig) -> list[str]:
    """Flags that differ from the run being resumed and cannot change on resume."""
    out = []
    for a, b in ((ck_model, model_cfg), (ck_train, cfg)):
        for f in fields(a):
            if f.name in RESUMABLE + INVOCATION:
                continue
            old, new = getattr(a, f.name), getattr(b, f.name)
            if old != new:
                out.append(f"{flag(f.name)} {_show(new)} (the run has {_show(old)})")
    return out


def resumed(ck_train: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The training config a resumed run continues with: its own, with this invocation's
    budget, logging and patience (RESUMABLE) and invocation fields (INVOCATION)."""
    return ck_train.replace(**{k: getattr(given, k) for k in RESUMABLE + INVOCATION})


def _show(v: Any) -> str:
    if dataclasses.is_dataclass(v):
        return ", ".join(f"{k}={x}" for k, x in dataclasses.asdict(v).items())
    return str(v)


def run_settings(model: dict[str, Any], train: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (model, train) settings of a run's config.json, without what is not a setting."""
    return ({k: v for k, v in model.items() if k not in TOKENIZER_FIELDS},
            {k: v for k, v in train.items() if k not in INVOCATION})


def finetune_settings(ck_model: dict[str, Any], ck_train: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, train) settings a fine-tuning run of a checkpoint starts from: its own,
    without its early stopping and origin, with FINETUNE (and its budget) on top."""
    m, t = run_settings(ck_model, ck_train)
    for k in ("init", "eval_stride", "patience"):
        t.pop(k, None)
    return m, {**t, **FINETUNE}


# What one take may ask for, on the command line and in the studio alike (bounds checked
# before any work starts): an hour of music, a million tokens, 1,024 samples in a batch.
MAX_TAKE_SECONDS = 3600.0
MAX_TAKE_TOKENS = 1_000_000
MAX_SAMPLES = 1024
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0


@dataclass(frozen=True)
class Drawing(_Config):
    """How each new token is drawn (the sampling options every generating command shares)."""

    temperature: float = option(1.0, "softmax temperature")
    top_k: int = option(0, "sample among the k likeliest tokens (0: all)")
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens with this mass")
    seed: int = option(0, "random seed (same seed, same music)")
    num_samples: int = option(1, "samples, generated as one batch")

    def sampling(self, **length: Any) -> SampleConfig:
        """These settings with a length (``seconds``, ``tokens``, ``may_end``) and any other
        field changed: the SampleConfig an engine runs, validated once, here. Every command
        that holds drawing or steering settings turns them into one this way."""
        own = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("tokens", "seconds", "may_end")}
        return SampleConfig(**{**own, **length})

    def __post_init__(self) -> None:
        _check(MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE, "temperature",
               f"must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]", self.temperature)
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        _check(0 <= self.top_k <= 2**31 - 1, "top_k", "must be in 0..2147483647", self.top_k)
        _check(0 <= self.seed < 2**63, "seed", "must be in 0..2**63-1", self.seed)
        _check(1 <= self.num_samples <= MAX_SAMPLES, "num_samples",
               f"must be in 1..{MAX_SAMPLES}", self.num_samples)


@dataclass(frozen=True)
class ChordSchedule(_Config):
    """Chords over time: what ``--chords`` steers new music toward (Steering) and what
    ``stats`` measures notes against."""

    chords: str | None = option(None, "chords to play over (or measure against), from "
                                "where the new music starts: bars separated by |, the chords "
                                "of a bar sharing it evenly, e.g. 'Dm7 G7 | Cmaj7' (N: no "
                                "chord; the progression repeats), or timed chords 'START END "
                                "LABEL; ...' in seconds", metavar="CHORDS")
    chords_file: str | None = option(None, "--chords from a file: 'start end label' lines in "
                                     "seconds, as POP909's chord_midi.txt", metavar="FILE")
    chord_offset: float = option(0.0, "--chords: the schedule's time where the new music "
                                 "starts (e.g. the primer's length, for a song's own "
                                 "chord_midi.txt)")
    bpm: float = option(120.0, "--chords: quarter-note beats a minute")
    beats_per_bar: int = option(4, "--chords: beats a bar")
    chords_from: str | None = option(None, "--chords read off a MIDI file's notes, one chord "
                                     "a beat of its tempo map (docs/generation.md says how)",
                                     metavar="FILE.mid")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        given = [n for n in ("chords", "chords_file", "chords_from") if getattr(self, n)]
        _check(math.isfinite(self.bpm) and 0 < self.bpm <= 1000, "bpm", "must be in (0, 1000]",
               self.bpm)
        _check(1 <= self.beats_per_bar <= 64, "beats_per_bar", "must be in [1, 64]",
               self.beats_per_bar)
        if self.chords_file is not None:
            text = _read_chords_file(self.chords_file)
            _check(self.chords in (None, text), "chords_file", "give --chords or "
                   "--chords-file, not both", self.chords_file)
            object.__setattr__(self, "chords", text)  # what every step reads
        if self.chords_from is not None:
            _check(len(given) == 1, "chords_from", "give one of --chords, --chords-file and "
                   "--chords-from", self.chords_from)
            _check_file("chords_from", self.chords_from, MAX_CHORDS_MIDI)
        if self.chords is not None:
            _theory_check("chords", self.chords, theory.parse_schedule)
        _check(math.isfinite(self.chord_offset) and 0 <= self.chord_offset <= 3 * 3600,
               "chord_offset", "must be in [0, 10800] seconds", self.chord_offset)

    @property
    def has_chords(self) -> bool:
        """A schedule is given (``--chords-from``'s is read where MIDI is read:
        controls.chord_text)."""
        return bool(self.chords or self.chords_from)


@dataclass(frozen=True)
class Steering(ChordSchedule, Drawing):
    """How each new token is drawn and what the new notes must obey (the controls of
    controls.py; hard ones hold on every new note): for every command that writes music
    note by note (generate, infill)."""

    key: str | None = option(None, "new notes only on this key's scale (hard): 'D minor', "
                             "'F# major', 'Bb:maj'; minor allows its natural, harmonic and "
                             "melodic forms", metavar="KEY")
    pitch_range: str | None = option(None, "new notes only in LOW-HIGH (hard), MIDI numbers "
                                     "or note names: 48-72, A0-C8", metavar="LOW-HIGH")
    velocity_range: str | None = option(None, "new notes only with velocities in LOW-HIGH "
                                        "(hard), 1-127", metavar="LOW-HIGH")
    max_polyphony: int | None = option(None, "at most N notes sounding at once (hard)",
                                       metavar="N")
    density: float | None = option(None, "aim at N new notes per second (soft: steers the "
                                   "model's choices as it goes)", metavar="N")
    max_repeats: int = option(0, "no pattern of 1-8 notes (pitches and onset intervals) "
                              "played more than K times in a row (hard; 0: no limit)",
                              metavar="K")
    style: str | None = option(None, "start the music's context with this style tag: a "
                               "composer, pop, classical, or a kind (live, score, "
                               "arrangement), among those the model knows (its card lists "
                               "them; models trained on `prepare --tags` data); with "
                               "pretrained:piano the tag alone changes the music little, "
                               "with --guidance 4 audibly (docs/generation.md measures "
                               "both)", metavar="NAME")
    chord_strength: str = option("3", "--chords: how strongly the chord's tones are favoured "
                                 "over other notes (a logit bias, 0-20; the share of notes "
                                 "struck stays the model's), or hard: only chord tones",
                                 metavar="S")
    chord_bass: bool = option(False, "--chords: the first new note of each chord is its bass "
                              "(its root, or a slash chord's bass), and no note struck with "
                              "it is lower (hard)")
    guidance: float = option(1.0, "classifier-free guidance toward --style: each token is "
                             "drawn from log p(tag) + (W - 1) (log p(tag | recent) - log "
                             "p(no tag | recent)), recent being the latest "
                             "--guidance-context tokens; 1: the tag as read, no guidance; "
                             "above 1 the style counts more (pretrained:piano: 4 has the "
                             "style classifier name the style asked for in about 4 of 10 "
                             "continuations of other styles, against 1 in 24 at 1, for "
                             "+0.4 nats a token; docs/generation.md)", metavar="W")
    guidance_context: int = option(16, "--guidance: how many of the latest tokens the tagged "
                                   "and untagged readings compare (a tag counts most near a "
                                   "window's start: 16 steers, 64 barely); 0: the whole "
                                   "context, log p(no tag) + W (log p(tag) - log p(no tag))",
                                   metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE,
               "guidance", f"must be in [0, {MAX_GUIDANCE:g}]", self.guidance)
        _check(self.guidance == 1.0 or bool(self.style), "guidance",
               "guides toward a --style; give one", self.guidance)
        _check(self.guidance_context >= 0, "guidance_context", "must be 0 or more tokens",
               self.guidance_context)
        _theory_check("key", self.key, theory.key_pitch_classes)
        _check(not self.chord_bass or self.has_chords, "chord_bass", "plays each chord's bass; "
               "give --chords, --chords-file or --chords-from", self.chord_bass)
        _check(self.chord_strength == "hard" or _strength(self.chord_strength) is not None,
               "chord_strength", "must be a number in [0, 20] or hard", self.chord_strength)
        _theory_check("pitch_range", self.pitch_range, lambda v: theory.parse_range(
            v, theory.LOWEST_KEY, theory.HIGHEST_KEY, "piano's keys"))
        _theory_check("velocity_range", self.velocity_range,
                      lambda v: theory.parse_range(v, 1, 127, "velocities"))
        if self.key and self.pitch_range:
            lo, hi = self.pitch_range_values
            _check(any(p % 12 in self.key_classes for p in range(lo, hi + 1)), "pitch_range",
                   f"holds no note of {theory.key_name(self.key)}", self.pitch_range)
        _check(self.max_polyphony is None or self.max_polyphony >= 1, "max_polyphony",
               "must be >= 1", self.max_polyphony)
        _check(self.density is None or 0 < self.density <= 100, "density",
               "must be in (0, 100] notes per second", self.density)
        _check(self.max_repeats >= 0, "max_repeats", "must be >= 0", self.max_repeats)

    @property
    def key_classes(self) -> frozenset[int] | None:
        return theory.key_pitch_classes(self.key) if self.key else None

    @property
    def pitch_range_values(self) -> tuple[int, int] | None:
        return theory.parse_range(self.pitch_range, theory.LOWEST_KEY, theory.HIGHEST_KEY) \
            if self.pitch_range else None

    @property
    def velocity_range_values(self) -> tuple[int, int] | None:
        return theory.parse_range(self.velocity_range, 1, 127) if self.velocity_range \
            else None

    @property
    def controls(self) -> dict[str, Any]:
        """The controls that are on, by field name (``chords`` for any chord schedule)."""
        on = {n: getattr(self, n) for n in CONTROLS if getattr(self, n)}
        if self.chords_from and not self.chords:
            on["chords"] = self.chords_from
        return on


@dataclass(frozen=True)
class SampleConfig(Steering):
    """How new tokens are drawn, what they obey, and how many."""

    tokens: int | None = option(None, "new tokens to generate")
    seconds: float | None = option(None, "new music to generate, seconds (20 when --tokens is "
                                   "not given); the model may not end the piece sooner "
                                   "unless --may-end")
    may_end: bool = option(False, "let the model end the piece (EOS) before --seconds or "
                           "--tokens is reached")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, top in (("tokens", MAX_TAKE_TOKENS), ("seconds", MAX_TAKE_SECONDS)):
            v = getattr(self, name)  # zero is not "the default": say so
            _check(v is None or 0 < v <= top, name, f"must be in (0, {top:.0f}]", v)
        if self.tokens and self.seconds:
            raise ConfigError(f"--tokens {self.tokens} and --seconds {self.seconds:g}: "
                              "give one of them, not both")
        if self.tokens is None and self.seconds is None:
            object.__setattr__(self, "seconds", 20.0)

    def steering(self) -> Steering:
        """These settings without their length (what infill and the duet take)."""
        return Steering(**{f.name: getattr(self, f.name) for f in fields(Steering)})


CONTROLS = ("key", "pitch_range", "velocity_range", "max_polyphony", "density", "max_repeats",
            "chords", "chord_bass")
MAX_GUIDANCE = 20.0  # --guidance W: past this the untagged reading barely counts


MAX_CHORDS_FILE = 1_000_000  # bytes: a song's chord_midi.txt is a few kilobytes
MAX_CHORDS_MIDI = 20_000_000  # bytes: what data/midi.py's load_score reads at most


def _check_file(name: str, path: str, most: int) -> None:
    """A file a flag names exists, is a file and is at most ``most`` bytes."""
    p = Path(path)
    _check(p.is_file(), name, "no such file", path)
    _check(p.stat().st_size <= most, name, f"larger than {most:,} bytes", path)


def _read_chords_file(path: str) -> str:
    """A chords file's text (``start end label`` lines); ConfigError names the file."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CHORDS_FILE:
            raise ConfigError(f"--chords-file {path}: larger than {MAX_CHORDS_FILE:,} bytes")
        text = p.read_text(errors="strict")
    except FileNotFoundError:
        raise ConfigError(f"--chords-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--chords-file {path}: not a readable text file ({e})") from None
    try:
        theory.parse_schedule(text)
    except ValueError as e:
        raise ConfigError(f"--chords-file {path}: {e}") from None
    return text


def _strength(text: str) -> float | None:
    """--chord-strength as a number in [0, 20], or None."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0 <= v <= 20 else None


def _theory_check(name: str, value: str | None, parse: Callable[[str], Any]) -> None:
    """A musician's value (a key, a range) read by theory.py; its complaint names the flag."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{flag(name)}: must be text, got {value!r}")
    try:
        parse(value)
    except ValueError as e:
        raise ConfigError(f"{flag(name)}: {e}") from None


GENERATE_PRECISIONS = ("auto", "fp32", "fp16w", "bf16")


MIN_ADAPT_SEGMENT = 16  # tokens: a shorter segment is a step per note, all noise


@dataclass(frozen=True)
class Adapting(_Config):
    """Learning the piece while it is read or played (adapt.py): one SGD step on each
    segment of tokens after it is scored, from a copy of the weights (``evaluate``: per
    piece; ``generate``: passes over the primer before continuing it)."""

    adapt: bool = option(False, "learn the piece while reading it: one SGD step after each "
                         "--adapt-segment tokens (evaluate: after scoring them; generate: "
                         "over the primer before continuing it), from a copy of the trained "
                         "weights (docs/evaluation.md)")
    adapt_lr: float = option(1e-2, "--adapt: the SGD step's learning rate")
    adapt_segment: int = option(256, "--adapt: tokens between steps (16 to the model's "
                                "context)")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        _check(math.isfinite(self.adapt_lr) and 0 < self.adapt_lr <= 1, "adapt_lr",
               "must be a number in (0, 1]", self.adapt_lr)
        _check(self.adapt_segment >= MIN_ADAPT_SEGMENT, "adapt_segment",
               f"must be at least {MIN_ADAPT_SEGMENT} tokens", self.adapt_segment)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(Adapting):
    """``cadenza generate``: what to continue, with which model, and what to write."""

    out: str = option(help="output folder (sample-K.mid/.json/.png/.wav)", required=True)
    checkpoint: tuple[str, ...] = option(("pretrained:piano",), "checkpoint directory "
                                         "(RUN/best) or pretrained:NAME; several sample as one "
                                         "ensemble", metavar="DIR")
    primer: str | None = option(None, "MIDI file or builtin:CORPUS[/NAME] to continue "
                                "(default: start from nothing)")
    primer_seconds: float = option(0.0, "keep only the primer's first S seconds (0: all)")
    primer_tokens: int = option(0, "keep only the primer's first N tokens (0: all)")
    sample: SampleConfig = option(help="sampling", factory=SampleConfig)
    continuation_only: bool = option(False, "MIDI without the primer")
    force: bool = option(False, "replace the samples of an earlier take in --out")
    audio: bool = option(True, "skip the WAV", flag="--no-audio")
    soundfont: str | None = option(None, "SoundFont for the WAV (default: the system's GM "
                                   "font)")
    reference: str | None = option(None, "training dataset for memorization (default: the "
                                   "checkpoint's own, when present)")
    transpositions: int = option(1, TRANSPOSITIONS_HELP, metavar="K")
    precision: str = option("auto", "numbers the model runs in: fp32; fp16w, fp32 reading "
                            "fp16 copies of the weights (CPU decoding, ~1.7x faster at batch "
                            "1); bf16; auto: for weights stored in bf16 (pretrained models) "
                            "fp16w on a CPU and bf16 on a GPU, else fp32",
                            choices=GENERATE_PRECISIONS)
    adapt_passes: int = option(2, "--adapt: passes over the primer before continuing it "
                               "(1-8)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._nest()
        if not isinstance(self.checkpoint, tuple):  # one path, or a list of them
            one = isinstance(self.checkpoint, (str, os.PathLike))
            object.__setattr__(self, "checkpoint", tuple(
                str(c) for c in ([self.checkpoint] if one else self.checkpoint)))
        _check(len(self.checkpoint) > 0, "checkpoint", "give at least one", self.checkpoint)
        _check(0 <= self.primer_seconds <= 3 * 3600, "primer_seconds",
               "must be in [0, 10800] (a MIDI file plays at most 3 hours)",
               self.primer_seconds)
        _check(0 <= self.primer_tokens <= 10**7, "primer_tokens", "must be in 0..10000000",
               self.primer_tokens)
        transposition_shifts(self.transpositions)
        _check(self.precision in GENERATE_PRECISIONS, "precision",
               f"must be one of {GENERATE_PRECISIONS}", self.precision)
        _check(1 <= self.adapt_passes <= 8, "adapt_passes", "must be in 1..8",
               self.adapt_passes)
        if self.adapt:
            _check(len(self.checkpoint) == 1, "adapt", "adapts one checkpoint, not an "
                   "ensemble", self.checkpoint)
            _check(self.transpositions == 1, "adapt", "reads the primer in its own key (no "
                   "--transpositions)", self.transpositions)


@dataclass(frozen=True)
class InfillConfig(_Config):
    """``cadenza infill``: regenerate a span of a piece, joined to both sides."""

    input: str = option(help="the MIDI file whose span to regenerate", required=True,
                        metavar="FILE")
    out: str = option(help="output folder (sample-K.mid/.json/.png/.wav)", required=True)
    start: float = option(0.0, "the span's start, seconds of the file's own time")
    end: float = option(0.0, "the span's end, seconds (notes starting in [start, end) are "
                        "regenerated)")
    bars: str | None = option(None, "the span as bars instead, FIRST-LAST counted from 1 "
                              "(e.g. 9-12), through the file's time signature and tempo",
                              metavar="FIRST-LAST")
    checkpoint: str = option("pretrained:piano", "checkpoint (a performance-token model)",
                             metavar="DIR")
    candidates: int = option(8, "candidate spans the model writes per sample; one is drawn "
                             "in proportion to how well the music after the span follows it "
                             "(1: the one written; with --method resample a plain "
                             "continuation)", metavar="K")
    right_seconds: float = option(4.0, "seconds of music after the span that judge the "
                                  "candidates (and that a model trained to infill reads)")
    method: str = option("auto", "fim: a model trained with `train --fim` writes the "
                         "candidates after reading both sides; resample: the candidates "
                         "continue the music before the span (any model); auto: fim where "
                         "the model can", choices=("auto", "fim", "resample"))
    cut_held: bool = option(False, "end notes that start before the span and ring into it "
                            "at its start (default: they keep their length)")
    sample: Steering = option(help="sampling and controls", factory=Steering)
    force: bool = option(False, "replace the samples of an earlier take in --out")
    audio: bool = option(True, "skip the WAV", flag="--no-audio")
    soundfont: str | None = option(None, "SoundFont for the WAV (default: the system's GM "
                                   "font)")
    precision: str = option("auto", "numbers the model samples in (as for generate)",
                            choices=GENERATE_PRECISIONS)

    def __post_init__(self) -> None:
        self._nest()
        if self.bars is None:
            _check(0 <= self.start <= 3 * 3600, "start", "must be in [0, 10800]", self.start)
            _check(self.start < self.end <= 3 * 3600, "end",
                   f"must be after --start {self.start:g} and at most 10800", self.end)
        elif self.start or self.end:
            raise ConfigError(f"--bars {self.bars} and --start/--end: give the span one way")
        _check(1 <= self.candidates <= 256, "candidates", "must be in 1..256",
               self.candidates)
        _check(0 <= self.right_seconds <= 30, "right_seconds", "must be in [0, 30]",
               self.right_seconds)


@dataclass(frozen=True)
class DuetConfig(_Config):
    """``cadenza duet``: play with the model from a MIDI keyboard, or replay a file."""

    in_port: str | None = option(None, "MIDI input port to hear (default: the first; see "
                                 "--list-ports)", flag="--in", metavar="PORT")
    out_port: str | None = option(None, "MIDI output port for the answers (default: only "
                                  "recorded)", flag="--out", metavar="PORT")
    list_ports: bool = option(False, "list the MIDI ports and stop")
    replay: str | None = option(None, "play this MIDI file (or builtin:openings/NAME) as the "
                                "player, in real time, instead of a keyboard", metavar="FILE")
    speed: float = option(1.0, "run the session N times faster (with --replay)", metavar="N")
    checkpoint: str = option("pretrained:piano", "checkpoint (a performance-token model)",
                             metavar="DIR")
    wait: float = option(0.6, "seconds of the player's silence before the model answers")
    answer: float = option(8.0, "longest answer, seconds (the player may cut in)")
    max_hold: float = option(10.0, "a key held longer than this is released (a stuck key)")
    record: str = option("duet", "folder for the session's MIDI, piano roll and JSON",
                         metavar="DIR")
    sample: Steering = option(help="sampling and controls", factory=Steering)
    precision: str = option("auto", "numbers the model samples in (as for generate)",
                            choices=GENERATE_PRECISIONS)

    def __post_init__(self) -> None:
        self._nest()
        _check(0.05 <= self.wait <= 10, "wait", "must be in [0.05, 10] seconds", self.wait)
        _check(0.5 <= self.answer <= 120, "answer", "must be in [0.5, 120] seconds",
               self.answer)
        _check(0.1 <= self.speed <= 100, "speed", "must be in [0.1, 100]", self.speed)
        _check(self.max_hold >= 1, "max_hold", "must be >= 1", self.max_hold)
        _check(self.sample.num_samples == 1, "num_samples", "a duet plays one answer at a "
               "time", self.sample.num_samples)


@dataclass(frozen=True)
class ArrangeConfig(_Config):
    """``cadenza harmonize`` / ``cadenza accompany``: a melody in, new parts under it out."""

    melody: str = option(help="MIDI file of the melody: harmonize reads its highest line; "
                         "accompany its MELODY track when it has one, else all its notes",
                         required=True, metavar="FILE")
    checkpoint: str = option(help="checkpoint trained on the task (RUN/best)", required=True,
                             metavar="DIR")
    out: str = option(help="output folder (sample-K.mid/.json/.png/.wav)", required=True)
    melody_seconds: float = option(0.0, "arrange only the melody's first S seconds (0: all)")
    sample: Steering = option(help="sampling, and for accompany the controls (--chords: "
                              "the schedule starts at the melody's start)", factory=Steering)
    force: bool = option(False, "replace the samples of an earlier take in --out")
    audio: bool = option(True, "skip the WAV", flag="--no-audio")
    soundfont: str | None = option(None, "SoundFont for the WAV (default: the system's GM "
                                   "font)")

    def __post_init__(self) -> None:
        self._nest()
        _check(self.melody_seconds >= 0, "melody_seconds", "must be >= 0",
               self.melody_seconds)


@dataclass(frozen=True)
class AttentionConfig(_Config):
    """``cadenza attention``: what each head of a model looks at, one picture per layer."""

    checkpoint: str = option(help="checkpoint directory (RUN/best) or pretrained:NAME",
                             required=True, metavar="DIR")
    primer: str = option(help="MIDI file (or builtin:CORPUS[/NAME]) the model reads; for an "
                         "encoder-decoder, the melody", required=True, metavar="FILE")
    out: str = option(help="output folder (layer-K.png, cross-K.png, attention.json)",
                      required=True)
    tokens: int = option(96, "tokens read (the picture shows every pair of them)")
    force: bool = option(False, "replace the pictures of an earlier run in --out")

    def __post_init__(self) -> None:
        _check(2 <= self.tokens <= 512, "tokens", "must be in 2..512", self.tokens)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(Adapting):
    """``cadenza evaluate``: exact NLL of a split, a benchmark file or MIDI files."""

    checkpoint: tuple[str, ...] = option(help="checkpoint directory (RUN/best) or "
                                         "pretrained:NAME; several are scored as one ensemble "
                                         "(the mean of their next-token distributions)",
                                         metavar="DIR", required=True)
    data: tuple[str, ...] = option(help="dataset directory or benchmark file (one --split of "
                                   "it), or MIDI files and folders (every file scored whole; "
                                   "per-file NLL with --json)", metavar="PATH", required=True)
    split: str = option("valid", "split to score (dataset or benchmark file)", choices=SPLITS)
    stride: int = option(0, "sliding-window stride (0: context / 2)")
    batch_size: int = option(16, "windows per forward pass")
    transpositions: int = option(1, TRANSPOSITIONS_HELP, metavar="K")
    style: str | None = option(None, "start every window with this style tag (a name the "
                               "model knows), or 'own': each piece's own tags (a dataset "
                               "prepared with --tags); default: untagged", metavar="NAME")
    json: bool = option(False, "print JSON")

    def __post_init__(self) -> None:
        _check(self.stride >= 0, "stride", "must be >= 0", self.stride)
        _check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        transposition_shifts(self.transpositions)
        super().__post_init__()
        if self.adapt:
            _check(len(self.checkpoint) == 1, "adapt", "adapts one checkpoint, not an "
                   "ensemble", self.checkpoint)
            _check(self.transpositions == 1, "adapt", "reads each piece in its own key (no "
                   "--transpositions)", self.transpositions)


@dataclass(frozen=True)
class EmbedConfig(_Config):
    """``cadenza embed``: one vector per MIDI file (and per window of music)."""

    inputs: tuple[str, ...] = option(help="MIDI files or folders (searched recursively)",
                                     positional=True)
    out: str = option(help="folder to write: embeddings.npy, index.json (windows.npy)",
                      required=True)
    checkpoint: str = option("pretrained:piano", "the model whose hidden states embed",
                             metavar="DIR")
    layer: int = option(-1, "the block whose output is averaged (-1: the last, after the "
                        "final norm; 0: the first block's)")
    window_seconds: float = option(0.0, "also one vector per this many seconds of music "
                                   "(0: one per file only)")
    force: bool = option(False, "replace what --out holds")
    json: bool = option(False, "print the index as JSON")

    def __post_init__(self) -> None:
        _check(math.isfinite(self.window_seconds) and 0 <= self.window_seconds <= 3600,
               "window_seconds", "must be in [0, 3600]", self.window_seconds)


@dataclass(frozen=True)
class SimilarConfig(_Config):
    """``cadenza similar``: a library's pieces ranked by likeness to a query."""

    query: str = option(help="the MIDI file to find pieces like", positional=True)
    library: str = option(help="folder of MIDI files to rank (searched recursively)",
                          required=True)
    top: int = option(10, "how many to list")
    checkpoint: str = option("pretrained:piano", "the model whose hidden states embed",
                             metavar="DIR")
    layer: int = option(-1, "the block whose output is averaged (as for embed)")
    json: bool = option(False, "print a JSON list of {path, score}, best first")

    def __post_init__(self) -> None:
        _check(1 <= self.top <= 10_000, "top", "must be in [1, 10000]", self.top)


@dataclass(frozen=True)
class ClassifyConfig(_Config):
    """``cadenza classify``: the styles a MIDI file sounds like, with probabilities."""

    file: str = option(help="the MIDI file", positional=True)
    checkpoint: str = option("pretrained:piano", "the model (with the style classifier beside "
                             "it)", metavar="DIR")
    top: int = option(5, "how many styles to list")
    json: bool = option(False, "print JSON")

    def __post_init__(self) -> None:
        _check(1 <= self.top <= 1000, "top", "must be in [1, 1000]", self.top)


@dataclass(frozen=True, kw_only=True)
class StatsConfig(ChordSchedule):
    """``cadenza stats``: generated MIDI beside a reference, and how closely it follows a
    chord schedule (``--chords``, ``--chords-file`` or ``--chords-from``; for a take that
    ``generate`` wrote the schedule starts where its new music starts, as it did then, and
    elsewhere at the file's start, read from ``--chord-offset``)."""

    generated: str = option(help="folder (or file) of generated MIDI", positional=True)
    reference: str | None = option(None, "prepared dataset directory or MIDI folder (needed "
                                   "unless a chord schedule is given)")
    split: str = option("train", "the dataset split to compare with (train: the music the "
                        "model learnt)", choices=SPLITS)
    json: bool = option(False, "print JSON")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.reference is not None or self.has_chords, "reference", "compare with a "
               "reference (--reference) or a chord schedule (--chords, --chords-file, "
               "--chords-from)", self.reference)


@dataclass(frozen=True)
class ReportConfig(_Config):
    """``cadenza report``: one HTML page for a run."""

    run: str = option(help="run (or demo/bench) directory", positional=True)
    out: str | None = option(None, "HTML file to write (default RUN/report.html)")
    samples: str | None = option(None, "a folder of samples (from `generate`) to show too")


@dataclass(frozen=True)
class DownloadConfig(_Config):
    """``cadenza download``: a public piano corpus, checked and resumable."""

    name: str = option(help="corpus", positional=True, choices=names_of("corpus"))
    url: str | None = option(None, "a mirror of the same archive (checked the same way)")
    force: bool = option(False, "fetch it again even if present")


@dataclass(frozen=True)
class DemoConfig(_Config):
    """``cadenza demo``: the pretrained model, then the whole pipeline on the chorales."""

    out: str = option("cadenza-demo", "output directory")
    minutes: float = option(5.0, "training time budget")
    seconds: float = option(20.0, "new music per sample")
    primer_seconds: float = option(6.0, "seconds of each opening the models continue")
    precision: str = option("bf16", "training precision (bf16 autocast is ~2x faster on "
                            "recent CPUs)", choices=("fp32", "bf16"))
    seed: int = option(0, "random seed")
    force: bool = option(False, "replace an earlier demo in --out")

    def __post_init__(self) -> None:
        _check(self.minutes > 0, "minutes", "must be > 0", self.minutes)
        _check(self.seconds > 0, "seconds", "must be > 0", self.seconds)
        _check(self.primer_seconds > 0, "primer_seconds", "must be > 0", self.primer_seconds)


@dataclass(frozen=True)
class StudioConfig(_Config):
    """``cadenza studio``: a local web page to continue a piece, hear and compare takes."""

    runs: str | None = option(None, "a folder searched for checkpoints (RUN/best, RUN/last) "
                              "to offer beside the pretrained models", metavar="DIR")
    host: str = option("127.0.0.1", "address to listen on (anything but 127.0.0.1 lets "
                       "other machines use your CPU and files)")
    port: int = option(8765, "port to listen on (0: any free port)")
    max_upload_mb: float = option(4.0, "largest MIDI file the page accepts, MB")
    max_seconds: float = option(120.0, "longest continuation one take may ask for, seconds")
    max_takes: int = option(8, "most takes one click may ask for")
    max_queue: int = option(8, "most requests waiting or running at once (a page: at most "
                            "half of them, and at least 1); more are refused until one "
                            "finishes")
    max_work_mb: float = option(512.0, "disk the studio's starts and takes may use, MB; the "
                                "oldest finished takes and unused starts go first")
    max_notes: int = option(50_000, "most notes in an uploaded start")
    max_render_seconds: float = option(60.0, "wall-clock limit of one audio render, seconds "
                                       "(FluidSynth is stopped and its file removed)")
    max_body_kb: float = option(256.0, "largest JSON request body, KB")
    max_connections: int = option(64, "open connections at once (more are closed at once)")
    max_streams: int = option(4, "open event streams (the Play page's) at once")
    header_timeout: float = option(10.0, "seconds a connection may take to send a request's "
                                   "headers (from its opening, or the previous answer)")
    body_timeout: float = option(30.0, "seconds a request may take to send its body")
    idle_timeout: float = option(5.0, "seconds an idle connection is kept between requests")
    allow_host: tuple[str, ...] = option((), "another name this server may be reached by "
                                         "(a Host header it accepts), e.g. a LAN name",
                                         repeat=True, metavar="NAME")
    token: str | None = option(None, "the token a non-loopback --host requires (default: a "
                               "random one, printed in the address)")
    no_token: bool = option(False, "serve a non-loopback --host without a token: anyone who "
                            "can reach it can use it")

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", "must be in 0..65535", self.port)
        _check(self.max_queue >= 1, "max_queue", "must be >= 1", self.max_queue)
        _check(self.max_work_mb >= 1, "max_work_mb", "must be >= 1", self.max_work_mb)
        _check(self.token is None or len(self.token) >= 8, "token",
               "must be at least 8 characters", self.token)
        if self.token and self.no_token:
            raise ConfigError("--token and --no-token: give one of them, not both")
        _check(0 < self.max_upload_mb <= 100, "max_upload_mb", "must be in (0, 100]",
               self.max_upload_mb)
        _check(0 < self.max_seconds <= MAX_TAKE_SECONDS, "max_seconds",
               f"must be in (0, {MAX_TAKE_SECONDS:g}]", self.max_seconds)
        _check(1 <= self.max_takes <= MAX_SAMPLES, "max_takes", f"must be in 1..{MAX_SAMPLES}",
               self.max_takes)
        _check(1 <= self.max_notes <= 1_000_000, "max_notes", "must be in 1..1000000",
               self.max_notes)
        for name, top in (("max_render_seconds", 3600), ("max_body_kb", 10_000),
                          ("header_timeout", 600), ("body_timeout", 600),
                          ("idle_timeout", 600)):
            v = getattr(self, name)
            _check(0 < v <= top, name, f"must be in (0, {top}]", v)
        _check(1 <= self.max_connections <= 10_000, "max_connections", "must be in 1..10000",
               self.max_connections)
        _check(1 <= self.max_streams <= 1000, "max_streams", "must be in 1..1000",
               self.max_streams)


@dataclass(frozen=True)
class BenchConfig(_Config):
    """``cadenza bench``: a published table, reproduced on this machine."""

    which: str = option(help="benchmark", positional=True, choices=BENCHMARKS)
    dataset: str | None = option(None, "piano-roll set (for `pianoroll`)",
                                 choices=PIANOROLL_SETS)
    data: str | None = option(None, "benchmark file (jsb16, pianoroll) or dataset directory "
                              "(models)")
    benchmarks: str | None = option(None, "folder holding the benchmark files (default "
                                    "$CADENZA_BENCHMARKS or ../shared/data/benchmarks)")
    minutes: float = option(60.0, "training time budget (jsb16, pianoroll, tasks)")
    budgets: tuple[float, ...] = option((2.0, 10.0, 30.0), "`bench models`: the time budgets, "
                                        "minutes; every model trains once for each")
    out: str | None = option(None, "output directory (default bench/WHICH)")
    precision: str = option("bf16", "training precision", choices=PRECISIONS)
    position: str | None = option(None, "positional scheme instead of the recipe's (jsb16, "
                                  "pianoroll)", choices=POSITIONS)
    members: int | None = option(None, "train this many models at once (seeds 0..K-1, the "
                                 "threads shared) and score them as one ensemble (jsb16, "
                                 "pianoroll; default: the recipe's)")
    transpositions: int | None = option(None, "score each model averaged over K keys, beside "
                                        "its score in the pieces' own keys (jsb16, pianoroll; "
                                        "default: the recipe's)", metavar="K")
    force: bool = option(False, "replace the runs of an earlier bench in --out")

    def __post_init__(self) -> None:
        _check(self.which in BENCHMARKS, "which", f"must be one of {BENCHMARKS}", self.which)
        _check(self.which != "pianoroll" or self.dataset is not None, "dataset",
               "required for `bench pianoroll`", self.dataset)
        _check(self.which != "models" or bool(self.data), "data",
               "`bench models` needs a prepared dataset directory", self.data)
        _check(self.minutes > 0, "minutes", "must be > 0", self.minutes)
        _check(len(self.budgets) > 0 and all(b > 0 for b in self.budgets), "budgets",
               "give one or more budgets > 0", self.budgets)
        _check(self.members is None or self.members >= 1, "members", "must be >= 1",
               self.members)
        if self.transpositions is not None:
            transposition_shifts(self.transpositions)

    @property
    def out_dir(self) -> str:
        if self.out:
            return self.out
        return f"bench/pianoroll-{self.dataset}" if self.which == "pianoroll" \
            else f"bench/{self.which}"
