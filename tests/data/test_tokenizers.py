"""The tokenizer contract: round trips, grammars that always decode, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cadenza.config import AugmentConfig
from cadenza.data.midi import Notes, notes_from_score
from cadenza.data.tokenizers import BOS, EOS, build_tokenizer, tokenizer_names
from cadenza.data.tokenizers.performance import (
    SHIFT0,
    VEL0,
    PerformanceTokenizer,
    stretch_time,
    velocity_bin,
)
from tests.conftest import bench_file, make_score, random_piece, scale

FIXTURES = {
    "chords": [(0, 1, p, 80) for p in (60, 64, 67, 72)] + [(1, 2, p, 70) for p in (59, 62, 67)],
    "overlapping_same_pitch": [(0, 1.0, 60, 80), (0.5, 1.5, 60, 90), (1.2, 2.0, 60, 70)],
    "extreme_velocities": [(0, 0.5, 60, 1), (0.5, 1.0, 62, 127), (1.0, 1.5, 64, 64)],
    "long_rests": [(0, 0.3, 60, 80), (3.57, 3.9, 62, 80), (10.0, 12.5, 64, 80)],
    "extreme_pitches": [(0, 0.5, 21, 80), (0, 0.5, 108, 80), (0.5, 0.51, 0, 80),
                        (0.6, 0.7, 127, 80)],
    "scale": scale(),
}


def assert_notes_match(a: Notes, b: Notes, tol: float = 0.0051) -> None:
    assert len(a) == len(b), (len(a), len(b))
    ka, kb = np.lexsort((a.start, a.pitch)), np.lexsort((b.start, b.pitch))
    np.testing.assert_array_equal(a.pitch[ka], b.pitch[kb])
    np.testing.assert_allclose(a.start[ka], b.start[kb], atol=tol)
    np.testing.assert_allclose(a.end[ka], b.end[kb], atol=tol)
    np.testing.assert_array_equal(velocity_bin(a.velocity[ka]), velocity_bin(b.velocity[kb]))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_performance_round_trip_fixtures(name):
    tok = PerformanceTokenizer()
    notes = notes_from_score(make_score(FIXTURES[name]))
    ids = tok.encode(notes)
    assert ids.min() > EOS and ids.max() < tok.vocab_size
    assert_notes_match(notes, tok.decode(ids))


def test_performance_round_trip_random_pieces():
    tok = PerformanceTokenizer()
    rng = np.random.default_rng(1)
    for _ in range(20):
        notes = notes_from_score(make_score(random_piece(rng, 200, 30.0)))
        # same-pitch notes nested inside each other are ambiguous in any on/off stream;
        # keep staggered overlaps only (the realistic case)
        back = tok.decode(tok.encode(notes))
        assert len(back) == len(notes)
        np.testing.assert_allclose(np.sort(back.start), np.sort(notes.start), atol=0.0051)
        np.testing.assert_allclose(np.sort(back.end), np.sort(notes.end), atol=0.0051)


def test_sustain_pedal_extends_until_release_or_restrike():
    score = make_score([(0, 0.5, 60, 80), (1.0, 1.2, 62, 80), (1.5, 1.6, 62, 80)],
                       pedals=[(0.2, 2.0)])
    n = notes_from_score(score, sustain_pedal=True)
    ends = dict(zip(zip(n.pitch.tolist(), np.round(n.start, 2).tolist()), n.end.tolist()))
    assert ends[(60, 0.0)] == pytest.approx(2.0, abs=0.01)  # held by the pedal
    assert ends[(62, 1.0)] == pytest.approx(1.5, abs=0.01)  # cut by the re-strike
    assert ends[(62, 1.5)] == pytest.approx(2.0, abs=0.01)
    off = notes_from_score(score, sustain_pedal=False)
    assert off.end.max() == pytest.approx(1.6, abs=0.01)


def test_performance_round_trip_real_piano(real_piano_scores):
    tok = PerformanceTokenizer()
    for score in real_piano_scores:
        notes = notes_from_score(score)
        assert len(notes) > 100
        back = tok.decode(tok.encode(notes))
        assert len(back) == len(notes)
        np.testing.assert_allclose(np.sort(back.start), np.sort(notes.start), atol=0.0051)


def test_vectorised_decode_equals_token_loop():
    tok = PerformanceTokenizer()
    notes = notes_from_score(make_score(random_piece(np.random.default_rng(3), 150)))
    ids = tok.encode(notes)
    fast = tok.decode(ids)
    is_shift = (ids >= SHIFT0) & (ids < VEL0)
    time = np.cumsum(np.where(is_shift, ids - SHIFT0 + 1, 0))
    last_vel = np.maximum.accumulate(np.where(ids >= VEL0, np.arange(len(ids)), -1))
    vbin = np.where(last_vel >= 0, ids[np.maximum(last_vel, 0)] - VEL0, 20)
    assert_notes_match(fast, tok._decode_slow(ids, time, vbin), tol=1e-9)


def test_chorale16_round_trip_synthetic():
    tok = build_tokenizer("chorale16")
    rng = np.random.default_rng(0)
    grid = rng.integers(40, 80, (64, 4))
    grid[rng.random((64, 4)) < 0.1] = -1
    assert np.array_equal(tok.decode(tok.encode(grid)), grid)


def test_chorale16_round_trip_jsb16():
    data = json.loads(bench_file("jsb16/jsb16_separated.trainvalid.json").read_text())
    tok = build_tokenizer("chorale16")
    for piece in data["valid"]:
        g = np.asarray(piece, np.int64)
        assert np.array_equal(tok.decode(tok.encode(g)), g)


def test_pianoroll_round_trip_synthetic_and_frame_index():
    tok = build_tokenizer("pianoroll", step_seconds=0.25)
    roll = np.random.default_rng(0).random((50, 88)) < 0.05
    roll[7] = False  # an empty frame
    ids = tok.encode(roll)
    assert np.array_equal(tok.decode(ids), roll)
    fi = tok.frame_index(ids)
    assert fi.max() == 49 and np.bincount(fi)[7] == 1  # an empty frame is one FRAME token


def test_pianoroll_round_trip_boulanger():
    import scipy.io
    mat = scipy.io.loadmat(str(bench_file("boulanger/Nottingham.trainvalid.mat")))
    tok = build_tokenizer("pianoroll")
    for roll in mat["validdata"][0][:40]:
        r = roll.astype(bool)
        assert np.array_equal(tok.decode(tok.encode(r)), r)


def test_miditok_round_trip_and_config():
    tok = build_tokenizer("miditok:TSD")
    score = tok.piece_from_score(make_score(scale() + [(4, 5, 60, 100), (4, 5, 64, 100)]))
    ids = tok.encode(score)
    back = tok.notes_of(tok.decode(ids))
    assert len(back) == 17
    tok.fit_grammar([ids])
    again = build_tokenizer(tok.name, **tok.config())
    assert again.vocab == tok.vocab
    assert np.array_equal(again.transitions, tok.transitions)


def test_unknown_tokenizer_lists_names():
    with pytest.raises(ValueError, match="performance, chorale16, pianoroll"):
        build_tokenizer("nope")
    assert "remi" in tokenizer_names()


@pytest.mark.parametrize("name", ["performance", "chorale16", "pianoroll", "miditok:REMI"])
def test_random_walk_under_grammar_always_decodes(name):
    """Any sequence the grammar allows decodes, and keeps decoding at every prefix."""
    tok = build_tokenizer(name)
    if name.startswith("miditok"):
        tok.fit_grammar([tok.encode(tok.piece_from_score(make_score(scale())))])
    rng = np.random.default_rng(0)
    g = tok.grammar()
    B = 6
    g.reset(B)
    seqs = [[] for _ in range(B)]
    for _ in range(300):
        allowed = g.allowed()
        assert allowed.any(1).all(), "a dead end"
        choice = np.array([rng.choice(np.flatnonzero(a)) for a in allowed])
        g.advance(choice)
        for b in range(B):
            seqs[b].append(int(choice[b]))
    for s in seqs:
        notes = tok.decode_notes(np.array([BOS] + s))
        assert np.all(notes.end > notes.start)


def test_performance_grammar_forbids_releasing_keys_that_are_up():
    tok = PerformanceTokenizer()
    g = tok.grammar()
    g.reset(1)
    assert not g.allowed()[0, tok.vocab.index("NOTE_OFF_60")]
    g.advance(np.array([tok.vocab.index("NOTE_ON_60")]))
    assert g.allowed()[0, tok.vocab.index("NOTE_OFF_60")]
    assert not g.allowed()[0, tok.vocab.index("NOTE_OFF_61")]


@pytest.mark.parametrize("name", ["performance", "chorale16", "pianoroll"])
def test_transposition_shifts_every_note(name):
    tok = build_tokenizer(name)
    notes = notes_from_score(make_score(scale(60, 0.5)))
    ids = tok.encode(tok.piece_from_notes(notes))
    before = tok.decode_notes(ids)
    rng = np.random.default_rng(5)
    aug = AugmentConfig(transpose=(3, 3), stretch=(1.0, 1.0), velocity_shift=0)
    after = tok.decode_notes(tok.augment(ids, rng, aug))
    np.testing.assert_array_equal(np.sort(after.pitch), np.sort(before.pitch) + 3)


def test_transposition_never_leaves_the_keyboard():
    tok = PerformanceTokenizer()
    ids = tok.encode(notes_from_score(make_score([(0, 1, 21, 80), (1, 2, 105, 80)])))
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = tok.decode_notes(tok.augment(ids, rng, AugmentConfig()))
        assert out.pitch.min() >= 21 and out.pitch.max() <= 108


def test_time_stretch_scales_durations():
    tok = PerformanceTokenizer()
    notes = notes_from_score(make_score(scale(60, 0.5)))
    ids = tok.encode(notes)
    out = tok.decode(stretch_time(ids, 1.05))
    assert out.duration == pytest.approx(notes.duration * 1.05, abs=0.02)


def test_performance_grammar_releases_keys_held_too_long():
    tok = PerformanceTokenizer()
    g = tok.grammar()
    g.reset(1)
    g.advance(np.array([tok.vocab.index("NOTE_ON_60")]))
    shift_1s = tok.vocab.index("TIME_SHIFT_1000ms")
    for _ in range(8):
        assert g.allowed()[0, shift_1s]
        g.advance(np.array([shift_1s]))
    allowed = np.flatnonzero(g.allowed()[0])
    assert allowed.tolist() == [tok.vocab.index("NOTE_OFF_60")]


def test_performance_grammar_times_the_hold_from_the_latest_strike():
    """A key struck at 0 s and struck again at 7 s has sounded for 1 s at 8 s, not 8 s: the
    grammar must not force its release then (it does at 15 s)."""
    tok = PerformanceTokenizer()
    g = tok.grammar()
    g.reset(1)
    on, off = tok.vocab.index("NOTE_ON_60"), tok.vocab.index("NOTE_OFF_60")
    shift_1s = tok.vocab.index("TIME_SHIFT_1000ms")
    g.advance(np.array([on]))
    for second in range(15):
        if second == 7:
            g.advance(np.array([on]))
        assert g.allowed()[0, shift_1s], f"forced release at {second} s"
        g.advance(np.array([shift_1s]))
    assert np.flatnonzero(g.allowed()[0]).tolist() == [off]


def test_a_builtin_chorale_keeps_its_own_beats(tmp_path):
    """bwv1.6 is marked 76 bpm. Converted through seconds at 120 bpm it gave 505 steps with
    onsets off the 16th grid; on its own beats it has its true 320 (80 quarters)."""
    import warnings

    from cadenza.data.corpus import _convert_one
    from cadenza.data.midi import load_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import corpus
    src = next(p for p in corpus.getComposer("bach") if str(p).endswith("/bwv1.6.mxl"))
    assert _convert_one((str(src), str(tmp_path / "bwv1.6.mid")))
    score = load_score(tmp_path / "bwv1.6.mid")
    assert score.tempos[0].qpm == pytest.approx(76, abs=0.01)
    grid = build_tokenizer("chorale16").piece_from_score(score)
    assert grid.shape == (320, 4)
    q = notes_from_score(score, sustain_pedal=False, unit="quarter")
    np.testing.assert_allclose(q.start * 4, np.round(q.start * 4), atol=1e-9)
    # the seconds are the score's own: 80 quarters at 76 bpm
    assert notes_from_score(score).duration == pytest.approx(80 * 60 / 76, abs=0.01)


@pytest.mark.parametrize("tempo", [60.0, 90.0, 120.0])
def test_a_primer_is_read_on_its_own_beats(tempo, tmp_path):
    """Eight quarter-note chords are 32 sixteenth steps at any tempo; its first 4 seconds
    are 4 * tempo / 60 quarters. Through seconds at 120 bpm and with the pedal down, 60 bpm
    gave 64 steps and 90 bpm 43 off-grid ones."""
    chords = [(60, 64, 67, 72), (59, 62, 67, 74), (57, 60, 64, 69), (55, 59, 62, 67)] * 2
    q = 60.0 / tempo
    notes = [(i * q, (i + 1) * q, p, 80) for i, c in enumerate(chords) for p in c]
    score = make_score(notes, pedals=[(0, 8 * q)], tempo=tempo)
    tok = build_tokenizer("chorale16")
    grid = tok.primer_piece(score)
    assert grid.shape == (32, 4)
    np.testing.assert_array_equal(grid[::4], np.sort(chords, axis=1)[:, ::-1])
    assert np.all(grid == np.repeat(grid[::4], 4, axis=0))  # changes on the beat only
    assert tok.primer_piece(score, seconds=4.0).shape == (int(round(4 * tempo / 60)) * 4, 4)
    roll = build_tokenizer("pianoroll").primer_piece(score)
    assert roll.shape == (32, 88)
