"""Record the tokens that sampling gives for every tokenizer and model kind, so that
tests/test_engine.py can check the generation engine draws the same ones.

The reference in tests/fixtures/engine_reference.json was recorded with the closed-loop
``sample()`` that preceded the engine (commit 25175f2), with sampling free to end at EOS
(today's ``--may-end``). Run again only to record a deliberate change of the stream:

    python scripts/record_engine_reference.py tests/fixtures/engine_reference.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from cadenza.config import ModelConfig, SampleConfig
from cadenza.data.tokenizers import BOS, build_tokenizer
from cadenza.models import build_model

TOKENIZERS = [("performance", 1), ("chorale16", 4), ("pianoroll", 1), ("miditok:REMI", 1),
              ("miditok:TSD", 1), ("miditok:MIDILike", 1), ("miditok:Structured", 1)]
KINDS = [("transformer", p) for p in ("sinusoidal", "learned", "rope", "relative")] + \
    [(k, "relative") for k in ("rnn", "lstm", "gru")]
SETTINGS = [dict(tokens=40, seed=3, temperature=1.3, num_samples=2),
            dict(seconds=1.5, seed=5, top_p=0.9, num_samples=2)]


def model_for(tok, kind: str, position: str, period: int):
    torch.manual_seed(1)
    return build_model(ModelConfig(kind=kind, vocab_size=tok.vocab_size, n_layer=2, d_model=32,
                                   n_head=4, d_ff=64, dropout=0.0, position=position,
                                   max_context=48, voice_period=period if period > 1 else 0)
                       ).eval()


def primer_for(tok, seed: int) -> np.ndarray:
    """BOS and up to 20 tokens the grammar allows, drawn at random."""
    rng = np.random.default_rng(seed)
    g = tok.grammar()
    g.reset(1)
    ids = [BOS]
    for _ in range(20):
        t = int(rng.choice(np.flatnonzero(g.allowed()[0][3:]) + 3))
        g.advance(np.array([t]))
        ids.append(t)
    return np.array(ids, np.int64)


def cases():
    for name, period in TOKENIZERS:
        tok = build_tokenizer(name)
        for kind, position in KINDS:
            for i, s in enumerate(SETTINGS):
                yield name, period, tok, kind, position, i, s


def record(run) -> dict[str, list[list[int]]]:
    """``run(model, prompt (B, T), grammar, cfg, max_new, period)`` -> each row's new ids."""
    out = {}
    for name, period, tok, kind, position, i, s in cases():
        model = model_for(tok, kind, position, period)
        cfg = SampleConfig(**s)
        prompt = np.repeat(primer_for(tok, i)[None], cfg.num_samples, 0)
        max_new = cfg.tokens or 120
        got = run(model, prompt, tok.grammar(), cfg, max_new, period)
        out[f"{name}|{kind}|{position}|{i}"] = [g.tolist() for g in got]
    return out


if __name__ == "__main__":
    from cadenza.engine import sample
    from cadenza.session import Session
    torch.set_num_threads(1)
    ref = record(lambda m, p, g, c, n, per: sample(Session(m, None, period=per), p, c, n,
                                                   grammar=g))
    with open(sys.argv[1], "w") as f:
        json.dump(ref, f, indent=0)
    print(f"{len(ref)} cases, {sum(len(r) for v in ref.values() for r in v)} tokens")
