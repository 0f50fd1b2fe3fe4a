"""What an allowed request may set off is bounded, over real HTTP on 127.0.0.1: a start whose
notes are stacked at one instant, the work folder, duets' memory, a stop with a stream open
and jobs queued, malformed headers, deep or huge bodies, long strings, slow and idle
connections; and the CLI's side of the same bounds. Every client here is bounded in time."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import symusic

from cadenza.studio import _size as folder_bytes  # what --max-work-mb counts
from tests.conftest import Server, make_score, random_piece

OCTET = {"Content-Type": "application/octet-stream"}


def _stacked_midi(path: Path, n: int = 100_000) -> bytes:
    """``n`` notes all starting at 0 s: about 600 KB, well under the upload limit."""
    s = symusic.Score(480)
    t = symusic.Track()
    for i in range(n):
        t.notes.append(symusic.Note(0, 480 * 8, 21 + i % 88, 80))
    s.tracks.append(t)
    s.dump_midi(str(path))
    return path.read_bytes()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _descendants(pid: int) -> list[int]:
    """Processes whose parent chain reaches ``pid`` (Linux /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


@pytest.fixture
def bounded_server(tiny_run, tmp_path):
    s = Server(tmp_path / "tmp", "--runs", str(tiny_run), "--max-work-mb", "8",
               "--header-timeout", "1", "--body-timeout", "2", "--idle-timeout", "1",
               "--max-connections", "12", "--max-body-kb", "64")
    yield s
    s.close()


def test_a_start_of_100k_notes_at_zero_is_one_line_and_the_folder_stays_small(
        bounded_server, tmp_path):
    s = bounded_server
    data = _stacked_midi(tmp_path / "stack.mid")
    sizes, done = [], threading.Event()

    def watch():
        while not done.is_set():
            sizes.append(folder_bytes(s.work()))
            time.sleep(0.05)
    w = threading.Thread(target=watch)
    w.start()
    t = time.time()
    try:
        status, body, _ = s.request("POST", "/api/starts?name=stack.mid", data, OCTET)
    finally:
        done.set()
        w.join()
    assert time.time() - t < 10
    assert status == 400 and body["error"].startswith("stack.mid: 100,000 notes start at "
                                                      "0.00 s"), body
    assert max(sizes) <= 8e6 and not list((s.work() / "starts").glob("*/*.wav"))
    assert s.request("GET", "/api/info")[0] == 200  # still serving


def test_headers_bodies_numbers_and_strings_are_answered_with_a_short_4xx(bounded_server):
    s = bounded_server
    me = f"http://{s.host}:{s.port}"
    for origin in (f"http://{s.host}:abc", f"http://{s.host}:99999", "http://[::1"):
        status, body, _ = s.request("POST", "/api/jobs", {"sample": {"tokens": 5}},
                                    {"Origin": origin})
        assert status == 400 and body == {"error": "malformed Origin header"}, (origin, body)
    deep = b'{"sample": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body, _ = s.request("POST", "/api/jobs", deep, {"Content-Type":
                                                            "application/json"})
    assert status == 413 and "too large" in body["error"]  # past --max-body-kb first
    deep = b'{"sample": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    status, body, _ = s.request("POST", "/api/jobs", deep, {"Content-Type":
                                                            "application/json"})
    assert status == 400 and "nested deeper than 8 levels" in body["error"]
    huge = {"model": "x" * 60_000}
    status, body, _ = s.request("POST", "/api/jobs", huge, {"Origin": me})
    assert status == 400 and body["error"] == "model: at most 512 characters, got 60,000"
    status, body, _ = s.request("POST", "/api/starts/builtin", {"piece": "y" * 400})
    assert status == 400 and len(json.dumps(body)) < 300
    c = http.client.HTTPConnection(s.host, s.port, timeout=10)  # 50 MB announced: refused
    c.putrequest("POST", "/api/jobs", skip_host=True)  # before a byte of it is read
    c.putheader("Host", f"{s.host}:{s.port}")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(50_000_000))
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413
    c.close()
    for sample, says in (({"tokens": 10**6}, "--tokens: the studio makes up to 12,000"),
                         ({"temperature": 1e300}, "--temperature: must be in"),
                         ({"seed": 2**70}, "--seed: must be in 0..2**63-1")):
        status, body, _ = s.request("POST", "/api/jobs", {"sample": sample})
        assert status == 400 and body["error"].startswith(says), body
    raw = b'{"primer_seconds": Infinity}'
    status, body, _ = s.request("POST", "/api/jobs", raw, {"Content-Type": "application/json"})
    assert status == 400 and body["error"].startswith("--primer-seconds: must be in")
    log = "".join(s.lines)
    assert "Traceback" not in log


def test_the_event_stream_is_under_the_origin_check(bounded_server):
    s = bounded_server
    status, body, _ = s.request("GET", "/api/duet/abc/events",
                                headers={"Origin": "http://evil.example.com"})
    assert status == 403
    status, body, _ = s.request("GET", "/api/duet/abc/events",
                                headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, body, _ = s.request("GET", "/api/duet/abc/events")  # ours: not found
    assert status == 404


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``)."""
    sock.settimeout(seconds)
    t = time.time()
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return time.time() - t
    except TimeoutError:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return time.time() - t


def test_idle_slow_and_surplus_connections_are_closed(bounded_server):
    s = bounded_server
    idle = socket.create_connection((s.host, s.port), timeout=5)  # says nothing
    assert (_closed_within(idle, 4) or 99) < 3
    slow = socket.create_connection((s.host, s.port), timeout=5)  # a header a byte at a time
    t = time.time()
    head = f"GET /api/info HTTP/1.1\r\nHost: {s.host}:{s.port}\r\nX-Slow: ".encode()
    closed = False
    for b in head + b"a" * 200:
        try:
            slow.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if time.time() - t > 4:
            break
        time.sleep(0.02)
    assert closed or _closed_within(slow, 1) is not None
    assert time.time() - t < 4
    body = socket.create_connection((s.host, s.port), timeout=5)  # a body that never ends
    body.send(f"POST /api/jobs HTTP/1.1\r\nHost: {s.host}:{s.port}\r\nContent-Type: "
              "application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    assert (_closed_within(body, 5) or 99) < 4
    kept = socket.create_connection((s.host, s.port), timeout=5)  # kept alive, then idle
    kept.send(f"GET /api/info HTTP/1.1\r\nHost: {s.host}:{s.port}\r\n\r\n".encode())
    kept.settimeout(5)
    assert kept.recv(100).startswith(b"HTTP/1.1 200")
    assert (_closed_within(kept, 5) or 99) < 4
    many = [socket.create_connection((s.host, s.port), timeout=5) for _ in range(20)]
    time.sleep(0.3)  # well inside --header-timeout 1: only the cap closes anything yet
    dropped = 0
    for c in many:
        c.setblocking(False)
        try:
            dropped += c.recv(1) == b""
        except BlockingIOError:
            pass  # still open
        except ConnectionResetError:
            dropped += 1
    assert 8 <= dropped < 20, dropped  # --max-connections 12: the surplus is closed at once
    for c in many:
        c.close()
    assert s.request("GET", "/api/info")[0] == 200


def test_sigterm_with_a_stream_open_and_jobs_queued_stops_within_seconds(tiny_run, tmp_path):
    pytest.importorskip("mido", reason="the live extra is not installed")
    s = Server(tmp_path / "tmp", "--runs", str(tiny_run))
    try:
        model = str(tiny_run / "best")
        st, d, _ = s.request("POST", "/api/duet", {"model": model})
        assert st == 200, d
        c = http.client.HTTPConnection(s.host, s.port, timeout=30)
        c.request("GET", f"/api/duet/{d['id']}/events", headers={"Host": f"{s.host}:{s.port}"})
        stream = c.getresponse()
        assert stream.status == 200
        start = make_score(random_piece(np.random.default_rng(0), 30, 60.0))
        start.dump_midi(str(tmp_path / "long.mid"))
        st, sd, _ = s.request("POST", "/api/starts?name=long.mid",
                              (tmp_path / "long.mid").read_bytes(), OCTET)
        assert st == 200, sd
        pages = [s.request("GET", "/api/info")[1]["page"] for _ in range(4)]
        for page in pages:  # one runs, the others wait
            st, job, _ = s.request("POST", "/api/jobs", {
                "model": model, "start": sd["id"], "sample": {"seconds": 110}},
                {"Cadenza-Page": page})
            assert st == 200, job
        time.sleep(1.0)
        work, kids = s.work(), _descendants(s.proc.pid)
        t = time.time()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=15)
        took = time.time() - t
        assert took < 5, f"stopped after {took:.1f} s"
        assert not work.exists()
        time.sleep(0.2)
        assert not [k for k in kids if Path(f"/proc/{k}").exists()
                    and "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1][:3]]
        c.close()
    finally:
        s.close()


def test_thirty_duets_started_and_stopped_give_their_memory_back(tmp_path):
    """With the shipped model: each stopped duet once kept about 12 MB."""
    pytest.importorskip("mido", reason="the live extra is not installed")
    s = Server(tmp_path / "tmp")
    try:
        def cycle():
            st, d, _ = s.request("POST", "/api/duet", {"wait": 0.2, "answer": 1})
            assert st == 200, d
            notes = [[1, 60, 80], [0, 60, 0], [1, 64, 80], [0, 64, 0]]
            assert s.request("POST", f"/api/duet/{d['id']}/notes", {"notes": notes})[0] == 200
            time.sleep(0.5)  # it answers
            assert s.request("POST", f"/api/duet/{d['id']}/stop", {})[0] == 200
        for _ in range(5):  # warm: the model, the allocator's pools
            cycle()
        before = _rss_mb(s.proc.pid)
        for _ in range(30):
            cycle()
        grew = _rss_mb(s.proc.pid) - before
        print(f"30 duets: RSS {before:.0f} MB -> +{grew:.0f} MB")
        assert grew < 60, f"30 duets kept {grew:.0f} MB"
    finally:
        s.close()


def test_the_cli_bounds_a_stacked_primer_and_an_absurd_length(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    _stacked_midi(tmp_path / "stack.mid")
    for args, says in (
            (["--primer", str(tmp_path / "stack.mid")],
             f"--primer {tmp_path / 'stack.mid'}: 100,000 notes start at 0.00 s"),
            (["--seconds", "1e9"], "--seconds: must be in (0, 3600], got 1000000000.0"),
            (["--tokens", str(10**30)], "--tokens: must be in (0, 1000000]"),
            (["--seed", str(2**70)], "--seed: must be in 0..2**63-1")):
        r = subprocess.run([sys.executable, "-m", "cadenza", "generate", "--checkpoint",
                            str(tiny_run / "best"), "--out", str(tmp_path / "g"), *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode != 0 and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "g").exists()


def test_duet_checks_record_and_replay_before_the_session(tiny_run, tmp_path):
    pytest.importorskip("mido", reason="the live extra is not installed")
    (tmp_path / "a-file").write_text("x")
    for args, says in (
            (["--record", str(tmp_path / "a-file")], "--record"),
            (["--record", str(tmp_path / "a-file" / "sub")], "is a file"),
            (["--replay", str(tmp_path / "missing.mid")], "--replay"),
    ):
        argv = ["--replay", "builtin:openings/schubert", "--speed", "50", *args] \
            if args[0] == "--record" else args
        r = subprocess.run([sys.executable, "-m", "cadenza", "duet", "--checkpoint",
                            str(tiny_run / "best"), *argv], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_render_past_its_size_or_time_is_stopped_and_leaves_no_file(tmp_path):
    from cadenza.render import audio_missing, kill_renders, render_wav
    if audio_missing():
        pytest.skip(audio_missing())
    score = make_score(random_piece(np.random.default_rng(1), 300, 240.0))  # seconds to render
    score.dump_midi(str(tmp_path / "p.mid"))
    wav, why = render_wav(tmp_path / "p.mid", tmp_path / "a.wav", max_bytes=200_000)
    assert wav is None and "stopped at" in why
    wav, why = render_wav(tmp_path / "p.mid", tmp_path / "b.wav", timeout=0.05)
    assert wav is None and "time limit" in why
    done = {}
    t = threading.Thread(target=lambda: done.update(r=render_wav(tmp_path / "p.mid",
                                                                 tmp_path / "c.wav")))
    t.start()
    time.sleep(0.3)
    kill_renders()  # a server that stops
    t.join(10)
    assert done["r"][0] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mid"]  # no partial WAV left
    wav, why = render_wav(tmp_path / "p.mid", tmp_path / "d.wav")  # within its limits
    assert wav is not None and wav.stat().st_size > 44
