"""Generation: cached == uncached, every sample decodes, seeds reproduce, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cadenza.config import AugmentConfig, ModelConfig, TrainConfig
from cadenza.data.tokenizers import BOS, EOS, build_tokenizer
from cadenza.generate import GenerateConfig, SampleConfig, draw, filter_logits, sample
from cadenza.models import build_model
from cadenza.session import Session
from tests.models.test_models import KINDS, reference_decoding


def tiny(vocab, kind="transformer", position="relative", max_context=64, voice_period=0):
    torch.manual_seed(1)
    return build_model(ModelConfig(kind=kind, vocab_size=vocab, n_layer=2, d_model=32, n_head=4,
                                   d_ff=64, dropout=0.0, position=position,
                                   max_context=max_context, voice_period=voice_period)).eval()


@pytest.mark.parametrize("kind,position", KINDS)
def test_cached_generation_equals_uncached(kind, position):
    tok = build_tokenizer("performance")
    m = tiny(tok.vocab_size, kind, position)
    prompt = np.array([[BOS, 62, 70, 262]] * 2)
    cfg = SampleConfig(tokens=40, seed=7, num_samples=2)
    a = sample(Session(m, tok), prompt, cfg, 40, use_cache=True)
    b = sample(Session(m, tok), prompt, cfg, 40, use_cache=False)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("pitch_dims", [0, 4])  # 4: the JSB piano-roll recipe's relative pitch
def test_step_position_generation_cached_equals_uncached_past_the_context(pitch_dims):
    tok = build_tokenizer("pianoroll")
    torch.manual_seed(1)
    m = build_model(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4,
                                d_ff=64, dropout=0.0, position="rope", max_context=32,
                                step_positions=True, step_token=tok.step_token,
                                pitch_dims=pitch_dims,
                                pitch_of=tuple(tok.pitch_table().tolist()))).eval()
    prompt = np.array([[BOS, 40, 44, 47, tok.step_token, 40]] * 2)
    cfg = SampleConfig(tokens=80, seed=3, num_samples=2, temperature=1.5)
    a = sample(Session(m, tok), prompt, cfg, 80, use_cache=True)
    b = sample(Session(m, tok), prompt, cfg, 80, use_cache=False)
    for x, y in zip(a, b):
        assert np.array_equal(x, y) and (x == tok.step_token).any()


@pytest.mark.parametrize("name,period", [("performance", 0), ("chorale16", 4), ("pianoroll", 0)])
def test_fuzzed_batches_always_decode(name, period):
    tok = build_tokenizer(name)
    m = tiny(tok.vocab_size, max_context=48, voice_period=period)
    rng = np.random.default_rng(0)
    for trial in range(3):  # random primers, hot sampling, past the context (sliding)
        g = tok.grammar()
        g.reset(1)
        primer = [BOS]
        for _ in range(int(rng.integers(0, 20))):
            t = int(rng.choice(np.flatnonzero(g.allowed()[0])))
            g.advance(np.array([t]))
            primer.append(t)
        prompt = np.array([primer] * 4)
        cfg = SampleConfig(tokens=120, temperature=3.0, seed=trial, num_samples=4)
        for new in sample(Session(m, tok, period=period), prompt, cfg, 120):
            notes = tok.decode_notes(np.concatenate([prompt[0], new]))
            assert np.all(notes.end > notes.start)
            assert ((notes.pitch >= 0) & (notes.pitch < 128)).all()


@pytest.mark.parametrize("position", ["learned", "rope", "relative"])
def test_fast_decoding_samples_the_reference_paths_tokens(position, monkeypatch):
    """The one-token fast paths (transposed weights, the lean attention step, the direct
    draw) against nn.Linear's product, the general attention and torch.multinomial."""
    tok = build_tokenizer("performance")
    torch.manual_seed(2)
    m = build_model(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=128,
                                n_head=4, d_ff=256, dropout=0.0, position=position,
                                max_context=300)).eval()
    prompt = np.array([[BOS, 62, 70, 262]] * 2)
    cfg = SampleConfig(tokens=250, seed=11, num_samples=2, top_p=0.95)

    class NoEnd(type(tok.grammar())):  # every sample runs its 250 tokens
        def allowed(self):
            a = super().allowed().copy()
            a[:, EOS] = False
            return a
    fast = sample(Session(m, tok), prompt, cfg, 250, grammar=NoEnd())

    def reference_draw(logits, allowed, cfg, gen):
        lg = logits.float().masked_fill(~allowed, float("-inf")) / cfg.temperature
        probs = torch.softmax(filter_logits(lg, cfg.top_k, cfg.top_p), -1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
    reference_decoding(monkeypatch)
    monkeypatch.setattr("cadenza.generate.draw", reference_draw)
    slow = sample(Session(m, tok), prompt, cfg, 250, grammar=NoEnd())
    for a, b in zip(fast, slow):
        assert len(a) == 250 and np.array_equal(a, b)


def test_draw_takes_only_allowed_tokens_and_refuses_a_broken_distribution():
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(3, 10)
    allowed = torch.zeros(3, 10, dtype=torch.bool)
    allowed[:, 4:6] = True
    got = torch.stack([draw(logits, allowed, SampleConfig(tokens=1), gen) for _ in range(200)])
    assert set(got.flatten().tolist()) == {4, 5}
    with pytest.raises(RuntimeError, match="not finite"):
        draw(torch.full((1, 10), float("nan")), allowed[:1], SampleConfig(tokens=1), gen)


def test_same_seed_same_music_other_seed_other_music():
    tok = build_tokenizer("performance")
    m = tiny(tok.vocab_size)
    prompt = np.array([[BOS]])
    run = lambda s: sample(Session(m, tok), prompt, SampleConfig(tokens=30, seed=s), 30)[0]  # noqa
    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_top_k_and_top_p_keep_the_likeliest():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 0, 0.7)[0])
    assert kept.tolist() == [True, True, False, False]


def test_seconds_budget_and_contradictory_options():
    from cadenza.config import ConfigError
    with pytest.raises(ConfigError, match="--tokens"):
        SampleConfig(tokens=10, seconds=5)
    tok = build_tokenizer("performance")
    m = tiny(tok.vocab_size)
    new = sample(Session(m, tok), np.array([[BOS]]), SampleConfig(seconds=2.0, seed=0), 2000)[0]
    assert tok.decode_notes(new).duration <= 2.0 + 1.0  # the last token's shift may overshoot


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cadenza", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_generate_evaluate_stats_end_to_end(tiny_run, tiny_dataset, midi_folder, tmp_path):
    out = tmp_path / "gen"
    primer = sorted(midi_folder.glob("*.mid"))[0]
    r = cli("generate", "--checkpoint", tiny_run / "best", "--out", out, "--primer", primer,
            "--primer-seconds", 3, "--seconds", 4, "--num-samples", 2, "--seed", 1)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert {"sample-0.mid", "sample-0.json", "sample-0.png", "sample-1.mid"} <= set(names)
    info = json.loads((out / "sample-0.json").read_text())
    assert info["settings"]["seed"] == 1 and info["primer"]["tokens"] > 0
    assert "memorization" in info and info["checkpoint_sha1"]
    r = cli("evaluate", "--checkpoint", tiny_run / "best", "--data", tiny_dataset, "--json")
    assert r.returncode == 0, r.stderr
    single = json.loads(r.stdout)["nll"]
    assert single > 0
    r = cli("evaluate", "--checkpoint", tiny_run / "last", "--data", tiny_dataset, "--json")
    last = json.loads(r.stdout)["nll"]
    r = cli("evaluate", "--checkpoint", tiny_run / "best", tiny_run / "last", "--data",
            tiny_dataset, "--json")  # an ensemble of two
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["nll"] <= (single + last) / 2 + 1e-6
    r = cli("evaluate", "--checkpoint", tiny_run / "best", "--data", tiny_dataset, "--json",
            "--transpositions", 3)  # the model averaged over three keys
    assert r.returncode == 0, r.stderr
    keys = json.loads(r.stdout)
    assert keys["nll"] > 0 and keys["nll"] != single and keys["tokens"] > 0
    r = cli("evaluate", "--checkpoint", tiny_run / "best", "--data", tiny_dataset,
            "--transpositions", 13)
    assert r.returncode == 2 and "--transpositions: must be in 1..12, got 13" in r.stderr
    r = cli("stats", out, "--reference", tiny_dataset, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["decoded_share"] == 1.0 and "pitch_class" in st["features"]


def test_cli_generate_bad_input_writes_nothing(tiny_run, tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_text("not midi")
    cases = [
        ("--primer", bad),
        ("--tokens", 5, "--seconds", 2),
    ]
    for extra in cases:
        out = tmp_path / "o"
        r = cli("generate", "--checkpoint", tiny_run / "best", "--out", out, *extra)
        assert r.returncode == 2 and r.stderr.startswith("cadenza: error:"), r.stderr
        assert not out.exists() or not any(out.iterdir())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    r = cli("generate", "--checkpoint", tmp_path / "broken", "--out", tmp_path / "o2")
    assert r.returncode == 2 and "model.safetensors" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("generate", "--checkpoint", tiny_run / "best", "--out", blocker / "sub",
            "--tokens", 5)
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_several_checkpoints_generate_as_one_ensemble(tiny_run, tmp_path):
    from cadenza.generate import Generator, run_generate
    from cadenza.models.ensemble import Ensemble
    cks = [tiny_run / "best", tiny_run / "last"]
    gen = Generator.load(cks)
    assert isinstance(gen.model, Ensemble) and len(gen.members) == 2
    assert gen.checkpoint_hash != Generator.load(cks[0]).checkpoint_hash
    infos = run_generate(GenerateConfig(out=str(tmp_path / "g"),
                                        checkpoint=[str(c) for c in cks],
                                        sample=SampleConfig(tokens=40, seed=2),
                                        audio=False))
    assert infos[0].new_tokens > 0 and str(cks[1]) in infos[0].checkpoint
    assert (tmp_path / "g" / "sample-0.mid").exists()


def test_generation_averaged_over_keys_decodes_and_says_so(tiny_run, tmp_path):
    from cadenza.generate import Generator, run_generate
    from cadenza.models.ensemble import Ensemble, Relabelled
    gen = Generator.load(tiny_run / "best", transpositions=3)
    assert isinstance(gen.model, Ensemble)
    assert [type(m) for m in gen.model.members] == [Relabelled, type(gen.ck.model), Relabelled]
    infos = run_generate(GenerateConfig(out=str(tmp_path / "g"),
                                        checkpoint=[str(tiny_run / "best")],
                                        sample=SampleConfig(tokens=60, seed=2, num_samples=2),
                                        audio=False,
                                        transpositions=3))
    assert all(i.transpositions == 3 and i.notes > 0 for i in infos)
    assert all((tmp_path / "g" / f"sample-{k}.mid").exists() for k in range(2))


def test_stats_scores_the_continuation_as_the_sample_json_does(tiny_dataset, tmp_path):
    """Primed with a training piece, the whole file copies training music; the sample's JSON
    measures the continuation only, and `stats` must measure the same notes."""
    from cadenza.data.dataset import TokenDataset
    from cadenza.generate import run_generate
    from cadenza.stats import stats_of
    from cadenza.train import train
    run = tmp_path / "run"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=1024),
          TrainConfig(data=str(tiny_dataset), out=str(run), context=64, batch_size=4,
                      max_steps=4, eval_every=4, augment=AugmentConfig()), quiet=True)
    ds = TokenDataset(tiny_dataset)
    primer = next(f["path"] for f in ds.manifest["files"] if f["split"] == "train")
    out = tmp_path / "gen"
    infos = run_generate(GenerateConfig(out=str(out),
                                        checkpoint=str(run / "best"),
                                        primer=primer,
                                        sample=SampleConfig(tokens=150, seed=3),
                                        audio=False))
    info = infos[0]
    assert info.primer["tokens"] > 200  # the whole training piece is the primer
    res = stats_of(str(out), str(tiny_dataset))
    assert res.generated_notes == info.continuation_notes > 0
    mem = res.memorization
    assert mem["max_longest_copied_notes"] == info.memorization["longest_copied_notes"]
    assert mem["mean_copied_8gram_share"] == info.memorization["copied_8gram_share"]
    assert mem["max_longest_copied_notes"] < 40  # the primer (40+ copied notes) is not in it


def test_generate_reads_a_chorale16_primer_on_its_beats(tmp_path):
    """`generate` encodes a primer as the tokenizer reads training data: eight quarter-note
    chords at 60 bpm are 32 steps (128 tokens); their first 4 s are 16 steps."""
    from cadenza.config import PrepareConfig
    from cadenza.data.prepare import prepare
    from cadenza.generate import Generator
    from cadenza.train import train
    from tests.conftest import make_score
    rng = np.random.default_rng(0)
    src = tmp_path / "c.json"
    grids = [rng.integers(50, 70, (40, 4)).tolist() for _ in range(3)]
    src.write_text(json.dumps({"train": grids, "valid": grids[:1]}))
    prepare(PrepareConfig(sources=(str(src),), out=str(tmp_path / "ds"), tokenizer="chorale16"),
            progress=False)
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, position="rope",
                      max_context=512, voice_period=4),
          TrainConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "run"), context=64,
                      batch_size=2, max_steps=1, eval_every=1), quiet=True)
    chords = [(60, 64, 67, 72), (59, 62, 67, 74)] * 4
    make_score([(i, i + 1, p, 80) for i, c in enumerate(chords) for p in c], tempo=60.0,
               pedals=[(0, 8)]).dump_midi(str(tmp_path / "p.mid"))
    gen = Generator.load(tmp_path / "run" / "best")
    ids, info = gen.encode_primer(str(tmp_path / "p.mid"))
    assert info["tokens"] == 128 and len(ids) == 129
    assert gen.encode_primer(str(tmp_path / "p.mid"), seconds=4)[1]["tokens"] == 64


@pytest.mark.parametrize("name", ["performance", "chorale16", "pianoroll", "remi"])
def test_seconds_and_the_primer_boundary_hold_for_every_tokenizer(name, midi_folder,
                                                                   tmp_path):
    """A 3-second primer, 4 seconds asked: the primer's stream reaches 3 s (a closing rest
    included), no new note starts before it, and the continuation lasts the 4 seconds
    asked (to within one token's worth of time) unless the model ended the piece. For REMI
    `--seconds` was ignored and new notes started before the primer's end."""
    from cadenza.config import PrepareConfig
    from cadenza.data.prepare import prepare
    from cadenza.data.tokenizers import EOS
    from cadenza.generate import Generator, primer_mask
    from cadenza.train import train
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(tmp_path / "ds"),
                          tokenizer=name), progress=False)
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, position="rope",
                      max_context=1024),
          TrainConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "run"), context=64,
                      batch_size=2, max_steps=1, eval_every=1), quiet=True)
    gen = Generator.load(tmp_path / "run" / "best")
    prompt, info = gen.encode_primer(str(sorted(midi_folder.glob("*.mid"))[1]), seconds=3.0)
    assert info["seconds"] == pytest.approx(3.0, abs=0.07)
    slack = {"performance": 1.0, "chorale16": 0.2, "pianoroll": 0.2, "remi": 2.5}[name]
    for new in gen.generate(prompt, SampleConfig(seconds=4.0, seed=0, num_samples=3)):
        ids = np.concatenate([prompt[1:], new])
        full, primer = gen.tok.decode_notes(ids), gen.tok.decode_notes(prompt[1:])
        is_primer = primer_mask(full, primer)
        assert np.all(full.start[~is_primer] >= info["seconds"] - 1e-6)
        assert np.all(full.start[is_primer] < info["seconds"])
        got = gen.seconds_of(ids) - info["seconds"]
        if new[-1] != EOS:
            assert 4.0 <= got <= 4.0 + slack, got


def test_a_session_gives_a_pieces_features(tiny_run):
    """Generator.features: hidden states per token from any layer, the last one what the
    output layer reads (its logits are the model's), read in windows of the context."""
    import torch

    from cadenza.generate import Generator
    gen = Generator.load(str(tiny_run / "best"))
    rng = np.random.default_rng(0)
    ids = np.r_[1, rng.integers(3, gen.tok.vocab_size, 150)]  # BOS, then 150 tokens
    last, first = gen.features(ids, layers=(-1, 0))
    d = gen.ck.model_cfg.d_model
    assert last.shape == (150, d) and first.shape == (150, d)
    assert np.array_equal(last, first) == (gen.ck.model_cfg.n_layer == 1)  # the same block
    again = gen.features(ids)[0]
    assert np.array_equal(again, last)  # deterministic
    model = gen.ck.model
    with torch.no_grad():  # within one window, the last layer is what the logits read
        x = torch.as_tensor(ids[None, :60])
        logits = model(x)[0, 1:]
        head = model.head(torch.as_tensor(gen.features(ids[:60])[0]))
    assert torch.allclose(head, logits.float(), atol=1e-4)
    assert gen.features(ids, window=64)[0].shape == (150, d)  # 3 windows of 63
