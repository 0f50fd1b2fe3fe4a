"""The generation engine: the tokens it draws are today's, lengths hold, the hard controls hold
on every new note, the soft one steers, the loop guard bounds repeats, bad values get one
line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cadenza.config import ConfigError, ModelConfig, SampleConfig
from cadenza.controls import NEEDS, Controls, Step
from cadenza.data.tokenizers import BOS, EOS, build_tokenizer
from cadenza.data.tokenizers.performance import OFF0, ON0, SHIFT0, VEL0
from cadenza.engine import (
    DEAD_END,
    EOS_STOP,
    SECONDS,
    TOKEN_LIMIT,
    TOKENS,
    Engine,
    sample,
    sample_run,
)
from cadenza.generate import primer_mask
from cadenza.models import build_model
from cadenza.session import Session
from cadenza.stats import longest_repeat

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("record",
                                               ROOT / "scripts/record_engine_reference.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)


def test_engine_draws_the_recorded_tokens_for_every_tokenizer_and_model_kind():
    """The reference was recorded with the closed loop that preceded the engine. With
    --may-end every token is the same; without it, the same up to where the old loop drew
    EOS (the engine masks EOS after top-p, so no other draw moves)."""
    ref = json.loads((ROOT / "tests/fixtures/engine_reference.json").read_text())
    free = record.record(lambda m, p, g, c, n, per: sample(
        Session(m, None, period=per), p, c.replace(may_end=True), n, grammar=g))
    assert free == ref
    held = record.record(lambda m, p, g, c, n, per: sample(Session(m, None, period=per), p, c, n,
                                                           grammar=g))
    ended = 0
    for key, rows in ref.items():
        for old, new in zip(rows, held[key]):
            if EOS in old:
                ended += 1
                cut = old.index(EOS)
                assert new[:cut] == old[:cut] and EOS not in new, key
            else:
                assert new == old, key
    assert ended > 10  # the comparison saw samples the old loop ended early


class Biased(nn.Module):
    """A stand-in model whose next-token logits depend only on the last token, from a table:
    it can be made to love EOS, a loop, or tokens that never move time."""

    max_context = None

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def new_cache(self, batch, device=None, dtype=None):
        return type("Cache", (), {"length": 0})()

    def forward(self, idx, cache=None):
        if cache is not None:
            cache.length += idx.shape[1]
        return self.table[idx]


def eos_lover(tok) -> Biased:
    t = torch.zeros(tok.vocab_size, tok.vocab_size)
    t[:, EOS] = 8.0  # EOS is ~3000x likelier than any other token
    return Biased(t)


@pytest.mark.parametrize("name", ["performance", "chorale16", "pianoroll", "miditok:TSD"])
def test_eos_never_comes_before_the_seconds_asked_unless_may_end(name):
    tok = build_tokenizer(name)
    model = eos_lover(tok)
    prompt = np.array([[BOS]] * 4)
    cfg = SampleConfig(seconds=10.0, seed=2, num_samples=4)
    run = sample_run(Session(model, tok), prompt, cfg)
    for new, why in zip(run.tokens, run.stopped):
        assert EOS not in new and why == SECONDS
        g = tok.grammar()
        g.reset(1)
        g.feed(new[None])
        assert g.elapsed()[0] >= 10.0
    early = sample_run(Session(model, tok), prompt, cfg.replace(may_end=True))
    assert all(w == EOS_STOP for w in early.stopped)
    assert max(len(t) for t in early.tokens) < min(len(t) for t in run.tokens)


def test_a_sample_that_stops_short_says_why():
    tok = build_tokenizer("performance")
    t = torch.zeros(tok.vocab_size, tok.vocab_size)
    t[:, VEL0 + 5] = 10.0  # velocity tokens forever: time never moves
    run = sample_run(Session(Biased(t), tok), np.array([[BOS]]), SampleConfig(seconds=2.0),
                     max_new=50)
    assert run.stopped == [TOKEN_LIMIT] and len(run.tokens[0]) == 50
    run = sample_run(Session(Biased(t), tok), np.array([[BOS]]), SampleConfig(tokens=7),
                     max_new=7)
    assert run.stopped == [TOKENS] and len(run.tokens[0]) == 7


def test_a_grammar_dead_end_ends_the_sample_and_is_named():
    from cadenza.data.tokenizers.miditok_adapter import TypeGrammar
    tok = build_tokenizer("miditok:TSD")
    n = len(tok.type_names)
    trans = np.ones((n, n), bool)
    pitch = tok.type_names.index("Pitch")
    trans[pitch] = False  # nothing may follow a Pitch: a dead end
    g = TypeGrammar(tok.type_of, trans, tok.stream_seconds, tok.vocab)
    t = torch.zeros(tok.vocab_size, tok.vocab_size)
    t[:, tok.type_of == pitch] = 5.0
    run = sample_run(Session(Biased(t), tok), np.array([[BOS]]), SampleConfig(seconds=5.0),
                     grammar=g)
    assert run.stopped == [DEAD_END] and run.tokens[0][-1] == EOS


def test_the_engine_continues_a_session_token_for_token():
    """Two runs of 15 tokens, with notes fed between, read as the same tokens a fresh engine
    draws from the whole context: feeding and stepping keep one state."""
    tok = build_tokenizer("performance")
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4,
                                d_ff=64, dropout=0.0, position="rope", max_context=40)).eval()
    cfg = SampleConfig(tokens=15, seed=4, temperature=1.5, may_end=True)
    with torch.no_grad():
        eng = Engine(Session(m, tok), cfg)
        eng.feed(np.array([BOS, ON0 + 60, SHIFT0 + 20]))
        first = eng.run()
        played = np.array([ON0 + 64, SHIFT0 + 30, OFF0 + 64])
        eng.feed(played)
        second = eng.run()
        ctx = eng.tokens()[0]
        # the logits it holds are the model's for the whole context, slid past 40 tokens
        ref = Engine(Session(m, tok), cfg)
        ref.feed(ctx)
        assert torch.allclose(eng._next_logits(), ref._next_logits(), atol=1e-5)
    assert len(first.tokens[0]) == len(second.tokens[0]) == 15
    assert np.array_equal(ctx, np.concatenate([[BOS, ON0 + 60, SHIFT0 + 20], first.tokens[0],
                                               played, second.tokens[0]]))


# --- hard controls -------------------------------------------------------------------------

CONTROL_CASES = {
    "key": dict(key="D minor"),
    "pitch_range": dict(pitch_range="C4-B4"),
    "velocity_range": dict(velocity_range="30-60"),
    "max_polyphony": dict(max_polyphony=2),
}


def _random_model(tok, seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=4,
                                   d_ff=64, dropout=0.0, position="rope",
                                   max_context=64)).eval()


def _primer(tok, rng) -> np.ndarray:
    """A real-ish primer: a loud chord of out-of-key notes held over, so that each control
    has something to refuse."""
    from cadenza.data.midi import Notes
    notes = Notes.make(np.r_[0.0, 0.0, 0.0, 0.5, 0.5], np.r_[2.0, 2.0, 2.0, 1.0, 3.0],
                       np.r_[61, 66, 70, 37, 92] + rng.integers(0, 2),
                       np.r_[120, 120, 120, 20, 127])
    return np.concatenate([[BOS], tok.encode(tok.piece_from_notes(notes))])


def _sounding_at_onsets(notes, new) -> int:
    most = 0
    for t in notes.start[new]:
        most = max(most, int(((notes.start <= t + 1e-9) & (notes.end > t + 1e-9)).sum()))
    return most


@pytest.mark.parametrize("name", ["performance", "chorale16", "pianoroll", "miditok:REMI",
                                  "miditok:MIDILike"])
@pytest.mark.parametrize("control", list(CONTROL_CASES))
def test_hard_controls_hold_on_every_new_note(name, control, midi_folder):
    tok = build_tokenizer(name)
    cfg = SampleConfig(tokens=160, temperature=1.5, num_samples=6, **CONTROL_CASES[control])
    if NEEDS[control] not in tok.note_roles().carries:
        with pytest.raises(ConfigError, match=f"--{control.replace('_', '-')}: {name} tokens"):
            Controls(cfg, tok.note_roles(), tok.name)
        return
    if name.startswith("miditok"):  # a grammar learnt from music, as `prepare` does
        from cadenza.data.midi import load_score
        tok.fit_grammar([tok.encode_score(load_score(f)) for f in sorted(
            midi_folder.glob("*.mid"))])
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(4):
        prompt = _primer(tok, rng)
        m = _random_model(tok, seed)
        news = sample(Session(m, tok), np.repeat(prompt[None], 6, 0), cfg.replace(seed=seed),
                      160)
        before = tok.decode_notes(prompt[1:])
        for new in news:
            notes = tok.decode_notes(np.concatenate([prompt[1:], new]))
            fresh = ~primer_mask(notes, before)
            checked += int(fresh.sum())
            p, v = notes.pitch[fresh], notes.velocity[fresh]
            if control == "key":
                assert np.isin(p % 12, [2, 4, 5, 7, 9, 10, 0, 1, 11]).all()
            elif control == "pitch_range":
                assert ((p >= 60) & (p <= 71)).all()
            elif control == "velocity_range":
                assert ((v >= 30) & (v <= 60)).all(), v
            else:
                assert _sounding_at_onsets(notes, fresh) <= 2
    assert checked > 50  # the controls held on many notes, not on a silent stream


def test_polyphony_counts_notes_struck_and_released_at_one_moment():
    """A note on and off at the same 10 ms step still sounds there (the decoder gives it a
    step): a third note at that moment would make three."""
    tok = build_tokenizer("performance")
    g = tok.grammar()
    g.reset(1)
    g.feed(np.array([[BOS, ON0 + 60, OFF0 + 60, ON0 + 64]]))
    assert g.sounding()[0] == 2
    g.advance(np.array([SHIFT0]))
    assert g.sounding()[0] == 1


def looper(tok) -> Biased:
    """A model stuck on one figure: C4 struck every 0.3 s, released after 0.2 s."""
    t = torch.full((tok.vocab_size, tok.vocab_size), -5.0)
    t[BOS, ON0 + 60] = t[SHIFT0 + 9, ON0 + 60] = 8.0
    t[ON0 + 60, SHIFT0 + 19] = t[SHIFT0 + 19, OFF0 + 60] = t[OFF0 + 60, SHIFT0 + 9] = 8.0
    return Biased(t)


def test_the_loop_guard_bounds_the_repeats():
    tok = build_tokenizer("performance")
    prompt = np.array([[BOS]] * 3)
    free = sample(Session(looper(tok), tok), prompt, SampleConfig(seconds=12, num_samples=3))
    assert min(longest_repeat(tok.decode_notes(n)) for n in free) >= 30
    for k in (1, 3):
        cfg = SampleConfig(seconds=12, num_samples=3, max_repeats=k)
        run = sample_run(Session(looper(tok), tok), prompt, cfg)
        for new in run.tokens:
            notes = tok.decode_notes(new)
            assert len(notes) > 20 and longest_repeat(notes) <= k
        assert run.stopped == [SECONDS] * 3


def test_density_moves_notes_per_second_the_asked_way():
    tok = build_tokenizer("performance")
    m = _random_model(tok, 3)
    rates = {}
    for want in (1.0, 4.0, 16.0):
        cfg = SampleConfig(seconds=8, num_samples=4, density=want, seed=1)
        news = sample(Session(m, tok), np.array([[BOS]] * 4), cfg)
        rates[want] = np.median([len(tok.decode_notes(n)) / 8.0 for n in news])
    assert rates[1.0] < rates[4.0] < rates[16.0], rates
    assert rates[1.0] < 2.0 and rates[16.0] > 8.0, rates


# --- bad values ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags,named", [
    (["--key", "H major"], "--key"),
    (["--pitch-range", "90-20"], "--pitch-range"),
    (["--pitch-range", "A0-C9"], "--pitch-range"),
    (["--max-polyphony", "0"], "--max-polyphony"),
    (["--velocity-range", "0-90"], "--velocity-range"),
    (["--density", "0"], "--density"),
    (["--key", "C major", "--pitch-range", "61-61"], "--pitch-range"),
])
def test_bad_control_values_get_one_line_naming_the_flag(tmp_path, flags, named):
    r = subprocess.run([sys.executable, "-m", "cadenza", "generate", "--out", str(tmp_path / "o"),
                        *flags], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cadenza: error: {named}:"), r.stderr
    assert not (tmp_path / "o").exists()


def test_a_control_the_tokenizer_cannot_carry_is_refused_before_writing(tiny_run, tmp_path):
    from cadenza.generate import GenerateConfig, run_generate
    with pytest.raises(ConfigError, match="--velocity-range: no velocity of performance"):
        run_generate(GenerateConfig(out=str(tmp_path / "o"), checkpoint=str(tiny_run / "best"),
                                    sample=SampleConfig(velocity_range="61-61")))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,classes", [
    ("D minor", {2, 4, 5, 7, 9, 10, 0, 1, 11}), ("f# MAJOR", {6, 8, 10, 11, 1, 3, 5}),
    ("Bb:maj", {10, 0, 2, 3, 5, 7, 9}), ("c:min", {0, 2, 3, 5, 7, 8, 10, 11, 9}),
    ("e", {4, 6, 8, 9, 11, 1, 3})])
def test_key_names_a_musician_writes(text, classes):
    assert SampleConfig(key=text).key_classes == classes


class NoNoteAboveThePrimersLast(Step):
    """A toy control written here alone, with no change to src/: no new note above the pitch
    of the primer's last note."""

    def __init__(self, roles):
        self.pitch = roles.pitch
        self.ceiling = np.zeros(0, int)

    def reset(self, batch):
        self.ceiling = np.full(batch, 127)

    def feed(self, ids, times):
        struck = np.where(self.pitch[ids] >= 0, self.pitch[ids], -1)
        last = np.where(struck >= 0, np.arange(ids.shape[1]), -1).max(1)
        has = last >= 0
        self.ceiling[has] = struck[has, last[has]]

    def restrict(self, allowed, now):
        for b, top in enumerate(self.ceiling):
            allowed[b, self.pitch > top] = False
        return allowed


def test_a_step_written_in_a_test_file_is_obeyed_alongside_the_controls():
    tok = build_tokenizer("performance")
    rng = np.random.default_rng(3)
    roles = tok.note_roles()
    for seed in range(3):
        prompt = _primer(tok, rng)
        top = int(tok.decode_notes(prompt[1:]).pitch[-1])  # the last note struck
        cfg = SampleConfig(tokens=200, temperature=1.5, seed=seed, num_samples=4,
                           key="C major")
        eng = Engine(Session(_random_model(tok, seed), tok), cfg, batch=4,
                     steps=[NoNoteAboveThePrimersLast(roles)])
        eng.feed(np.repeat(prompt[None], 4, 0))
        run = eng.run()
        before = tok.decode_notes(prompt[1:])
        new_pitches = []
        for new in run.tokens:
            notes = tok.decode_notes(np.concatenate([prompt[1:], new]))
            fresh = ~primer_mask(notes, before)
            new_pitches += notes.pitch[fresh].tolist()
            assert all(p % 12 in (0, 2, 4, 5, 7, 9, 11) for p in notes.pitch[fresh])  # the key
        assert new_pitches and max(new_pitches) <= top, (top, max(new_pitches))
    # without the step the same model goes above it: the step is what holds it
    eng = Engine(Session(_random_model(tok, 0), tok), SampleConfig(tokens=200, temperature=1.5,
                 num_samples=4), batch=4)
    prompt = _primer(tok, np.random.default_rng(3))
    eng.feed(np.repeat(prompt[None], 4, 0))
    top = int(tok.decode_notes(prompt[1:]).pitch[-1])
    highest = max(int(tok.decode_notes(np.concatenate([prompt[1:], t])).pitch.max())
                  for t in eng.run().tokens)
    assert highest > top
