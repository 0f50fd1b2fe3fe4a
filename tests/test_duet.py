"""The live duet without hardware: in-process loopback ports drive whole sessions (play,
pause, answer, cut in, save), --replay end to end, every bad message, and no stuck note."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

mido = pytest.importorskip("mido", reason="the live extra is not installed "
                           "(pip install -e '.[live]')")

from cadenza.config import DuetConfig, Steering  # noqa: E402
from cadenza.duet import CADENZA_TRACK, PLAYER_TRACK, Clock, Duet, PortSource, play  # noqa: E402
from cadenza.generate import Generator  # noqa: E402


class Loop(mido.ports.BaseIOPort):
    """An in-process port (as mido's own tests make them): what is sent can be received,
    each message stamped with the time it was sent."""

    def _open(self, **kw):
        self.queue = collections.deque()
        self.log: list[tuple[float, object]] = []
        self.fail = False

    def _send(self, msg):
        self.queue.append(msg)
        self.log.append((time.perf_counter(), msg))

    def _receive(self, block=True):
        if self.queue:
            return self.queue.popleft()
        if self.fail:  # unplugged, after what it had delivered
            raise OSError("the port went away")
        return None


def _duet(run, **kw) -> tuple[Duet, Loop, Loop]:
    torch.set_num_threads(1)
    gen = Generator.load(str(run / "best"))
    player, out = Loop("player"), Loop("cadenza")
    d = Duet(gen, Steering(seed=1, temperature=1.2), clock=Clock(), send=out.send,
             say=kw.pop("say", print), **kw)
    return d, player, out


def _phrase(port: Loop, notes, gap=0.12, length=0.1) -> None:
    for p in notes:
        port.send(mido.Message("note_on", note=p, velocity=80))
        time.sleep(length)
        port.send(mido.Message("note_off", note=p, velocity=0))
        time.sleep(gap - length if gap > length else 0)


def _pairs_closed(log) -> bool:
    """Every note-on sent got its note-off."""
    on = collections.Counter()
    for _, m in log:
        if m.type == "note_on" and m.velocity > 0:
            on[m.note] += 1
        elif m.type == "note_off" or (m.type == "note_on" and m.velocity == 0):
            on[m.note] -= 1
    return all(v <= 0 for v in on.values())


def test_a_whole_session_play_pause_answer_cut_in_save(tiny_run, tmp_path):
    d, player, out = _duet(tiny_run, wait=0.4, answer=3.0)
    source = PortSource(player, d.clock)
    done = threading.Event()
    cut_at = {}

    def pianist():
        _phrase(player, [60, 62, 64, 65, 67, 65, 64, 62])
        # wait for the answer to start, then cut in mid-answer
        t = time.time()
        while not any(m.type == "note_on" for _, m in out.log) and time.time() - t < 10:
            time.sleep(0.01)
        time.sleep(0.5)
        cut_at["t"] = time.perf_counter()
        _phrase(player, [72, 71, 69])
        time.sleep(1.5)  # a pause: a second answer
        done.set()

    th = threading.Thread(target=pianist)
    th.start()
    play(d, source, until=lambda: done.is_set() and not d.heard)
    th.join()
    d.all_notes_off()
    summary = d.record(tmp_path / "session")
    assert len(d.answers) >= 2 and d.answers[0].cut_in and d.answers[0].notes > 0
    first = d.answers[0]
    assert first.latency_ms is not None and first.latency_ms < 500
    # after the cut-in was heard, the first answer sent no new note (it stopped within one)
    heard = cut_at["t"] + 0.02  # the loop polls every few ms
    late_ons = [t for t, m in out.log if m.type == "note_on" and m.velocity > 0
                and heard < t < heard + 0.3]
    assert len(late_ons) <= 1
    assert _pairs_closed(out.log)
    score = mido.MidiFile(str(tmp_path / "session.mid"))
    names = {t.name for t in score.tracks}
    assert {PLAYER_TRACK, CADENZA_TRACK} <= names
    j = json.loads((tmp_path / "session.json").read_text())
    assert j["player_notes"] == 11 and j["cadenza_notes"] == summary["cadenza_notes"] > 0
    assert j["answers"][0]["cut_in"] and j["latency_ms"]["n"] >= 2
    assert (tmp_path / "session.png").exists()
    # the model heard both parts as one piece: the context holds the player's notes
    ids = d.engine.tokens()[0]
    assert (ids == 3 + 72).sum() >= 1  # NOTE_ON 72, played after the cut-in


def test_bad_messages_are_cleaned_and_stuck_keys_released(tiny_run):
    said = []
    d, player, out = _duet(tiny_run, wait=5.0, answer=1.0, max_hold=1.0, say=said.append)
    t = 0.0
    for m in (mido.Message("sysex", data=[1, 2, 3]), mido.Message("clock"),
              mido.Message("active_sensing"), mido.Message("start")):
        assert d.hear(m, t) is False
    assert d.engine.n == 1  # nothing fed but BOS
    d.hear(mido.Message("note_on", note=60, velocity=90), 0.1)
    d.hear(mido.Message("note_on", note=60, velocity=0), 0.3)  # velocity 0: a release
    assert d.player[-1][:3] == (0.1, 0.3, 60)
    # the pedal holds the release until it is lifted
    d.hear(mido.Message("control_change", control=64, value=127), 0.4)
    d.hear(mido.Message("note_on", note=64, velocity=70), 0.5)
    d.hear(mido.Message("note_off", note=64), 0.6)
    assert 64 in d.held
    d.hear(mido.Message("control_change", control=64, value=0), 0.9)
    assert 64 not in d.held and d.player[-1][:3] == (0.5, 0.9, 64)
    # a release of a key that is not down; running status with a clock byte in between
    assert d.hear(mido.Message("note_off", note=50), 1.0) is False
    from cadenza.duet import parse_midi_bytes
    msgs = parse_midi_bytes([0x90, 67, 80, 0xF8, 67, 0])
    assert [m.type for m in msgs] == ["note_on", "clock", "note_on"]
    msgs = [m for m in msgs if m.type != "clock"]
    d.hear(msgs[0], 1.1)
    d.hear(msgs[1], 1.2)
    assert d.player[-1][:3] == (1.1, 1.2, 67)
    # a key never released: released after --max-hold, said once
    d.hear(mido.Message("note_on", note=70, velocity=60), 1.3)
    d.hear(mido.Message("note_on", note=71, velocity=60), 1.3)
    d.release_stale(2.5)
    assert not d.held and len(said) == 1 and "held over 1 s" in said[0]
    g = d.grammar.inner
    assert g.down[0].sum() == 0  # the context released them too
    # a burst of 1,000 notes in one second
    for i in range(1000):
        p = 30 + i % 60
        d.hear(mido.Message("note_on", note=p, velocity=50), 3 + i / 1000)
        d.hear(mido.Message("note_off", note=p), 3 + i / 1000 + 0.0005)
    d.engine.prefill()  # the model reads it (sliding past its context)
    assert len(d.player) == 5 + 1000 and not d.held


def test_a_port_that_disappears_keeps_the_session(tiny_run, tmp_path):
    d, player, out = _duet(tiny_run, wait=0.3, answer=1.0)
    source = PortSource(player, d.clock)
    _phrase(player, [60, 64, 67], gap=0.0, length=0.0)
    player.fail = True
    with pytest.raises(OSError):
        play(d, source)
    d.all_notes_off()
    s = d.record(tmp_path / "kept")
    assert s["player_notes"] == 3 and (tmp_path / "kept.mid").exists()


def test_no_stuck_note_when_interrupted_mid_answer(tiny_run, tmp_path):
    d, player, out = _duet(tiny_run, wait=0.2, answer=4.0)
    sent = {"n": 0}
    real = d.send_msg

    def send(msg):
        real(msg)
        if msg.type == "note_on":
            sent["n"] += 1
            if sent["n"] == 3:
                raise KeyboardInterrupt  # Ctrl-C in the middle of an answer
    d.send_msg = send
    source = PortSource(player, d.clock)
    _phrase(player, [60, 62, 64, 65], gap=0.05, length=0.04)
    with pytest.raises(KeyboardInterrupt):
        try:
            play(d, source)
        finally:
            d.send_msg = real
            d.all_notes_off()
            d.record(tmp_path / "interrupted")
    assert _pairs_closed(out.log)
    assert any(m.type == "control_change" and m.control == 123 for _, m in out.log)
    assert json.loads((tmp_path / "interrupted.json").read_text())["cadenza_notes"] >= 1


def test_replay_end_to_end(tiny_run, tmp_path):
    from tests.conftest import make_score
    f = tmp_path / "phrase.mid"
    make_score([(i * 0.15, i * 0.15 + 0.12, 60 + i, 80) for i in range(10)]).dump_midi(str(f))
    r = subprocess.run([sys.executable, "-m", "cadenza", "duet", "--replay", str(f),
                        "--checkpoint", str(tiny_run / "best"), "--answer", "2", "--wait",
                        "0.5", "--speed", "2", "--record", str(tmp_path / "rec")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "only recorded" in r.stdout and "1 answers" in r.stdout
    js = list((tmp_path / "rec").glob("duet-*.json"))
    assert len(js) == 1
    j = json.loads(js[0].read_text())
    assert j["player_notes"] == 10 and j["cadenza_notes"] > 0
    assert j["answers"][0]["latency_ms"] is not None


def test_two_duets_on_one_port_are_refused(tiny_run):
    from cadenza.atomic import Busy
    from cadenza.duet import port_lock, run_duet
    with port_lock("My Keyboard", "--in"):
        with pytest.raises(Busy, match="--in My Keyboard: another duet plays on this port"):
            run_duet(DuetConfig(in_port="My Keyboard", checkpoint=str(tiny_run / "best")))


def test_list_ports_says_why_there_are_none():
    from cadenza.duet import list_ports
    text = list_ports()
    assert text.startswith(("inputs:", "no MIDI system", "no MIDI support"))


@pytest.mark.skipif(not os.path.exists("/dev/snd/seq"), reason="no ALSA sequencer here "
                    "(/dev/snd/seq): the real-port test needs virtual ALSA ports")
def test_a_real_virtual_port(tiny_run):  # pragma: no cover - needs ALSA
    mido.set_backend("mido.backends.rtmidi")
    with mido.open_output("cadenza-test-in", virtual=True) as keys:
        inp = mido.open_input("cadenza-test-in")
        d, _, out = _duet(tiny_run, wait=0.3, answer=1.0)
        for p in (60, 64, 67):
            keys.send(mido.Message("note_on", note=p, velocity=80))
            keys.send(mido.Message("note_off", note=p))
        play(d, PortSource(inp, d.clock), until=lambda: len(d.answers) >= 1 and not d.heard
             and d.clock.now() > 3)
        inp.close()
        assert d.answers and np.isfinite(d.answers[0].latency_ms)


def test_bad_duet_flags_name_themselves():
    from cadenza.config import ConfigError
    for kw, flag in ((dict(wait=0), "--wait"), (dict(answer=0.1), "--answer"),
                     (dict(speed=0), "--speed"), (dict(sample={"num_samples": 2}),
                                                  "--num-samples")):
        with pytest.raises(ConfigError, match=flag):
            DuetConfig(**kw)


def test_replay_over_chords_answers_on_their_tones(tiny_run, tmp_path):
    """--chords in a duet: the schedule runs from the session's start, a backing
    progression the player plays along with; with hard chords every note Cadenza answers
    with is a tone of the chord sounding when it starts."""
    from cadenza import theory
    from cadenza.data.midi import load_score, notes_from_score, only_track
    from tests.conftest import make_score
    f = tmp_path / "phrase.mid"
    make_score([(i * 0.15, i * 0.15 + 0.12, 60 + i, 80) for i in range(10)]).dump_midi(str(f))
    chords = "C | Am | F | G7"
    r = subprocess.run([sys.executable, "-m", "cadenza", "duet", "--replay", str(f),
                        "--checkpoint", str(tiny_run / "best"), "--answer", "3", "--wait",
                        "0.5", "--speed", "2", "--record", str(tmp_path / "rec"),
                        "--chords", chords, "--bpm", "240", "--chord-strength", "hard"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mid = next((tmp_path / "rec").glob("duet-*.mid"))
    answer = notes_from_score(only_track(load_score(mid), CADENZA_TRACK))
    bars = theory.parse_progression(chords, bpm=240)
    assert len(answer) >= 3
    def tones(t):
        u = (t + 1e-6) % bars[-1][1]
        return theory.parse_chord(next(lab for a, b, lab in bars if a <= u < b))[0]

    for t, p in zip(answer.start, answer.pitch):
        assert p % 12 in tones(t) | tones(max(t - 0.1, 0)), (t, p)
