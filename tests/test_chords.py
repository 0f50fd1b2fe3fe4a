"""--chords (issue 41): the parser (every quality, slash basses, Harte's labels, bars, errors
with their position), hard chords that every new note obeys for two tokenizers and four
seeds, and a soft strength that raises the share of chord tones monotonically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadenza import theory
from cadenza.config import ConfigError, ModelConfig, SampleConfig
from cadenza.data.tokenizers import BOS, build_tokenizer
from cadenza.generate import primer_mask
from cadenza.models import build_model
from cadenza.session import Session


def test_every_quality_slash_basses_and_hartes_labels():
    assert theory.parse_chord("C") == (frozenset({0, 4, 7}), 0)
    assert theory.parse_chord("Dm7") == (frozenset({2, 5, 9, 0}), 2)
    assert theory.parse_chord("G7") == (frozenset({7, 11, 2, 5}), 7)
    assert theory.parse_chord("F#m7b5") == (frozenset({6, 9, 0, 4}), 6)
    assert theory.parse_chord("Bb:hdim7") == theory.parse_chord("Bbm7b5")
    assert theory.parse_chord("C/E") == (frozenset({0, 4, 7}), 4)
    assert theory.parse_chord("C:maj/3") == (frozenset({0, 4, 7}), 4)
    assert theory.parse_chord("Am/F#") == (frozenset({9, 0, 4, 6}), 6)  # the bass joins
    assert theory.parse_chord("N") is None
    for q, tones in (("maj", 3), ("m", 3), ("7", 4), ("maj7", 4), ("m7", 4), ("dim", 3),
                     ("dim7", 4), ("m7b5", 4), ("aug", 3), ("sus2", 3), ("sus4", 3),
                     ("6", 4), ("m6", 4), ("9", 5), ("add9", 4)):
        pcs, bass = theory.parse_chord(f"E{q}")
        assert len(pcs) == tones and bass == 4 and 4 in pcs, q
    bars = theory.parse_progression("Dm7 G7 | Cmaj7 | A7sus4 A7", bpm=96)
    assert [b[2] for b in bars] == ["Dm7", "G7", "Cmaj7", "A7sus4", "A7"]
    assert bars[1][:2] == (1.25, 2.5) and bars[2][:2] == (2.5, 5.0) and bars[-1][1] == 7.5
    assert theory.parse_progression("C | G", bpm=60, beats_per_bar=3)[1][:2] == (3.0, 6.0)


@pytest.mark.parametrize(("text", "said"), [
    ("", "--chords: empty"), ("Dm7 | | C", "--chords: bar 2 has no chord"),
    ("C G | Dm Xq7", "--chords: bar 2, chord 2: unknown chord 'Xq7'"),
    ("C/H", "--chords: bar 1, chord 1: unknown bass 'H'"),
    ("C | Emaj13", "--chords: bar 2, chord 1: unknown chord 'Emaj13'")])
def test_a_bad_progression_is_one_line_naming_where(text, said):
    with pytest.raises(ConfigError, match="^" + said.replace("(", r"\(")):
        SampleConfig(chords=text)


def test_bad_tempo_bars_and_strength_name_their_flag():
    for kw, said in ((dict(bpm=0), "--bpm"), (dict(bpm=float("nan")), "--bpm"),
                     (dict(beats_per_bar=0), "--beats-per-bar"),
                     (dict(chord_strength="loud"), "--chord-strength"),
                     (dict(chord_strength="25"), "--chord-strength")):
        with pytest.raises(ConfigError, match=said):
            SampleConfig(chords="C G", **kw)


def _model(tok, seed):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=4,
                                   d_ff=64, dropout=0.0, position="rope",
                                   max_context=64)).eval()


def _new_notes(tok, prompt, new):
    notes = tok.decode_notes(np.concatenate([prompt[1:], new]))
    fresh = ~primer_mask(notes, tok.decode_notes(prompt[1:]))
    return notes.start[fresh], notes.pitch[fresh]


def _chord_tone_share(tok, s, prompt, cfg) -> tuple[float, int]:
    bars = theory.parse_progression(cfg.chords, cfg.bpm, cfg.beats_per_bar)
    t0 = s.seconds_of(prompt[1:])
    ok = total = 0
    for new in s.generate(prompt, cfg):
        starts, pitches = _new_notes(tok, prompt, new)
        for t, p in zip(starts, pitches):
            u = (t - t0 + 1e-6) % bars[-1][1]
            label = next(lab for a, b, lab in bars if a <= u < b)
            ok += int(p % 12 in theory.parse_chord(label)[0])
            total += 1
    return ok / max(total, 1), total


@pytest.mark.parametrize("name", ["performance", "pianoroll"])
def test_hard_chords_hold_on_every_new_note(name):
    tok = build_tokenizer(name)
    prompt = np.array([BOS])
    checked = 0
    for seed in range(4):
        s = Session(_model(tok, seed), tok)
        cfg = SampleConfig(tokens=200, temperature=1.5, num_samples=3, seed=seed,
                           chords="Dm7 G7 | Cmaj7 | F#dim A7", bpm=150,
                           chord_strength="hard")
        share, n = _chord_tone_share(tok, s, prompt, cfg)
        assert share == 1.0, (seed, share)
        checked += n
    assert checked > 40  # held on many notes, not on silence


def test_a_soft_strength_raises_the_chord_tone_share_monotonically():
    tok = build_tokenizer("performance")
    s = Session(_model(tok, 3), tok)
    shares = []
    for strength in ("0", "1", "3", "8"):
        cfg = SampleConfig(tokens=300, temperature=1.2, num_samples=4, seed=2,
                           chords="C | Ab | F#m | Bb7", bpm=120, chord_strength=strength)
        share, n = _chord_tone_share(tok, s, np.array([BOS]), cfg)
        assert n > 30
        shares.append(share)
    assert shares == sorted(shares) and shares[-1] > shares[0] + 0.3, shares


def test_a_chords_file_in_pop909s_format_with_an_offset(tmp_path):
    f = tmp_path / "chord_midi.txt"
    f.write_text("0.0\t2.0\tC:maj\n2.0\t4.0\tF#:min7/b7\n4.0\t6.0\tN\n")
    cfg = SampleConfig(chords_file=str(f), chord_offset=2.0)
    chords, repeats = theory.parse_schedule(cfg.chords)
    assert not repeats and [c[2] for c in chords] == ["C:maj", "F#:min7/b7", "N"]
    assert cfg.replace(seed=3).chords == cfg.chords  # replace keeps it (no "both given")
    tok = build_tokenizer("performance")
    s = Session(_model(tok, 0), tok)
    prompt = np.array([BOS])
    run = s.generate(prompt, SampleConfig(chords_file=str(f), chord_offset=2.0,
                                          chord_strength="hard", seconds=4.0, num_samples=8,
                                          temperature=1.5, seed=1))
    early = late = 0
    for new in run:
        starts, pitches = _new_notes(tok, prompt, new)
        # the new music's first 2 s are the file's 2-4 s: F#m7 over E (its b7)
        first = starts < 2.0 - 1e-6
        assert np.isin(pitches[first] % 12, [6, 9, 1, 4]).all()
        early += int(first.sum())
        late += int((~first).sum())  # past the file's 4 s: N, every note allowed
    assert early >= 4 and late > early  # (fixed seeds: 8 samples)


@pytest.mark.parametrize(("text", "said"), [
    ("0 2 C\n1.5 3 G\n", "line 2: starts at 1.5, before the chord above ends"),
    ("0 2 C\n3 2.5 G\n", "line 2: the times 3-2.5 run backwards"),
    ("0 2 C\n2 4\n", "line 2: expected 'start end label'"),
    ("0 2 C\n2 4 Q:maj\n", "line 2: unknown chord 'Q:maj'")])
def test_a_bad_chords_file_names_its_line(tmp_path, text, said):
    f = tmp_path / "chords.txt"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"^--chords-file {f}: {said}"):
        SampleConfig(chords_file=str(f))
    with pytest.raises(ConfigError, match="no such file"):
        SampleConfig(chords_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="not both"):
        SampleConfig(chords="C G", chords_file=str(tmp_path / "ok.txt")
                     if (tmp_path / "ok.txt").write_text("0 1 C\n") else None)


def test_the_chords_over_the_new_music_repeat_bars_and_not_times():
    assert theory.chords_over("Dm7 G7 | C", 120, 4, 3.0, 4.0) == [
        (0.0, 1.0, "C"), (1.0, 2.0, "Dm7"), (2.0, 3.0, "G7"), (3.0, 4.0, "C")]
    assert theory.chords_over("0 2 C; 2 4 G", 120, 4, 1.0, 10.0) == [
        (0.0, 1.0, "C"), (1.0, 3.0, "G")]
