"""The fill-in-the-middle order (`train --fim`) and infilling with a model trained on it: the
reordered windows are exactly the streams `cadenza infill` prompts with, the marks are read
and never predicted, the sampler's stream is unchanged without --fim and resumes exactly
with it, and such a model fills a span with every note outside it kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import symusic
import torch

from cadenza.checkpoint import load_checkpoint
from cadenza.cli import main
from cadenza.config import (
    AugmentConfig,
    ConfigError,
    InfillConfig,
    ModelConfig,
    PrepareConfig,
    Steering,
    TrainConfig,
)
from cadenza.data import fim
from cadenza.data.dataset import IGNORE, BatchPlan, TokenDataset, WindowSampler
from cadenza.data.midi import BadInput, load_score
from cadenza.data.prepare import prepare
from cadenza.data.styles import MARKS, Tags
from cadenza.data.tokenizers import BOS
from cadenza.data.tokenizers.performance import shift_steps
from cadenza.infill import INFILL_TRACK, run_infill, tick_at
from cadenza.train import train
from tests.test_infill import _piece, _rows
from tests.test_styles import tagged

V = 391
TINY = dict(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
            max_context=128)


def test_a_reordered_window_holds_the_streams_infill_reads(tiny_dataset):
    ds = TokenDataset(tiny_dataset)
    tok, rng, seen = ds.tokenizer, np.random.default_rng(0), 0
    for piece in ds.pieces("train"):
        notes = tok.decode(piece)
        for _ in range(4):
            out = fim.reorder(tok, piece, rng, 4096, (V, V + 1))
            if out is None:
                continue
            assert out[0] == BOS and (out == V).sum() == 1 and (out == V + 1).sum() == 1
            i, j = int(np.flatnonzero(out == V)[0]), int(np.flatnonzero(out == V + 1)[0])
            left, rest, mid = out[1:i], out[i + 1: j], out[j + 1:]
            a, d = int(shift_steps(left).sum()), int(shift_steps(mid).sum())
            start, end = a / 100, (a + d) / 100
            assert 0 < start and 1.0 <= end - start <= 12.0
            assert np.array_equal(left, fim.stream(tok, notes, start))  # infill's left side
            assert np.array_equal(mid, fim.middle(tok, notes, start, end))
            # the gap (as long as the span), then the notes from the span's end on
            gap = fim.prompt(left[:0], left[:0], end - start, (V, V + 1))[2:-1]
            assert np.array_equal(rest[: len(gap)], gap)
            r = int(shift_steps(rest[len(gap):]).sum()) / 100
            assert r > 0 and np.array_equal(rest[len(gap):],
                                            fim.right_side(tok, notes, end, r))
            new = tok.decode(mid)
            inside = (notes.start >= start - 1e-9) & (notes.start < end - 1e-9)
            assert len(new) == inside.sum()  # the middle is the span's notes, no others
            seen += 1
    assert seen >= 10
    # a room too small for the middle leaves the window as it is
    assert fim.reorder(tok, ds.pieces("train")[0], np.random.default_rng(0), 8,
                       (V, V + 1)) is None


def test_the_sampler_mixes_in_reordered_windows_whose_marks_are_never_targets(tiny_dataset):
    ds = TokenDataset(tiny_dataset)
    tags = Tags((), (), V).with_marks()
    assert tags.mark_ids() == (V + 1, V + 2) and tags.choices == ()
    # without --fim the stream is what it was, batch for batch
    a = WindowSampler(ds, BatchPlan(128, 8, AugmentConfig(), seed=3)).next_batch()
    b = WindowSampler(ds, BatchPlan(128, 8, AugmentConfig(), seed=3, fim=0.0,
                                    tags=tags)).next_batch()
    assert torch.equal(a[0]["idx"], b[0]["idx"]) and torch.equal(a[1], b[1])
    s = WindowSampler(ds, BatchPlan(128, 8, AugmentConfig(), seed=3, fim=0.5, tags=tags))
    reordered = rows = 0
    for _ in range(12):
        x, y, n = s.next_batch()
        for row, tgt in zip(x["idx"].numpy(), y.numpy()):
            rows += 1
            marks = row[row >= V]
            if len(marks):
                reordered += 1
                assert list(marks) == [V + 1, V + 2] and row[0] == BOS
            assert (tgt < V).all()  # a mark is never a target
        assert n == int((y != IGNORE).sum())
    assert 0.25 < reordered / rows < 0.75
    state = s.state_dict()  # resumes exactly: the same batches after the state is set
    first = s.next_batch()
    s.load_state_dict(state)
    again = s.next_batch()
    assert torch.equal(first[0]["idx"], again[0]["idx"]) and torch.equal(first[1], again[1])


@pytest.fixture
def fim_run(tiny_dataset, tmp_path):
    out = tmp_path / "fim-run"
    train(ModelConfig(**TINY),
          TrainConfig(data=str(tiny_dataset), out=str(out), context=128, batch_size=4,
                      max_steps=4, eval_every=4, fim=0.5, augment=AugmentConfig()), quiet=True)
    return out


def test_a_model_trained_with_fim_infills_and_keeps_every_note_outside(fim_run, tmp_path,
                                                                       capsys):
    ck = load_checkpoint(fim_run / "best")
    assert ck.tags.marks == MARKS and ck.model_cfg.tags == len(ck.tags) == 3
    assert json.loads((fim_run / "best" / "config.json").read_text())["train"]["fim"] == 0.5
    f = _piece(tmp_path)
    cfg = InfillConfig(input=str(f), out=str(tmp_path / "o"), start=4.0, end=6.0,
                       checkpoint=str(fim_run / "best"), candidates=2, audio=False,
                       sample=Steering(seed=1, num_samples=2))
    infos = run_infill(cfg)
    src = load_score(f)
    a, b = tick_at(src, 4.0), tick_at(src, 6.0)
    for info in infos:
        assert info.method == "fim"
        out = symusic.Score(str(tmp_path / "o" / f"sample-{info.sample}.mid"))
        kept = [t for t in out.tracks if t.name != INFILL_TRACK]
        new = [t for t in out.tracks if t.name == INFILL_TRACK][0]
        for k, s in zip(kept, src.tracks):
            assert _rows(k) == [r for r in _rows(s) if not a <= r[0] < b]
        assert all(a <= n.time < b for n in new.notes)
    # the plain way on the same model, and the marks are no style
    again = run_infill(cfg.replace(out=str(tmp_path / "r"), method="resample"))
    assert again[0].method == "resample"
    with pytest.raises(ConfigError, match="knows no style 'fim:right'"):
        ck.tags.prompt("fim:right")
    assert main(["generate", "--checkpoint", str(fim_run / "best"), "--style", "fim:middle",
                 "--out", str(tmp_path / "g"), "--no-audio"]) == 2
    assert "knows no style" in capsys.readouterr().err


def test_fim_is_refused_where_it_cannot_work(tiny_run, tmp_path, midi_folder):
    f = _piece(tmp_path)
    with pytest.raises(BadInput, match="--method fim: .* was not trained to infill"):
        run_infill(InfillConfig(input=str(f), out=str(tmp_path / "o"), start=3.0, end=4.0,
                                checkpoint=str(tiny_run / "best"), method="fim", audio=False))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="--fim"):
        TrainConfig(data="d", out="o", max_steps=1, fim=1.5)
    grid = tmp_path / "grid"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(grid), tokenizer="pianoroll",
                          valid_frac=0.2, test_frac=0.0), progress=False)
    with pytest.raises(ConfigError, match="--fim: infilling is for performance tokens"):
        train(ModelConfig(**TINY), TrainConfig(data=str(grid), out=str(tmp_path / "x"),
                                               context=64, max_steps=1, fim=0.5), quiet=True)


def test_fine_tuning_an_infilling_model_keeps_its_marks(fim_run, tmp_path, corpus):
    old = load_checkpoint(fim_run / "best")
    # tagged data without --fim: the style tags come before the marks, every old row kept
    ft = tmp_path / "ft"
    train(ModelConfig(), TrainConfig(data=str(tagged(tmp_path, corpus)), out=str(ft),
                                     context=128, batch_size=4, max_steps=1, eval_every=1,
                                     init=str(fim_run / "best")), stop_at=0, quiet=True)
    new = load_checkpoint(ft / "best")
    assert new.tags.marks == MARKS and new.tags.styles == ("Bach", "Chopin", "pop")
    rows_old, rows_new = old.model.state_dict()["tag.weight"], new.model.state_dict()["tag.weight"]
    for i, name in enumerate(old.tags.names):
        assert torch.equal(rows_new[new.tags.names.index(name)], rows_old[i])
    assert new.tags.mark_ids() == (V + len(new.tags) - 2, V + len(new.tags) - 1)
