"""Style tags (issue 30): what prepare --tags records, that every training window starts
with its piece's tags unless dropped, that --init extends a model's vocabulary by new tags
(old weights exact), and --style in generate and evaluate, on synthetic pieces written as
real files in composer folders and a POP909-shaped folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cadenza.checkpoint import load_checkpoint
from cadenza.cli import main
from cadenza.config import (
    AugmentConfig,
    ConfigError,
    ModelConfig,
    PrepareConfig,
    SampleConfig,
    TrainConfig,
)
from cadenza.data.dataset import BatchPlan, TokenDataset, WindowSampler
from cadenza.data.prepare import prepare
from cadenza.data.styles import Tags
from cadenza.data.tokenizers import BOS
from cadenza.engine import Engine
from cadenza.evaluate import evaluate
from cadenza.session import Session
from cadenza.train import TrainingError, train


def tagged(tmp_path, corpus) -> Path:
    out = tmp_path / "tagged"
    prepare(PrepareConfig(sources=(str(corpus / "classical"), str(corpus / "pop")),
                          out=str(out), tags=True, kind="score", valid_frac=0.2,
                          test_frac=0.0), progress=False)
    return out


def test_prepare_tags_each_piece_with_its_folder_and_kind(tmp_path, corpus):
    ds = TokenDataset(tagged(tmp_path, corpus))
    tags = ds.tags
    assert tags.names == ("classical", "Bach", "Chopin", "pop", "score", "arrangement")
    assert tags.base == 391 and tags.classical == ("Bach", "Chopin")
    files = ds.files()
    assert files == ds.manifest["files"] and len(files) > len(ds.files("train")) > 0
    for f in files:
        want = ("pop", "arrangement") if "/pop/" in f["path"] else \
            (Path(f["path"]).parent.name, "score")
        assert (f["style"], f["kind"]) == want
    for split in ds.splits:  # the arrays the sampler reads agree with the records
        rows = ds.piece_tags(split)
        recs = sorted(ds.files(split), key=lambda f: f["piece"])
        assert [(tags.names[s], tags.names[k]) for s, k in rows] == \
            [(f["style"], f["kind"]) for f in recs]


def test_every_window_starts_with_its_pieces_tags_unless_dropped(tmp_path, corpus):
    ds = TokenDataset(tagged(tmp_path, corpus))
    tags, V = ds.tags, 391
    s = WindowSampler(ds, BatchPlan(64, 16, AugmentConfig(), seed=0))
    heads = []
    for _ in range(40):
        x, y, n = s.next_batch()
        for row, tgt in zip(x["idx"].numpy(), y.numpy()):
            k = int((row[:2] >= V).sum())
            assert (row[k:] < V).all() and (row[:k] >= V).all()  # tags first, then music
            assert (tgt[:k] == -100).all() and (tgt < V).all()  # never predicted
            heads.append(tuple(tags.names[t - V] for t in row[:k]))
    styles = [h[0] for h in heads if h and h[0] not in tags.kinds]
    kinds = [h[-1] for h in heads if h and h[-1] in tags.kinds]
    share_untagged = sum(not h for h in heads) / len(heads)
    assert 0.01 < share_untagged < 0.1  # both tags dropped: 0.2 x 0.2
    assert 0.7 < len(kinds) / len(heads) < 0.9  # the kind kept 80% of the time
    assert {"Bach", "Chopin", "pop", "classical"} <= set(styles)
    assert "classical" in styles and styles.count("classical") < styles.count("pop") + \
        styles.count("Bach") + styles.count("Chopin")
    # an untagged dataset's windows are as before: the same stream for a seed
    plain = tmp_path / "plain"
    prepare(PrepareConfig(sources=(str(corpus / "classical"),), out=str(plain)),
            progress=False)
    a = WindowSampler(TokenDataset(plain), BatchPlan(64, 4, AugmentConfig(), seed=1)).next_batch()
    assert (a[0]["idx"] < V).all()


def test_init_extends_the_vocabulary_by_new_tags_and_keeps_every_old_weight(tmp_path,
                                                                            corpus):
    data = tagged(tmp_path, corpus)
    plain = tmp_path / "plain"
    prepare(PrepareConfig(sources=(str(corpus / "classical"), str(corpus / "pop")),
                          out=str(plain), valid_frac=0.2, test_frac=0.0), progress=False)
    base = tmp_path / "base"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=64),
          TrainConfig(data=str(plain), out=str(base), context=64, batch_size=4, max_steps=2,
                      eval_every=2), quiet=True)
    ft = tmp_path / "ft"
    train(ModelConfig(), TrainConfig(data=str(data), out=str(ft), context=64, batch_size=4,
                                     max_steps=5, eval_every=5, init=str(base / "best")),
          stop_at=0, quiet=True)  # best/ holds the --init weights, extended
    old, new = load_checkpoint(base / "best"), load_checkpoint(ft / "best")
    assert new.model_cfg.tags == 6 and new.tags.names[1] == "Bach"
    got, want = new.model.state_dict(), old.model.state_dict()
    assert set(got) == set(want) | {"tag.weight"}
    assert all(torch.equal(got[k], want[k]) for k in want)  # every old weight exact
    rows = got["tag.weight"]
    assert rows.shape == (6, 32) and len({tuple(r.tolist()) for r in rows}) == 6
    mean = want["tok.weight"].mean(0)
    assert (rows - mean).abs().max() < 0.15  # started near the mean token embedding
    # untagged data (your own folder) fine-tunes a tagged model, which keeps its tags
    mine = tmp_path / "mine"
    train(ModelConfig(), TrainConfig(data=str(plain), out=str(mine), context=64, batch_size=4,
                                     max_steps=1, eval_every=1, init=str(ft / "best")),
          quiet=True)
    kept = load_checkpoint(mine / "last")
    assert kept.tags == new.tags and kept.model_cfg.tags == 6
    # tagged data may add tags to a checkpoint's, but not drop any
    fewer = tmp_path / "fewer"
    prepare(PrepareConfig(sources=(str(corpus / "classical"),), out=str(fewer), tags=True,
                          kind="score", valid_frac=0.2, test_frac=0.0), progress=False)
    with pytest.raises(TrainingError, match="the data's tags may add to the checkpoint's"):
        train(ModelConfig(), TrainConfig(data=str(fewer), out=str(tmp_path / "no"),
                                         context=64, batch_size=4, max_steps=1,
                                         init=str(ft / "best")), quiet=True)


def test_style_is_validated_against_the_models_own_tags(tmp_path, corpus, capsys, tiny_run):
    data = tagged(tmp_path, corpus)
    run = tmp_path / "styled"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=64),
          TrainConfig(data=str(data), out=str(run), context=64, batch_size=4, max_steps=4,
                      eval_every=4), quiet=True)
    ck = str(run / "best")
    assert main(["generate", "--checkpoint", ck, "--style", "Chopin", "--seconds", "2",
                 "--out", str(tmp_path / "g"), "--no-audio"]) == 0
    rec = json.loads((tmp_path / "g" / "sample-0.json").read_text())
    assert rec["settings"]["style"] == "Chopin"
    for bad, said in (("Chopn", "knows no style 'Chopn' (nearest: Chopin)"),
                      ("jazz", "it knows classical, Bach, Chopin, pop, score, arrangement")):
        assert main(["generate", "--checkpoint", ck, "--style", bad, "--out",
                     str(tmp_path / "bad"), "--no-audio"]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert main(["generate", "--checkpoint", ck, "pretrained:piano", "--style", "pop",
                 "--out", str(tmp_path / "b2"), "--no-audio"]) == 2
    assert "the ensemble's models read different style tags" in capsys.readouterr().err
    # evaluate: untagged is the plain score; a tag changes the windows' start only
    plain = evaluate(ck, data)
    assert evaluate(ck, data, style=None).nll == plain.nll
    own, pop = evaluate(ck, data, style="own"), evaluate(ck, data, style="pop")
    assert own.tokens == pop.tokens == plain.tokens and own.nll != plain.nll
    with pytest.raises(ConfigError, match="no style 'rock'"):
        evaluate(ck, data, style="rock")
    with pytest.raises(ConfigError, match="reads no style tags"):
        evaluate(str(tiny_run / "best"), data, style="pop")  # trained untagged


def test_a_tags_record_round_trips_and_names_only_what_it_has():
    t = Tags.collect([("Bach", "live"), ("pop", "arrangement"), ("", "score")], 391)
    assert Tags.of(t.record()) == t and t.names[0] == "classical"
    assert t.prompt("Bach") == [392] and t.prompt(None) == []
    assert t.classical == ("Bach",)  # pop is no classical composer


@pytest.fixture(scope="module")
def registers(tmp_path_factory) -> Path:
    """A tiny model trained on two styles that differ only in register: classical/Low
    (MIDI 36-55) and classical/High (72-91), 8 pieces each, tagged (trained once for the
    module; its tests only read it, but the classifier's, which adds a file beside it)."""
    from tests.conftest import make_score
    tmp_path = tmp_path_factory.mktemp("registers")
    rng = np.random.default_rng(5)
    for name, lo in (("Low", 36), ("High", 72)):
        d = tmp_path / "src" / name
        d.mkdir(parents=True)
        for i in range(8):
            start = np.sort(rng.uniform(0, 12.0, 40))
            notes = [(float(a), float(a) + 0.3, int(p), 80)
                     for a, p in zip(start, rng.integers(lo, lo + 20, 40))]
            make_score(notes).dump_midi(str(d / f"{i}.mid"))
    data = tmp_path / "data"
    prepare(PrepareConfig(sources=(str(tmp_path / "src"),), out=str(data), tags=True,
                          kind="score", valid_frac=0.2, test_frac=0.0), progress=False)
    run = tmp_path / "run"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=64),
          TrainConfig(data=str(data), out=str(run), context=64, batch_size=8, max_steps=300,
                      eval_every=300, lr=3e-3, warmup_steps=20,
                      augment=AugmentConfig(transpose=(0, 0))),
          quiet=True)
    return run / "best"


def _new_pitches(session, cfg) -> np.ndarray:
    return _new_pitches_after(session, np.array([BOS]), cfg)


def _new_pitches_after(session, primer: np.ndarray, cfg) -> np.ndarray:
    tok = session.tok
    return np.concatenate([tok.decode_notes(t).pitch for t in session.generate(primer, cfg)])


def test_guidance_moves_the_music_toward_the_style_more_as_it_grows(registers):
    s = Session.load(str(registers))
    base = dict(tokens=120, num_samples=8, seed=0, temperature=1.0)
    plain = SampleConfig(style="High", **base)
    # W = 1 is the tag as read: the same tokens as without --guidance
    assert [t.tolist() for t in s.generate(np.array([BOS]), plain)] == \
        [t.tolist() for t in s.generate(np.array([BOS]), plain.replace(guidance=1.0))]
    gap = {}
    for w in (1.0, 4.0):
        high = _new_pitches(s, SampleConfig(style="High", guidance=w, **base))
        low = _new_pitches(s, SampleConfig(style="Low", guidance=w, **base))
        assert len(high) > 20 and len(low) > 20
        gap[w] = high.mean() - low.mean()
    assert gap[4.0] > gap[1.0] + 5 and gap[1.0] > 0, gap  # measured: 9.8 and 24.1


def _low_primer(tok) -> np.ndarray:
    """BOS and twelve notes of the Low register (the model's other style)."""
    from cadenza.data.midi import notes_from_score
    from tests.conftest import make_score
    notes = [(0.2 * i, 0.2 * i + 0.3, 40 + (i * 7) % 20, 80) for i in range(12)]
    return np.concatenate([[BOS], tok.encode(notes_from_score(make_score(notes)))])


def test_guidance_over_the_recent_tokens_steers_a_primed_continuation_further(registers):
    """A tag counts most near a window's start: after a Low primer, guidance toward High
    compared over the latest 8 tokens moves more notes into High's register than the same W
    over the whole context (measured: 0.49 against 0.41 of the notes; unguided 0.33)."""
    s = Session.load(str(registers))
    primer = _low_primer(s.tok)
    base = dict(style="High", tokens=60, num_samples=8, seed=0, temperature=1.0)
    high = {k: float((_new_pitches_after(s, primer, SampleConfig(**base, **how)) >= 72).mean())
            for k, how in (("plain", {}), ("whole", dict(guidance=2.0, guidance_context=0)),
                           ("recent", dict(guidance=2.0, guidance_context=8)))}
    assert high["recent"] > high["whole"] + 0.04 and high["whole"] > high["plain"], high


def test_guidance_over_a_context_the_model_holds_whole_is_whole_context_guidance(registers):
    """--guidance-context at or past the model's context reads what the whole-context
    guidance reads: the same next-token distribution but for the releases, which take the
    tagged reading's; below it, the recent readings never hold more than the tokens asked
    (their slides keep them there)."""
    s = Session.load(str(registers))
    primer = _low_primer(s.tok)
    cfg = SampleConfig(style="High", guidance=3.0, guidance_context=0, tokens=150, seed=0)
    whole, wide = Engine(s, cfg), Engine(s, cfg.replace(guidance_context=500))
    for eng in (whole, wide):
        eng.feed(primer)
    assert len(whole.readings) == 2 and len(wide.readings) == 3
    # the same, but for releases: over recent tokens they take no guidance (the tag as read)
    releases = torch.from_numpy(np.flatnonzero(s.tok.note_roles().release >= 0))
    got, want = wide._next_logits(), whole._next_logits()
    want[:, releases] = torch.log_softmax(wide._read(wide.readings[0]).float(), -1)[:, releases]
    torch.testing.assert_close(got, want)
    near = Engine(s, cfg.replace(guidance_context=16))
    near.feed(primer)
    lengths = []
    for _ in range(150):
        near.step()
        lengths += [r.cache.length - len(r.head) for r in near.readings[1:]]
    assert max(lengths) == 16 and min(lengths) >= 8  # a slide keeps the recent half
    # an infill's fixed prompt stays in the whole reading and out of the recent two
    head = s.conditioning(cfg).with_fim(primer[:5])
    fim = Engine(s, cfg.replace(guidance_context=16), head=head)
    assert [r.head.head for r in fim.readings] == [head.head, head.tags, ()]


def test_every_hard_control_holds_under_guidance(registers):
    s = Session.load(str(registers))
    cfg = SampleConfig(style="High", guidance=3.0, key="C major", pitch_range="60-84",
                       max_polyphony=2, tokens=150, num_samples=4, seed=1, temperature=1.5)
    pitches = _new_pitches(s, cfg)
    assert len(pitches) > 10
    assert np.isin(pitches % 12, [0, 2, 4, 5, 7, 9, 11]).all()
    assert ((pitches >= 60) & (pitches <= 84)).all()


def test_guidance_is_refused_without_a_style_and_for_an_untagged_model(tiny_run, tmp_path,
                                                                       capsys):
    with pytest.raises(ConfigError, match="--guidance: guides toward a --style"):
        SampleConfig(guidance=2.0)
    with pytest.raises(ConfigError, match=r"--guidance: must be in \[0, 20\]"):
        SampleConfig(style="pop", guidance=-1.0)
    with pytest.raises(ConfigError, match="--guidance-context: must be 0 or more"):
        SampleConfig(style="pop", guidance=2.0, guidance_context=-8)
    assert main(["generate", "--checkpoint", str(tiny_run / "best"), "--style", "pop",
                 "--guidance", "3", "--out", str(tmp_path / "g"), "--no-audio"]) == 2
    assert "reads no style tags" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_the_style_classifier_is_trained_by_its_script_and_names_the_style(registers,
                                                                          tmp_path, capsys):
    """scripts/train_style_classifier.py on the two-register data: twice the same classifier,
    and `cadenza classify` names a High piece High; without a classifier (or with one
    trained on other weights) classify is one line."""
    import subprocess
    import sys

    from cadenza.classify import FILE, StyleClassifier
    data = registers.parent.parent / "data"
    outs = [tmp_path / f"clf{k}.npz" for k in range(2)]
    for out in outs:
        r = subprocess.run([sys.executable, "scripts/train_style_classifier.py", "--model",
                            str(registers), "--dataset", str(data), "--out", str(out),
                            "--min-files", "3", "--windows", "1", "--window-seconds", "6"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "majority class" in r.stdout and "macro-F1" in r.stdout
    a, b = (StyleClassifier.load(o) for o in outs)
    assert a.classes == ("High", "Low") and np.array_equal(a.weights, b.weights)
    ck = str(registers)
    assert main(["classify", str(registers.parent.parent / "src" / "High" / "0.mid"),
                 "--checkpoint", ck]) == 2
    assert "no style classifier beside it" in capsys.readouterr().err
    (registers / FILE).write_bytes(outs[0].read_bytes())
    assert main(["classify", str(registers.parent.parent / "src" / "High" / "0.mid"),
                 "--checkpoint", ck, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["styles"][0]["style"] == "High" and res["styles"][0]["probability"] > 0.5
    other = tmp_path / "other.npz"
    StyleClassifier(a.weights, a.bias, a.classes, a.layer, a.window_seconds, "0" * 40).save(other)
    (registers / FILE).write_bytes(other.read_bytes())
    assert main(["classify", str(registers.parent.parent / "src" / "Low" / "0.mid"),
                 "--checkpoint", ck]) == 2
    assert "trained on other weights" in capsys.readouterr().err
