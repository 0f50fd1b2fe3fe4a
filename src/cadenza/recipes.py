"""Named recipes: each a complete, frozen set of configs (model, training with its
augmentation, and the tokenizer its data should have), in one registry.

``cadenza train --preset NAME`` starts from one (the flags given change it), ``cadenza demo``
trains ``demo``, ``cadenza bench`` trains ``jsb16`` and the ``pianoroll-*`` recipes, and
``cadenza presets`` lists them all with their parameter counts. The same rules turn a recipe
and the flags given into a run's configs, here, for the command line and the Python API::

    from cadenza.recipes import RECIPES
    model_cfg, train_cfg = RECIPES["debug"].configs(data="data/chorales", out="runs/debug")

How each benchmark recipe was found, with the numbers tried and not kept, is in
``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, read_config
from .config import (
    ARCHITECTURE,
    INVOCATION,
    AugmentConfig,
    ConfigError,
    ModelConfig,
    TrainConfig,
    finetune_settings,
    flag,
    register_names,
    run_settings,
    transposition_shifts,
)
from .data.tokenizers import build_tokenizer
from .models import build_model, count_params
from .train import tokenizer_facts


@dataclass(frozen=True)
class Recipe:
    """A model and how to train it. ``members`` and ``transpositions`` are how ``bench``
    scores it (an ensemble of K models trained at once; each averaged over K keys)."""

    name: str
    about: str
    model: ModelConfig
    train: TrainConfig
    tokenizer: str = "performance"  # the data it is meant for
    members: int = 1
    transpositions: int = 1

    def settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recipe's (model, train) settings: what a user could set by flags (not
        max_context, which follows --context: a preset named on --resume must not change
        the run's)."""
        m, t = run_settings(self.model.to_dict(), self.train.to_dict())
        m.pop("max_context")
        return m, t

    def configs(self, *, data: str, out: str, **changes: Any) -> tuple[ModelConfig, TrainConfig]:
        """This recipe's configs for a run on ``data`` into ``out``, with ``changes`` (any
        model, training or augmentation field, and resume/force/compile/init) on top."""
        m, t = self.settings()
        return compose(m, t, changes, base="recipe", data=data, out=out)

    def with_position(self, position: str | None) -> Recipe:
        """The recipe with another positional scheme, without the rotary-only options (a
        recipe that has them is a rope recipe)."""
        if not position or position == self.model.position:
            return self
        return replace(self, model=replace(self.model, position=position, pitch_dims=0,
                                           step_positions=False))

    def with_members(self, members: int | None) -> Recipe:
        if members is None:
            return self
        if members < 1:
            raise ConfigError(f"--members: must be >= 1, got {members}")
        return replace(self, members=members)

    def with_transpositions(self, transpositions: int | None) -> Recipe:
        if transpositions is None:
            return self
        transposition_shifts(transpositions)  # validates before an hour of training
        return replace(self, transpositions=transpositions)


_MODEL = {f.name for f in fields(ModelConfig)}
_TRAIN = {f.name for f in fields(TrainConfig)} - {"augment"}
_AUGMENT = {f.name for f in fields(AugmentConfig)}


def cli_flag(name: str) -> str:
    """The flag that sets a model/train field (``kind`` is ``--model``)."""
    for f in fields(ModelConfig):
        if f.name == name and f.metadata.get("flag"):
            return f.metadata["flag"]
    return flag(name)


def compose(model: dict[str, Any], train: dict[str, Any], given: dict[str, Any], *,
            base: str, **invocation: Any) -> tuple[ModelConfig, TrainConfig]:
    """Settings (of a recipe, a checkpoint to fine-tune or a run to resume: ``base``), then
    the fields ``given``. Two rules for the budget: ``minutes`` given alone replaces a step
    budget, and, except on resume, ``max_steps`` given alone replaces a time budget. A fresh
    model's positions cover exactly the training windows (``max_context`` = ``context``)."""
    given = dict(given)
    for k in INVOCATION:
        if k in given:
            invocation[k] = given.pop(k)
    unknown = set(given) - _MODEL - _TRAIN - _AUGMENT
    if unknown:
        raise ConfigError(f"{flag(sorted(unknown)[0])}: not a model or training setting")
    m, t = dict(model), dict(train)
    aug = dict(t.pop("augment", None) or {})
    m.update({k: v for k, v in given.items() if k in _MODEL})
    t.update({k: v for k, v in given.items() if k in _TRAIN})
    aug.update({k: v for k, v in given.items() if k in _AUGMENT})
    if "minutes" in given and "max_steps" not in given:
        t["max_steps"] = 0
    if base != "run" and "max_steps" in given and "minutes" not in given:
        t["minutes"] = 0.0
    if base == "recipe" and "kind" in given and \
            (given["kind"] == "encoder-decoder") != (model.get("kind") == "encoder-decoder"):
        # the recipe's position options are its kind's: another kind starts from its own
        # defaults (encoder-decoder: sinusoidal, as in the paper; transformer: relative)
        m.update({k: v for k, v in (("position", None), ("voice_period", 0),
                                    ("step_positions", False), ("pitch_dims", 0))
                  if k not in given})
    m["max_context"] = t["context"] if base == "recipe" else \
        max(m.get("max_context", 0), t["context"])
    t["augment"] = AugmentConfig.from_dict(aug)
    return ModelConfig.from_dict(m), TrainConfig(**t, **invocation)


def train_configs(preset: str | None = None, *, data: str, out: str, resume: bool = False,
                  init: str = "", **given: Any) -> tuple[ModelConfig, TrainConfig]:
    """What ``cadenza train`` runs: with ``resume``, the run's own settings in ``out`` (a
    preset named there is a change too, which train() accepts or names); with ``init``, the
    checkpoint's, with the fine-tuning defaults (config.FINETUNE); else the preset (``small``
    by default). Then the settings ``given``."""
    run = _run_settings(out) if resume else None
    if run is not None:
        m, t = run
        if preset is not None:
            pm, pt = RECIPES[preset].settings()
            m, t = {**m, **pm}, {**t, **pt}
        base = "run"
    elif init:
        if preset is not None:
            raise ConfigError(f"--preset: the model and its training come from --init {init}")
        fixed = [k for k in ARCHITECTURE if k in given]
        if fixed:
            raise ConfigError(f"{cli_flag(fixed[0])}: the architecture comes from --init "
                              f"{init} (only --dropout may change)")
        ck = read_config(init)
        m, t = finetune_settings(ck.model, ck.train)
        base = "init"
    else:
        m, t = _recipe(preset or "small").settings()
        base = "recipe"
    if init:  # on --resume a different one is a change train() names
        given["init"] = init
    return compose(m, t, given, base=base, data=data, out=out, resume=resume)


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"--preset: choose one of {', '.join(sorted(RECIPES))}, got {name!r}")
    return RECIPES[name]


def _run_settings(out: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(model, train) settings of the run in ``out`` (for --resume), if any."""
    try:
        config = read_config(Path(out) / "last")
    except (CheckpointError, OSError, ValueError):
        return None  # train() says what is wrong with the run
    return run_settings(config.model, config.train)


def _recipes(*recipes: Recipe) -> dict[str, Recipe]:
    return {r.name: r for r in recipes}


_NO_BUDGET = 5.0  # minutes, for the presets that leave the budget to the user
# The benchmarks' shared training settings (a recipe changes what it must).
_BENCH = TrainConfig(context=512, batch_size=8, lr=1e-3, warmup_steps=200, minutes=60.0,
                     eval_every=250, log_every=50, precision="bf16",
                     augment=AugmentConfig(transpose=(0, 0)))
_ROLL = ModelConfig(n_layer=4, d_model=256, n_head=8, d_ff=1024, dropout=0.2,
                    position="rope")
_SMALL_ROLL = replace(_ROLL, n_layer=3, d_model=192, n_head=6, d_ff=768, dropout=0.3)

# The paper's encoder-decoder on paired tasks (prepare --task), 3 + 3 layers; bench tasks
# trains it beside a 7-layer decoder-only Transformer of about the same size. Rotary
# positions: in 10 minutes they beat the paper's sinusoids by 0.10 nats per target token
# harmonizing and 1.16 accompanying (README, `bench tasks`).
_ENCDEC = ModelConfig(kind="encoder-decoder", n_layer=3, d_model=256, n_head=4, d_ff=1024,
                      dropout=0.1, position="rope")

RECIPES: dict[str, Recipe] = _recipes(
    Recipe("debug", "learns visible structure in about a minute on 2 CPU cores",
           ModelConfig(n_layer=2, d_model=128, n_head=4, d_ff=512, dropout=0.0,
                       position="rope"),
           TrainConfig(context=256, batch_size=16, lr=3e-3, warmup_steps=30, max_steps=500,
                       eval_every=100, log_every=50)),
    # Two layers: in 5 minutes on two threads (fp32, the built-in chorales) they reached
    # 1.268 where four reached 2.336 (2.7x the steps; docs/benchmarks.md).
    Recipe("small", "the CPU default: relative attention, 5 minutes unless told",
           ModelConfig(n_layer=2, d_model=256, n_head=4, d_ff=1024, dropout=0.1,
                       position="relative"),
           TrainConfig(context=512, batch_size=16, lr=1e-3, warmup_steps=100, eval_every=200,
                       minutes=_NO_BUDGET)),
    # Huang et al. 2018, JSB chorales: 5 layers, 256 hidden, 1024 feed-forward, 8 heads.
    Recipe("music-transformer-jsb", "the Music Transformer paper's JSB setup (relative "
           "attention, voice labels)",
           ModelConfig(n_layer=5, d_model=256, n_head=8, d_ff=1024, dropout=0.2,
                       position="relative", voice_period=4),
           TrainConfig(context=512, batch_size=16, lr=1e-3, warmup_steps=200, eval_every=250,
                       weight_decay=0.1, minutes=_NO_BUDGET), tokenizer="chorale16"),
    # Four layers of 384 keep batch-1 generation on 2 CPU cores near 10x real time for live
    # playing (~41 tokens/s); rope runs through flash attention on a GPU. max_steps: its
    # first stage; scripts/pretrain_piano.sh runs both (see its model card).
    Recipe("piano", "pretrained:piano's first stage (scripts/pretrain_piano.sh; a GPU)",
           ModelConfig(n_layer=4, d_model=384, n_head=6, d_ff=1536, dropout=0.1,
                       position="rope"),
           TrainConfig(context=1024, batch_size=64, lr=1e-3, warmup_steps=500, max_steps=9000,
                       eval_every=1000, log_every=100, precision="bf16")),
    Recipe("base", "a bigger relative-attention model for GPUs",
           ModelConfig(n_layer=8, d_model=512, n_head=8, d_ff=2048, dropout=0.1,
                       position="relative"),
           TrainConfig(context=1024, batch_size=32, lr=6e-4, warmup_steps=500, eval_every=500,
                       minutes=_NO_BUDGET)),
    # Rotary positions: on CPU they train ~2x faster per token than relative attention,
    # which matters more than the scheme within a 5-minute budget. Two layers: of the shapes
    # trained 5 minutes on two threads (docs/benchmarks.md, benchmarks/shapes.py) 2 x 256
    # reached 0.910, 2 x 192 0.918, 2 x 384 0.962, 3 x 256 0.974, 4 x 256 1.010.
    Recipe("demo", "what `cadenza demo` trains on the built-in chorales (bf16, 5 minutes)",
           ModelConfig(n_layer=2, d_model=256, n_head=4, d_ff=1024, dropout=0.1,
                       position="rope"),
           TrainConfig(context=512, batch_size=16, lr=1e-3, warmup_steps=50, minutes=5.0,
                       eval_every=100, log_every=25, precision="bf16")),
    # Rotary rather than the paper's learned relative embeddings: both make attention
    # depend on the offset only, and rotary runs the fused CPU kernel at ~1.9x the tokens/s,
    # which decides a one-hour budget. What moved the number below the paper's is scoring
    # averaged over the 12 keys it was trained in (docs/benchmarks.md).
    Recipe("jsb16", "`bench jsb16`: the Music Transformer's JSB table (chorale16, voice "
           "labels, all keys)",
           ModelConfig(n_layer=5, d_model=256, n_head=8, d_ff=1024, dropout=0.1,
                       position="rope", voice_period=4),
           replace(_BENCH, lr=2e-3, warmup_steps=100, augment=AugmentConfig(transpose=(-6, 5))),
           tokenizer="chorale16", transpositions=12),
    # The Boulanger sets are all in C major / C minor, so no transposition. The two small
    # sets overfit within minutes, so they train two members at once, one core each.
    Recipe("pianoroll-jsb", "`bench pianoroll --dataset jsb`: relative pitch, step "
           "positions, EMA, an ensemble of 2",
           replace(_ROLL, pitch_dims=16, step_positions=True), replace(_BENCH, ema=0.999),
           tokenizer="pianoroll", members=2),
    Recipe("pianoroll-nottingham", "`bench pianoroll --dataset nottingham`",
           _ROLL, _BENCH, tokenizer="pianoroll"),
    Recipe("pianoroll-musedata", "`bench pianoroll --dataset musedata` (compute-bound: "
           "jsb16's learning rate)",
           _ROLL, replace(_BENCH, lr=2e-3, warmup_steps=100), tokenizer="pianoroll"),
    Recipe("pianoroll-piano-midi", "`bench pianoroll --dataset piano-midi`: a smaller model "
           "(it overfits), relative pitch, EMA, an ensemble of 2",
           replace(_SMALL_ROLL, pitch_dims=16), replace(_BENCH, warmup_steps=100, ema=0.999),
           tokenizer="pianoroll", members=2),
    # A decoder-only model reads source + target: 66 + 194 tokens for 4 bars of chorale.
    Recipe("harmonize", "the encoder-decoder, soprano -> alto, tenor, bass (prepare --task "
           "harmonize; `bench tasks`)", replace(_ENCDEC, dropout=0.2),
           replace(_BENCH, context=260, batch_size=16, warmup_steps=100, eval_every=200,
                   augment=AugmentConfig(transpose=(-6, 5))), tokenizer="chorale16"),
    Recipe("accompany", "the encoder-decoder, melody -> piano (prepare --task accompany on "
           "POP909; `bench tasks`)", _ENCDEC,
           replace(_BENCH, context=512, batch_size=16, warmup_steps=100, eval_every=200,
                   augment=AugmentConfig())),
)

register_names("recipe", lambda: sorted(RECIPES))  # train --preset


def parameter_count(recipe: Recipe) -> int:
    """Parameters of the recipe's model on its tokenizer's vocabulary."""
    cfg = tokenizer_facts(recipe.model.replace(max_context=recipe.train.context),
                          build_tokenizer(recipe.tokenizer))
    return count_params(build_model(cfg))


def format_recipes() -> str:
    """``cadenza presets``: one line each."""
    rows = [(r.name, f"{parameter_count(r) / 1e6:.2f}M", r.tokenizer, r.about)
            for r in RECIPES.values()]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{'preset':<{w[0]}}  {'params':>{w[1]}}  {'tokens':<{w[2]}}  what it is"]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
    lines.append("use: cadenza train --data DIR --out RUN --preset NAME [flags that change it]")
    return "\n".join(lines)
