"""Copy a trained checkpoint into the package as a shipped model, its weights rounded to bf16
(half the bytes; the NLL moves in the fourth decimal), and print the SHA-256 its model card
must carry (checkpoint.verify_weights refuses weights whose digest differs from the card's).

    python scripts/ship_pretrained.py runs/piano-v2/best piano
    python scripts/ship_pretrained.py runs/gpu/best --to "$OUT/piano"   # any folder instead
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cadenza.checkpoint import PRETRAINED, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("name", nargs="?", help="the shipped model's name (pretrained:NAME)")
    ap.add_argument("--to", help="write the rounded checkpoint to this folder instead")
    a = ap.parse_args()
    if bool(a.name) == bool(a.to):
        ap.error("give a NAME to ship into the package, or --to FOLDER (one of them)")
    src, dst = resolve(a.checkpoint), (PRETRAINED / a.name if a.name else Path(a.to))
    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in
               load_file(str(src / "model.safetensors")).items()}
    tmp = dst / ".model.safetensors.tmp"
    save_file(weights, str(tmp))
    tmp.replace(dst / "model.safetensors")
    for f in ("config.json", "metrics.json"):
        shutil.copyfile(src / f, dst / f)
    digest = hashlib.sha256((dst / "model.safetensors").read_bytes()).hexdigest()
    size = (dst / "model.safetensors").stat().st_size
    print(f"{dst}: {size / 1e6:.1f} MB; the card's line:\n"
          f"SHA-256 of model.safetensors: `{digest}`")


if __name__ == "__main__":
    main()
