"""bench, report and stats on tiny data."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from cadenza import bench
from cadenza.config import BenchConfig
from cadenza.data.midi import Notes
from cadenza.stats import NgramIndex, compare, memorization

FAST = dict(max_steps=2, eval_every=1, log_every=1, context=64, batch_size=2)


@pytest.mark.parametrize("position", ["relative", None])  # None: the recipe's rope
def test_bench_jsb16_prints_the_paper_table(tmp_path, capsys, position):
    rng = np.random.default_rng(0)
    steps = lambda n: rng.integers(50, 70, (n, 4)).tolist()  # noqa: E731
    f = tmp_path / "Jsb16thSeparated.json"
    f.write_text(json.dumps({"train": [steps(40) for _ in range(3)], "valid": [steps(30)],
                             "test": [steps(20)]}))
    r = bench.bench_jsb16(BenchConfig("jsb16", out=str(tmp_path / "b"), minutes=5, data=str(f),
                                      precision="fp32", position=position, members=1), **FAST)
    out = capsys.readouterr().out
    assert "0.335" in out
    assert f"Cadenza {position or 'rope'} + voice labels, averaged over 12 keys" in out
    assert r.own_key_valid.tokens == r.valid.tokens == 120
    assert r.valid.nll > 0 and r.test.tokens == 80


def test_bench_jsb16_ensemble_trains_members_at_once_and_scores_their_mixture(tmp_path,
                                                                             capsys):
    from cadenza.evaluate import evaluate
    rng = np.random.default_rng(0)
    steps = lambda n: rng.integers(50, 70, (n, 4)).tolist()  # noqa: E731
    f = tmp_path / "Jsb16thSeparated.json"
    f.write_text(json.dumps({"train": [steps(40) for _ in range(3)], "valid": [steps(30)]}))
    r = bench.bench_jsb16(BenchConfig("jsb16", out=str(tmp_path / "b"), minutes=5, data=str(f),
                                      precision="fp32", members=2, transpositions=1), **FAST)
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and "member 1 alone" in out
    runs = [tmp_path / "b" / f"run-{i}" for i in range(2)]
    assert all((d / "best" / "model.safetensors").exists() for d in runs)
    assert all("step" in (tmp_path / "b" / f"run-{i}.log").read_text() for i in range(2))
    cfgs = [json.loads((d / "best" / "config.json").read_text())["train"] for d in runs]
    assert [c["seed"] for c in cfgs] == [0, 1]
    members = [m.nll for m in r.members_valid]
    assert members[0] != members[1]
    assert r.valid.nll <= sum(members) / 2 + 1e-6
    direct = evaluate([d / "best" for d in runs], f, "valid")
    assert r.valid.nll == pytest.approx(direct.nll)
    assert r.test is None


def test_bench_pianoroll_reports_nll_per_frame(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = lambda n: [sorted(rng.choice(range(50, 70), 2, replace=False).tolist())  # noqa
                        for _ in range(n)]
    f = tmp_path / "JSB Chorales.pickle"
    f.write_bytes(pickle.dumps({"train": [frames(60)] * 2, "valid": [frames(30)],
                                "test": [frames(25)]}))
    r = bench.bench_pianoroll(BenchConfig("pianoroll", dataset="jsb", out=str(tmp_path / "b"),
                                          minutes=5, data=str(f), precision="fp32"), **FAST)
    assert "RNN-NADE" in capsys.readouterr().out
    assert r.test.frames == 25
    assert r.valid.frame_nll == pytest.approx(r.valid.nll * 90 / 30)


def test_bench_models_trains_all_four_at_matched_size(tiny_dataset, tmp_path):
    r = bench.bench_models(str(tiny_dataset), str(tmp_path / "m"), budgets=(5, 7),
                           precision="fp32", **FAST)
    assert list(r.rows) == ["5", "7"]
    sizes = {k: v.parameters for k, v in r.rows["7"].items()}
    assert set(sizes) == {"transformer", "rnn", "lstm", "gru"}
    t = sizes["transformer"]
    assert all(abs(s - t) / t < 0.15 for s in sizes.values()), sizes
    assert (tmp_path / "m" / "models.png").exists()
    assert r.windows > 0 and all(len(row.by_position) == 7  # positions 1, 2-3, ..., 64
                                 for row in r.rows["7"].values())
    assert "valid NLL by position" in bench.format_models(r)


def test_nll_by_position_is_each_positions_mean(tiny_run, tiny_dataset):
    from cadenza.checkpoint import load_checkpoint
    from cadenza.data.dataset import TokenDataset
    from cadenza.evaluate import nll_by_position
    m = load_checkpoint(tiny_run / "best").model.eval()
    pieces = TokenDataset(tiny_dataset).pieces("valid")
    got, n = nll_by_position(m, pieces, 32, stride=24, batch_size=3)
    rows = []
    for p in pieces:  # every full 33-token span at 0, 24, 48, ..., each read alone
        for s in range(0, len(p) - 32, 24):
            x = torch.tensor(p[s: s + 33])[None]
            lp = torch.log_softmax(m(x[:, :-1]), -1)[0]
            rows.append(-lp.gather(1, x[0, 1:, None])[:, 0].detach().numpy())
    assert n == len(rows) > 3
    np.testing.assert_allclose(got, np.mean(rows, 0), rtol=1e-5)
    b = bench.bucket_positions(np.arange(1, 33, dtype=float))
    assert b == [1.0, 2.5, 5.5, 11.5, 23.5, 32.0]


def test_missing_benchmark_data_says_where_to_get_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cadenza", "bench", "jsb16", "--benchmarks",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Jsb16thSeparated.json" in r.stderr


def test_report_is_self_contained(tiny_dataset, tmp_path):
    from cadenza.config import AugmentConfig, ModelConfig, TrainConfig
    from cadenza.generate import GenerateConfig, SampleConfig, run_generate
    from cadenza.report import build_report
    from cadenza.train import train
    run = tmp_path / "run"
    train(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, position="rope",
                      max_context=32),
          TrainConfig(data=str(tiny_dataset), out=str(run), context=32, batch_size=2,
                      max_steps=3, eval_every=3, augment=AugmentConfig()), quiet=True)
    run_generate(GenerateConfig(out=str(run / "samples"),
                                checkpoint=str(run / "best"),
                                sample=SampleConfig(tokens=30),
                                audio=True))
    elsewhere = tmp_path / "elsewhere"
    run_generate(GenerateConfig(out=str(elsewhere),
                                checkpoint=str(run / "best"),
                                sample=SampleConfig(tokens=30, seed=4),
                                audio=True))
    (elsewhere / "stats.json").write_text(json.dumps(
        {"generated": 1, "decoded_share": 1.0, "outside_key_profile_share": 0.1,
         "features": {"pitch_class": {"overlap": 0.9, "kl": 0.1, "generated_mean": 5.0,
                                      "reference_mean": 5.5}}}))
    page = build_report(run, samples=elsewhere).read_text()
    assert page.count("data:image/png;base64,") >= 3  # loss curve and two piano rolls
    assert "http://" not in page and "https://" not in page and "src='/" not in page
    assert "<td>pitch_class</td><td>0.900</td>" in page  # statistics as a table
    assert "sample-0.mid</a>" in page and "seed 4" in page
    if (run / "samples" / "sample-0.wav").exists():  # linked, not inlined: a light page
        assert "data:audio" not in page and "src='samples/sample-0.wav'" in page
        assert len(page) < 200_000
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a Cadenza run"):
        build_report(tmp_path / "notes")
    assert not (tmp_path / "notes" / "report.html").exists()


def test_stats_of_identical_sets_overlap_fully():
    rng = np.random.default_rng(0)
    pieces = [Notes.make(np.sort(rng.uniform(0, 10, 50)), np.sort(rng.uniform(0, 10, 50)) + 0.5,
                         rng.integers(48, 72, 50), rng.integers(40, 100, 50)) for _ in range(4)]
    res = compare(pieces, pieces)
    for v in res.values():
        assert v["overlap"] == pytest.approx(1.0) and v["kl"] == pytest.approx(0.0, abs=1e-12)
    other = [Notes(p.start * 3, p.end * 3, p.pitch + 7, p.velocity) for p in pieces]
    assert compare(other, pieces)["notes_per_second"]["overlap"] < 0.5


def test_memorization_finds_copies_transposed_and_not_new_music():
    rng = np.random.default_rng(1)
    train = Notes.make(np.arange(100.0), np.arange(100.0) + 1, rng.integers(50, 80, 100),
                       np.full(100, 80))
    index = NgramIndex.from_pieces([train])
    sl = slice(20, 60)
    copy = Notes(train.start[sl], train.end[sl], train.pitch[sl] + 5, train.velocity[sl])
    m = memorization(copy, index)
    assert m["longest_copied_notes"] == 40 and m["copied_8gram_share"] == 1.0
    new = Notes.make(np.arange(40.0), np.arange(40.0) + 1, rng.integers(50, 80, 40),
                     np.full(40, 80))
    assert memorization(new, index)["longest_copied_notes"] < 8


def test_a_recipe_keeps_its_rotary_options_only_with_rope():
    from cadenza.config import ModelConfig, TrainConfig
    r = bench.Recipe("x", "a test", ModelConfig(d_model=64, n_head=2, position="rope",
                                                pitch_dims=8, step_positions=True),
                     TrainConfig(max_steps=1))
    assert r.with_position("rope") is r and r.with_position(None) is r
    rel = r.with_position("relative").model
    assert (rel.position, rel.pitch_dims, rel.step_positions) == ("relative", 0, False)


def test_bench_jsb16_averaged_over_keys_equals_transposed_pieces_mixed_by_hand(tmp_path,
                                                                               capsys):
    import torch
    import torch.nn.functional as F

    from cadenza.checkpoint import load_checkpoint
    from cadenza.data.tokenizers import BOS, EOS
    from cadenza.evaluate import windows
    rng = np.random.default_rng(1)
    steps = lambda n: np.where(rng.random((n, 4)) < 0.1, -1,  # noqa: E731
                               rng.integers(50, 70, (n, 4))).tolist()
    f = tmp_path / "Jsb16thSeparated.json"
    valid = [steps(30), steps(25)]
    f.write_text(json.dumps({"train": [steps(40) for _ in range(3)], "valid": valid}))
    r = bench.bench_jsb16(BenchConfig("jsb16", out=str(tmp_path / "b"), minutes=5, data=str(f),
                                      precision="fp32", members=1, transpositions=3), **FAST)
    out = capsys.readouterr().out
    assert "averaged over 3 keys" in out and "own keys only" in out
    ck = load_checkpoint(tmp_path / "b" / "run" / "best")
    pitch = torch.from_numpy(ck.tokenizer.pitches)

    def direct(k: int) -> np.ndarray:
        """Transpose the grids themselves (silence stays), encode, score in 64-token windows
        advancing by 32; a key's answers are the tokens that have a counterpart in it."""
        reach = (pitch < 0) | ((pitch - k >= 21) & (pitch - k <= 108))
        out = []
        for g in map(np.array, valid):
            p = np.concatenate([[BOS], ck.tokenizer.encode(np.where(g >= 0, g + k, g)), [EOS]])
            for s, w, first in windows(len(p), 64, 32):
                with torch.no_grad():
                    logits = ck.model(torch.from_numpy(p[None, s: s + w]))[0].float()
                lp = F.log_softmax(logits.masked_fill(~reach, float("-inf")), -1)
                tgt = torch.from_numpy(p[s + 1: s + w + 1])
                out.append(-lp.gather(1, tgt[:, None])[first - s - 1:, 0].numpy())
        return np.concatenate(out)

    keys = [direct(k) for k in (-1, 0, 1)]
    mixed = -np.log(np.mean(np.exp(-np.stack(keys)), 0))
    assert r.own_key_valid.nll == pytest.approx(keys[1].mean(), rel=1e-5)
    assert r.valid.nll == pytest.approx(mixed.mean(), rel=1e-5)
    assert r.valid.nll != pytest.approx(r.own_key_valid.nll)


def test_polyphony_is_measured_over_the_whole_piece():
    """3,000 onsets: one voice for the first 2,000, then four-note chords. The old measure
    stopped at the 2,000th onset and said 1."""
    from cadenza.stats import features
    t = np.arange(3000) * 0.125  # binary-exact times: a note ends where the next begins
    mono = Notes.make(t[:2000], t[:2000] + 0.125, np.full(2000, 60), np.full(2000, 80))
    late = np.repeat(t[2000:], 4)
    chords = Notes.make(late, late + 0.125, np.tile([60, 64, 67, 72], 1000), np.full(4000, 80))
    piece = Notes.make(*(np.r_[getattr(mono, k), getattr(chords, k)]
                         for k in ("start", "end", "pitch", "velocity")))
    onsets = np.unique(piece.start)
    brute = np.mean([((piece.start <= o) & (piece.end > o)).sum() for o in onsets])
    assert features(piece)["polyphony"][0] == pytest.approx(brute) == pytest.approx(2.0)


def _fast_folder(d, n=10):
    """Pieces with onsets on the 10 ms grid, often one step apart (trills, rolled chords):
    the intervals a performance model can produce, many of them at its smallest step."""
    from tests.conftest import make_score
    rng = np.random.default_rng(3)
    d.mkdir()
    for i in range(n):
        steps = np.cumsum(rng.choice([1, 1, 1, 2, 3, 7, 25, 60], 300))
        notes = [(s / 100, s / 100 + rng.integers(1, 80) / 100, int(rng.integers(40, 90)),
                  int(rng.integers(30, 110))) for s in steps]
        make_score(notes).dump_midi(str(d / f"fast{i}.mid"))
    return d


def test_a_reference_compared_with_itself_overlaps_fully(tmp_path):
    """Render a prepared dataset's reference split as MIDI files (as `generate` writes them)
    and compare them with the dataset: every feature must overlap completely. With a bin
    edge on 10 ms, one-step intervals fell on either side of it after tick rounding."""
    from cadenza.config import PrepareConfig
    from cadenza.data.dataset import TokenDataset
    from cadenza.data.midi import score_from_notes, write_midi
    from cadenza.data.prepare import prepare
    from cadenza.stats import stats_of
    ds_dir = tmp_path / "ds"
    prepare(PrepareConfig(sources=(str(_fast_folder(tmp_path / "midi")),), out=str(ds_dir),
                          valid_frac=0.2, test_frac=0.2), progress=False)
    ds = TokenDataset(ds_dir)
    res0 = stats_of(str(tmp_path / "midi"), str(ds_dir))  # to learn which split it reads
    split = res0.reference_split
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for k, p in enumerate(ds.pieces(split)):
        write_midi(score_from_notes(ds.tokenizer.decode_notes(p)), rendered / f"{k}.mid")
    res = stats_of(str(rendered), str(ds_dir))
    for name, v in res.features.items():
        assert v["overlap"] == pytest.approx(1.0, abs=1e-9), name
