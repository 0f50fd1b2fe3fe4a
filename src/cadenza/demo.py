"""``cadenza demo``: piano music from the pretrained model in seconds, then the whole pipeline
on the built-in Bach chorales, on a laptop CPU.

0. continue three built-in piano openings (``builtin:openings``, none in its training data)
   with the shipped pretrained piano model (``pretrained:piano``),
1. build ``builtin:chorales`` from music21's corpus (cached under ``$CADENZA_HOME``),
2. prepare it with the ``performance`` tokenizer (cached too: a second run reuses it),
3. train the ``demo`` recipe (recipes.py: a small rotary Transformer) for ``--minutes``
   (default 5) with bf16 autocast,
4. continue the openings of three held-out (test split) chorales, writing MIDI, WAV, PNG,
5. print one table for both: validation NLL, speed and what was written where.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import read_metrics
from .config import (
    DemoConfig,
    GenerateConfig,
    ModelConfig,
    PrepareConfig,
    SampleConfig,
    TrainConfig,
)
from .data.corpus import CORPUS_VERSION, OPENINGS, cadenza_home
from .data.dataset import TokenDataset
from .data.prepare import prepare
from .generate import SampleInfo, run_generate
from .recipes import RECIPES
from .train import TrainingError, holds_run, train

PRETRAINED = "pretrained:piano"


def _piece_name(path: str) -> str:
    """bach__bwv194.12.mxl.mid -> bwv194.12"""
    name = Path(path).name.split("__")[-1]
    for suffix in (".mid", ".mxl", ".xml", ".krn"):
        name = name.removesuffix(suffix)
    return name


def chorale_data() -> Path:
    """Where the demo's prepared chorales are cached, named by the corpus conversion's
    version (a cache of an older one is not reused)."""
    return cadenza_home() / "datasets" / f"chorales-v{CORPUS_VERSION}-performance"


def demo_configs(cfg: DemoConfig) -> tuple[ModelConfig, TrainConfig]:
    """The ``demo`` recipe, for this demo's budget, precision, seed and folder."""
    return RECIPES["demo"].configs(data=str(chorale_data()), out=str(Path(cfg.out) / "run"),
                                   minutes=cfg.minutes, precision=cfg.precision,
                                   seed=cfg.seed, force=cfg.force)


@dataclass(frozen=True)
class DemoResult:
    """What the demo made (``demo.json``): the chorale model's best validation NLL and
    steps, and the folders of its samples and of the pretrained model's."""

    val_nll: float
    steps: int
    samples: list[str]
    piano_samples: list[str]


def run_demo(cfg: DemoConfig | None = None, *, device: str = "cpu") -> DemoResult:
    cfg = cfg or DemoConfig()

    out_dir = Path(cfg.out)
    if not cfg.force and (holds_run(out_dir / "run") or (out_dir / "demo.json").exists()):
        raise TrainingError(f"--out {cfg.out}: holds an earlier demo; pass --force to replace "
                            "it, or choose another --out")

    def take(checkpoint: str, sdir: Path, primer: str, seed: int, temperature: float):
        return run_generate(GenerateConfig(
            out=str(sdir), checkpoint=(checkpoint,), primer=primer,
            primer_seconds=cfg.primer_seconds, force=cfg.force,
            sample=SampleConfig(seconds=cfg.seconds, temperature=temperature, top_p=0.95,
                                seed=seed)), device=device)[0]

    print(f"[0/3] continuing three piano openings with the pretrained model ({PRETRAINED})")
    piano = []
    for i, f in enumerate(sorted(OPENINGS.glob("*.mid"))):
        sdir = out_dir / "piano" / f.stem
        info = take(PRETRAINED, sdir, str(f), cfg.seed + i, 1.0)
        piano.append((f.stem, sdir, info))
        print(f"  {f.stem}: {info.new_seconds:.1f} s new -> {sdir}/")

    data = chorale_data()
    if not (data / "manifest.json").exists():
        print(f"[1/3] preparing builtin:chorales -> {data}")
        print(prepare(PrepareConfig(sources=("builtin:chorales",), out=str(data),
                                    workers=2)).summary())
    else:
        print(f"[1/3] reusing the prepared corpus in {data}")
    model_cfg, train_cfg = demo_configs(cfg)
    run = Path(train_cfg.out)
    print(f"[2/3] training a small Transformer for {cfg.minutes:g} minutes -> {run}")
    result = train(model_cfg, train_cfg, device=device)
    print("[3/3] continuing the openings of three held-out chorales")
    ds = TokenDataset(data)
    held_out = [f["path"] for f in ds.manifest["files"] if f["split"] == "test"][:3]
    written = []
    for i, primer in enumerate(held_out):
        sdir = out_dir / "samples" / f"{i}-{_piece_name(primer)}"
        written.append((primer, sdir, take(str(run / "best"), sdir, primer, cfg.seed + i,
                                           0.95)))
    print()
    ck = read_metrics(PRETRAINED)
    print(f"{'pretrained:piano':<28}validation NLL {ck['best_val_nll']:.3f} nats/token "
          "(its piano validation split; see its MODEL_CARD.md)")
    for name, sdir, info in piano:
        _sample_row(name, sdir, info)
    print(f"{'your chorale model':<28}validation NLL {result.best_val_nll:.4f} nats/token "
          f"({result.step} steps, {result.parameters / 1e6:.1f}M parameters)")
    print(f"{'checkpoint':<28}{run / 'best'}")
    print(f"{'loss curve':<28}{run / 'loss.png'}")
    for primer, sdir, info in written:
        _sample_row(_piece_name(primer), sdir, info)
    summary = DemoResult(result.best_val_nll, result.step, [str(s) for _, s, _ in written],
                         [str(s) for _, s, _ in piano])
    (out_dir / "demo.json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def _sample_row(name: str, sdir: Path, info: SampleInfo) -> None:
    files = ", ".join(v for v in info.files.values() if v)
    print(f"{name:<28}{sdir}/ ({files}; {info.new_seconds:.1f} s new, "
          f"{info.tokens_per_second:.0f} tokens/s)")
