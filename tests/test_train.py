"""Training: checkpoint contents, exact resume, NaN handling, kill-safety, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cadenza.checkpoint import load_checkpoint
from cadenza.config import AugmentConfig, ConfigError, ModelConfig, TrainConfig
from cadenza.data.dataset import DatasetError
from cadenza.train import TrainingError, train

MODEL = ModelConfig(n_layer=2, d_model=32, n_head=4, d_ff=64, dropout=0.1, position="relative",
                    max_context=64)


def cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), context=32, batch_size=4, lr=3e-3,
                warmup_steps=5, max_steps=20, eval_every=10, log_every=5,
                augment=AugmentConfig())
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoints_are_self_describing(tiny_dataset, tmp_path):
    res = train(MODEL, cfg(tiny_dataset, tmp_path / "run"), quiet=True)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "last").iterdir()) == [
        "config.json", "metrics.json", "model.safetensors", "state.pt"]
    assert sorted(p.name for p in (run / "best").iterdir()) == [
        "config.json", "metrics.json", "model.safetensors"]
    assert (run / "metrics.csv").exists() and (run / "loss.png").exists()
    config = json.loads((run / "best" / "config.json").read_text())
    assert {"format_version", "model", "train", "tokenizer", "data"} <= set(config)
    assert config["tokenizer"]["name"] == "performance" and len(config["tokenizer"]["vocab"]) == 391
    ck = load_checkpoint(run / "best")
    assert ck.metrics["best_val_nll"] == pytest.approx(res.best_val_nll)
    assert not any(k.startswith("_orig_mod") for k in load_file(run / "best" / "model.safetensors"))


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_continues_exactly(tiny_dataset, tmp_path, ema):
    straight = tmp_path / "straight"
    train(MODEL, cfg(tiny_dataset, straight, max_steps=16, eval_every=4, ema=ema), quiet=True)
    halves = tmp_path / "halves"
    train(MODEL, cfg(tiny_dataset, halves, max_steps=16, eval_every=4, ema=ema), stop_at=6,
          quiet=True)
    assert json.loads((halves / "last" / "metrics.json").read_text())["step"] == 6
    train(MODEL, cfg(tiny_dataset, halves, max_steps=16, eval_every=4, ema=ema, resume=True),
          quiet=True)
    a = load_file(straight / "last" / "model.safetensors")
    b = load_file(halves / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if ema:  # the raw weights resumed too, and they are not the saved average
        ra = torch.load(straight / "last" / "state.pt", weights_only=False)["raw_model"]
        rb = torch.load(halves / "last" / "state.pt", weights_only=False)["raw_model"]
        assert all(torch.equal(ra[k], rb[k]) for k in ra)
        assert not torch.equal(ra["tok.weight"], a["tok.weight"])


def test_ema_weights_are_what_is_evaluated_and_saved(tiny_dataset, tmp_path):
    from cadenza.evaluate import evaluate
    train(MODEL, cfg(tiny_dataset, tmp_path / "r", max_steps=12, eval_every=12, ema=0.8),
          quiet=True)
    saved = json.loads((tmp_path / "r" / "last" / "metrics.json").read_text())["val_nll"]
    again = evaluate(tmp_path / "r" / "last", tiny_dataset, "valid", precision="fp32").nll
    assert again == pytest.approx(saved, rel=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import cadenza.train as tr
    real = tr.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setattr(tr.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match="loss is nan"):
        train(MODEL, cfg(tiny_dataset, tmp_path / "run"), quiet=True)
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert ck.metrics["step"] == 10


KILL_SCRIPT = r"""
import sys, time
import cadenza.checkpoint as c
from cadenza.train import train
from tests.test_train import MODEL, cfg
real = c.save_file
n = {"saves": 0}
def slow(weights, path, *a, **k):
    real(weights, path, *a, **k)
    n["saves"] += ".last.tmp" in path
    if n["saves"] >= 2:  # the second save of last/: weights written, then "killed"
        print("SAVING", flush=True)
        time.sleep(60)
c.save_file = slow
train(MODEL, cfg(sys.argv[1], sys.argv[2], max_steps=40, eval_every=5), quiet=True)
"""


def test_a_kill_mid_save_leaves_a_loadable_last(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_dataset), str(run)],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert "SAVING" in line
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(30)
    ck = load_checkpoint(run / "last")
    assert ck.metrics["step"] == 5


def test_bad_data_and_context_are_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        train(MODEL, cfg(tmp_path / "missing", tmp_path / "r"), quiet=True)
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetError, match="manifest.json"):
        train(MODEL, cfg(tmp_path / "half", tmp_path / "r"), quiet=True)
    learned = MODEL.replace(position="learned", max_context=16)
    with pytest.raises(ConfigError, match="--context"):
        train(learned, cfg(tiny_dataset, tmp_path / "r"), quiet=True)
    with pytest.raises(ConfigError, match="--dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="--max-steps"):
        TrainConfig(max_steps=0, minutes=0)


DDP_SCRIPT = r"""
import sys

import numpy as np
from cadenza.train import train
from tests.test_train import MODEL, cfg
train(MODEL.replace(dropout=0.0), cfg(sys.argv[1], sys.argv[2], max_steps=12, eval_every=100,
      log_every=1, batch_size=4), quiet=True)
"""


def _losses(run: Path) -> list[float]:
    import csv
    return [float(r["train_loss"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def test_step_positions_take_the_step_token_from_the_tokenizer(tiny_dataset, midi_folder,
                                                              tmp_path):
    from cadenza.config import PrepareConfig
    from cadenza.data.prepare import prepare
    from cadenza.data.tokenizers import build_tokenizer
    steps = MODEL.replace(position="rope", step_positions=True)
    with pytest.raises(ConfigError, match="--step-positions: tokenizer performance"):
        train(steps, cfg(tiny_dataset, tmp_path / "a", max_steps=2), quiet=True)
    roll = tmp_path / "roll"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(roll), tokenizer="pianoroll"),
            progress=False)
    train(steps, cfg(roll, tmp_path / "b", max_steps=2), quiet=True)
    model = load_checkpoint(tmp_path / "b" / "best").model_cfg
    assert model.step_token == build_tokenizer("pianoroll").step_token


def test_pitch_dims_take_the_pitch_table_from_the_tokenizer(tiny_dataset, tmp_path):
    from cadenza.data.tokenizers import build_tokenizer
    pitched = MODEL.replace(position="rope", pitch_dims=4)
    train(pitched, cfg(tiny_dataset, tmp_path / "a", max_steps=2), quiet=True)
    ck = load_checkpoint(tmp_path / "a" / "best")  # the model refuses to build without it
    assert ck.model_cfg.pitch_of == tuple(build_tokenizer("performance").pitch_table())


def test_two_process_ddp_matches_one_process(tiny_dataset, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-c", DDP_SCRIPT, str(tiny_dataset), str(one)], env=env,
                   check=True, timeout=300)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-port", "29517", str(script), str(tiny_dataset), str(two)],
                   env=env, check=True, timeout=300, capture_output=True)
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


def test_a_time_budget_is_spent_when_the_first_steps_are_slow(tiny_dataset, tmp_path,
                                                                monkeypatch, capsys):
    """Another program slows the first steps (0.25 s each, then ~10 ms): the run must still
    train for its whole budget at the faster pace, and say that the pace changed. Before,
    the horizon was fixed from steps 3-8 and the run stopped after a fraction of it."""
    from cadenza.data.dataset import WindowSampler
    real, calls = WindowSampler.next_batch, {"n": 0}

    def slow_at_first(self):
        calls["n"] += 1
        if calls["n"] <= 12:
            time.sleep(0.25)
        return real(self)

    monkeypatch.setattr(WindowSampler, "next_batch", slow_at_first)
    budget = 8.0
    res = train(MODEL, cfg(tiny_dataset, tmp_path / "run", max_steps=0, minutes=budget / 60,
                           eval_every=10_000, log_every=50), quiet=False)
    out = capsys.readouterr().out
    assert res.elapsed >= 0.95 * budget, res
    assert res.step > 12 + 2 * (budget - 3) / 0.25  # far more than the slow pace allows
    assert "time budget reached" in out and "pace changed" in out


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_named(tiny_dataset, tmp_path, capsys,
                                                        monkeypatch):
    import cadenza.train as tr
    from cadenza.evaluate import slow_bf16
    assert not slow_bf16(torch.device("cuda"))  # only a CPU emulates it
    for slow in (True, False):
        monkeypatch.setattr(tr, "slow_bf16", lambda dev, s=slow: s)
        train(MODEL, cfg(tiny_dataset, tmp_path / f"b{slow}", max_steps=1,
                          precision="bf16"))
        said = "this CPU has no bf16 arithmetic" in capsys.readouterr().out
        assert said == slow


def test_eval_tokens_scores_the_same_spread_subset_every_time():
    from cadenza.train import eval_subset
    pieces = [np.arange(n) for n in (5000, 300, 9000, 4000, 7000, 2000, 6000, 100)]
    assert eval_subset(pieces, None, 0, 512)[0] is pieces  # 0: all
    assert eval_subset(pieces, None, 10**6, 512)[0] is pieces  # within the budget: all
    sub, _ = eval_subset(pieces, None, 8192, 512)
    assert len(sub) == 8 and all(len(p) <= 1024 for p in sub)  # every piece, 2 x context
    assert [len(p) for p in sub] == [min(len(p), 1024) for p in pieces]
    sub, _ = eval_subset(pieces, None, 3000, 512)  # fewer pieces, spread over the split
    assert [int(p[-1]) for p in sub] == [1023, 99]  # the first and the last piece
    assert sub[0] is not None and np.array_equal(sub[0], pieces[0][:1024])
    again, _ = eval_subset(pieces, None, 3000, 512)
    assert all(np.array_equal(a, b) for a, b in zip(sub, again))
    pairs, sources = eval_subset(pieces, list(pieces), 20000, 512)  # pairs stay whole
    assert sources is not None and all(len(p) == len(s) for p, s in zip(pairs, sources))
    assert len(pairs) == 2 and [len(p) for p in pairs] == [5000, 100]
