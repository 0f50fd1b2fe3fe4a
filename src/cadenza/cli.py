"""The ``cadenza`` console script: one subcommand per pipeline stage, built on the Python API.

    cadenza demo                                   # everything, on the built-in corpus
    cadenza prepare SOURCE... --out DIR            # MIDI / benchmark files -> token shards
    cadenza train --data DIR --out RUN             # -> RUN/best, RUN/last
    cadenza generate --checkpoint RUN/best --out DIR
    cadenza evaluate --checkpoint RUN/best --data DIR
    cadenza stats GENERATED --reference DIR_OR_FOLDER
    cadenza bench jsb16|pianoroll|models ...
    cadenza report RUN

User errors print one line, ``cadenza: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import (
    ARCHITECTURE,
    PRESETS,
    AugmentConfig,
    ConfigError,
    ModelConfig,
    TrainConfig,
    finetune_settings,
    flag,
    run_settings,
)


def _range(kind: Callable[[str], Any]):
    def parse(s: str) -> tuple:
        parts = s.split(",") if "," in s else s.split(":")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected LO,HI, got {s!r}")
        return kind(parts[0]), kind(parts[1])
    return parse


def _add_prepare(sub) -> None:
    from .data.tokenizers import tokenizer_names
    p = sub.add_parser("prepare", help="tokenize MIDI / benchmark files into a dataset",
                       description="Tokenize MIDI files, folders, built-in corpora "
                       "(builtin:chorales, builtin:keyboard, builtin:classical) or benchmark "
                       "files into a split, memory-mappable dataset directory.")
    p.add_argument("sources", nargs="+", help="MIDI files, folders, builtin:NAME, benchmark "
                   "files (.json chorales, .mat/.pickle piano rolls)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--tokenizer", default="performance",
                   help=f"tokenization scheme: {', '.join(tokenizer_names())}")
    p.add_argument("--valid-frac", type=float, default=0.05, help="share of pieces for valid")
    p.add_argument("--test-frac", type=float, default=0.05, help="share of pieces for test")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="skip larger MIDI files")
    p.add_argument("--no-sustain-pedal", action="store_true",
                   help="do not extend notes held by the sustain pedal")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--programs", choices=("all", "piano"), default="all",
                   help="tracks of multitrack files to keep: all pitched instruments merged "
                   "into one part, or the piano programs (GM 0-7) only; drums never")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files whose path ends like GLOB (repeatable), e.g. "
                   "'piano-midi.de/Grieg/*' to keep a composer out of training")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(a) -> int:
    from .config import PrepareConfig
    from .data.prepare import prepare
    cfg = PrepareConfig(sources=tuple(a.sources), out=a.out, tokenizer=a.tokenizer,
                        valid_frac=a.valid_frac, test_frac=a.test_frac, workers=a.workers,
                        strict=a.strict, max_file_mb=a.max_file_mb,
                        sustain_pedal=not a.no_sustain_pedal, force=a.force,
                        programs=a.programs, exclude=tuple(a.exclude))
    print(prepare(cfg).summary())
    return 0


MODEL_FLAGS = ("n_layer", "d_model", "n_head", "d_ff", "dropout", "position", "voice_period",
               "step_positions", "pitch_dims")
TRAIN_FLAGS = ("context", "batch_size", "lr", "min_lr_frac", "warmup_steps", "weight_decay",
               "grad_clip", "max_steps", "minutes", "eval_every", "eval_stride", "patience",
               "ema", "precision", "seed", "log_every")


def add_model_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults come from --preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="debug: ~1 min on CPU; small (the default): CPU default; "
                   "music-transformer-jsb: the paper's JSB setup; base: for GPUs")
    g.add_argument("--model", choices=("transformer", "rnn", "lstm", "gru"), default=None,
                   help="architecture")
    g.add_argument("--position", choices=("sinusoidal", "learned", "rope", "relative"),
                   help="Transformer positional scheme")
    g.add_argument("--n-layer", type=int, help="layers")
    g.add_argument("--d-model", type=int, help="hidden size")
    g.add_argument("--n-head", type=int, help="attention heads")
    g.add_argument("--d-ff", type=int, help="feed-forward size")
    g.add_argument("--dropout", type=float, help="dropout probability")
    g.add_argument("--voice-period", type=int,
                   help="add an embedding of (position mod P), e.g. 4 for chorale16 voices")
    g.add_argument("--step-positions", action="store_true", default=None,
                   help="rope positions count time steps, not tokens (pianoroll frames)")
    g.add_argument("--pitch-dims", type=int,
                   help="rope: head dimensions rotated by pitch instead of position, so "
                   "attention sees intervals (e.g. 16 of 32)")
    t = p.add_argument_group("training")
    t.add_argument("--context", type=int, help="tokens per training window")
    t.add_argument("--batch-size", type=int, help="global batch (windows per step)")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--min-lr-frac", type=float, help="final LR as a fraction of the peak")
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    t.add_argument("--grad-clip", type=float, help="gradient norm clip (0: off)")
    t.add_argument("--max-steps", type=int, help="step budget")
    t.add_argument("--minutes", type=float, help="time budget in minutes")
    t.add_argument("--eval-every", type=int, help="validate every N steps")
    t.add_argument("--eval-stride", type=int, help="sliding-window stride for long pieces")
    t.add_argument("--patience", type=int, help="early stop after N evals without gain")
    t.add_argument("--ema", type=float, help="evaluate and save a moving average of the "
                   "weights with this decay, e.g. 0.999 (0: off)")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="numeric precision")
    t.add_argument("--seed", type=int, help="random seed")
    t.add_argument("--log-every", type=int, help="progress line every N steps")
    t.add_argument("--transpose", type=_range(int), help="augmentation semitones LO,HI "
                   "(write --transpose=-5,6 when LO is negative)")
    t.add_argument("--stretch", type=_range(float), help="augmentation time-stretch LO,HI")
    t.add_argument("--velocity-shift", type=int, help="augmentation velocity bins +-N")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if any)")
    # The model and training flags default to the preset's values: show the small preset's.
    m_small, t_small = PRESETS["small"]
    shown = {**{f.name: f.default for f in dataclasses.fields(ModelConfig)}, **m_small,
             **{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **t_small,
             **{f.name: f.default for f in dataclasses.fields(AugmentConfig)},
             "model": "transformer"}
    for group in (g, t):
        for action in group._group_actions:
            name = action.dest
            if action.default is None and name in shown and shown[name] not in (None, ()):
                v = shown[name]
                v = ",".join(map(str, v)) if isinstance(v, tuple) else v
                action.help += f" (default: {v} in the small preset)"


def _run_configs(out: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(model, train, augment) settings of the run in ``out`` (for --resume), if any."""
    from pathlib import Path

    from .checkpoint import CheckpointError, read_config
    try:
        config = read_config(Path(out) / "last")
    except (CheckpointError, OSError, ValueError):
        return None  # train() says what is wrong with the run
    m, t = run_settings(config["model"], config["train"])
    return m, t, t.pop("augment", {})


def configs_from_args(a, data: str, out: str) -> tuple[ModelConfig, TrainConfig]:
    """Preset, then the flags given. With --resume the run's own settings replace the
    preset, so a flag given there is a change that train() accepts or names."""
    resume = getattr(a, "resume", False)
    base = _run_configs(out) if resume else None
    m, t, aug = (dict(base[0]), dict(base[1]), dict(base[2])) if base else ({}, {}, {})
    init = getattr(a, "init", None)
    if init and base is None:
        if a.preset is not None:
            raise ConfigError(f"--preset: the model and its training come from --init {init}")
        given = [k for k in ARCHITECTURE if k != "kind" and getattr(a, k, None) is not None]
        if given or a.model:
            raise ConfigError(f"{flag(given[0]) if given else '--model'}: the architecture "
                              f"comes from --init {init} (only --dropout may change)")
        from .checkpoint import read_config
        ck = read_config(init)
        m_over, t_over = finetune_settings(ck["model"], ck["train"])
        m.update(m_over)
        t.update(t_over)
    elif base is None or a.preset is not None:  # a preset named on resume is a change too
        m_over, t_over = PRESETS[a.preset or "small"]
        m.update(m_over)
        t.update(t_over)
    if init:  # on --resume a different one is a change train() names
        t["init"] = init
    if a.model:
        m["kind"] = a.model
    m.update({k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k, None) is not None})
    t.update({k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k, None) is not None})
    if a.minutes is not None and a.max_steps is None:
        t["max_steps"] = 0  # a time budget replaces the preset's step budget
    aug.update({k: getattr(a, k) for k in ("transpose", "stretch", "velocity_shift")
                if getattr(a, k, None) is not None})
    t["augment"] = AugmentConfig.from_dict(aug)
    if not t.get("max_steps") and not t.get("minutes"):
        t["minutes"] = 5.0
    m["max_context"] = max(m.get("max_context", 0), t.get("context", 512))
    return (ModelConfig.from_dict(m),
            TrainConfig(data=data, out=out, compile=a.compile, resume=resume,
                        force=getattr(a, "force", False), **t))


def default_device(requested: str | None) -> str:
    """--device, checked: a CUDA device on a PyTorch without CUDA (or without a visible
    GPU) is one clear error, not an assertion deep inside torch."""
    import torch
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "has no CUDA" if torch.version.cuda is None else "sees no GPU"
        raise ConfigError(f"--device {device}: this PyTorch {torch.__version__} {why}; "
                          "use --device cpu")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    return device


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a prepared dataset",
                       description="Train a Transformer or RNN/LSTM/GRU; writes OUT/best, "
                       "OUT/last, OUT/metrics.csv and OUT/loss.png. Under torchrun it runs DDP.")
    p.add_argument("--data", required=True, help="dataset directory from `cadenza prepare`")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")
    p.add_argument("--force", action="store_true",
                   help="start over in an --out that already holds a run, replacing it")
    p.add_argument("--init", metavar="CHECKPOINT", help="fine-tune: start from this "
                   "checkpoint's weights (RUN/best or pretrained:piano), same tokenizer as "
                   "--data; a fresh optimizer and schedule, with fine-tuning defaults (lr "
                   "3e-5, 10 warm-up steps, 8 windows of its context, evaluation every 20 "
                   "steps, starting with the weights given)")
    add_model_train_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from .train import train
    model_cfg, train_cfg = configs_from_args(a, a.data, a.out)
    train(model_cfg, train_cfg, device=default_device(a.device))
    return 0


def _add_transpositions(p) -> None:
    p.add_argument("--transpositions", type=int, default=1, metavar="K",
                   help="average each model's next-token distribution over K keys of the "
                   "music, centred on its own (7: -3..+3 semitones, 12: -6..+5); K passes a "
                   "token")


def _add_download(sub) -> None:
    from .data.download import CATALOG
    p = sub.add_parser("download", help="fetch a public piano corpus (MAESTRO, POP909)",
                       description="Download a public piano corpus from its official "
                       "address into $CADENZA_HOME/corpora/NAME: size and SHA-256 checked, "
                       "an interrupted download resumed by running the command again.\n\n"
                       + "\n".join(f"  {k}: {v.about} ({v.license})"
                                   for k, v in CATALOG.items()))
    p.add_argument("name", choices=sorted(CATALOG), help="corpus")
    p.add_argument("--url", help="a mirror of the same archive (checked the same way)")
    p.add_argument("--force", action="store_true", help="fetch it again even if present")
    p.set_defaults(func=cmd_download)


def cmd_download(a) -> int:
    from .data.download import archive_sha256, download
    from .data.sources import midi_files
    dest = download(a.name, url=a.url, force=a.force)
    print(f"{a.name}: {len(midi_files([dest])):,} MIDI files in {dest} "
          f"({archive_sha256(dest)[:16]}... SHA-256)")
    print(f"next: cadenza prepare {dest} --out data/{a.name} --workers 2")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="NLL of a split under a checkpoint",
                       description="Exact mean NLL per token (nats, bits), perplexity, and per "
                       "frame/step for pianoroll/chorale16, with a sliding window for long "
                       "pieces.")
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="DIR",
                   help="checkpoint directory (RUN/best) or pretrained:NAME; several are "
                   "scored as one ensemble (the mean of their next-token distributions)")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help="dataset directory or benchmark file (one --split of it), or MIDI "
                   "files and folders (every file scored whole; per-file NLL with --json)")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"),
                   help="split to score (dataset or benchmark file)")
    p.add_argument("--stride", type=int, default=0, help="sliding-window stride (0: context/2)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    _add_transpositions(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate, format_result
    res = evaluate(a.checkpoint, a.data, a.split, a.batch_size, a.stride,
                   default_device(a.device),
                   transpositions=a.transpositions)
    print(format_result(res, a.json, a.split))
    return 0


EXAMPLES = {
    "demo": "cadenza demo --minutes 5",
    "prepare": "cadenza prepare my_midi/ builtin:keyboard --out data/mine --workers 2",
    "train": "cadenza train --data data/mine --out runs/mine --preset small --minutes 20",
    "generate": "cadenza generate --checkpoint runs/mine/best --primer song.mid "
                "--primer-seconds 8 --seconds 30 --num-samples 4 --out out/",
    "evaluate": "cadenza evaluate --checkpoint runs/mine/best --data data/mine --split test",
    "download": "cadenza download maestro",
    "stats": "cadenza stats out/ --reference data/mine",
    "bench": "cadenza bench jsb16 --minutes 60",
    "report": "cadenza report runs/mine",
}


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        shown = not (d is None or d is False or d == argparse.SUPPRESS
                     or isinstance(action, (argparse._HelpAction, argparse._VersionAction)))
        return h + " (default: %(default)s)" if shown and "%(default)" not in h else h


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="cadenza", description="Folder of MIDI in, trained music "
                                 "Transformer and new music out.", formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"cadenza {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for name, p in sub.choices.items():
        p.formatter_class = _Help
        p.epilog = f"example:\n  {EXAMPLES[name]}"
    return ap


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a primer into MIDI, WAV, PNG and JSON",
                       description="Sample continuations of a primer from a checkpoint. Writes "
                       "sample-K.mid/.json/.png/.wav per sample into --out.")
    p.add_argument("--checkpoint", nargs="+", metavar="DIR", default=["pretrained:piano"],
                   help="checkpoint directory (RUN/best) or pretrained:NAME; several sample "
                   "as one ensemble")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--primer", help="MIDI file or builtin:CORPUS[/NAME]; default: start at BOS")
    p.add_argument("--primer-seconds", type=float, default=0.0,
                   help="keep only the primer's first S seconds")
    p.add_argument("--primer-tokens", type=int, default=0,
                   help="keep only the primer's first N tokens")
    p.add_argument("--tokens", type=int, default=None, help="new tokens to generate")
    p.add_argument("--seconds", type=float, default=None,
                   help="new music to generate, seconds (default 20 when --tokens is not given)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same music)")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated as a batch")
    p.add_argument("--continuation-only", action="store_true",
                   help="MIDI without the primer")
    p.add_argument("--force", action="store_true",
                   help="replace the samples of an earlier take in --out")
    p.add_argument("--soundfont", help="SoundFont for the WAV (default: system GM font)")
    p.add_argument("--no-audio", action="store_true", help="skip the WAV")
    p.add_argument("--reference", help="training dataset for memorization (default: the "
                   "checkpoint's own, when present)")
    _add_transpositions(p)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="numbers the model runs in; auto: bf16 for weights stored in bf16 "
                   "(pretrained models), else fp32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from .generate import SampleConfig, run_generate
    for name in ("tokens", "seconds"):  # zero is not "the default": say so
        if getattr(a, name) is not None and not getattr(a, name) > 0:
            raise ConfigError(f"--{name}: must be > 0, got {getattr(a, name):g}")
    cfg = SampleConfig(tokens=a.tokens or 0, seconds=a.seconds or 0.0,
                       temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                       num_samples=a.num_samples)
    if not cfg.tokens and not cfg.seconds:
        cfg = dataclasses.replace(cfg, seconds=20.0)
    infos = run_generate(a.checkpoint, a.out, a.primer, a.primer_seconds, a.primer_tokens, cfg,
                         a.continuation_only, a.soundfont, default_device(a.device),
                         not a.no_audio,
                         a.reference, a.transpositions, force=a.force,
                         precision=a.precision)
    for i in infos:
        files = ", ".join(v for v in i["files"].values() if v)
        print(f"sample {i['sample']}: {i['new_tokens']} tokens, {i['new_seconds']:.1f} s new "
              f"music -> {a.out}/ ({files})")
    print(f"{infos[0]['tokens_per_second']:.0f} tokens/s")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="prepare, train, generate on the built-in chorales",
                       description="The whole pipeline on builtin:chorales: prepare (cached), "
                       "train a small Transformer for --minutes, continue three held-out "
                       "pieces into MIDI, WAV and PNG.")
    p.add_argument("--out", default="cadenza-demo", help="output directory")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--seconds", type=float, default=20.0, help="new music per sample")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"),
                   help="training precision (bf16 autocast is ~2x faster on recent CPUs)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a) -> int:
    from .demo import run_demo
    run_demo(a.out, a.minutes, default_device(a.device), a.precision, a.seconds, seed=a.seed,
             force=a.force)
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="musical statistics and memorization of generated MIDI",
                       description="Compare generated MIDI with a reference dataset or folder: "
                       "per-feature overlap and KL (Yang & Lerch 2020), decode share, key "
                       "profile, memorization against the training split.")
    p.add_argument("generated", help="folder (or file) of generated MIDI")
    p.add_argument("--reference", required=True, help="prepared dataset dir or MIDI folder")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"),
                   help="the dataset split to compare with (train: the music the model "
                   "learnt)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)


def cmd_stats(a) -> int:
    from .stats import format_stats, run_stats
    print(format_stats(run_stats(a.generated, a.reference, a.split), a.json))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="reproduce the published tables on this machine",
                       description="jsb16: the Music Transformer's JSB chorale setup; "
                       "pianoroll: the Boulanger-Lewandowski sets; models: RNN/LSTM/GRU/"
                       "Transformer at matched size on one dataset.")
    p.add_argument("which", choices=("jsb16", "pianoroll", "models"), help="benchmark")
    p.add_argument("--dataset", choices=("jsb", "nottingham", "musedata", "piano-midi"),
                   help="piano-roll set (for `pianoroll`)")
    p.add_argument("--data", help="benchmark file (jsb16, pianoroll) or dataset dir (models)")
    p.add_argument("--benchmarks", help="folder holding the benchmark files (default "
                   "$CADENZA_BENCHMARKS or ../shared/data/benchmarks)")
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget")
    p.add_argument("--out", help="output directory (default bench/WHICH)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"),
                   help="training precision")
    p.add_argument("--position", choices=("sinusoidal", "learned", "rope", "relative"),
                   help="positional scheme instead of the recipe's (jsb16, pianoroll)")
    p.add_argument("--members", type=int, default=None,
                   help="train this many models at once (seeds 0..K-1, the threads shared) "
                   "and score them as one ensemble (jsb16, pianoroll; default: the recipe's)")
    p.add_argument("--transpositions", type=int, default=None, metavar="K",
                   help="score each model averaged over K keys, beside its score in the "
                   "pieces' own keys (jsb16, pianoroll; default: the recipe's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--force", action="store_true",
                   help="replace the runs of an earlier bench in --out")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    from . import bench
    dev = default_device(a.device)
    try:
        if a.which == "jsb16":
            bench.bench_jsb16(a.out or "bench/jsb16", a.minutes, a.data, a.benchmarks, dev,
                              a.precision, a.position, a.members, a.transpositions,
                              force=a.force)
        elif a.which == "pianoroll":
            if not a.dataset:
                raise ConfigError("--dataset: required for `bench pianoroll`")
            bench.bench_pianoroll(a.dataset, a.out or f"bench/pianoroll-{a.dataset}",
                                  a.minutes, a.data, a.benchmarks, dev, a.precision,
                                  a.position, a.members, a.transpositions, force=a.force)
        else:
            if not a.data:
                raise ConfigError("--data: `bench models` needs a prepared dataset directory")
            bench.bench_models(a.data, a.out or "bench/models", a.minutes, dev, a.precision,
                               force=a.force)
    except bench.BenchDataMissing as e:
        print(f"cadenza: error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one HTML page for a run (opens from disk)",
                       description="Configs, loss curves, evaluation, benchmark and "
                       "statistics tables, piano rolls (inlined) and audio players (linked) "
                       "in RUN_DIR/report.html.")
    p.add_argument("run", help="run (or demo/bench) directory")
    p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--samples", help="a folder of samples (from `generate`) to show too")
    p.set_defaults(func=cmd_report)


def cmd_report(a) -> int:
    from .report import build_report
    print(build_report(a.run, a.out, a.samples))
    return 0


COMMANDS: list[Callable] = [_add_demo, _add_download, _add_prepare, _add_train,
                            _add_generate, _add_evaluate, _add_stats, _add_bench, _add_report]


def main(argv: list[str] | None = None) -> int:
    from .atomic import Busy
    from .checkpoint import CheckpointError
    from .data.dataset import DatasetError
    from .data.download import DownloadError
    from .data.midi import BadInput
    from .data.prepare import PrepareError
    from .data.sources import SourceError
    from .train import TrainingError

    ap = build_parser()
    a = ap.parse_args(argv)
    # SIGTERM (a `kill`, a scheduler, torchrun stopping its workers) ends the command like
    # Ctrl-C does: every `finally` runs, so no temporary file or folder is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return a.func(a)
    except (ConfigError, SourceError, PrepareError, DatasetError, CheckpointError, BadInput,
            TrainingError, Busy, DownloadError, FileNotFoundError, PermissionError,
            ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"cadenza: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadenza: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
