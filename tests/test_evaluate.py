"""Evaluation: sliding-window NLL equals a direct computation; per-frame = sum of tokens."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.config import ModelConfig
from cadenza.data.tokenizers import BOS, EOS, build_tokenizer
from cadenza.evaluate import score_pieces, summarize, windows
from cadenza.models import build_model


def model(vocab, max_context=128):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=vocab, n_layer=2, d_model=32, n_head=4, d_ff=64,
                                   dropout=0.0, position="relative",
                                   max_context=max_context)).eval()


def pieces(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [np.r_[BOS, rng.integers(3, vocab, n), EOS].astype(np.int64) for n in lengths]


def direct(m, p):
    with torch.no_grad():
        logits = m(torch.from_numpy(p[None, :-2]))
    return -F.log_softmax(logits, -1)[0].gather(1, torch.from_numpy(p[1:-1])[:, None])[:, 0]


def test_nll_equals_a_direct_computation_within_the_context():
    m = model(50)
    ps = pieces(50, [5, 40, 100, 17])
    got = score_pieces(m, ps, context=128, stride=64, batch_size=3)
    for g, p in zip(got, ps):
        np.testing.assert_allclose(g, direct(m, p).numpy(), rtol=1e-5, atol=1e-5)
    res = summarize(got)
    assert res.tokens == 5 + 40 + 100 + 17
    assert abs(res.nll - np.concatenate([direct(m, p).numpy() for p in ps]).mean()) < 1e-5


def test_sliding_window_scores_every_token_once_with_enough_history():
    for n, ctx, stride in [(300, 64, 32), (65, 64, 32), (1000, 128, 100)]:
        seen = np.zeros(n, int)
        for s, w, f in windows(n, ctx, stride):
            assert w <= ctx and f >= s + 1
            seen[f: s + w + 1] += 1
            assert s == 0 or f - 1 - s >= ctx - stride  # history before the first scored
        assert (seen[1: n - 1] == 1).all() and seen[0] == 0 and seen[n - 1] == 0
    m = model(50, max_context=32)
    p = pieces(50, [150])
    long = score_pieces(m, p, context=32, stride=16)[0]
    assert long.shape == (150,) and np.isfinite(long).all() and (long > 0).all()


def test_frame_nll_is_the_sum_of_its_tokens():
    tok = build_tokenizer("pianoroll")
    roll = np.random.default_rng(1).random((30, 88)) < 0.04
    p = np.r_[BOS, tok.encode(roll), EOS]
    m = model(tok.vocab_size, max_context=256)
    nll = score_pieces(m, [p], context=256, stride=128)
    res = summarize(nll, tok, [p])
    assert res.frames == 30
    fi = tok.frame_index(p[1:-1])
    assert abs(res.frame_nll - np.bincount(fi, weights=nll[0]).mean()) < 1e-9
    assert abs(res.frame_nll * res.frames - nll[0].sum()) < 1e-6
