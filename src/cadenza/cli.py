"""The ``cadenza`` console script: one subcommand per pipeline stage, built on the Python API.

    cadenza demo                                   # everything, on the built-in corpus
    cadenza prepare SOURCE... --out DIR            # MIDI / benchmark files -> token shards
    cadenza train --data DIR --out RUN             # -> RUN/best, RUN/last
    cadenza presets                                # the named recipes train --preset takes
    cadenza generate --checkpoint RUN/best --out DIR
    cadenza evaluate --checkpoint RUN/best --data DIR
    cadenza harmonize|accompany --checkpoint RUN/best --melody FILE --out DIR
    cadenza attention --checkpoint RUN/best --primer FILE --out DIR
    cadenza stats GENERATED --reference DIR_OR_FOLDER
    cadenza bench jsb16|pianoroll|models|tasks ...
    cadenza report RUN
    cadenza studio [--runs DIR]                    # the web page, on 127.0.0.1

Every flag is generated from a field of the config dataclasses (config.py): its name, type,
default, choices and help live there, once. A command is its description, the configs it
takes, and a function that runs them. User errors print one line, ``cadenza: error: ...``,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any

import torch

from . import __version__, bench
from .atomic import Busy
from .attention import run_attention
from .checkpoint import CheckpointError
from .classify import run_classify
from .config import (
    ArrangeConfig,
    AttentionConfig,
    BenchConfig,
    ClassifyConfig,
    ConfigError,
    DemoConfig,
    DownloadConfig,
    DuetConfig,
    EmbedConfig,
    EvaluateConfig,
    GenerateConfig,
    InfillConfig,
    ModelConfig,
    PrepareConfig,
    PresetChoice,
    ReportConfig,
    Runtime,
    SimilarConfig,
    StatsConfig,
    StudioConfig,
    TrainConfig,
    flag,
)
from .data.dataset import DatasetError
from .data.download import DownloadError, archive_sha256, download
from .data.midi import BadInput
from .data.prepare import PrepareError, prepare
from .data.sources import SourceError, midi_files
from .demo import run_demo
from .duet import run_duet
from .embed import run_embed, run_similar
from .engine import SECONDS, TOKENS, WHY
from .evaluate import format_result, run_evaluate
from .generate import run_generate
from .infill import run_infill
from .recipes import RECIPES, format_recipes, train_configs
from .report import build_report
from .stats import chord_fits, format_stats, run_stats
from .studio import serve
from .tasks import arrange
from .train import TrainingError, train

# --- flags from config fields ----------------------------------------------------------------


def _range(kind: Callable[[str], Any]):
    def parse(s: str) -> tuple:
        parts = s.split(",") if "," in s else s.split(":")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected LO,HI, got {s!r}")
        return kind(parts[0]), kind(parts[1])
    return parse


def _base(tp: Any) -> Any:
    """``X | None`` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None  # type: ignore


def _negated(f: Field) -> bool:
    """A bool that is on unless its --no-... flag is given (dest no_NAME)."""
    return f.metadata.get("flag", "").startswith("--no-")


def _dest(f: Field) -> str:
    return "no_" + f.name if _negated(f) else f.name


def _shown(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def flag_fields(cls: type) -> list[tuple[Field, Any]]:
    """(field, type) of every field of ``cls`` that has a flag, nested configs flattened."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = _base(hints[f.name])
        if f.metadata.get("derived"):
            continue
        if is_dataclass(tp):
            out += flag_fields(tp)
        else:
            out.append((f, tp))
    return out


def add_flags(p: argparse._ActionsContainer, cls: type,
              preset: dict[str, Any] | None = None) -> None:
    """Add a flag (or positional) for every field of ``cls`` with one. Fields in ``preset``
    default to None, so that the flags given can be told apart from the preset's values,
    and their help shows the preset's value."""
    for f, tp in flag_fields(cls):
        md = f.metadata
        choices = md["choices"]() if callable(md["choices"]) else md["choices"]
        kw: dict[str, Any] = {"help": md["help"]}
        if choices:
            kw["choices"] = list(choices)
        if md["metavar"]:
            kw["metavar"] = md["metavar"]
        seq = typing.get_origin(tp) is tuple
        if md["positional"]:
            p.add_argument(f.name, nargs="+" if seq else None, **kw)
            continue
        default = _default(f)
        if tp is bool:
            kw["action"] = "store_true"
            default = False
        elif seq and typing.get_args(tp)[-1] is Ellipsis:
            kw.update(action="append") if md["repeat"] else kw.update(nargs="+")
            if typing.get_args(tp)[0] in (int, float):
                kw["type"] = typing.get_args(tp)[0]
            default = list(default) if default else None
        elif seq:
            kw["type"] = _range(typing.get_args(tp)[0])
        else:
            kw["type"] = tp
        if preset is not None and f.name in preset:
            kw["default"] = None
            kw["help"] += f" (default: {_shown(preset[f.name])} in the small preset)"
        else:
            kw["default"] = default if default not in ("", ()) else None
            kw["required"] = md["required"]
        p.add_argument(md["flag"] or flag(f.name), dest=_dest(f), **kw)


def from_args(cls: type, a: argparse.Namespace) -> Any:
    """The config ``cls`` from the parsed flags (every field of it has one, or a default)."""
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in fields(cls):
        tp = _base(hints[f.name])
        if f.metadata.get("derived"):
            continue
        if is_dataclass(tp):
            kw[f.name] = from_args(tp, a)
            continue
        v = getattr(a, _dest(f))
        if _negated(f):
            v = not v
        elif v is None:  # not given: the field's own default ("", (), None...)
            v = _default(f)
        kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def given(cls: type, a: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` (nested ones flattened) whose flags were given."""
    out = {}
    for f, _ in flag_fields(cls):
        v = getattr(a, _dest(f), None)
        if v is not None:
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out


def resolve_device(requested: str) -> str:
    """--device, checked: a CUDA device on a PyTorch without CUDA (or without a visible
    GPU) is one clear error, not an assertion deep inside torch."""
    device = requested if requested not in ("", "auto") else \
        ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "has no CUDA" if torch.version.cuda is None else "sees no GPU"
        raise ConfigError(f"--device {device}: this PyTorch {torch.__version__} {why}; "
                          "use --device cpu")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    return device


def _device(a: argparse.Namespace) -> str:
    return resolve_device(from_args(Runtime, a).device)


# --- the commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    example: str
    configs: tuple[type, ...]
    run: Callable[[argparse.Namespace], int]


def cmd_prepare(a) -> int:
    print(prepare(from_args(PrepareConfig, a)).summary())
    return 0


def _small_settings() -> dict[str, Any]:
    """The small preset's values, which train's setting flags show as their defaults (the
    invocation's flags, and --init, keep their own)."""
    m, t = RECIPES["small"].settings()  # without data/out/resume/force/compile
    t.pop("init")
    return {**m, **t.pop("augment"), **t}


def train_args_configs(a: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """``train``'s configs: --preset (or the run resumed, or the checkpoint fine-tuned),
    then the flags given (recipes.train_configs)."""
    return train_configs(a.preset, **given(ModelConfig, a), **given(TrainConfig, a))


def cmd_train(a) -> int:
    model_cfg, train_cfg = train_args_configs(a)
    train(model_cfg, train_cfg, device=_device(a))
    return 0


def cmd_presets(a) -> int:
    print(format_recipes())
    return 0


def cmd_download(a) -> int:
    cfg = from_args(DownloadConfig, a)
    dest = download(cfg.name, url=cfg.url, force=cfg.force)
    print(f"{cfg.name}: {len(midi_files([dest])):,} MIDI files in {dest} "
          f"({archive_sha256(dest)[:16]}... SHA-256)")
    print(f"next: cadenza prepare {dest} --out data/{cfg.name} --workers 2")
    return 0


def cmd_evaluate(a) -> int:
    cfg = from_args(EvaluateConfig, a)
    print(format_result(run_evaluate(cfg, device=_device(a)), cfg.json, cfg.split))
    return 0


def cmd_generate(a) -> int:
    cfg = from_args(GenerateConfig, a)
    infos = run_generate(cfg, device=_device(a))
    for i in infos:
        files = ", ".join(v for v in i.files.values() if v)
        print(f"sample {i.sample}: {i.new_tokens} tokens, {i.new_seconds:.1f} s new "
              f"music -> {cfg.out}/ ({files})")
        if i.stopped not in (SECONDS, TOKENS):  # shorter than asked: say why
            print(f"  stopped before the {cfg.sample.seconds or cfg.sample.tokens:g} "
                  f"{'s' if cfg.sample.seconds else 'tokens'} asked: {WHY[i.stopped]}")
    print(f"{infos[0].tokens_per_second:.0f} tokens/s")
    return 0


def cmd_infill(a) -> int:
    cfg = from_args(InfillConfig, a)
    for i in run_infill(cfg, device=_device(a)):
        files = ", ".join(v for v in i.files.values() if v)
        print(f"sample {i.sample}: {i.new_notes} new notes in {i.span['start']:g}-"
              f"{i.span['end']:g} s ({i.method}: candidate {i.chosen + 1} of {i.candidates}), "
              f"{i.kept_notes} kept -> {cfg.out}/ ({files})")
    return 0


def cmd_duet(a) -> int:
    try:
        run_duet(from_args(DuetConfig, a), device=_device(a))
    except KeyboardInterrupt:  # the session so far is saved by run_duet
        pass
    return 0


def _arrange(command: str):
    def run(a) -> int:
        cfg = from_args(ArrangeConfig, a)
        for r in arrange(cfg, command, device=_device(a)):
            files = ", ".join(v for v in r.files.values() if v)
            parts = ", ".join(f"{n} {c}" for n, c in r.tracks.items())
            print(f"sample {r.sample}: {r.windows} windows of {r.bars_per_window} "
                  f"bars; notes: {parts} -> {cfg.out}/ ({files})")
        return 0
    return run


def cmd_attention(a) -> int:
    cfg = from_args(AttentionConfig, a)
    for f in run_attention(cfg, device=_device(a)):
        print(f)
    return 0


def cmd_demo(a) -> int:
    run_demo(from_args(DemoConfig, a), device=_device(a))
    return 0


def _show(as_json: bool, result, lines) -> int:
    """A command's result: as JSON with --json, else its lines for a reader."""
    print(json.dumps(result, indent=1) if as_json else "\n".join(lines))
    return 0


def cmd_embed(a) -> int:
    cfg = from_args(EmbedConfig, a)
    index = run_embed(cfg, device=_device(a))
    windows = sum(f["windows"]["rows"][1] - f["windows"]["rows"][0]
                  for f in index["files"] if "windows" in f)
    return _show(cfg.json, index, [
        *(f"skipped {s['why']}" for s in index["skipped"]),
        f"{len(index['files'])} files embedded" + (f" ({windows} windows)" if windows else "")
        + f" with {cfg.checkpoint} (layer {cfg.layer}) into {cfg.out}"])


def cmd_similar(a) -> int:
    cfg = from_args(SimilarConfig, a)
    rows = run_similar(cfg, device=_device(a))
    return _show(cfg.json, rows, (f"{k:>3}  {r['score']:.4f}  {r['path']}"
                                  for k, r in enumerate(rows, 1)))


def cmd_classify(a) -> int:
    cfg = from_args(ClassifyConfig, a)
    res = run_classify(cfg, device=_device(a))
    return _show(cfg.json, res, (f"{r['probability']:>7.1%}  {r['style']}"
                                 for r in res["styles"]))


def cmd_stats(a) -> int:
    cfg = from_args(StatsConfig, a)
    fit = chord_fits(cfg) if cfg.has_chords else None
    print(format_stats(run_stats(cfg), cfg.json, fit))
    return 0


def cmd_bench(a) -> int:
    cfg = from_args(BenchConfig, a)
    try:
        bench.run_bench(cfg, device=_device(a))
    except bench.BenchDataMissing as e:
        print(f"cadenza: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_report(a) -> int:
    cfg = from_args(ReportConfig, a)
    print(build_report(cfg.run, cfg.out, cfg.samples))
    return 0


def cmd_studio(a) -> int:
    try:
        serve(from_args(StudioConfig, a), device=_device(a))
    except KeyboardInterrupt:
        pass
    print("Cadenza Studio stopped; its temporary files are gone.")
    return 0


COMMANDS = (
    Command("demo", "prepare, train, generate on the built-in chorales",
            "Continue three piano openings with the pretrained model, then the whole "
            "pipeline on builtin:chorales: prepare (cached), train the `demo` recipe for "
            "--minutes, continue three held-out pieces into MIDI, WAV and PNG.",
            "cadenza demo --minutes 5", (DemoConfig, Runtime), cmd_demo),
    Command("download", "fetch a public piano corpus (MAESTRO, POP909)",
            "Download a public piano corpus from its official address into "
            "$CADENZA_HOME/corpora/NAME: size and SHA-256 checked, an interrupted download "
            "resumed by running the command again.", "cadenza download maestro",
            (DownloadConfig,), cmd_download),
    Command("prepare", "tokenize MIDI / benchmark files into a dataset",
            "Tokenize MIDI files, folders, built-in corpora (builtin:chorales, "
            "builtin:keyboard, builtin:classical) or benchmark files into a split, "
            "memory-mappable dataset directory.",
            "cadenza prepare my_midi/ builtin:keyboard --out data/mine --workers 2",
            (PrepareConfig,), cmd_prepare),
    Command("train", "train a model on a prepared dataset",
            "Train a Transformer or RNN/LSTM/GRU from a named recipe (--preset) and the "
            "flags given; writes OUT/best, OUT/last, OUT/metrics.csv and OUT/loss.png. Under "
            "torchrun it runs DDP.",
            "cadenza train --data data/mine --out runs/mine --preset small --minutes 20",
            (PresetChoice, ModelConfig, TrainConfig, Runtime), cmd_train),
    Command("presets", "list the named recipes (train --preset, demo, bench)",
            "Every named recipe: its parameter count on its tokenizer's vocabulary, the "
            "tokenizer its data should have, and what it is for.", "cadenza presets", (),
            cmd_presets),
    Command("generate", "continue a primer into MIDI, WAV, PNG and JSON",
            "Sample continuations of a primer from a checkpoint (by default the shipped "
            "pretrained:piano). Writes sample-K.mid/.json/.png/.wav per sample into --out.",
            "cadenza generate --checkpoint runs/mine/best --primer song.mid "
            "--primer-seconds 8 --seconds 30 --num-samples 4 --out out/",
            (GenerateConfig, Runtime), cmd_generate),
    Command("infill", "regenerate a span of a piece, joined to both sides",
            "Regenerate the notes that start in a span of a MIDI file (--start/--end "
            "seconds, or --bars): the model writes --candidates spans (after reading both "
            "sides, if it was trained with --fim; else from the music before the span), and "
            "one is drawn by how well the music after the span follows it. Every "
            "note outside the span is kept exactly; the new notes go on an Infill track. "
            "Writes sample-K.mid/.json/.png/.wav into --out.",
            "cadenza infill --input song.mid --start 8 --end 14 --out infill/",
            (InfillConfig, Runtime), cmd_infill),
    Command("duet", "play with the model: it answers when you pause",
            "Play a MIDI keyboard (--in), or replay a file as the player (--replay): when "
            "the player pauses for --wait seconds the model answers for up to --answer "
            "seconds on --out (or only recorded), continuing everything played; the player "
            "may cut in. The session is recorded as MIDI (player and Cadenza on their own "
            "tracks), a piano roll and a JSON of every answer's latency.",
            "cadenza duet --in 'My Keyboard' --out 'My Synth' --wait 0.6 --answer 8",
            (DuetConfig, Runtime), cmd_duet),
    Command("harmonize", "a melody in, alto, tenor and bass out (MIDI, WAV, PNG)",
            "Harmonize a melody with a model trained on `prepare --task harmonize` pairs "
            "(JSB chorales): its highest line on the 16th-note grid is the soprano; the "
            "model writes alto, tenor and bass, window by window. Writes sample-K.mid (each "
            "voice on its own track), .png, .wav and .json into --out.",
            "cadenza harmonize --checkpoint runs/harm/best --melody tune.mid --out harm/",
            (ArrangeConfig, Runtime), _arrange("harmonize")),
    Command("accompany", "a melody in, a piano accompaniment out (MIDI, WAV, PNG)",
            "Accompany a melody with a model trained on `prepare --task accompany` pairs "
            "(POP909): the melody's bars (from a beat_midi.txt beside it, else its own "
            "beats) are accompanied window by window. Writes sample-K.mid (melody and piano "
            "on their own tracks), .png, .wav and .json into --out.",
            "cadenza accompany --checkpoint runs/acc/best --melody song.mid --out acc/",
            (ArrangeConfig, Runtime), _arrange("accompany")),
    Command("attention", "pictures of what each attention head looks at",
            "Read a MIDI file (the primer; for an encoder-decoder, the melody) with a "
            "checkpoint and draw every head's attention weights, one PNG per layer: "
            "self-attention (and for an encoder-decoder, the encoder's and the "
            "cross-attention), axes labelled with each token's time and note.",
            "cadenza attention --checkpoint pretrained:piano --primer builtin:openings "
            "--out attention/", (AttentionConfig, Runtime), cmd_attention),
    Command("evaluate", "NLL of a split under a checkpoint",
            "Exact mean NLL per token (nats, bits), perplexity, and per frame/step for "
            "pianoroll/chorale16, with a sliding window for long pieces.",
            "cadenza evaluate --checkpoint runs/mine/best --data data/mine --split test",
            (EvaluateConfig, Runtime), cmd_evaluate),
    Command("embed", "one vector per MIDI file, from the model's hidden states",
            "Embed MIDI files: the mean of the model's hidden states over every token of a "
            "piece (the last block's, after the final norm, by default), unit length; with "
            "--window-seconds also one per window of music. Writes embeddings.npy, "
            "index.json (and windows.npy) into --out.",
            "cadenza embed my_midi/ --out emb/", (EmbedConfig, Runtime), cmd_embed),
    Command("similar", "rank a folder's pieces by likeness to a query",
            "Rank the MIDI files of --library by the cosine similarity of their embeddings "
            "(as `cadenza embed` makes them) to the query's; the library's are cached by "
            "file hash under $CADENZA_HOME/embeddings, so a second query is fast.",
            "cadenza similar piece.mid --library my_midi/ --top 5",
            (SimilarConfig, Runtime), cmd_similar),
    Command("classify", "the styles a MIDI file sounds like, with probabilities",
            "Name a MIDI file's style (pop or a composer) with the linear classifier stored "
            "beside the model, on its embeddings window by window (docs/generation.md: its "
            "accuracy).", "cadenza classify piece.mid --top 3", (ClassifyConfig, Runtime),
            cmd_classify),
    Command("stats", "musical statistics and memorization of generated MIDI",
            "Compare generated MIDI with a reference dataset or folder: per-feature overlap "
            "and KL (Yang & Lerch 2020), decode share, key profile, memorization against the "
            "training split; with a chord schedule (--chords, --chords-file, --chords-from), "
            "the share of note-time on the chords' tones and of the bass on their roots.",
            "cadenza stats out/ --reference data/mine\n  cadenza stats out/ --chords 'Dm7 G7 | "
            "Cmaj7'",
            (StatsConfig,), cmd_stats),
    Command("bench", "reproduce the published tables on this machine",
            "jsb16: the Music Transformer's JSB chorale setup; pianoroll: the "
            "Boulanger-Lewandowski sets; models: RNN/LSTM/GRU/Transformer at matched size on "
            "one dataset, at --budgets of 2, 10 and 30 minutes, with NLL by position in the "
            "window; tasks: harmonize (JSB16) and accompany (POP909) with the encoder-decoder "
            "against a decoder-only model reading the melody as a prefix. The recipes are "
            "`cadenza presets`' jsb16, pianoroll-*, small, harmonize and accompany.",
            "cadenza bench jsb16 --minutes 60", (BenchConfig, Runtime), cmd_bench),
    Command("report", "one HTML page for a run (opens from disk)",
            "Configs, loss curves, evaluation, benchmark and statistics tables, piano rolls "
            "(inlined) and audio players (linked) in RUN_DIR/report.html.",
            "cadenza report runs/mine", (ReportConfig,), cmd_report),
    Command("studio", "a local web page: continue a piece, listen, compare takes",
            "Serve Cadenza Studio on this computer (needs the studio extra: pip install -e "
            "'.[studio]'): upload a MIDI file or pick a built-in opening, choose a model (the "
            "pretrained piano model and every checkpoint under --runs) and the sampling "
            "settings, then hear, see, download, compare and continue the takes. Nothing is "
            "fetched from the internet; Ctrl-C stops it and removes its temporary files.",
            "cadenza studio --runs runs/", (StudioConfig, Runtime), cmd_studio),
)
EXAMPLES = {c.name: c.example for c in COMMANDS}
GROUPS = {ModelConfig: "model (defaults come from --preset)", TrainConfig: "training",
          Runtime: "where it runs"}


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        shown = not (d is None or d is False or d == argparse.SUPPRESS
                     or isinstance(action, (argparse._HelpAction, argparse._VersionAction)))
        return h + " (default: %(default)s)" if shown and "(default:" not in h else h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cadenza", description="Folder of MIDI in, trained music "
                                 "Transformer and new music out.", formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"cadenza {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.description,
                           formatter_class=_Help, epilog=f"example:\n  {c.example}")
        preset = _small_settings() if c.name == "train" else None
        for cls in c.configs:
            add_flags(p.add_argument_group(GROUPS[cls]) if cls in GROUPS else p, cls, preset)
        p.set_defaults(func=c.run)
    return ap


def main(argv: list[str] | None = None) -> int:

    ap = build_parser()
    a = ap.parse_args(argv)
    # SIGTERM (a `kill`, a scheduler, torchrun stopping its workers) ends the command like
    # Ctrl-C does: every `finally` runs, so no temporary file or folder is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return a.func(a)
    except (ConfigError, SourceError, PrepareError, DatasetError, CheckpointError, BadInput,
            TrainingError, Busy, DownloadError, FileNotFoundError, FileExistsError,
            PermissionError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"cadenza: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadenza: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
