"""Cadenza Studio: the server's API on a tiny trained model (bad input, two requests at once,
continuing a take, its temporary folder), and the page itself in headless Chromium driven by
Playwright on the shipped piano model.

The browser test needs Debian's ``chromium`` (scripts/test.sh installs it when it may) and
Playwright for Python (the dev extra); it skips with the reason otherwise. Set
``CADENZA_STUDIO_SCREENSHOTS=docs`` to keep its screenshots (the README's come from there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cadenza.data.midi import load_score, notes_from_score, only_track
from cadenza.generate import PRIMER_TRACK
from cadenza.stats import CONTINUATION_TRACK
from tests.conftest import Server, make_score, random_piece

pytest.importorskip("starlette", reason="the studio extra is not installed "
                    "(pip install -e '.[studio]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
OPENING = ROOT / "src/cadenza/openings/schubert-moment-musical-3.mid"


@pytest.fixture
def studio(tiny_run, tmp_path, monkeypatch):
    """A Studio over tiny_run, its temporary folder under tmp_path/tmp, and a client."""
    import tempfile

    from starlette.testclient import TestClient

    from cadenza.config import StudioConfig
    from cadenza.studio import Studio, make_app
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    s = Studio(StudioConfig(runs=str(tiny_run), max_upload_mb=0.05), device="cpu")
    with TestClient(make_app(s)) as client:
        yield s, client
    s.close()


OCTET = {"content-type": "application/octet-stream"}  # how the page sends an upload


def _midi_bytes(tmp_path: Path, notes, name: str = "piece.mid") -> bytes:
    f = tmp_path / name
    make_score(notes).dump_midi(str(f))
    return f.read_bytes()


def _wait(client, job_id: str, timeout: float = 120.0) -> dict:
    t = time.time()
    while time.time() - t < timeout:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def _run_model(studio) -> str:
    return next(m["id"] for m in studio.models if not m["id"].startswith("pretrained:"))


def test_models_lists_runs_checkpoints_with_their_numbers(studio, tiny_run):
    s, client = studio
    models = client.get("/api/info").json()["models"]
    names = {m["name"] for m in models}
    assert {"best", "last"} <= names and "pretrained:piano" in names
    best = next(m for m in models if m["name"] == "best")
    assert best["tokenizer"] == "performance" and best["parameters"] > 0
    assert best["val_nll"] > 0
    # the page's defaults are the CLI's
    defaults = client.get("/api/info").json()["defaults"]
    assert defaults["seconds"]["default"] == 20.0 and defaults["temperature"]["default"] == 1.0


def test_bad_uploads_get_a_clear_message_and_the_server_keeps_serving(studio, tmp_path):
    s, client = studio
    r = client.post("/api/starts?name=notes.txt", content=b"these are not notes", headers=OCTET)
    assert r.status_code == 400 and r.json()["error"] == \
        "notes.txt: not a MIDI file (no MThd header)"
    r = client.post("/api/starts?name=empty.mid", content=b"", headers=OCTET)
    assert r.status_code == 400 and r.json()["error"] == "empty.mid: empty file"
    silent = _midi_bytes(tmp_path, [], "silent.mid")
    r = client.post("/api/starts?name=silent.mid", content=silent, headers=OCTET)
    assert r.status_code == 400 and "silent.mid: no notes" in r.json()["error"]
    big = b"MThd" + bytes(60_000)  # over this studio's 0.05 MB
    r = client.post("/api/starts?name=big.mid", content=big, headers=OCTET)
    assert r.status_code == 413 and "big.mid: too large" in r.json()["error"] \
        and "0.05 MB" in r.json()["error"]
    r = client.post("/api/jobs", json={"model": _run_model(s), "sample": {"temperature": -1}})
    assert r.status_code == 400
    assert r.json()["error"] == "--temperature: must be in [0.001, 100], got -1"
    r = client.post("/api/jobs", json={"sample": {"num_samples": 99}})
    assert r.status_code == 400 and "--max-takes" in r.json()["error"]
    # a page never makes the server read a file of its disk (--chords-file is the CLI's)
    for path in ("/api/jobs", "/api/duet"):
        r = client.post(path, json={"sample": {"chords_file": "/etc/passwd"}})
        assert r.status_code == 400 and "names a file on the server's disk" in r.json()["error"]
    assert not list((s.work / "starts").glob("*/start.mid")) if (s.work / "starts").exists() \
        else True  # nothing refused was kept
    # still serving: a good file after the bad ones
    good = _midi_bytes(tmp_path, random_piece(np.random.default_rng(1), 30, 8.0))
    r = client.post("/api/starts?name=good.mid", content=good, headers=OCTET)
    assert r.status_code == 200 and len(r.json()["notes"]) == 30


def test_two_requests_at_once_each_get_their_own_takes(studio, tmp_path):
    """Two tabs click Generate together: the takes each gets are exactly what `generate`
    makes from its own settings, alone."""
    from cadenza.config import GenerateConfig, SampleConfig
    from cadenza.generate import run_generate
    s, client = studio
    model = _run_model(s)
    piece = _midi_bytes(tmp_path, random_piece(np.random.default_rng(2), 40, 10.0))
    sid = client.post("/api/starts?name=p.mid", content=piece, headers=OCTET).json()["id"]
    asks = [{"model": model, "start": sid, "primer_seconds": 4,
             "sample": {"tokens": 40, "seed": 1, "num_samples": 2}},
            {"model": model, "start": sid, "primer_seconds": 6,
             "sample": {"tokens": 30, "seed": 2, "num_samples": 1, "temperature": 0.8}}]
    jobs = [client.post("/api/jobs", json=a).json() for a in asks]
    assert jobs[1]["state"] == "queued"  # one worker: the second waits its turn
    done = [_wait(client, j["id"]) for j in jobs]
    assert [len(d["takes"]) for d in done] == [2, 1]
    for ask, job in zip(asks, done):
        assert job["state"] == "done", job["error"]
        alone = tmp_path / f"alone-{job['id']}"
        run_generate(GenerateConfig(out=str(alone), checkpoint=(model,),
                                    primer=str(s.starts[sid].midi),
                                    primer_seconds=ask["primer_seconds"],
                                    sample=SampleConfig(**ask["sample"]), audio=False))
        for t in job["takes"]:
            assert t["settings"]["seed"] == ask["sample"]["seed"]
            got = client.get(t["midi"]).content
            want = (alone / f"sample-{t['take']}.mid").read_bytes()
            a, b = (notes_from_score(load_score(f)) for f in _write(tmp_path, got, want))
            assert np.array_equal(a.pitch, b.pitch) and np.allclose(a.start, b.start)


def _write(tmp_path: Path, *blobs: bytes) -> list[Path]:
    out = []
    for i, b in enumerate(blobs):
        f = tmp_path / f"blob-{i}-{time.time_ns()}.mid"
        f.write_bytes(b)
        out.append(f)
    return out


def test_continue_a_take_and_the_folder_goes_with_the_server(studio, tmp_path):
    s, client = studio
    model = _run_model(s)
    job = client.post("/api/jobs", json={"model": model, "sample": {"tokens": 30}}).json()
    job = _wait(client, job["id"])
    assert job["state"] == "done" and job["takes"][0]["start"] is None  # from silence
    take = job["takes"][0]
    start = client.post("/api/starts/from-take", json={"job": job["id"], "take": 0}).json()
    assert len(start["notes"]) == len(take["notes"]) > 0
    assert client.get(f"/api/jobs/{job['id']}/takes/5/mid").status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404
    assert s.work.is_dir()
    s.close()
    assert not s.work.exists()


def test_a_killed_servers_folder_is_removed_by_the_next(tiny_run, tmp_path, monkeypatch):
    import tempfile

    from cadenza.config import StudioConfig
    from cadenza.studio import Studio
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"cadenza-studio-{dead.pid}-abc"
    (left / "jobs").mkdir(parents=True)
    mine = tmp_path / f"cadenza-studio-{os.getpid()}-alive"
    mine.mkdir()
    s = Studio(StudioConfig(runs=str(tiny_run)))
    try:
        assert not left.exists() and mine.exists()  # a live server's folder is left alone
    finally:
        s.close()


def test_without_fluidsynth_the_page_says_so_and_still_offers_midi(tiny_run, tmp_path,
                                                                     monkeypatch):
    import tempfile

    from starlette.testclient import TestClient

    from cadenza.config import StudioConfig
    from cadenza.studio import Studio, make_app
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    s = Studio(StudioConfig(runs=str(tiny_run)))
    try:
        client = TestClient(make_app(s))
        assert "FluidSynth not found" in client.get("/api/info").json()["audio_missing"]
        piece = _midi_bytes(tmp_path, random_piece(np.random.default_rng(3), 20, 6.0))
        start = client.post("/api/starts?name=p.mid", content=piece, headers=OCTET).json()
        assert start["audio"] is None
        job = client.post("/api/jobs", json={"model": _run_model(s), "start": start["id"],
                                             "sample": {"tokens": 20}}).json()
        take = _wait(client, job["id"])["takes"][0]
        assert take["wav"] is None and client.get(take["midi"]).status_code == 200
        assert client.post("/api/jobs", json=["not", "a", "request"]).status_code == 400
    finally:
        s.close()


def test_each_takes_command_line_is_the_cli_for_the_same_settings():
    """The "same take from the command line" parses, through the real CLI parser, into the
    settings the take was made with."""
    import shlex

    from cadenza.cli import build_parser, from_args
    from cadenza.config import GenerateConfig, SampleConfig
    from cadenza.studio import Job, command_line
    sample = SampleConfig(seconds=3.5, temperature=0.9, top_p=0.95, top_k=12, seed=4,
                          num_samples=2, may_end=True, key="D minor", pitch_range="C3-C6",
                          max_polyphony=3, density=5.5, max_repeats=2)
    job = Job("j", 0, GenerateConfig(out="o", primer="/tmp/x/start.mid", primer_seconds=4.5,
                                     sample=sample), "my song's.mid")
    args = build_parser().parse_args(shlex.split(command_line(job))[1:])
    cfg = from_args(GenerateConfig, args)
    assert cfg.sample == sample and cfg.primer == "my song's.mid"
    assert cfg.primer_seconds == 4.5 and cfg.checkpoint == ("pretrained:piano",)


def test_a_port_in_use_is_one_line_naming_the_flag(tiny_run):
    import socket

    from cadenza.config import ConfigError, StudioConfig
    from cadenza.studio import serve
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"^--port {port}: cannot listen on 127.0.0.1"):
            serve(StudioConfig(runs=str(tiny_run), port=port))


# --- the page, in a real browser ---------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); "
                    "scripts/test.sh installs it when it may")
    return exe


@pytest.fixture
def server(tmp_path):
    """`cadenza studio --port 0` in its own process, with its own temp folder."""
    s = Server(tmp_path / "tmp")
    yield s.url, s.tmp, s.proc
    if s.proc.poll() is None:
        s.proc.kill()


def test_the_page_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is "
                                   "not installed (pip install -e '.[dev]')")
    exe = _chromium()
    url, tmp, proc = server
    shots = Path(os.environ.get("CADENZA_STUDIO_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    keep = 5.0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        outside = []  # nothing may come from anywhere but the studio itself
        page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
        page.goto(url)
        page.wait_for_selector("#model option[value='pretrained:piano']", state="attached")
        page.set_input_files("#upload", str(OPENING))
        page.wait_for_selector("#start svg.roll rect.note")
        assert page.inner_text("#start-name") == OPENING.name
        page.fill("#keep", str(keep))
        page.fill("#settings [name=seconds]", "4")
        page.fill("#settings [name=num_samples]", "2")
        page.fill("#settings [name=seed]", "7")
        page.fill("#settings [name=key]", "D minor")  # a control: every new note in D minor
        page.fill("#settings [name=chords]", "Dm | A7")  # and chords, written over the roll
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.take').length === 2",
                               timeout=120_000)
        audio = page.locator(".take audio").count() == 2
        if audio:  # both players loaded their WAV
            page.wait_for_function("[...document.querySelectorAll('.take audio')]"
                                   ".every(a => a.readyState >= 1 && a.duration > 4)",
                                   timeout=30_000)
        else:
            assert "FluidSynth" in page.inner_text("#takes")
        for card in page.locator(".take").all():
            assert card.locator("svg.roll rect.note.primer").count() > 0
            assert card.locator("svg.roll rect.note.cont").count() > 0
            assert "seed 7" in card.inner_text() and "key D minor" in card.inner_text()
            assert "chords Dm | A7" in card.inner_text()
            assert card.locator("svg.roll text.chord").all_text_contents()[:2] == ["Dm", "A7"]
            assert "stopped: reached the seconds asked" in card.inner_text()
        page.screenshot(path=str(shots / "studio.png"), full_page=True)

        with page.expect_download() as dl:
            page.locator(".take .midi-link").first.click()
        midi = tmp_path / "take.mid"
        dl.value.save_as(midi)
        score = load_score(midi)  # it decodes
        primer = notes_from_score(only_track(score, PRIMER_TRACK))
        cont = notes_from_score(only_track(score, CONTINUATION_TRACK))
        upload = notes_from_score(load_score(OPENING))
        first = upload.start < keep - 0.05  # the primer's notes are the upload's first 5 s
        assert len(cont) > 0 and len(primer) >= first.sum() > 10
        assert np.isin(cont.pitch % 12, [2, 4, 5, 7, 9, 10, 0, 1, 11]).all()
        unmatched = list(zip(primer.start.tolist(), primer.pitch.tolist()))
        for t, pitch in zip(upload.start[first].tolist(), upload.pitch[first].tolist()):
            hit = next((u for u in unmatched if u[1] == pitch and abs(u[0] - t) <= 0.02), None)
            assert hit is not None, f"the upload's {pitch} at {t:.3f} s is not in the take"
            unmatched.remove(hit)

        page.locator(".take .compare-box").nth(0).check()
        page.locator(".take .compare-box").nth(1).check()
        page.wait_for_selector("#compare-section:not([hidden]) #compare .take >> nth=1")
        page.locator("#compare-section").screenshot(path=str(shots / "studio-compare.png"))

        page.locator(".take .continue").first.click()
        page.wait_for_function("document.querySelector('#start-name').textContent"
                               ".startsWith('take')")

        bad = tmp_path / "notes.mid"
        bad.write_text("not music")
        page.set_input_files("#upload", str(bad))
        page.wait_for_selector("#message:not([hidden])")
        assert page.inner_text("#message") == "notes.mid: not a MIDI file (no MThd header)"
        assert outside == []
        browser.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not list(tmp.glob("cadenza-studio-*"))  # no temporary file left behind


def _browser_setup(server, tmp_path):
    """Playwright, Debian's chromium, the studio's address and the screenshots' folder."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is "
                                   "not installed (pip install -e '.[dev]')")
    exe = _chromium()
    shots = Path(os.environ.get("CADENZA_STUDIO_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    return sync_api, exe, server[0], shots


def _open_page(p, exe: str, *args: str):
    browser = p.chromium.launch(executable_path=exe, headless=True,
                                args=["--no-sandbox", "--disable-gpu", *args])
    return browser, browser.new_page(viewport={"width": 1280, "height": 900},
                                     accept_downloads=True)


def test_the_play_page_in_chromium(server, tmp_path):
    """Play a phrase on the on-screen keyboard: the answer comes back note by note, is drawn
    and played, the page measures its latency with its own clock, and the session saves."""
    pytest.importorskip("mido", reason="the live extra is not installed")
    sync_api, exe, url, shots = _browser_setup(server, tmp_path)
    with sync_api.sync_playwright() as p:
        browser, page = _open_page(p, exe, "--autoplay-policy=no-user-gesture-required")
        outside = []
        page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
        page.goto(url)
        page.wait_for_selector("#model option[value='pretrained:piano']", state="attached")
        page.click("#play-start")
        page.wait_for_function("document.querySelector('#play-state').textContent"
                               ".startsWith('listening')", timeout=60_000)
        for pitch in (60, 62, 64, 65, 67, 69, 67):
            key = page.locator(f'#keyboard .key[data-pitch="{pitch}"]')
            key.dispatch_event("pointerdown")
            page.wait_for_timeout(110)
            key.dispatch_event("pointerup")
        page.wait_for_function("window.cadenzaPlay.cadenzaNotes >= 3", timeout=60_000)
        play = page.evaluate("({lat: window.cadenzaPlay.latencies, notes: "
                             "window.cadenzaPlay.notes.map(n => n.who)})")
        assert play["notes"].count("you") == 7 and play["notes"].count("cadenza") >= 3
        assert len(play["lat"]) == 1 and 0 <= play["lat"][0] < 3000
        print(f"page-to-page latency: {play['lat'][0]:.0f} ms")
        page.wait_for_timeout(800)
        page.locator("#play-section").screenshot(path=str(shots / "studio-play.png"))
        page.click("#play-stop")
        page.wait_for_selector("#play-save:not([hidden])")
        with page.expect_download() as dl:
            page.click("#play-save")
        f = tmp_path / "duet.mid"
        dl.value.save_as(f)
        score = load_score(f)
        assert {t.name for t in score.tracks} >= {"Player", "Cadenza"}
        assert len(notes_from_score(only_track(score, "Player"))) == 7
        assert outside == []
        browser.close()


def test_a_page_that_leaves_mid_answer_stops_its_duet(tiny_run, tmp_path):
    """The page's event stream closes while Cadenza answers: the server stops that duet and
    keeps serving (a new duet can start)."""
    import http.client
    import json as js

    pytest.importorskip("mido", reason="the live extra is not installed")
    s = Server(tmp_path / "tmp", "--runs", str(tiny_run))
    try:
        model = str(tiny_run / "best")
        st, d, _ = s.request("POST", "/api/duet", {"model": model, "wait": 0.2, "answer": 20})
        assert st == 200, d
        c = http.client.HTTPConnection(s.host, s.port, timeout=30)
        c.request("GET", f"/api/duet/{d['id']}/events", headers={"Host": f"{s.host}:{s.port}"})
        stream = c.getresponse()
        notes = [[1, 60, 80], [0, 60, 0], [1, 64, 80], [0, 64, 0]]
        assert s.request("POST", f"/api/duet/{d['id']}/notes", {"notes": notes})[0] == 200
        while True:  # the answer has begun
            line = stream.fp.readline().decode()
            if line.startswith("data:") and js.loads(line[5:]).get("on"):
                break
        c.close()  # the page goes away mid-answer
        deadline = time.time() + 20
        while time.time() < deadline:
            st, d2, _ = s.request("POST", "/api/duet", {"model": model})
            if st == 200:
                break
            assert st == 429  # the first is still stopping
            time.sleep(0.2)
        assert st == 200 and s.request("GET", "/api/info")[0] == 200
        bad = s.request("POST", f"/api/duet/{d2['id']}/notes", {"notes": [[1, 300, 80]]})
        assert bad[0] == 400 and "notes:" in bad[1]["error"]
    finally:
        s.close()


def test_regenerate_a_span_in_chromium(server, tmp_path):
    """Drag across the start's roll, Regenerate this span: a take whose roll shows the span,
    whose notes outside it are the start's, and which can be continued."""
    sync_api, exe, url, shots = _browser_setup(server, tmp_path)
    with sync_api.sync_playwright() as p:
        browser, page = _open_page(p, exe)
        page.goto(url)
        page.wait_for_selector("#model option[value='pretrained:piano']", state="attached")
        page.set_input_files("#upload", str(OPENING))
        page.wait_for_selector("#start svg.roll rect.note")
        assert page.is_disabled("#infill")
        box = page.locator("#start svg.roll").bounding_box()
        y = box["y"] + box["height"] / 2  # drag across the middle of the roll
        page.mouse.move(box["x"] + box["width"] * 0.40, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.50, y, steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.55, y, steps=5)
        page.mouse.up()
        page.wait_for_selector("#start svg.roll rect.span")
        label = page.inner_text("#span-label")
        a, b = (float(v) for v in label.split(" s")[0].split("–"))
        assert 0 < a < b and not page.is_disabled("#infill")
        page.fill("#settings [name=seed]", "3")
        page.click("#infill")
        page.wait_for_function("document.querySelectorAll('.take').length === 1",
                               timeout=120_000)
        card = page.locator(".take").first
        assert card.locator("svg.roll rect.span").count() == 1
        assert f"{a:.2f}–{b:.2f} s regenerated" in card.inner_text()
        assert "cadenza infill --input" in card.text_content()  # the command line (folded)
        page.locator("#takes-section").screenshot(path=str(shots / "studio-infill.png"))
        with page.expect_download() as dl:
            card.locator(".midi-link").click()
        f = tmp_path / "infilled.mid"
        dl.value.save_as(f)
        out = load_score(f)
        new = notes_from_score(only_track(out, "Infill"))
        assert len(new) > 0 and ((new.start >= a - 0.01) & (new.start < b + 0.01)).all()
        card.locator(".continue").click()  # an infilled take continues like any take
        page.wait_for_function("document.querySelector('#start-name').textContent"
                               ".startsWith('take')")
        browser.close()


def test_a_second_take_on_the_same_model_loads_nothing(studio, tmp_path):
    """The studio keeps its loaded sessions (least recently used out) across jobs."""
    s, client = studio
    model = _run_model(s)
    for seed in (1, 2):
        r = client.post("/api/jobs", json={"model": model, "sample": {"tokens": 20,
                                                                      "seed": seed}})
        assert _wait(client, r.json()["id"])["state"] == "done"
    assert s.loads == 1 and list(s._sessions) == [model]
    s.session("pretrained:piano")  # a second model, then back: both kept, in use order
    s.session(model)
    assert s.loads == 2 and list(s._sessions) == ["pretrained:piano", model]
