"""``prepare``: splits by piece without leaks, deterministic output, bad input handling."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from cadenza.config import AugmentConfig, PrepareConfig
from cadenza.data.dataset import BatchPlan, Prefetcher, TokenDataset, WindowSampler
from cadenza.data.prepare import PrepareError, prepare
from cadenza.data.sources import SourceError
from tests.conftest import bench_file, make_score, scale


def run(sources, out, **kw):
    return prepare(PrepareConfig(sources=tuple(map(str, sources)), out=str(out), **kw),
                   progress=False)


def test_prepare_folder_splits_by_piece_and_writes_manifest(midi_folder, tmp_path):
    res = run([midi_folder], tmp_path / "ds", valid_frac=0.2, test_frac=0.1)
    m = res.manifest
    assert m["totals"]["pieces"] == 12 and not m["skipped"]
    assert set(m["splits"]) == {"train", "valid", "test"}
    by_split = {}
    for f in m["files"]:
        by_split.setdefault(f["split"], set()).add(f["music_sha1"])
    assert not (by_split["train"] & by_split["valid"]) and not (by_split["train"]
                                                                & by_split["test"])
    assert any(f["path"].endswith("piece05.MID") for f in m["files"])  # any-case suffix
    ds = TokenDataset(tmp_path / "ds")
    for split, info in m["splits"].items():
        tokens, off = ds.split(split)
        assert tokens.dtype == np.uint16 and len(tokens) == info["tokens"] == off[-1]
        pieces = ds.pieces(split)
        assert all(p[0] == 1 and p[-1] == 2 for p in pieces)  # BOS ... EOS


def test_prepare_is_deterministic_and_workers_agree(midi_folder, tmp_path):
    run([midi_folder], tmp_path / "a")
    run([midi_folder], tmp_path / "b", workers=2)
    run([midi_folder], tmp_path / "a", force=True)  # again, replacing the dataset
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_duplicate_files_are_kept_once(midi_folder, tmp_path):
    (midi_folder / "copy.mid").write_bytes((midi_folder / "piece01.mid").read_bytes())
    res = run([midi_folder], tmp_path / "ds")
    assert len(res.skipped) == 1 and res.skipped[0]["reason"].startswith("duplicate of ")
    assert res.manifest["totals"]["pieces"] == 12


def test_copies_with_other_bytes_are_the_same_music(midi_folder, tmp_path):
    """Copies whose bytes differ (another track name; another tick resolution and tempo
    with the same sounding times) are duplicates of the original, kept once, whatever the
    file's name. By the file's SHA-1 they were new pieces, free to land in another split
    with identical tokens."""
    import symusic
    originals = sorted(midi_folder.glob("*.mid"))
    for i, f in enumerate(originals):
        score = symusic.Score(str(f))
        score.tracks[0].name = f"renamed {i}"
        score.dump_midi(str(midi_folder / f"zz-renamed-{i}.mid"))
        # the same seconds at 60 bpm and 960 ticks a quarter: other bytes, same music
        make_score([(n.start, n.end, n.pitch, n.velocity) for n in score.to("second")
                    .tracks[0].notes], tempo=60.0, tpq=960
                   ).dump_midi(str(midi_folder / f"zz-retimed-{i}.mid"))
    res = run([midi_folder], tmp_path / "ds", valid_frac=0.3, test_frac=0.3)
    m = res.manifest
    assert m["totals"]["pieces"] == 12, [f["path"] for f in m["files"]]
    assert len(res.skipped) == 2 * len(originals)
    assert all(s["reason"].startswith("duplicate of ") for s in res.skipped)
    ds = TokenDataset(tmp_path / "ds")
    seqs = {split: {p.tobytes() for p in ds.pieces(split)} for split in ds.splits}
    assert not (seqs["train"] & (seqs["valid"] | seqs["test"]))


def _bad_files(d):
    good = d / "good.mid"
    make_score(scale()).dump_midi(str(good))
    raw = good.read_bytes()
    (d / "text.mid").write_text("this is not a MIDI file\n")
    (d / "empty.mid").write_bytes(b"")
    (d / "truncated.mid").write_bytes(raw[: len(raw) // 2])
    make_score(scale(), drums=True).dump_midi(str(d / "drums.mid"))
    make_score([]).dump_midi(str(d / "noteless.mid"))
    make_score(scale(), tempo=3000).dump_midi(str(d / "fast.mid"))
    (d / "ticks.mid").write_bytes(raw[:12] + b"\x00\x00" + raw[14:])  # 0 ticks per quarter
    return {"text.mid": "not a MIDI file", "empty.mid": "empty file",
            "truncated.mid": "corrupt or truncated", "drums.mid": "drum-only",
            "noteless.mid": "no notes", "fast.mid": "absurd tempo",
            "ticks.mid": "absurd tick resolution"}


def test_each_bad_input_is_skipped_with_its_reason(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    expected = _bad_files(d)
    big = d / "big.mid"
    big.write_bytes(b"MThd" + b"\x00" * 3_000_000)
    expected["big.mid"] = "file too large"
    res = run([d], tmp_path / "ds", max_file_mb=1.0)
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in res.skipped}
    for name, why in expected.items():
        assert why in reasons.get(name, ""), (name, reasons.get(name))
    assert res.manifest["totals"]["pieces"] == 1
    assert "skipped 8 files" in res.summary()


def test_strict_stops_at_the_first_bad_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    _bad_files(d)
    with pytest.raises(PrepareError, match="not a MIDI file|empty file|corrupt|drum|tempo"):
        run([d], tmp_path / "ds", strict=True)
    assert not (tmp_path / "ds").exists()


def test_missing_and_empty_sources_fail_clearly(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        run([tmp_path / "nope"], tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no .mid or .midi files"):
        run([tmp_path / "empty"], tmp_path / "ds")


def test_cli_errors_exit_nonzero_with_one_line(tmp_path, midi_folder):
    cmd = [sys.executable, "-m", "cadenza", "prepare"]
    r = subprocess.run(cmd + [str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "nope: no such file" in r.stderr
    r = subprocess.run(cmd + [str(midi_folder), "--out", str(tmp_path / "o"), "--tokenizer",
                              "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "performance" in r.stderr and "chorale16" in r.stderr


def test_a_crash_leaves_no_dataset_and_keeps_the_old_one(midi_folder, tmp_path, monkeypatch):
    run([midi_folder], tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.json").read_bytes()
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr("cadenza.data.prepare.np.save", failing_save)
    with pytest.raises(OSError):
        run([midi_folder], tmp_path / "ds", valid_frac=0.3, force=True)
    assert (tmp_path / "ds" / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(midi_folder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(PrepareError, match="refusing"):
        run([midi_folder], tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_sampler_reads_train_only_and_augments_only_there(tiny_dataset):
    ds = TokenDataset(tiny_dataset)
    train = ds.pieces("train")
    valid_before = (tiny_dataset / "valid.tokens.npy").read_bytes()
    plain = WindowSampler(ds, BatchPlan(32, 8, None, seed=0))
    joined = [p.tobytes() for p in train]
    for _ in range(5):
        x, y, n = plain.next_batch()
        for row in x["idx"].numpy():
            assert any(row.astype(np.int64).tobytes() in j for j in joined)
    aug = WindowSampler(ds, BatchPlan(32, 8, AugmentConfig(), seed=0))
    for _ in range(5):
        aug.next_batch()
    assert (tiny_dataset / "valid.tokens.npy").read_bytes() == valid_before


def test_sampler_state_round_trip(tiny_dataset):
    ds = TokenDataset(tiny_dataset)
    a = WindowSampler(ds, BatchPlan(32, 4, AugmentConfig(), seed=3))
    a.next_batch()
    state = a.state_dict()
    x1 = a.next_batch()[0]["idx"]
    b = WindowSampler(ds, BatchPlan(32, 4, AugmentConfig(), seed=99))
    b.load_state_dict(state)
    assert np.array_equal(b.next_batch()[0]["idx"], x1)


def test_jsb16_json_keeps_its_splits(tmp_path):
    res = run([bench_file("jsb16/jsb16_separated.trainvalid.json")], tmp_path / "ds",
              tokenizer="chorale16")
    assert res.manifest["splits"]["train"]["pieces"] == 229
    assert res.manifest["splits"]["valid"]["pieces"] == 76


def test_boulanger_mat_keeps_its_splits(tmp_path):
    res = run([bench_file("boulanger/JSB_Chorales.trainvalid.mat")], tmp_path / "ds",
              tokenizer="pianoroll")
    assert set(res.manifest["splits"]) == {"train", "valid"}
    assert res.manifest["tokenizer"]["config"]["step_seconds"] == 0.5  # quarter notes


def test_full_files_with_a_test_split(tmp_path):
    """The original files carry a test split; it is prepared too (synthetic stand-ins)."""
    rng = np.random.default_rng(0)
    steps = lambda n: [[int(p) for p in rng.integers(40, 80, 4)] for _ in range(n)]  # noqa
    js = tmp_path / "Jsb16thSeparated.json"
    js.write_text(json.dumps({"train": [steps(20)] * 3, "valid": [steps(16)],
                              "test": [steps(12), steps(8)]}))
    res = run([js], tmp_path / "a", tokenizer="chorale16")
    assert res.manifest["splits"]["test"]["pieces"] == 2
    pk = tmp_path / "Nottingham.pickle"
    frames = lambda n: [sorted(rng.choice(range(40, 80), 3, replace=False).tolist())  # noqa
                        for _ in range(n)]
    pk.write_bytes(pickle.dumps({"train": [frames(30)], "valid": [frames(20)],
                                 "test": [frames(10)]}))
    res = run([pk], tmp_path / "b", tokenizer="pianoroll")
    assert res.manifest["splits"]["test"]["tokens"] == 10 * 4 + 2


def _mixed_lengths_dataset(tmp_path, steps=(10, 75, 400, 33)):
    """chorale16 pieces of 10..400 steps (42..1,602 tokens with BOS and EOS)."""
    rng = np.random.default_rng(0)
    grids = [rng.integers(40, 80, (n, 4)).tolist() for n in steps]
    src = tmp_path / "mixed.json"
    src.write_text(json.dumps({"train": grids, "valid": grids[:1]}))
    run([src], tmp_path / "ds", tokenizer="chorale16")
    return TokenDataset(tmp_path / "ds")


@pytest.mark.parametrize("period", [1, 4])
def test_every_token_is_about_equally_likely_to_be_a_target(tmp_path, period):
    """Over pieces much shorter and much longer than the window, each target position's
    chance of being trained on is flat within 2x (the pieces' edges get up to twice the
    middle's share). Before, a piece shorter than the window got one draw for all its
    tokens: 1/300 of a long piece's per-token rate."""
    ds = _mixed_lengths_dataset(tmp_path)
    T = 128
    s = WindowSampler(ds, BatchPlan(T, 1, None, seed=0, period=period))
    piece, start = s.draw(100_000)
    counts = [np.zeros(n, np.int64) for n in s.lengths]
    for i, L in enumerate(s.lengths):
        sel = start[piece == i]
        assert np.all(sel % period == 0)
        # a window from a covers targets a+1 .. min(a+T, L-1): a difference array
        diff = np.zeros(L + 1, np.int64)
        np.add.at(diff, sel + 1, 1)
        np.add.at(diff, np.minimum(sel + T, L - 1) + 1, -1)
        counts[i] = np.cumsum(diff)[1:L]  # targets 1 .. L-1 (EOS is the last)
    rate = np.concatenate(counts) / 100_000
    assert rate.min() > 0 and rate.max() / rate.min() < 2.2, (rate.min(), rate.max())
    means = [c.mean() for c in counts]
    assert max(means) / min(means) < 2.0


def test_eos_is_a_training_target_with_a_voice_period(tmp_path):
    ds = _mixed_lengths_dataset(tmp_path)
    s = WindowSampler(ds, BatchPlan(128, 16, None, seed=0, period=4))
    eos = sum(int((s.next_batch()[1] == 2).sum()) for _ in range(50))
    # one piece end per ~(L + T) / 4 draws of the longest piece: dozens in 800 windows
    assert eos > 20


def test_prefetched_batches_are_the_samplers_own_and_resume_exactly(tiny_dataset):
    """A background thread draws ahead, yet hands out the sampler's stream batch for batch,
    and its state is that after the batches handed out, not after those drawn ahead."""
    ds = TokenDataset(tiny_dataset)

    def batches(s, n):
        return [s.next_batch() for _ in range(n)]

    bare = WindowSampler(ds, BatchPlan(32, 4, AugmentConfig(), seed=7))
    want = batches(bare, 9)
    ahead = Prefetcher(WindowSampler(ds, BatchPlan(32, 4, AugmentConfig(), seed=7)), depth=3)
    got = batches(ahead, 4)
    state = ahead.state_dict()
    got += batches(ahead, 5)
    ahead.close()
    for (x, y, n), (gx, gy, gn) in zip(want, got):
        assert torch.equal(x["idx"], gx["idx"]) and torch.equal(y, gy) and n == gn
    again = Prefetcher(WindowSampler(ds, BatchPlan(32, 4, AugmentConfig(), seed=99)))
    again.load_state_dict(state)  # as a resumed run: the 5th batch onwards
    for (x, y, _), (gx, gy, _) in zip(want[4:], batches(again, 5)):
        assert torch.equal(x["idx"], gx["idx"]) and torch.equal(y, gy)
    again.close()


def test_a_prefetching_samplers_error_reaches_the_training_loop(tiny_dataset):
    class Broken(WindowSampler):
        def next_batch(self):
            raise OSError("the disk went away")

    ahead = Prefetcher(Broken(TokenDataset(tiny_dataset), BatchPlan(32, 4, None, seed=0)))
    with pytest.raises(OSError, match="the disk went away"):
        ahead.next_batch()
    assert not ahead.thread.is_alive()
