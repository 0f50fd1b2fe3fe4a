"""Dynamic evaluation (issue 43, `evaluate --adapt`): no token is predicted by weights that
have seen it, each piece starts from the trained weights, nothing of the checkpoint is
written, and bad flags are one line naming themselves."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cadenza.adapt import Adaptation, score_adapted
from cadenza.cli import main
from cadenza.config import ConfigError, EvaluateConfig, ModelConfig
from cadenza.data.tokenizers import BOS, EOS
from cadenza.evaluate import score_pieces
from cadenza.models import build_model

VOCAB, L = 40, 96


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=4,
                                   d_ff=64, dropout=0.0, position="rope", max_context=256))


def _piece(rng, n: int) -> np.ndarray:
    return np.concatenate([[BOS], rng.integers(3, VOCAB, n), [EOS]]).astype(np.int64)


def test_a_repeat_is_learnt_only_after_it_was_scored():
    """A piece whose second half repeats its first, one segment a half: the first half is
    scored by the trained weights (the same NLL as without --adapt, to the last bit), and
    the repeat, scored after one step on the first, is far likelier."""
    rng = np.random.default_rng(0)
    half = rng.integers(3, VOCAB, L)
    piece = np.concatenate([[BOS], half, half, [EOS]]).astype(np.int64)
    model = _model()
    static = score_pieces(model, [piece], 256, 256)[0]
    adapted = score_adapted(model, [piece], 256, Adaptation(lr=0.5, segment=L))[0]
    assert adapted.shape == static.shape == (2 * L,)
    np.testing.assert_allclose(adapted[:L], static[:L], rtol=1e-5, atol=1e-5)
    assert adapted[L:].mean() < static[L:].mean() - 0.1, (adapted[L:].mean(),
                                                           static[L:].mean())
    # what it learnt is this piece: a second half that is not a repeat gains nothing
    fresh = np.concatenate([[BOS], half, rng.integers(3, VOCAB, L), [EOS]]).astype(np.int64)
    f_static = score_pieces(model, [fresh], 256, 256)[0]
    f_adapted = score_adapted(model, [fresh], 256, Adaptation(lr=0.5, segment=L))[0]
    assert f_adapted[L:].mean() > f_static[L:].mean() - 0.02
    # a segment that ends before the repeat starts learns nothing of it: with segments
    # of a quarter, the first quarter is unchanged and the rest is scored before each step
    quarter = score_adapted(model, [piece], 256, Adaptation(lr=0.5, segment=L // 4))[0]
    np.testing.assert_allclose(quarter[: L // 4], static[: L // 4], rtol=1e-5, atol=1e-5)


def test_each_piece_starts_from_the_trained_weights():
    rng = np.random.default_rng(1)
    a, b = _piece(rng, 150), _piece(rng, 90)
    model = _model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    how = Adaptation(lr=0.2, segment=32)
    ab = score_adapted(model, [a, b], 64, how)
    ba = score_adapted(model, [b, a], 64, how)
    np.testing.assert_allclose(ab[0], ba[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ab[1], ba[0], rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the model is what it was
    assert all(p.grad is None for p in model.parameters())
    # a piece longer than the context: every token scored, with history up to the context
    assert len(ab[0]) == 150 and np.isfinite(ab[0]).all()


def test_evaluate_adapt_on_midi_writes_nothing_and_says_how(tiny_run, tmp_path, capsys,
                                                             midi_folder):
    best = tiny_run / "best"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in best.iterdir()}
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(midi_folder),
                 "--json"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(midi_folder),
                 "--adapt", "--adapt-lr", "0.05", "--adapt-segment", "32", "--json"]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert "adapted" not in static
    assert adapted["adapted"] == {"lr": 0.05, "segment": 32, "optimizer": "sgd"}
    assert adapted["tokens"] == static["tokens"] and adapted["nll"] != static["nll"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in best.iterdir()} == digest
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(midi_folder),
                 "--adapt", "--adapt-segment", "4096"]) == 2
    assert "--adapt-segment: 4096 is longer than the model's context (64 tokens)" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("kw", "said"), [
    (dict(adapt=True, adapt_lr=0.0), "--adapt-lr: must be a number in (0, 1]"),
    (dict(adapt=True, adapt_lr=float("nan")), "--adapt-lr: must be a number in (0, 1]"),
    (dict(adapt=True, adapt_lr=-1e-3), "--adapt-lr: must be a number in (0, 1]"),
    (dict(adapt=True, adapt_segment=8), "--adapt-segment: must be at least 16 tokens"),
    (dict(adapt=True, transpositions=3), "--adapt: reads each piece in its own key"),
    (dict(adapt=True, checkpoint=("a", "b")), "--adapt: adapts one checkpoint, not an "
                                              "ensemble")])
def test_bad_adapt_flags_name_themselves(kw, said):
    base = dict(checkpoint=("a",), data=("d",))
    with pytest.raises(ConfigError, match="^" + said.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        EvaluateConfig(**{**base, **kw})


def test_generate_adapt_learns_the_primer_on_a_copy(tiny_run, tmp_path, midi_folder):
    from cadenza.session import Session
    s = Session.load(str(tiny_run / "best"))
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    primer = next(midi_folder.glob("*.mid"))
    prompt, _ = s.encode_primer(str(primer))
    a = s.adapted(prompt, Adaptation(lr=0.05, segment=32), passes=2)
    assert a.model is not s.model
    for k, v in s.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the loaded model is untouched

    def nll(session):
        ids = torch.as_tensor(prompt[-64:][None])
        logp = torch.log_softmax(session.logits(ids).float()[0, :-1], -1)
        return float(-logp.gather(-1, ids[0, 1:, None]).mean())

    assert nll(a) < nll(s) - 0.05  # it has learnt the primer
    best = tiny_run / "best"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in best.iterdir()}
    assert main(["generate", "--checkpoint", str(best), "--primer", str(primer), "--out",
                 str(tmp_path / "g"), "--tokens", "40", "--no-audio", "--adapt",
                 "--adapt-lr", "0.05", "--adapt-segment", "32"]) == 0
    assert (tmp_path / "g" / "sample-0.mid").exists()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in best.iterdir()} == digest
    assert main(["generate", "--checkpoint", str(best), "--out", str(tmp_path / "h"),
                 "--adapt", "--adapt-passes", "9"]) == 2
