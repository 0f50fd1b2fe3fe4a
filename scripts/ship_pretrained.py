"""Copy a trained checkpoint into the package as a shipped model, its weights rounded to bf16
(half the bytes; the NLL moves in the fourth decimal), and print the SHA-256 its model card
must carry (checkpoint.verify_weights refuses weights whose digest differs from the card's).

    python scripts/ship_pretrained.py runs/piano-v2/best piano
"""

from __future__ import annotations

import argparse
import hashlib
import shutil

import torch
from safetensors.torch import load_file, save_file

from cadenza.checkpoint import PRETRAINED, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("name")
    a = ap.parse_args()
    src, dst = resolve(a.checkpoint), PRETRAINED / a.name
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
