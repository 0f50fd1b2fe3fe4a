"""Issue 16: the encoder-decoder, paired datasets (harmonize, accompany), the harmonize,
accompany and attention commands, on synthetic chorales and songs written as real files
(and the real JSB16 / POP909 files when present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from conftest import bench_file

from cadenza.cli import main
from cadenza.config import AugmentConfig, ConfigError, ModelConfig, PrepareConfig, TrainConfig
from cadenza.data import pairs
from cadenza.data.dataset import IGNORE, BatchPlan, TokenDataset
from cadenza.data.prepare import prepare
from cadenza.data.task import Accompany, Continue, Harmonize, Task
from cadenza.data.tokenizers import BOS, EOS, build_tokenizer
from cadenza.data.tokenizers.chorale16 import ids_grid
from cadenza.data.tokenizers.performance import SHIFT0, VEL0
from cadenza.models import Conditioned, build_model
from cadenza.train import train

RANGES = [(62, 76), (55, 69), (48, 62), (40, 55)]  # soprano, alto, tenor, bass


def chorale(rng: np.random.Generator, steps: int) -> list[list[int]]:
    """Four voices on a 16th grid, notes held 2-8 steps: a random walk per voice."""
    out, cur = [], [int(rng.integers(lo, hi)) for lo, hi in RANGES]
    for s in range(steps):
        for v, (lo, hi) in enumerate(RANGES):
            if s % int(rng.choice([2, 4, 8])) == 0:
                cur[v] = int(np.clip(cur[v] + rng.integers(-2, 3), lo, hi))
        out.append(list(cur))
    return out


@pytest.fixture
def chorale_json(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    f = tmp_path / "chorales.json"
    f.write_text(json.dumps({s: [chorale(rng, int(rng.integers(48, 120))) for _ in range(n)]
                             for s, n in (("train", 10), ("valid", 3), ("test", 2))}))
    return f


def song(rng: np.random.Generator, bars: int, tempo: float) -> symusic.Score:
    """MELODY, BRIDGE and PIANO tracks at ``tempo``: a melody of quarter and eighth notes,
    the piano a chord an octave below each beat's melody note."""
    tpq = 480
    s = symusic.Score(tpq)
    s.tempos.append(symusic.Tempo(0, tempo))
    tracks = {n: symusic.Track(name=n, program=0) for n in ("MELODY", "BRIDGE", "PIANO")}
    pitch = 67
    for beat in range(bars * 4):
        pitch = int(np.clip(pitch + rng.integers(-3, 4), 60, 79))
        for half in (0, 1) if rng.random() < 0.4 else (0,):
            t = beat * tpq + half * tpq // 2
            tracks["MELODY"].notes.append(symusic.Note(t, tpq // (2 if half or rng.random()
                                                                  < 0.4 else 1), pitch, 90))
        for off in (-12, -8, -5):
            tracks["PIANO"].notes.append(symusic.Note(beat * tpq, tpq, pitch + off, 60))
    for t in tracks.values():
        s.tracks.append(t)
    return s


@pytest.fixture
def pop_folder(tmp_path) -> Path:
    """A POP909-shaped folder: NNN/NNN.mid with beat_midi.txt (time, beat, downbeat)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "pop"
    for i in range(14):
        d = root / f"{i + 1:03d}"
        d.mkdir(parents=True)
        tempo = float(rng.choice([80, 96, 120]))
        bars = int(rng.integers(6, 10))
        song(rng, bars, tempo).dump_midi(str(d / f"{i + 1:03d}.mid"))
        beat = 60 / tempo
        (d / "beat_midi.txt").write_text("".join(
            f"{k * beat} 1.0 {1.0 if k % 4 == 0 else 0.0}\n" for k in range(bars * 4 + 1)))
    return root


def tiny_encdec(vocab: int, norm: str = "pre", position: str = "sinusoidal",
                dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="encoder-decoder", vocab_size=vocab, n_layer=2,
                                   d_model=32, n_head=4, d_ff=64, dropout=dropout,
                                   position=position, norm=norm, max_context=64)).eval()


# --- the model ----------------------------------------------------------------------------

@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_encdec_causal_cached_and_reads_its_source(position, norm):
    m = tiny_encdec(50, norm, position)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 50, (2, 10), generator=g)
    src[1, 7:] = 0  # padding
    tgt = torch.randint(3, 50, (2, 12), generator=g)
    with torch.no_grad():
        full = m(tgt, src=src)
        later = tgt.clone()
        later[:, 8] = (later[:, 8] + 1 - 3) % 47 + 3  # a future target token changes
        assert torch.equal(m(later, src=src)[:, :8], full[:, :8])  # earlier logits: same
        assert not torch.allclose(m(later, src=src)[:, 8:], full[:, 8:])
        other = src.clone()
        other[:, 2] = (other[:, 2] + 5 - 3) % 47 + 3
        moved = (m(tgt, src=other) - full).abs().amax(-1)
        assert moved.min() > 1e-6  # every position reads the source (identical input: 0)
        padded = src.clone()
        padded[1, 7:] = 0
        wider = torch.cat([padded, torch.zeros(2, 3, dtype=torch.long)], 1)  # more padding
        torch.testing.assert_close(m(tgt, src=wider), full, atol=1e-5, rtol=1e-5)
        cache = m.new_cache(2)
        m.encode_into(cache, src)
        steps = [m(tgt[:, :5], cache)] + [m(tgt[:, t: t + 1], cache) for t in range(5, 12)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_encdec_overfits_one_pair():
    m = tiny_encdec(40).train()
    src = torch.tensor([[BOS, 10, 11, 12, 13, EOS]])
    tgt = torch.tensor([[BOS, 20, 31, 22, 33, 24, 35, EOS]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(m(tgt[:, :-1], src=src)[0], tgt[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    m.eval()
    with torch.no_grad():  # greedy decoding through the cache writes the target back
        net, cache = Conditioned(m, src), None
        cache = net.new_cache(1)
        ids, out = torch.tensor([[BOS]]), []
        for _ in range(7):
            nxt = net(ids, cache)[:, -1].argmax(-1, keepdim=True)
            out.append(int(nxt))
            ids = nxt
    assert out == tgt[0, 1:].tolist()


def test_relative_is_refused_for_the_encoder_decoder():
    with pytest.raises(ConfigError, match="--position"):
        ModelConfig(kind="encoder-decoder", position="relative")
    assert ModelConfig(kind="encoder-decoder").position == "sinusoidal"
    assert ModelConfig().position == "relative"
    from cadenza.recipes import train_configs  # another kind: its own position defaults
    kw = dict(data="d", out="o")
    assert train_configs("small", kind="encoder-decoder", **kw)[0].position == "sinusoidal"
    assert train_configs("harmonize", kind="transformer", **kw)[0].position == "relative"
    assert train_configs("harmonize", kind="transformer", position="rope", **kw)[0].position \
        == "rope"


# --- paired data --------------------------------------------------------------------------

def test_harmonize_pairs_are_the_chorale(tmp_path, chorale_json):
    res = prepare(PrepareConfig(sources=(str(chorale_json),), out=str(tmp_path / "h"),
                                task="harmonize"), progress=False)
    assert res.manifest["tokenizer"]["name"] == "chorale16"
    ds = TokenDataset(tmp_path / "h")
    grids = json.loads(chorale_json.read_text())
    src, tgt = ds.pieces("valid", "source"), ds.pieces("valid")
    # valid windows tile each chorale once, in order: source + target give it back whole
    rebuilt = np.concatenate([np.concatenate([ids_grid(s, 1), ids_grid(t, 3)], 1)
                              for s, t in zip(src, tgt)])
    assert np.array_equal(rebuilt, np.concatenate([np.asarray(g) for g in grids["valid"]]))
    assert res.manifest["splits"]["valid"]["tokens"] == sum(len(t) for t in tgt)
    # training windows: 4 bars, one every bar, each the whole width
    train_src = ds.pieces("train", "source")
    assert {len(s) - 2 for s in train_src} <= {64} | {len(g) for g in grids["train"]}
    assert all(len(t) - 2 == 3 * (len(s) - 2) for s, t in zip(train_src, ds.pieces("train")))


def test_accompany_pairs_align_on_bars(tmp_path, pop_folder):
    res = prepare(PrepareConfig(sources=(str(pop_folder),), out=str(tmp_path / "a"),
                                task="accompany", valid_frac=0.2, test_frac=0.1),
                  progress=False)
    ds = TokenDataset(tmp_path / "a")
    tok = ds.tokenizer
    assert res.manifest["task"] == {"name": "accompany", "bars": 2}
    for s, t in zip(ds.pieces("train", "source"), ds.pieces("train")):
        mel, pno = tok.decode_notes(s), tok.decode_notes(t)
        # the synthetic piano plays a chord under each beat's melody note, in the window's
        # own time: every chord's top note is 5 semitones under a melody note of its beat
        for start, p in zip(pno.start, pno.pitch):
            if p == pno.pitch[pno.start == start].max():
                assert (p + 5) in mel.pitch[np.abs(mel.start - start) < 0.011]
        assert pno.start.max() < 8 * 60 / 80  # 2 bars at the slowest tempo


def test_augmentation_moves_both_sides_alike(tmp_path, pop_folder):
    prepare(PrepareConfig(sources=(str(pop_folder),), out=str(tmp_path / "a"),
                          task="accompany"), progress=False)
    ds = TokenDataset(tmp_path / "a")
    tok = ds.tokenizer
    s, t = ds.pieces("train", "source")[3][1:-1], ds.pieces("train")[3][1:-1]
    aug = AugmentConfig(transpose=(-5, 6), stretch=(0.8, 1.25), velocity_shift=3)
    seen = set()
    for seed in range(12):
        s2, t2 = tok.augment_together([s, t], np.random.default_rng(seed), aug)
        shift = set((tok.pitches[s2][tok.pitches[s2] >= 0] - tok.pitches[s][tok.pitches[s]
                                                                         >= 0]).tolist())
        assert shift == set((tok.pitches[t2][tok.pitches[t2] >= 0]
                             - tok.pitches[t][tok.pitches[t] >= 0]).tolist())
        assert len(shift) == 1
        seen |= shift
        a, b = tok.decode_notes(s), tok.decode_notes(s2)
        c, d = tok.decode_notes(t), tok.decode_notes(t2)
        fs, ft = b.start.max() / a.start.max(), d.start.max() / c.start.max()
        assert abs(fs - ft) < 0.02  # one stretch for both (10 ms rounding)
        v = lambda x: x[x >= VEL0]  # noqa: E731
        assert set((v(s2) - v(s)).tolist()) | set((v(t2) - v(t)).tolist()) <= set(range(-3, 4))
    assert len(seen) > 3


def test_pair_sampler_batches(tmp_path, chorale_json):
    prepare(PrepareConfig(sources=(str(chorale_json),), out=str(tmp_path / "h"),
                          task="harmonize"), progress=False)
    ds = TokenDataset(tmp_path / "h")
    aug = AugmentConfig(transpose=(0, 0))
    enc = pairs.PairSampler(ds, BatchPlan(300, 4, aug, seed=3), prefix=False)
    pre = pairs.PairSampler(ds, BatchPlan(300, 4, aug, seed=3), prefix=True)
    (x, y, n), (px, py, pn) = enc.next_batch(), pre.next_batch()
    assert set(x) == {"idx", "src"} and set(px) == {"idx"}
    assert n == pn == int((y != IGNORE).sum())  # the same pairs, the same scored targets
    for b in range(4):
        tgt = y[b][y[b] != IGNORE]
        assert torch.equal(py[b][py[b] != IGNORE], tgt)  # prefix: only the target scored
        assert tgt[-1] == EOS and x["idx"][b, 0] == BOS
        src = x["src"][b][x["src"][b] != 0]
        cut = len(src)
        assert torch.equal(px["idx"][b, :cut], src)  # [BOS src EOS] then BOS tgt
        assert px["idx"][b, cut] == BOS


# --- training, evaluation, commands -------------------------------------------------------

@pytest.fixture
def harmonize_run(tmp_path, chorale_json):
    prepare(PrepareConfig(sources=(str(chorale_json),), out=str(tmp_path / "h"),
                          task="harmonize"), progress=False)
    out = tmp_path / "hrun"
    train(ModelConfig(kind="encoder-decoder", n_layer=1, d_model=32, n_head=4, d_ff=64,
                      dropout=0.0, max_context=200),
          TrainConfig(data=str(tmp_path / "h"), out=str(out), context=200, batch_size=4,
                      max_steps=4, eval_every=2), quiet=True)
    return tmp_path / "h", out


def test_training_and_evaluation_score_target_tokens(harmonize_run, tmp_path):
    from cadenza.checkpoint import load_checkpoint
    from cadenza.evaluate import evaluate
    data, run = harmonize_run
    ck = load_checkpoint(run / "best")
    assert ck.task == Harmonize(bars=4)
    ds = TokenDataset(data)
    res = evaluate(str(run / "best"), str(data))
    m = ck.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():  # direct: each pair alone
        for s, t in zip(ds.pieces("valid", "source"), ds.pieces("valid")):
            lp = torch.log_softmax(m(torch.tensor(t[None, :-2]), src=torch.tensor(s[None])), -1)
            total -= float(lp[0].gather(1, torch.tensor(t[1:-1, None])).sum())
            count += len(t) - 2
    assert res.tokens == count
    assert res.nll == pytest.approx(total / count, rel=1e-5)
    assert json.loads((run / "best" / "metrics.json").read_text())["val_nll"] == \
        pytest.approx(res.nll, rel=1e-5)
    # the decoder-only baseline on the same pairs: scored on the same target tokens
    out = tmp_path / "prefix"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=260),
          TrainConfig(data=str(data), out=str(out), context=260, batch_size=4, max_steps=2,
                      eval_every=2), quiet=True)
    assert evaluate(str(out / "best"), str(data)).tokens == count
    from cadenza.studio import list_models  # the studio offers models that continue pieces
    assert not [m for m in list_models(str(tmp_path)) if not m["id"].startswith("pretrained")]


def test_paired_misuse_is_one_line(harmonize_run, tiny_dataset, tiny_run, tmp_path, capsys,
                                   chorale_json):
    data, run = harmonize_run
    cases = [
        (["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "x"), "--model",
          "encoder-decoder", "--max-steps", "2"], "has no source -> target pairs"),
        (["train", "--data", str(data), "--out", str(tmp_path / "y"), "--model",
          "transformer", "--context", "100", "--max-steps", "2"], "--context: 100 is too short"),
        (["harmonize", "--checkpoint", str(tiny_run / "best"), "--melody",
          str(chorale_json), "--out", str(tmp_path / "z")], "trained to continue"),
        (["evaluate", "--checkpoint", str(tiny_run / "best"), "--data", str(data)],
         "vocabulary differs"),
        (["generate", "--checkpoint", str(run / "best"), "--out", str(tmp_path / "g")],
         "trained to harmonize a melody, not to continue a piece; use `cadenza harmonize`"),
        (["harmonize", "--checkpoint", str(run / "best"), "--melody", str(tmp_path / "no.mid"),
          "--out", str(tmp_path / "z")], f"--melody {tmp_path / 'no.mid'}: no such file"),
        (["harmonize", "--checkpoint", str(run / "best"), "--melody", str(chorale_json),
          "--out", str(tmp_path / "z")], "not a MIDI file"),
        (["accompany", "--checkpoint", str(run / "best"), "--melody", str(chorale_json),
          "--out", str(tmp_path / "z")], "trained to harmonize, not to accompany"),
        (["prepare", str(chorale_json), "--task", "accompany", "--out", str(tmp_path / "w")],
         "needs training and validation"),
        (["harmonize", "--checkpoint", str(run / "best"), "--melody", str(melody_file(
            tmp_path)), "--out", str(tmp_path / "z"), "--chords", "C G"],
         "--chords: harmonize writes chorale16 voices on an exact grid, which no control"),
        (["prepare", str(chorale_json), "--task", "harmonize", "--tokenizer", "performance",
          "--out", str(tmp_path / "v")], "--tokenizer: --task harmonize uses chorale16"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "z").exists()  # nothing written by a refused command


def melody_file(tmp_path, steps: int = 150) -> Path:
    rng = np.random.default_rng(5)
    line = [row[0] for row in chorale(rng, steps)]
    notes, start = [], 0
    for s in range(1, steps + 1):  # held pitches become one note
        if s == steps or line[s] != line[start]:
            notes.append((start * 0.125, s * 0.125, line[start], 80))
            start = s
    from conftest import make_score
    f = tmp_path / "tune.mid"
    make_score(notes).dump_midi(str(f))
    return f


def test_harmonize_writes_every_step_and_decodes(harmonize_run, tmp_path):
    _, run = harmonize_run
    mel = melody_file(tmp_path)
    assert main(["harmonize", "--checkpoint", str(run / "best"), "--melody", str(mel),
                 "--out", str(tmp_path / "out"), "--num-samples", "3", "--no-audio",
                 "--seed", "2"]) == 0
    tok = build_tokenizer("chorale16")
    want = tok.piece_from_notes(tok.score_notes(symusic.Score(str(mel))))[:, 0]
    for k in range(3):
        rec = json.loads((tmp_path / "out" / f"sample-{k}.json").read_text())
        assert rec["windows"] == 3  # 150 steps: 64 + 64 + 22
        assert rec["new_tokens"] == 3 * 150 + 3  # three a step, and EOS per window
        score = symusic.Score(str(tmp_path / "out" / f"sample-{k}.mid"))
        assert [t.name for t in score.tracks] == ["Soprano", "Alto", "Tenor", "Bass"]
        sop = tok.piece_from_notes(tok.score_notes(only(score, "Soprano")))[:, 0]
        assert np.array_equal(sop, want)  # the melody, unchanged, on its own track
        assert all(len(t.notes) for t in score.tracks)
        assert (tmp_path / "out" / f"sample-{k}.png").stat().st_size > 1000
    # the same seed, the same harmonization
    assert main(["harmonize", "--checkpoint", str(run / "best"), "--melody", str(mel),
                 "--out", str(tmp_path / "again"), "--num-samples", "3", "--no-audio",
                 "--seed", "2"]) == 0
    assert (tmp_path / "again" / "sample-1.mid").read_bytes() == \
        (tmp_path / "out" / "sample-1.mid").read_bytes()
    # an earlier take is kept unless --force
    assert main(["harmonize", "--checkpoint", str(run / "best"), "--melody", str(mel),
                 "--out", str(tmp_path / "out"), "--no-audio"]) == 2


def only(score: symusic.Score, name: str) -> symusic.Score:
    out = score.copy()
    out.tracks = [t for t in out.tracks if t.name == name]
    return out


@pytest.mark.parametrize("kind", ["encoder-decoder", "transformer"])
def test_accompany_samples_decode_within_their_bars_and_follow_chords(kind, tmp_path,
                                                                     pop_folder):
    prepare(PrepareConfig(sources=(str(pop_folder),), out=str(tmp_path / "a"),
                          task="accompany", valid_frac=0.2), progress=False)
    out = tmp_path / "arun"
    train(ModelConfig(kind=kind, n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0,
                      position="rope", max_context=400),
          TrainConfig(data=str(tmp_path / "a"), out=str(out), context=400, batch_size=4,
                      max_steps=3, eval_every=3), quiet=True)
    mel = pop_folder / "002" / "002.mid"
    assert main(["accompany", "--checkpoint", str(out / "best"), "--melody", str(mel),
                 "--out", str(tmp_path / "acc"), "--num-samples", "2", "--no-audio"]) == 0
    score = symusic.Score(str(mel))
    bars = pairs.downbeats(mel, score)
    for k in range(2):
        got = symusic.Score(str(tmp_path / "acc" / f"sample-{k}.mid"))
        assert [t.name for t in got.tracks] == ["Melody", "Piano"]
        from cadenza.data.midi import notes_from_score
        m = notes_from_score(only(got, "Melody"))
        assert len(m) == len(score.tracks[0].notes)
        piano = got.to("second").tracks[1].notes.numpy()
        if len(piano["time"]):  # every note within the last accompanied bar
            assert (piano["time"] + piano["duration"]).max() <= bars[-1] + 0.02
    # over chords (hard): every piano note is a tone of the chord sounding in the melody's
    # time when it starts, window after window
    from cadenza import theory
    from cadenza.data.midi import notes_from_score
    assert main(["accompany", "--checkpoint", str(out / "best"), "--melody", str(mel),
                 "--out", str(tmp_path / "chords"), "--num-samples", "2", "--no-audio",
                 "--chords", "C | G | Am | F", "--bpm", "100", "--chord-strength", "hard",
                 "--temperature", "1.5"]) == 0
    prog = theory.parse_progression("C | G | Am | F", bpm=100)
    struck = 0
    for k in range(2):
        piano = notes_from_score(only(symusic.Score(str(tmp_path / "chords" /
                                                        f"sample-{k}.mid")), "Piano"))
        for t, p in zip(piano.start, piano.pitch):
            u = (t + 1e-6) % prog[-1][1]
            label = next(lab for a, b, lab in prog if a <= u < b)
            assert p % 12 in theory.parse_chord(label)[0], (kind, t, p, label)
            struck += 1
    assert struck >= 5


def test_attention_maps_are_distributions_and_match_the_model():
    from cadenza.attention import attention_maps
    torch.manual_seed(0)
    for pos in ("relative", "rope", "sinusoidal"):
        m = build_model(ModelConfig(vocab_size=30, n_layer=2, d_model=32, n_head=4, d_ff=64,
                                    dropout=0.0, position=pos, max_context=32)).eval()
        idx = torch.randint(3, 30, (1, 20))
        maps = attention_maps(m, idx)
        assert list(maps) == ["layer-1", "layer-2"]
        for w in maps.values():
            assert w.shape == (4, 20, 20)
            np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
            assert np.triu(w, 1).max() == 0  # causal
        # the weights are the ones the model attends with: weights @ V == its output
        blk = m.blocks[0]
        x = blk.ln1(m.tok(idx) + (m.pe[:20] if pos == "sinusoidal" else 0))
        rope = m._rope_angles(idx, 0, None) if pos == "rope" else None
        C = x.shape[-1]
        _, _, v = blk.attn.qkv(x).split(C, 2)
        v = v.view(1, 20, 4, 8).transpose(1, 2)
        y = torch.from_numpy(maps["layer-1"])[None] @ v
        want = blk.attn(x, 0, rope, None, 0)
        got = blk.attn.proj(y.transpose(1, 2).reshape(1, 20, C))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    m = tiny_encdec(30)
    src = torch.randint(3, 30, (1, 9))
    maps = attention_maps(m, torch.randint(3, 30, (1, 11)), src)
    assert sorted(maps) == ["cross-1", "cross-2", "decoder-1", "decoder-2", "encoder-1",
                            "encoder-2"]
    assert maps["encoder-1"].shape == (4, 9, 9) and maps["cross-2"].shape == (4, 11, 9)
    for w in maps.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_attention_of_a_decoder_only_harmonizer_reads_melody_then_answer(tmp_path,
                                                                        chorale_json):
    """A decoder-only model trained on pairs reads [BOS melody EOS] BOS answer as one
    sequence: one map over all of it, the melody's tokens labelled as the melody's."""
    prepare(PrepareConfig(sources=(str(chorale_json),), out=str(tmp_path / "h"),
                          task="harmonize"), progress=False)
    run = tmp_path / "drun"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, max_context=400),
          TrainConfig(data=str(tmp_path / "h"), out=str(run), context=400, batch_size=4,
                      max_steps=2, eval_every=2), quiet=True)
    assert main(["attention", "--checkpoint", str(run / "best"), "--primer",
                 str(melody_file(tmp_path)), "--out", str(tmp_path / "att")]) == 0
    rec = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert list(rec["maps"]) == ["layer-1"] and rec["source_tokens"] == []
    n = rec["maps"]["layer-1"][1]
    # [BOS, 64 soprano steps, EOS], then the answer: BOS and 95 tokens (--tokens 96)
    assert len(rec["tokens"]) == n == 66 + 96
    assert rec["tokens"][0] == rec["tokens"][66] == "bos" and rec["tokens"][65] == "eos"


def test_tasks_are_types_read_and_written_in_one_place():
    assert Task.of(None) == Continue() and not Continue().paired
    for t in (Harmonize(4), Accompany(2), Harmonize(3)):
        assert Task.of(t.record()) == t and t.paired
    assert Task.named("accompany") == Accompany(bars=2)  # the task's own default
    assert Task.named("harmonize").tokenizer_for(None) == "chorale16"
    assert Continue().tokenizer_for("remi") == "remi" and \
        Continue().tokenizer_for(None) == "performance"
    with pytest.raises(ConfigError, match="--task: must be one of continue, harmonize, "
                                          "accompany, got 'sing'"):
        Task.named("sing")
    with pytest.raises(ConfigError, match="--tokenizer: --task accompany uses performance"):
        Task.named("accompany").tokenizer_for("chorale16")


def test_attention_command_draws_each_layer(harmonize_run, tiny_run, tmp_path, midi_folder):
    _, run = harmonize_run
    mel = melody_file(tmp_path)
    assert main(["attention", "--checkpoint", str(run / "best"), "--primer", str(mel),
                 "--out", str(tmp_path / "att")]) == 0
    assert sorted(p.name for p in (tmp_path / "att").glob("*.png")) == \
        ["cross-1.png", "decoder-1.png", "encoder-1.png"]
    rec = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert rec["maps"]["cross-1"] == [4, 96, 66]  # 96 target tokens, 64 steps + BOS, EOS
    assert rec["source_tokens"][1].endswith(("4", "5", "6")) or "s " in rec["source_tokens"][1]
    piece = sorted(midi_folder.glob("*.mid"))[0]
    assert main(["attention", "--checkpoint", str(tiny_run / "best"), "--primer", str(piece),
                 "--out", str(tmp_path / "att2"), "--tokens", "40"]) == 0
    rec = json.loads((tmp_path / "att2" / "attention.json").read_text())
    assert rec["maps"] == {"layer-1": [4, 40, 40]} and rec["tokens"][0] == "bos"
    from conftest import notes_of

    from cadenza.data.tokenizers.performance import OFF0, ON0
    from cadenza.render import note_name
    first = notes_of(symusic.Score(str(piece)))  # the first note, by its onset (10 ms grid)
    ids = build_tokenizer("performance").encode_primer(symusic.Score(str(piece)))[:39]
    on = int(np.flatnonzero((ids >= ON0) & (ids < OFF0))[0])
    assert rec["tokens"][on + 1] == f"{round(first.start[0] * 100) / 100:.2f}s " \
        f"{note_name(int(ids[on] - ON0))}"
    assert int(ids[on] - ON0) in first.pitch[np.abs(first.start - first.start[0]) < 0.01]


def test_real_jsb16_and_pop909_pairs(tmp_path):
    jsb = bench_file("jsb16/jsb16_separated.trainvalid.json")
    res = prepare(PrepareConfig(sources=(str(jsb),), out=str(tmp_path / "h"),
                                task="harmonize"), progress=False)
    assert res.manifest["splits"]["valid"]["songs"] == 76
    assert res.manifest["splits"]["train"]["longest"] == 64 * 3 + 2
    pop = Path(__file__).resolve().parents[2] / "shared/data/piano/pop909"
    if not pop.is_dir():
        pytest.skip(f"{pop} not found")
    tok = build_tokenizer("performance")
    made, _ = pairs.accompany_pairs(str(pop / "001" / "001.mid"), tok, 2, train=False)
    for p in made:  # every target decodes, and stays within its two bars (< 6 s here)
        notes = tok.decode_notes(p.target)
        assert len(notes) and notes.end.max() < 6.0
        assert ((p.target >= SHIFT0) & (p.target < VEL0)).any()
