"""Ensembles: the mean of the members' next-token distributions, as a model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cadenza.config import AugmentConfig, ModelConfig, TrainConfig
from cadenza.generate import SampleConfig, sample
from cadenza.models import build_model
from cadenza.models.ensemble import Ensemble
from cadenza.session import Session


def tiny(kind="transformer", position="relative", **kw):
    torch.manual_seed(len(kw) + len(kind) + len(position))  # members differ
    cfg = dict(kind=kind, vocab_size=40, n_layer=2, d_model=32, n_head=4, d_ff=64, dropout=0.0,
               position=position, max_context=64)
    return build_model(ModelConfig(**{**cfg, **kw})).eval()


def members():
    return [tiny("transformer", "rope", max_context=48), tiny("lstm"),
            tiny("transformer", "relative", n_layer=1)]


def test_ensemble_probabilities_are_the_mean_of_the_members():
    ms = members()
    x = torch.randint(3, 40, (2, 30))
    with torch.no_grad():
        got = Ensemble(ms)(x).exp()
        want = sum(F.softmax(m(x), -1) for m in ms) / len(ms)
        one = Ensemble(ms[:1])(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(one, F.log_softmax(ms[0](x), -1), atol=1e-6, rtol=1e-5)
    # log of a mean >= mean of logs: never worse than the members' average NLL
    y = torch.randint(3, 40, (2, 30))
    nll = lambda lp: -lp.gather(-1, y[..., None]).mean().item()  # noqa: E731
    with torch.no_grad():
        mean_member = sum(nll(F.log_softmax(m(x), -1)) for m in ms) / len(ms)
        assert nll(Ensemble(ms)(x)) <= mean_member + 1e-6


def test_ensemble_cached_steps_equal_the_full_forward_and_the_shortest_context_rules():
    e = Ensemble(members()).eval()
    assert e.max_context == 48
    x = torch.randint(3, 40, (3, 40))
    with torch.no_grad():
        full = e(x)
        cache = e.new_cache(3)
        parts = [e(x[:, :11], cache)] + [e(x[:, t: t + 1], cache) for t in range(11, 40)]
    assert cache.length == 40
    torch.testing.assert_close(full, torch.cat(parts, 1), atol=1e-5, rtol=1e-5)


def test_ensemble_sampling_cached_equals_uncached():
    from cadenza.data.tokenizers.base import EOS, Grammar

    class NoEnd(Grammar):  # keep sampling to the last token
        def allowed(self):
            m = super().allowed()
            m[:, EOS] = False
            return m

    e = Ensemble(members()).eval()
    prompt = np.array([[1, 5, 6, 7]] * 2)
    cfg = SampleConfig(tokens=40, seed=3, num_samples=2)
    a = sample(Session(e, None), prompt, cfg, 40, use_cache=True, grammar=NoEnd(40))
    b = sample(Session(e, None), prompt, cfg, 40, use_cache=False, grammar=NoEnd(40))
    assert all(len(s) == 40 for s in a)
    assert all(np.array_equal(s, t) for s, t in zip(a, b))


def test_evaluate_scores_several_checkpoints_as_one_ensemble(tiny_dataset, tmp_path):
    from cadenza.checkpoint import load_checkpoint
    from cadenza.data.dataset import TokenDataset
    from cadenza.evaluate import evaluate, windows
    from cadenza.train import train
    runs = []
    for seed, position in [(0, "rope"), (1, "relative")]:
        run = tmp_path / f"run{seed}"
        train(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, position=position,
                          max_context=64),
              TrainConfig(data=str(tiny_dataset), out=str(run), context=64, batch_size=2,
                          max_steps=4, eval_every=4, seed=seed, augment=AugmentConfig()),
              quiet=True)
        runs.append(run / "best")
    res = evaluate(runs, tiny_dataset, "valid", stride=32)
    singles = [evaluate(r, tiny_dataset, "valid", stride=32).nll for r in runs]
    # direct: the pieces' content tokens scored in 64-token windows advancing by 32
    models = [load_checkpoint(r).model for r in runs]
    total, n = 0.0, 0
    for p in TokenDataset(tiny_dataset).pieces("valid"):
        for s, w, f in windows(len(p), 64, 32):
            x = torch.from_numpy(p[None, s: s + w])
            with torch.no_grad():
                probs = sum(F.softmax(m(x), -1) for m in models) / 2
            tgt = torch.from_numpy(p[s + 1: s + w + 1])
            lp = probs[0].gather(1, tgt[:, None])[:, 0].log()
            keep = lp[f - s - 1:]
            total, n = total - keep.sum().item(), n + len(keep)
    assert res.tokens == n
    assert res.nll == pytest.approx(total / n, rel=1e-5)
    assert res.nll <= sum(singles) / 2 + 1e-6
    assert math.isfinite(res.nll)


def test_evaluate_refuses_members_with_other_vocabularies(tiny_dataset, midi_folder,
                                                          tmp_path):
    from cadenza.config import PrepareConfig
    from cadenza.data.prepare import prepare
    from cadenza.evaluate import evaluate
    from cadenza.train import train
    other = tmp_path / "ds16"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(other), tokenizer="chorale16",
                          valid_frac=0.2, test_frac=0.1), progress=False)
    runs = []
    for i, ds in enumerate([tiny_dataset, other]):
        train(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, position="rope",
                          max_context=32),
              TrainConfig(data=str(ds), out=str(tmp_path / f"r{i}"), context=32,
                          batch_size=2, max_steps=1, eval_every=1, augment=AugmentConfig()),
              quiet=True)
        runs.append(tmp_path / f"r{i}" / "best")
    with pytest.raises(ValueError, match="vocabulary differs"):
        evaluate(runs, tiny_dataset, "valid")


def test_relabelled_reads_and_answers_through_its_table():
    from cadenza.models.ensemble import Relabelled
    m = tiny("transformer", "rope")
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 40, (2, 20))
    with torch.no_grad():
        got = Relabelled(m, perm)(x)
        want = F.log_softmax(m(perm[x]), -1)[..., perm]  # answer v = the model's perm[v]
        same = Relabelled(m, torch.arange(40))(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(same, F.log_softmax(m(x), -1), atol=1e-6, rtol=1e-5)
    # tokens without a counterpart: read as themselves, never answered; the rest sum to one
    holes = perm.clone()
    holes[[5, 9]] = -1
    with torch.no_grad():
        lp = Relabelled(m, holes)(x)
        kept = F.log_softmax(m(torch.where(holes[x] >= 0, holes[x], x)), -1)[..., perm]
    assert torch.isinf(lp[..., [5, 9]]).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 20), atol=1e-5, rtol=0)
    mask = torch.ones(40, dtype=torch.bool)
    mask[[5, 9]] = False
    torch.testing.assert_close(lp[..., mask], F.log_softmax(kept[..., mask], -1), atol=1e-5,
                               rtol=1e-5)


def test_ensemble_of_relabellings_caches_like_the_full_forward():
    from cadenza.models.ensemble import Relabelled
    m = tiny("transformer", "relative")
    tables = [torch.roll(torch.arange(40), k) for k in (-1, 0, 2)]
    e = Ensemble([Relabelled(m, t) for t in tables]).eval()
    x = torch.randint(3, 40, (2, 30))
    with torch.no_grad():
        full = e(x)
        cache = e.new_cache(2)
        parts = [e(x[:, :7], cache)] + [e(x[:, t: t + 1], cache) for t in range(7, 30)]
    torch.testing.assert_close(full, torch.cat(parts, 1), atol=1e-5, rtol=1e-5)
