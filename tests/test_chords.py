"""--chords (issue 41): the parser (every quality, slash basses, Harte's labels, bars, errors
with their position), hard chords that every new note obeys for two tokenizers and four
seeds, and a soft strength that raises the share of chord tones monotonically."""

from __future__ import annotations

import json

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


def _block_chords(path, progression, seconds=2.0, extra=()):
    """A MIDI file of block chords, each held ``seconds`` (root position or inverted as
    given: a list of MIDI pitch lists), plus ``extra`` notes (start, end, pitch)."""
    from cadenza.data.midi import Notes, score_from_notes, write_midi
    start, end, pitch = [], [], []
    for i, chord in enumerate(progression):
        for p in chord:
            start.append(i * seconds)
            end.append((i + 1) * seconds - 0.05)
            pitch.append(p)
    for a, b, p in extra:
        start.append(a)
        end.append(b)
        pitch.append(p)
    write_midi(score_from_notes(Notes.make(start, end, pitch, [80] * len(pitch))), path)
    return path


def test_chords_read_off_a_midi_file(tmp_path):
    from cadenza.data.midi import read_chords
    f = _block_chords(tmp_path / "song.mid", [
        [48, 64, 67, 72],  # C (root in the bass)
        [43, 59, 65, 67, 74],  # G7
        [45, 60, 64, 69],  # Am
        [45, 60, 65, 72],  # F over A: F/A
        [50, 62, 65, 69, 72]])  # Dm7
    # a passing note of one eighth does not make a chord of its own
    chords = read_chords(f)
    assert [c[2] for c in chords] == ["C", "G7", "Am", "F/A", "Dm7", "N"][:len(chords)]
    assert chords[1][:2] == (2.0, 4.0)  # 120 bpm: four half-second beats a chord
    cfg = SampleConfig(chords_from=str(f), chord_strength="hard", tokens=150, seed=1,
                       temperature=1.5, num_samples=3)
    assert cfg.controls["chords"] == str(f) and cfg.has_chords
    tok = build_tokenizer("performance")
    s = Session(_model(tok, 2), tok)
    n = 0
    for new in s.generate(np.array([BOS]), cfg):
        starts, pitches = _new_notes(tok, np.array([BOS]), new)
        for t, p in zip(starts, pitches):
            label = next((lab for a, b, lab in chords if a <= t + 1e-6 < b), "N")
            assert label == "N" or p % 12 in theory.parse_chord(label)[0], (t, p, label)
            n += 1
    assert n > 10


def test_chords_from_refuses_what_is_not_midi_in_one_line(tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_text("not midi")
    tok = build_tokenizer("performance")
    s = Session(_model(tok, 0), tok)
    with pytest.raises(ConfigError, match=f"^--chords-from {bad}: not a MIDI file"):
        s.generate(np.array([BOS]), SampleConfig(chords_from=str(bad), tokens=5))
    with pytest.raises(ConfigError, match="^--chords-from: no such file"):
        SampleConfig(chords_from=str(tmp_path / "gone.mid"))
    with pytest.raises(ConfigError, match="^--chords-from: give one of"):
        SampleConfig(chords="C G", chords_from=str(bad))


def test_chord_bass_puts_each_chords_bass_first_and_lowest():
    tok = build_tokenizer("performance")
    prompt = np.array([BOS])
    chords = "C G/B | Am7 | F/A Fm6 | Ebmaj7"
    bars = theory.parse_progression(chords, bpm=120)
    checked = 0
    for seed in range(4):
        s = Session(_model(tok, seed), tok)
        cfg = SampleConfig(tokens=300, temperature=1.3, num_samples=3, seed=seed,
                           chords=chords, chord_strength="1", chord_bass=True)
        for new in s.generate(prompt, cfg):
            starts, pitches = _new_notes(tok, prompt, new)
            for lap_start in np.arange(0, 40, bars[-1][1]):
                for a, b, label in bars:
                    inside = (starts >= lap_start + a - 1e-6) & (starts < lap_start + b - 1e-6)
                    if not inside.any():
                        continue
                    first = starts[inside].min()
                    at_first = pitches[inside][np.abs(starts[inside] - first) < 1e-6]
                    bass = theory.parse_chord(label)[1]
                    assert at_first.min() % 12 == bass and at_first.min() < 60, (seed, label)
                    checked += 1
    assert checked >= 12


def test_chord_bass_needs_chords_and_note_times():
    with pytest.raises(ConfigError, match="^--chord-bass: plays each chord's bass"):
        SampleConfig(chord_bass=True)
    tok = build_tokenizer("pianoroll")
    s = Session(_model(tok, 0), tok)
    with pytest.raises(ConfigError, match="^--chord-bass: pianoroll tokens cannot carry it; "
                       "it works with performance"):
        s.generate(np.array([BOS]), SampleConfig(chords="C", chord_bass=True, tokens=5))


def test_stats_measures_chord_tones_and_the_bass(tmp_path, capsys):
    from cadenza.cli import main
    f = _block_chords(tmp_path / "take.mid", [[48, 64, 67], [43, 62, 67, 71]])
    assert main(["stats", str(f), "--chords", "C | G", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["chords"]
    assert fit["chord_tone_share"] == 1.0 and fit["bass_on_root_share"] == 1.0
    # against the wrong chords: E minor shares E and G with C; D major shares D with G
    assert main(["stats", str(f), "--chords", "Em | D", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["chords"]
    assert abs(fit["chord_tone_share"] - 3 / 7) < 0.02 and fit["bass_on_root_share"] == 0.0
    # a file's own chords, read off its notes, fit it
    assert main(["stats", str(f), "--chords-from", str(f)]) == 0
    assert "100.0% of note-time on the chord's tones" in capsys.readouterr().out
    assert main(["stats", str(f)]) == 2
    assert "--reference: compare with a reference" in capsys.readouterr().err


def test_a_key_held_into_a_chord_it_is_not_part_of_is_lifted():
    """Performance tokens end a note with a token of its own: after a chord change, a key
    still held that is not a tone of the new chord has its release favoured by the
    strength (the chord sounds, not only starts); a key that is a tone is left alone."""
    from cadenza.controls import Chords, Now
    from cadenza.data.tokenizers.performance import OFF0, ON0
    tok = build_tokenizer("performance")
    roles = tok.note_roles()
    step = Chords(SampleConfig(chords="C | F#", bpm=120, chord_strength="3"), roles)
    step.reset(1)
    keys = tok.grammar()  # the keys held are the grammar's
    keys.reset(1)
    keys.feed(np.array([[ON0 + 64, ON0 + 67]]))  # E and G held (tones of C)
    zero = torch.zeros(1, tok.vocab_size)
    under_c = step.bias(zero, Now(keys, np.array([1.0])))
    assert under_c[0, OFF0 + 64] == under_c[0, OFF0 + 67] == 0  # both are C's tones
    under_fsharp = step.bias(zero, Now(keys, np.array([2.5])))  # F# A# C#: neither is
    assert under_fsharp[0, OFF0 + 64] == under_fsharp[0, OFF0 + 67] == 3.0
    keys.advance(np.array([OFF0 + 64]))  # E lifted: only G is pushed
    after = step.bias(zero, Now(keys, np.array([2.6])))
    assert after[0, OFF0 + 64] == 0 and after[0, OFF0 + 67] == 3.0
    hard = Chords(SampleConfig(chords="C | F#", chord_strength="hard"), roles)
    hard.reset(1)
    one = tok.grammar()
    one.reset(1)
    one.feed(np.array([[ON0 + 64]]))
    assert hard.bias(zero, Now(one, np.array([2.5])))[0, OFF0 + 64] == 8.0
    assert build_tokenizer("pianoroll").note_roles().release is None  # a grid has none
    assert build_tokenizer("pianoroll").grammar().held() is None


def test_the_measures_the_benchmarks_share():
    """stats.distinct_ngrams (diversity) and Session.continuation_nll (the cost of a steered
    continuation), which benchmarks/chords.py and guidance.py report."""
    from cadenza.evaluate import score_pieces
    from cadenza.stats import distinct_ngrams
    assert distinct_ngrams(np.array([60, 62, 64, 65, 60, 62, 64, 65])) == 4 / 5
    assert np.isnan(distinct_ngrams(np.array([60, 62])))
    tok = build_tokenizer("performance")
    s = Session(_model(tok, 4), tok)
    rng = np.random.default_rng(0)
    prompt = np.r_[BOS, rng.integers(3, tok.vocab_size, 20)]
    new = rng.integers(3, tok.vocab_size, 30)
    want = score_pieces(s.model, [np.r_[prompt, new, 2]], 64, 32)[0][-30:].mean()
    assert abs(s.continuation_nll(prompt, new) - want) < 1e-4
