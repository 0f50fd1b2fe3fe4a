"""``cadenza demo``: piano music from the pretrained model in seconds, then the whole pipeline
on the built-in Bach chorales, on a laptop CPU.

0. continue three built-in piano openings (``builtin:openings``, none in its training data)
   with the shipped pretrained piano model (``pretrained:piano``),
1. build ``builtin:chorales`` from music21's corpus (cached under ``$CADENZA_HOME``),
2. prepare it with the ``performance`` tokenizer (cached too: a second run reuses it),
3. train a small Transformer for ``--minutes`` (default 5) with bf16 autocast,
4. continue the openings of three held-out (test split) chorales, writing MIDI, WAV, PNG,
5. print one table for both: validation NLL, speed and what was written where.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import AugmentConfig, ModelConfig, PrepareConfig, TrainConfig
from .data.corpus import CORPUS_VERSION, OPENINGS, cadenza_home

PRETRAINED = "pretrained:piano"


def _piece_name(path: str) -> str:
    """bach__bwv194.12.mxl.mid -> bwv194.12"""
    name = Path(path).name.split("__")[-1]
    for suffix in (".mid", ".mxl", ".xml", ".krn"):
        name = name.removesuffix(suffix)
    return name


def run_demo(out: str = "cadenza-demo", minutes: float = 5.0, device: str = "cpu",
             precision: str = "bf16", seconds: float = 20.0, primer_seconds: float = 6.0,
             seed: int = 0, force: bool = False) -> dict:
    from .checkpoint import resolve
    from .data.dataset import TokenDataset
    from .data.prepare import prepare
    from .generate import SampleConfig, run_generate
    from .train import TrainingError, holds_run, train

    if not force and (holds_run(Path(out) / "run") or (Path(out) / "demo.json").exists()):
        raise TrainingError(f"--out {out}: holds an earlier demo; pass --force to replace "
                            "it, or choose another --out")

    out_dir = Path(out)
    print(f"[0/3] continuing three piano openings with the pretrained model ({PRETRAINED})")
    piano = []
    for i, f in enumerate(sorted(OPENINGS.glob("*.mid"))):
        sdir = out_dir / "piano" / f.stem
        infos = run_generate(PRETRAINED, str(sdir), str(f), primer_seconds, 0,
                             SampleConfig(seconds=seconds, temperature=1.0, top_p=0.95,
                                          seed=seed + i), device=device, force=force)
        piano.append((f.stem, sdir, infos[0]))
        print(f"  {f.stem}: {infos[0]['new_seconds']:.1f} s new -> {sdir}/")

    # named by the corpus conversion's version: a cache of an older one is not reused
    data = cadenza_home() / "datasets" / f"chorales-v{CORPUS_VERSION}-performance"
    if not (data / "manifest.json").exists():
        print(f"[1/3] preparing builtin:chorales -> {data}")
        print(prepare(PrepareConfig(sources=("builtin:chorales",), out=str(data),
                                    workers=2)).summary())
    else:
        print(f"[1/3] reusing the prepared corpus in {data}")
    run = out_dir / "run"
    print(f"[2/3] training a small Transformer for {minutes:g} minutes -> {run}")
    # Rotary positions: on CPU they train ~2x faster per token than relative attention,
    # which matters more than the scheme within a 5-minute budget.
    model_cfg = ModelConfig(n_layer=4, d_model=256, n_head=4, d_ff=1024, dropout=0.1,
                            position="rope", max_context=512)
    train_cfg = TrainConfig(data=str(data), out=str(run), context=512, batch_size=16, lr=1e-3,
                            warmup_steps=50, minutes=minutes, eval_every=100, log_every=25,
                            precision=precision, augment=AugmentConfig(), seed=seed,
                            force=force)
    result = train(model_cfg, train_cfg, device=device)
    print("[3/3] continuing the openings of three held-out chorales")
    ds = TokenDataset(data)
    held_out = [f["path"] for f in ds.manifest["files"] if f["split"] == "test"][:3]
    written = []
    for i, primer in enumerate(held_out):
        sdir = out_dir / "samples" / f"{i}-{_piece_name(primer)}"
        infos = run_generate(str(run / "best"), str(sdir), primer, primer_seconds, 0,
                             SampleConfig(seconds=seconds, temperature=0.95, top_p=0.95,
                                          seed=seed + i), device=device, force=force)
        written.append((primer, sdir, infos[0]))
    print()
    ck = json.loads((resolve(PRETRAINED) / "metrics.json").read_text())
    print(f"{'pretrained:piano':<28}validation NLL {ck['best_val_nll']:.3f} nats/token "
          "(its piano validation split; see its MODEL_CARD.md)")
    for name, sdir, info in piano:
        _sample_row(name, sdir, info)
    print(f"{'your chorale model':<28}validation NLL {result['best_val_nll']:.4f} nats/token "
          f"({result['step']} steps, {result['parameters'] / 1e6:.1f}M parameters)")
    print(f"{'checkpoint':<28}{run / 'best'}")
    print(f"{'loss curve':<28}{run / 'loss.png'}")
    for primer, sdir, info in written:
        _sample_row(_piece_name(primer), sdir, info)
    summary = {"val_nll": result["best_val_nll"], "steps": result["step"],
               "samples": [str(s) for _, s, _ in written],
               "piano_samples": [str(s) for _, s, _ in piano]}
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _sample_row(name: str, sdir: Path, info: dict) -> None:
    files = ", ".join(v for v in info["files"].values() if v)
    print(f"{name:<28}{sdir}/ ({files}; {info['new_seconds']:.1f} s new, "
          f"{info['tokens_per_second']:.0f} tokens/s)")
