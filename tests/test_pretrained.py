"""The shipped pretrained piano model, fine-tuning from a checkpoint (--init), and scoring MIDI
files directly (evaluate --data FILES)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cadenza.checkpoint import (
    CheckpointError,
    load_checkpoint,
    pretrained_names,
    save_checkpoint,
)
from cadenza.config import ConfigError, ModelConfig, PrepareConfig, TrainConfig
from cadenza.data.prepare import prepare
from cadenza.evaluate import evaluate
from cadenza.generate import Generator, SampleConfig
from cadenza.models import build_model
from cadenza.train import TrainingError, init_model, train
from tests.conftest import make_score, random_piece


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cadenza", *map(str, args)],
                          capture_output=True, text=True)


def test_pretrained_piano_loads_by_name_and_continues_an_opening():
    assert "piano" in pretrained_names()
    gen = Generator.load("pretrained:piano")
    assert gen.ck.tokenizer.name == "performance"
    # stored in bf16: on a CPU it decodes in fp32 reading fp16 copies of the weights, which
    # lose nothing of them; fp32 or bf16 arithmetic on request
    assert gen.precision == "fp16w" and gen.ck.model.tok.weight.dtype == torch.float32
    assert gen.ck.model.blocks[0].fc.half_decoding
    assert Generator.load("pretrained:piano", precision="bf16").ck.model.tok.weight.dtype \
        == torch.bfloat16
    assert Generator.load("pretrained:piano", precision="fp32").ck.model.tok.weight.dtype \
        == torch.float32
    assert gen.ck.model_cfg.n_layer >= 4 and gen.ck.stored_dtype == "bf16"
    prompt, info = gen.encode_primer("builtin:openings/schubert", 4.0)
    assert info and len(prompt) > 20
    new = gen.generate(prompt, SampleConfig(tokens=48, seed=1))[0]
    assert len(new) == 48 and new.max() < gen.ck.tokenizer.vocab_size
    notes = gen.tok.decode_notes(np.concatenate([prompt[1:], new]))
    assert len(notes) > 0


def test_generate_uses_the_pretrained_model_without_a_checkpoint(tmp_path):
    r = cli("generate", "--out", tmp_path / "g", "--tokens", 24, "--no-audio",
            "--primer", "builtin:openings/pop909-024", "--primer-seconds", 3)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "g" / "sample-0.json").read_text())
    assert info["checkpoint"].endswith("pretrained/piano")
    assert info["precision"] == "fp16w"  # auto, on a CPU, for the shipped bf16 weights
    r = cli("generate", "--checkpoint", "pretrained:nope", "--out", tmp_path / "h")
    assert r.returncode != 0 and "no such pretrained model" in r.stderr
    assert "pretrained:piano" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_damaged_pretrained_weights_are_refused_in_one_line(tmp_path):
    src = load_checkpoint("pretrained:piano").path
    d = tmp_path / "piano"
    shutil.copytree(src, d)
    w = bytearray((d / "model.safetensors").read_bytes())
    w[-100] ^= 0x55  # one flipped byte inside a weight: still a valid safetensors file
    (d / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(CheckpointError, match="damaged weights .*model card"):
        load_checkpoint(d)
    r = cli("evaluate", "--checkpoint", d, "--data", "x.mid")
    assert r.returncode != 0 and "damaged weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture
def perf_checkpoint(tiny_run):
    return tiny_run / "best"


def test_init_loads_the_checkpoint_weights_exactly(perf_checkpoint, tiny_dataset, tmp_path):
    ck = load_checkpoint(perf_checkpoint)
    cfg = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "ft"), context=64,
                      max_steps=2, init=str(perf_checkpoint))
    model_cfg, model = init_model(cfg, ck.tokenizer, dropout=0.2)
    assert model_cfg == ck.model_cfg.replace(dropout=0.2)
    for (k, a), (_, b) in zip(ck.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    # a fine-tuning run starts from those weights: its NLL before training is the
    # checkpoint's, far below a fresh model's, and it records where it started
    res = train(ModelConfig(dropout=0.0),
                cfg.replace(lr=1e-9, warmup_steps=0, eval_every=1), quiet=True)
    base = evaluate(perf_checkpoint, tiny_dataset)
    assert abs(res.val_nll - base.nll) < 1e-3
    config = json.loads((tmp_path / "ft" / "best" / "config.json").read_text())
    assert config["train"]["init"] == str(perf_checkpoint)
    # the weights given are scored first and are best/ until something beats them
    rows = (tmp_path / "ft" / "metrics.csv").read_text().splitlines()
    step0 = rows[1].split(",")
    assert step0[0] == "0" and float(step0[2]) == pytest.approx(base.nll, abs=1e-3)
    best = json.loads((tmp_path / "ft" / "best" / "metrics.json").read_text())
    assert best["best_val_nll"] <= float(step0[2]) + 1e-5  # the CSV has 5 decimals
    with pytest.raises(ConfigError, match="--context: 128 exceeds --init"):
        init_model(cfg.replace(context=128), ck.tokenizer, 0.0)


def test_init_refuses_another_vocabulary(perf_checkpoint, midi_folder, tmp_path):
    other = tmp_path / "grid"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(other), tokenizer="pianoroll",
                          valid_frac=0.2), progress=False)
    with pytest.raises(TrainingError, match=r"its tokenizer is performance \(\d+ tokens\), "
                       r"--data .* has pianoroll \(\d+ tokens\)"):
        train(ModelConfig(), TrainConfig(data=str(other), out=str(tmp_path / "ft"),
                                         max_steps=1, init=str(perf_checkpoint)), quiet=True)
    r = cli("train", "--data", other, "--out", tmp_path / "ft2", "--init", perf_checkpoint,
            "--max-steps", 1)
    assert r.returncode != 0 and "prepare the data with --tokenizer performance" in r.stderr
    r = cli("train", "--data", other, "--out", tmp_path / "ft3", "--init", perf_checkpoint,
            "--n-layer", 3)
    assert r.returncode != 0 and "--n-layer: the architecture comes from --init" in r.stderr


def test_finetuning_cli_defaults_and_resume(perf_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "ft"
    r = cli("train", "--data", tiny_dataset, "--out", out, "--init", perf_checkpoint,
            "--max-steps", 4, "--eval-every", 2, "--batch-size", 2, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = json.loads((out / "last" / "config.json").read_text())["train"]
    assert t["init"] == str(perf_checkpoint) and t["warmup_steps"] == 10
    assert t["lr"] == pytest.approx(3e-5) and t["context"] == 64
    r = cli("train", "--data", tiny_dataset, "--out", out, "--resume", "--max-steps", 6,
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "last" / "metrics.json").read_text())["step"] == 6


def test_evaluating_a_folder_is_the_token_weighted_mean_of_its_files(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        make_score(random_piece(rng, 25 + 10 * i, 6.0)).dump_midi(str(d / f"p{i}.mid"))
    (d / "broken.mid").write_bytes(b"MThd")
    ck = "pretrained:piano"
    whole = evaluate(ck, d)
    assert [f["path"] for f in whole.files] == [str(d / f"p{i}.mid") for i in range(3)]
    assert whole.skipped[0]["path"].endswith("broken.mid")
    singles = [evaluate(ck, d / f"p{i}.mid") for i in range(3)]
    for f, s in zip(whole.files, singles):
        assert f["tokens"] == s.tokens and f["nll"] == pytest.approx(s.nll, abs=1e-6)
    total = sum(s.nll * s.tokens for s in singles) / sum(s.tokens for s in singles)
    assert whole.nll == pytest.approx(total, abs=1e-6) and whole.tokens == sum(
        s.tokens for s in singles)
    r = cli("evaluate", "--checkpoint", ck, "--data", d / "p0.mid", d / "p1.mid", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [f["nll"] for f in got["files"]] == pytest.approx([s.nll for s in singles[:2]],
                                                              abs=1e-6)


def test_a_fresh_model_scores_real_piano_worse_than_the_pretrained_one(tmp_path):
    ck = load_checkpoint("pretrained:piano")
    fresh = tmp_path / "fresh"
    torch.manual_seed(0)
    save_checkpoint(fresh, build_model(ck.model_cfg), ck.config, {})
    openings = ck.path.parent.parent / "openings"
    pre, rnd = evaluate(ck.path, openings), evaluate(fresh, openings)
    assert pre.nll < rnd.nll - 1.0, (pre.nll, rnd.nll)
