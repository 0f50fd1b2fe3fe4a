"""scripts/gpu_piano.sh, the piano model's run for a lent GPU machine, dry-run on the CPU with
a tiny budget: it unpacks carried shards, continues the shipped model, writes a bf16
checkpoint folder under OUT and prints its validation NLL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_trains_from_carried_shards_on_the_cpu(tiny_dataset, tmp_path):
    carry = tmp_path / "carry"
    carry.mkdir()
    with tarfile.open(carry / "data.tar.xz", "w:xz") as t:  # as `pack` leaves it
        t.add(tiny_dataset, arcname="piano-tiny")
    data = tmp_path / "unpacked" / "piano-tiny"  # not there yet: the script unpacks it
    env = {**os.environ, "CARRY": str(carry), "DATA": str(data), "OUT": str(tmp_path / "out"),
           "RUN": str(tmp_path / "run"), "STEPS": "2", "MINUTES": "2", "CONTEXT": "64",
           "BATCH": "2", "WARMUP": "1", "PRECISION": "fp32", "COMPILE": "0", "DEVICE": "cpu",
           "EVAL_EVERY": "1", "FIM": "0.5", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_piano.sh"), "train"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (data / "manifest.json").exists()
    ck = tmp_path / "out" / "piano"
    weights = load_file(str(ck / "model.safetensors"))
    assert weights and all(str(v.dtype) == "torch.bfloat16" for v in weights.values())
    assert (ck / "model.safetensors").stat().st_size < 16 * 2**20  # the tool's per-file limit
    config = json.loads((ck / "config.json").read_text())
    shipped = json.loads((ROOT / "src/cadenza/pretrained/piano/config.json").read_text())
    assert config["train"]["fim"] == 0.5
    assert config["model"]["d_model"] == shipped["model"]["d_model"]  # the shipped shape
    metrics = json.loads((ck / "metrics.json").read_text())
    assert f"validation NLL {metrics['val_nll']:.4f}" in r.stdout


def test_the_gpu_script_refuses_an_unknown_part():
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_piano.sh"), "fly"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
