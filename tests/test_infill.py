"""Infilling: every note outside the span is the input's, tick for tick; new notes start
inside it; the API and the CLI agree; bad spans and files get one line and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import symusic

from cadenza.config import ConfigError, InfillConfig, Steering
from cadenza.data.midi import BadInput, load_score
from cadenza.infill import INFILL_TRACK, bar_span, infill, run_infill, tick_at
from tests.conftest import make_score, random_piece


def _piece(tmp_path, seconds: float = 12.0):
    """A real-ish piece with a pedal, a tempo change and a time signature."""
    notes = random_piece(np.random.default_rng(3), 70, seconds)
    s = make_score(notes, pedals=[(1.0, 2.5), (6.0, 7.0)], tempo=100.0)
    s.tempos.append(symusic.Tempo(s.tpq * 8, 140.0))
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    f = tmp_path / "piece.mid"
    s.dump_midi(str(f))
    return f


def _rows(track) -> list[tuple]:
    return sorted((n.time, n.duration, n.pitch, n.velocity) for n in track.notes)


def test_notes_outside_the_span_are_the_inputs_and_new_ones_start_inside(tiny_run, tmp_path):
    f = _piece(tmp_path)
    cfg = InfillConfig(input=str(f), out=str(tmp_path / "o"), start=4.0, end=5.5,
                       checkpoint=str(tiny_run / "best"), candidates=3, audio=False,
                       sample=Steering(seed=2, num_samples=2, temperature=1.2))
    infos = run_infill(cfg)
    src = load_score(f)
    a, b = tick_at(src, 4.0), tick_at(src, 5.5)
    for info in infos:
        out = symusic.Score(str(tmp_path / "o" / f"sample-{info.sample}.mid"))
        kept = [t for t in out.tracks if t.name != INFILL_TRACK]
        new = [t for t in out.tracks if t.name == INFILL_TRACK][0]
        assert len(kept) == len(src.tracks)
        for k, s in zip(kept, src.tracks):
            want = [r for r in _rows(s) if not a <= r[0] < b]
            assert _rows(k) == want  # time, duration, pitch, velocity: every field
            assert [(c.time, c.number, c.value) for c in k.controls] == \
                [(c.time, c.number, c.value) for c in s.controls]  # the pedal too
        assert [(t.time, t.qpm) for t in out.tempos] == [(t.time, t.qpm) for t in src.tempos]
        assert len(new.notes) == info.new_notes > 0
        assert all(a <= n.time < b for n in new.notes)
        j = json.loads((tmp_path / "o" / f"sample-{info.sample}.json").read_text())
        assert len(j["weights"]) == 3 and 0 <= j["chosen"] < 3
        assert (tmp_path / "o" / f"sample-{info.sample}.png").exists()


def test_cut_held_ends_notes_ringing_into_the_span(tiny_run, tmp_path):
    f = tmp_path / "held.mid"
    make_score([(0.0, 6.0, 48, 70), (0.5, 1.0, 60, 80), (7.0, 8.0, 62, 80)]).dump_midi(str(f))
    for cut, length in ((False, 6.0), (True, 3.0)):
        out = tmp_path / f"o-{cut}"
        run_infill(InfillConfig(input=str(f), out=str(out), start=3.0, end=4.0,
                                checkpoint=str(tiny_run / "best"), candidates=2, audio=False,
                                cut_held=cut))
        s = symusic.Score(str(out / "sample-0.mid")).to("second")
        held = [n for n in s.tracks[0].notes if n.pitch == 48][0]
        assert held.duration == pytest.approx(length, abs=0.01)


def test_the_api_and_the_cli_give_the_same_notes(tiny_run, tmp_path):
    f = _piece(tmp_path)
    api = infill(load_score(f), 3.0, 4.5, Steering(seed=2, temperature=1.5),
                 checkpoint=str(tiny_run / "best"),
                 candidates=2)
    r = subprocess.run([sys.executable, "-m", "cadenza", "infill", "--input", str(f),
                        "--start", "3", "--end", "4.5", "--checkpoint", str(tiny_run / "best"),
                        "--candidates", "2", "--seed", "2", "--temperature", "1.5", "--no-audio",
                        "--out",
                        str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cli = symusic.Score(str(tmp_path / "cli" / "sample-0.mid"))
    assert _new(api) == _new(cli) and len(_new(api)) > 0


def _new(score) -> list[tuple]:
    """The Infill track's notes (a MIDI file drops a track without notes)."""
    return [r for t in score.tracks if t.name == INFILL_TRACK for r in _rows(t)]


def test_bars_read_the_time_signature_and_tempo(tmp_path):
    s = symusic.Score(480)
    s.tempos.append(symusic.Tempo(0, 120.0))
    s.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    tr = symusic.Track()
    tr.notes.append(symusic.Note(0, 480 * 40, 60, 80))
    s.tracks.append(tr)
    assert bar_span(s, "3-4") == pytest.approx((4.0, 8.0))  # 2 s a bar at 120 bpm
    s.time_signatures.append(symusic.TimeSignature(480 * 8, 3, 4))  # bar 3 on: 3/4
    assert bar_span(s, "3-4") == pytest.approx((4.0, 7.0))
    with pytest.raises(BadInput, match="--bars 4-3"):
        bar_span(s, "4-3")


@pytest.mark.parametrize("kw,message", [
    (dict(start=30.0, end=32.0), "--start 30: the piece ends at"),
    (dict(start=0.0, end=2.0), "no note of piece.mid starts before it"),
    (dict(start=2.0, end=40.0), "choose a shorter span"),
])
def test_bad_spans_get_one_line_and_write_nothing(tiny_run, tmp_path, kw, message):
    f = _piece(tmp_path)
    with pytest.raises(BadInput, match=message):
        run_infill(InfillConfig(input=str(f), out=str(tmp_path / "o"), audio=False,
                                checkpoint=str(tiny_run / "best"), **kw))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,named", [
    (["--start", "5", "--end", "5"], "--end: must be after --start 5"),
    (["--start", "-1", "--end", "2"], "--start: must be in [0, 10800]"),
    (["--bars", "2-3", "--start", "1"], "--bars 2-3 and --start/--end"),
    (["--start", "1", "--end", "2", "--candidates", "0"], "--candidates: must be in 1..256"),
    (["--start", "1", "--end", "2", "--key", "H"], "--key: unknown key"),
])
def test_bad_flags_get_one_line(tmp_path, flags, named):
    f = _piece(tmp_path)
    r = subprocess.run([sys.executable, "-m", "cadenza", "infill", "--input", str(f), "--out",
                        str(tmp_path / "o"), *flags], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and named in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_midi_and_an_earlier_take(tiny_run, tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_text("not music")
    with pytest.raises(BadInput, match="--input .*notes.mid: not a MIDI file"):
        run_infill(InfillConfig(input=str(bad), out=str(tmp_path / "o"), start=1, end=2))
    f = _piece(tmp_path)
    cfg = InfillConfig(input=str(f), out=str(tmp_path / "o"), start=3, end=4, audio=False,
                       checkpoint=str(tiny_run / "best"), candidates=1)
    run_infill(cfg)
    with pytest.raises(FileExistsError, match="--force"):
        run_infill(cfg)
    run_infill(cfg.replace(force=True))


def test_a_model_of_other_tokens_is_refused_in_one_line():
    from cadenza.infill import check_tokenizer
    fake = type("G", (), {"tok": type("T", (), {"name": "chorale16"})(),
                          "ck": type("C", (), {"path": "runs/jsb/best"})()})()
    with pytest.raises(BadInput, match="infill works with performance-token models"):
        check_tokenizer(fake)


def test_the_config_refuses_a_backwards_span():
    with pytest.raises(ConfigError, match="--end"):
        InfillConfig(input="x.mid", out="o", start=3, end=2)


def test_an_infill_over_chords_starts_them_at_the_span(tiny_run, tmp_path):
    """--chords in infill: the schedule starts where the span starts; with hard chords
    every note struck inside the span is a tone of the chord sounding then."""
    from cadenza import theory
    from cadenza.data.midi import notes_from_score, only_track
    f = _piece(tmp_path)
    chords = "C | F#"  # no tone in common: a schedule started elsewhere would fail
    cfg = InfillConfig(input=str(f), out=str(tmp_path / "o"), start=4.0, end=5.5,
                       checkpoint=str(tiny_run / "best"), candidates=2, audio=False,
                       sample=Steering(seed=1, num_samples=3, temperature=1.3, chords=chords,
                                       density=10,  # notes enough to check
                                       bpm=200, chord_strength="hard"))
    run_infill(cfg)
    bars = theory.parse_progression(chords, bpm=200)
    n = 0
    for k in range(3):
        track = only_track(load_score(tmp_path / "o" / f"sample-{k}.mid"), INFILL_TRACK)
        if track is None:  # nothing struck in this sample's span
            continue
        new = notes_from_score(track)
        for t, p in zip(new.start, new.pitch):
            u = (t - 4.0 + 1e-6) % bars[-1][1]
            label = next(lab for a, b, lab in bars if a <= u < b)
            assert p % 12 in theory.parse_chord(label)[0], (t, p, label)
            n += 1
    assert n >= 4
