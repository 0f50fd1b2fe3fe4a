"""Never lose a user's work, and never do something other than what was asked: runs,
datasets and takes are refused or replaced only on request, locked while in use, and
written as whole units; flags that cannot apply say so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cadenza.config import AugmentConfig, ConfigError, ModelConfig, PrepareConfig, TrainConfig
from cadenza.data.prepare import PrepareError, prepare
from cadenza.generate import GenerateConfig, SampleConfig, run_generate
from cadenza.train import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                    max_context=64)


def tcfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), context=32, batch_size=4, lr=3e-3,
                warmup_steps=2, max_steps=6, eval_every=3, log_every=3, augment=AugmentConfig())
    return TrainConfig(**{**base, **kw})


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cadenza", *map(str, args)],
                          capture_output=True, text=True, **kw)


def test_a_run_is_continued_only_with_resume_and_replaced_only_with_force(tiny_dataset,
                                                                           tmp_path):
    run = tmp_path / "run"
    train(MODEL, tcfg(tiny_dataset, run), quiet=True)
    before = (run / "best" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run.*--resume.*--force"):
        train(MODEL, tcfg(tiny_dataset, run, seed=1, lr=1e-2), quiet=True)
    assert (run / "best" / "model.safetensors").read_bytes() == before
    r = cli("train", "--data", tiny_dataset, "--out", run, "--preset", "debug",
            "--max-steps", 2)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--resume" in r.stderr
    train(MODEL, tcfg(tiny_dataset, run, seed=1, max_steps=3, force=True), quiet=True)
    assert json.loads((run / "last" / "metrics.json").read_text())["step"] == 3
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3"]  # the old run's rows are gone
    with pytest.raises(ConfigError, match="--force"):
        tcfg(tiny_dataset, run, resume=True, force=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        train(MODEL, tcfg(tiny_dataset, blocker), quiet=True)


def test_a_second_train_into_a_run_in_use_stops_naming_the_holder(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "cadenza", "train", "--data",
                              str(tiny_dataset), "--out", str(run), "--preset", "debug",
                              "--minutes", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for _ in range(200):  # until the first holds the lock
            if (run / ".lock").exists() and (run / ".lock").read_text().strip():
                break
            time.sleep(0.1)
        r = cli("train", "--data", tiny_dataset, "--out", run, "--preset", "debug",
                "--minutes", 1, "--force", env=env)
        assert r.returncode == 2, r.stderr
        assert f"PID {first.pid}" in r.stderr and r.stderr.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # the kernel released the dead holder's lock: the run can be taken over at once
    train(MODEL, tcfg(tiny_dataset, run, force=True), quiet=True)


def test_resume_refuses_changed_settings_and_applies_the_budget(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(MODEL, tcfg(tiny_dataset, run, max_steps=8, eval_every=4), stop_at=4, quiet=True)
    with pytest.raises(TrainingError, match=r"--d-model 64 \(the run has 32\).*--lr"):
        train(MODEL.replace(d_model=64), tcfg(tiny_dataset, run, max_steps=8, eval_every=4,
                                              lr=1e-2, resume=True), quiet=True)
    r = cli("train", "--data", tiny_dataset, "--out", run, "--resume", "--d-model", 64)
    assert r.returncode == 2 and "--d-model 64 (the run has 32)" in r.stderr
    # the run's own settings come back from its checkpoint; the budget may change
    r = cli("train", "--data", tiny_dataset, "--out", run, "--resume", "--max-steps", 10)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "last" / "metrics.json").read_text())["step"] == 10
    steps = [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int)  # no step logged twice after the resume


def test_prepare_refuses_to_replace_a_dataset_unless_asked(midi_folder, tmp_path):
    out = tmp_path / "ds"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(out)), progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(PrepareError, match="already holds a dataset.*--force"):
        prepare(PrepareConfig(sources=(str(midi_folder),), out=str(out),
                              tokenizer="pianoroll"), progress=False)
    assert (out / "manifest.json").read_bytes() == before
    res = prepare(PrepareConfig(sources=(str(midi_folder),), out=str(out),
                                tokenizer="pianoroll", force=True), progress=False)
    assert res.manifest["tokenizer"]["name"] == "pianoroll"


def test_prepare_checks_its_output_before_tokenizing(midi_folder, tmp_path, monkeypatch):
    import cadenza.data.prepare as prep
    calls = []
    monkeypatch.setattr(prep, "expand_sources", lambda *a, **k: calls.append(1) or ([], {}))
    blocker = tmp_path / "a-file"  # no folder can be made under a file, even by root
    blocker.write_text("x")
    out = blocker / "ds"
    with pytest.raises(PrepareError, match=f"--out {out}: cannot write there"):
        prepare(PrepareConfig(sources=(str(midi_folder),), out=str(out)), progress=False)
    assert not calls  # refused before reading a single source
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def run_dir(tiny_dataset, tmp_path):
    train(MODEL, tcfg(tiny_dataset, tmp_path / "run"), quiet=True)
    return tmp_path / "run"


def test_a_new_take_never_mixes_with_an_earlier_one(run_dir, tmp_path):
    out = tmp_path / "gen"
    run_generate(GenerateConfig(out=str(out),
                                checkpoint=str(run_dir / "best"),
                                sample=SampleConfig(tokens=30, num_samples=2),
                                audio=False))
    first = (out / "sample-0.mid").read_bytes()
    with pytest.raises(FileExistsError, match="earlier take.*--force"):
        run_generate(GenerateConfig(out=str(out),
                                    checkpoint=str(run_dir / "best"),
                                    sample=SampleConfig(tokens=40, seed=5),
                                    audio=False))
    assert (out / "sample-0.mid").read_bytes() == first
    run_generate(GenerateConfig(out=str(out),
                                checkpoint=str(run_dir / "best"),
                                sample=SampleConfig(tokens=40, seed=5),
                                audio=False,
                                force=True))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["sample-0.json", "sample-0.mid", "sample-0.png"]  # no sample-1.* left
    assert json.loads((out / "sample-0.json").read_text())["settings"]["seed"] == 5


def test_a_failed_take_leaves_no_sample_and_no_temp_files(run_dir, tmp_path, monkeypatch):
    import cadenza.render as render  # where a take's picture is drawn (render.Roll.draw)
    out = tmp_path / "gen"
    out.mkdir()
    stale = out / ".cadenza-take-999999999-x"  # left by a generate killed earlier
    stale.mkdir()
    (stale / "sample-0.wav").write_bytes(b"half")
    real, n = render.piano_roll_png, {"calls": 0}

    def fails_on_the_second(*a, **k):
        n["calls"] += 1
        if n["calls"] == 2:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(render, "piano_roll_png", fails_on_the_second)
    with pytest.raises(RuntimeError, match="disk full"):
        run_generate(GenerateConfig(out=str(out),
                                    checkpoint=str(run_dir / "best"),
                                    sample=SampleConfig(tokens=30, num_samples=2),
                                    audio=False))
    assert list(out.iterdir()) == []  # neither sample-0 alone nor any temporary folder


DIES_WITH_PARENT = r"""
import subprocess, sys
from cadenza.render import _die_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=_die_with_parent)
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_a_renderer_dies_with_its_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", DIES_WITH_PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    for _ in range(50):
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break  # a zombie: dead, waiting for init to reap it
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the renderer outlived its parent")


@pytest.mark.slow
def test_kill_torture_resume_equals_an_uninterrupted_run(tiny_dataset, tmp_path):
    """SIGKILL a small fp32 CPU training at 20 random moments (during steps, evaluations and
    saves), resume after each; the final weights equal an uninterrupted run's, bit for bit."""
    import random
    args = ["--data", str(tiny_dataset), "--preset", "debug", "--d-model", "32",
            "--n-layer", "1", "--n-head", "2", "--d-ff", "64", "--context", "32",
            "--batch-size", "4", "--max-steps", "120", "--eval-every", "7",
            "--log-every", "5", "--precision", "fp32", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "straight"
    t0 = time.perf_counter()
    r = cli("train", *args, "--out", straight, env=env)
    assert r.returncode == 0, r.stderr
    duration = time.perf_counter() - t0
    rng = random.Random(0)
    run = tmp_path / "killed"
    kills = 0
    while kills < 20:
        resume = ["--resume"] if (run / "last").exists() or (run / ".last.old").exists() else []
        p = subprocess.Popen([sys.executable, "-m", "cadenza", "train", *args, "--out",
                              str(run), *resume], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            # at most 0.6 of a whole run's time: a resumed run, with fewer steps left,
            # would otherwise often finish before its kill (fewer than 10 kills in all)
            p.wait(rng.uniform(0.5, 0.6 * duration))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            kills += 1
            continue
        assert p.returncode == 0, p.stderr.read()
        if json.loads((run / "last" / "metrics.json").read_text())["step"] == 120:
            break
    final = subprocess.run([sys.executable, "-m", "cadenza", "train", *args, "--out",
                            str(run), "--resume"], env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    a = load_file(straight / "last" / "model.safetensors")
    b = load_file(run / "last" / "model.safetensors")
    assert kills >= 10 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert r.stderr.startswith("cadenza: error:") and r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_each_bad_input_is_one_clear_line(run_dir, tiny_dataset, midi_folder, tmp_path):
    import shutil
    ck = run_dir / "best"
    _one_line_error(cli("generate", "--checkpoint", ck, "--out", tmp_path / "g", "--primer",
                        midi_folder), "is a folder")
    for size in (0, 10):  # an empty and a truncated weights file
        bad = tmp_path / f"bad{size}"
        shutil.copytree(ck, bad)
        with open(bad / "model.safetensors", "r+b") as f:
            f.truncate(size)
        _one_line_error(cli("generate", "--checkpoint", bad, "--out", tmp_path / "g"),
                        "model.safetensors: damaged or truncated weights")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(cli("train", "--data", tiny_dataset, "--out", blocker), "is a file")
    if not torch.cuda.is_available():
        for cmd in (["train", "--data", tiny_dataset, "--out", tmp_path / "r"],
                    ["generate", "--checkpoint", ck, "--out", tmp_path / "g"],
                    ["evaluate", "--checkpoint", ck, "--data", tiny_dataset]):
            _one_line_error(cli(*cmd, "--device", "cuda"), "--device cuda: this PyTorch")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mid").write_text("not midi")
    (junk / "b.mid").write_bytes(b"")
    _one_line_error(cli("stats", junk, "--reference", tiny_dataset),
                    "none of its 2 MIDI files could be read")
    _one_line_error(cli("evaluate", "--checkpoint", ck, "--data", tmp_path / "nope"),
                    "nope: no such file or folder")
    _one_line_error(cli("evaluate", "--checkpoint", ck, "--data", junk),
                    "no MIDI file could be scored")
    _one_line_error(cli("report", junk), "not a Cadenza run")
    for flag in ("--seconds", "--tokens"):
        _one_line_error(cli("generate", "--checkpoint", ck, "--out", tmp_path / "g", flag, 0),
                        f"{flag}: must be in (0, ")
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
    r = cli("evaluate", "--checkpoint", ck, "--data", tiny_dataset, "--split", "test")
    assert r.returncode == 0 and r.stdout.startswith("test split: NLL"), r.stdout


def test_help_shows_every_default_an_example_and_the_version():
    import re

    from cadenza.cli import EXAMPLES, build_parser
    r = cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"cadenza \d+\.\d+\.\d+\n", r.stdout)
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert f"example:\n  {EXAMPLES[name]}" in text
        flat = " ".join(text.split())
        for action in p._actions:
            if action.option_strings and action.dest != "help" and not (
                    action.default is None or action.default is False):
                assert f"(default: {action.default})" in flat, (name, action.dest)
    train_help = sub.choices["train"].format_help()
    assert "(default: 512 in the small preset)" in " ".join(train_help.split())


def test_short_runs_still_log_evaluate_and_plot(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(MODEL, tcfg(tiny_dataset, run, max_steps=3, log_every=20, eval_every=50,
                      warmup_steps=100), quiet=False)
    out = capsys.readouterr().out
    assert "note: 3 steps to go is fewer than --log-every 20, --eval-every 50" in out
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[-1].startswith("3,") and rows[-1].split(",")[2]  # the final validation
    assert (run / "loss.png").exists()
    # a run's progress lines say '-' before its first validation, never 'nan'
    run2 = tmp_path / "run2"
    train(MODEL, tcfg(tiny_dataset, run2, max_steps=8, eval_every=4, log_every=1),
          stop_at=5, quiet=False)
    out = capsys.readouterr().out
    assert "val nan" not in out and "| val - |" in out
    saved = json.loads((run2 / "last" / "metrics.json").read_text())["val_nll"]
    train(MODEL, tcfg(tiny_dataset, run2, max_steps=8, eval_every=4, log_every=1,
                      resume=True), quiet=False)
    first = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("step"))
    assert f"| val {saved:.4f} |" in first  # the checkpoint's validation, after resume


def test_datasets_and_checkpoints_get_the_users_permissions(midi_folder, tmp_path):
    old = os.umask(0o022)
    try:
        ds = tmp_path / "ds"
        prepare(PrepareConfig(sources=(str(midi_folder),), out=str(ds)), progress=False)
        train(MODEL, tcfg(ds, tmp_path / "run", max_steps=2, eval_every=2), quiet=True)
    finally:
        os.umask(old)
    for d in (ds, tmp_path / "run" / "best", tmp_path / "run" / "last"):
        assert d.stat().st_mode & 0o777 == 0o755, (d, oct(d.stat().st_mode))
    for f in (ds / "manifest.json", tmp_path / "run" / "best" / "model.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o644, (f, oct(f.stat().st_mode))


def test_multitrack_files_say_what_was_merged_and_left_out(tmp_path):
    import symusic
    d = tmp_path / "multi"
    d.mkdir()
    for i in range(4):
        s = symusic.Score(480)
        for program, drum, pitches in ((0, False, [60, 64]), (1, False, [48]),
                                       (40, False, [72 + i]), (0, True, [36, 38, 42])):
            tr = symusic.Track(program=program, is_drum=drum)
            for k, p in enumerate(pitches * 4):
                tr.notes.append(symusic.Note(k * 240, 240, p, 80))
            s.tracks.append(tr)
        s.dump_midi(str(d / f"song{i}.mid"))
    res = prepare(PrepareConfig(sources=(str(d),), out=str(tmp_path / "all")), progress=False)
    rec = res.manifest["files"][0]
    assert rec["tracks"] == 3 and rec["drum_notes_dropped"] == 12
    assert rec["other_notes_dropped"] == 0
    assert "4 files had several tracks merged" in res.summary()
    assert "48 drum notes" in res.summary()
    res = prepare(PrepareConfig(sources=(str(d),), out=str(tmp_path / "piano"),
                                programs="piano"), progress=False)
    rec = res.manifest["files"][0]
    assert rec["tracks"] == 2 and rec["other_notes_dropped"] == 4
    assert res.manifest["programs"] == "piano"
    r = cli("prepare", d, "--out", tmp_path / "x", "--programs", "strings")
    assert r.returncode == 2 and "--programs" in r.stderr


def test_stats_compares_with_the_training_music_and_says_so(run_dir, tiny_dataset, tmp_path):
    out = tmp_path / "gen"
    run_generate(GenerateConfig(out=str(out),
                                checkpoint=str(run_dir / "best"),
                                sample=SampleConfig(tokens=40, num_samples=2),
                                audio=False))
    r = cli("stats", out, "--reference", tiny_dataset)
    assert r.returncode == 0, r.stderr
    n_train = json.loads((tiny_dataset / "manifest.json").read_text())["splits"]["train"]
    assert f"{n_train['pieces']} reference pieces (the dataset's train split)" in r.stdout
    _one_line_error(cli("stats", out, "--reference", tiny_dataset, "--split", "test"),
                    "too few to estimate a distribution")


def test_a_corpus_fact_is_one_plain_line_not_a_warning(tmp_path, monkeypatch, capsys,
                                                         recwarn):
    import cadenza.data.corpus as corpus
    root = tmp_path / "m21"
    root.mkdir()
    (root / "broken.krn").write_text("not a score")
    monkeypatch.setattr(corpus, "_music21_root", lambda: root)
    monkeypatch.setattr(corpus, "corpus_files", lambda name: [root / "broken.krn"])
    corpus.build_corpus("chorales")
    out = capsys.readouterr().out
    assert "note: builtin:chorales: 1 of 1 scores could not be read" in out
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
