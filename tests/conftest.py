"""Shared fixtures: synthetic music written as real MIDI files, tiny datasets, benchmark paths.

Benchmark files are found through $CADENZA_BENCHMARKS (default ../shared/data/benchmarks
beside the checkout); tests that need them skip with a message saying so.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch

from cadenza.data.midi import Notes

# The suite's models are tiny: one thread is faster than two fighting over two cores,
# and keeps timings sane when something else (a training run) shares the machine.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("CADENZA_BENCHMARKS", ROOT.parent / "shared/data/benchmarks"))


def bench_file(rel: str) -> Path:
    p = BENCH / rel
    if not p.exists():
        pytest.skip(f"benchmark file {p} not found (set CADENZA_BENCHMARKS)")
    return p


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = os.environ.get("CADENZA_TEST_HOME") or str(tmp_path_factory.getbasetemp() / "home")
    monkeypatch.setenv("CADENZA_HOME", home)


def make_score(notes: list[tuple[float, float, int, int]], pedals=(), tempo: float = 120.0,
               tpq: int = 480, drums: bool = False) -> symusic.Score:
    """notes as (start s, end s, pitch, velocity) at the given tempo; pedals (down s, up s)."""
    s = symusic.Score(tpq)
    s.tempos.append(symusic.Tempo(0, tempo))
    tick = tpq * tempo / 60.0
    tr = symusic.Track(program=0, is_drum=drums)
    for a, b, p, v in notes:
        tr.notes.append(symusic.Note(int(round(a * tick)), max(1, int(round((b - a) * tick))),
                                     p, v))
    for a, b in pedals:
        tr.controls.append(symusic.ControlChange(int(round(a * tick)), 64, 127))
        tr.controls.append(symusic.ControlChange(int(round(b * tick)), 64, 0))
    s.tracks.append(tr)
    return s


def random_piece(rng: np.random.Generator, n: int = 60, seconds: float = 20.0) -> list:
    start = np.sort(rng.uniform(0, seconds, n))
    dur = rng.uniform(0.05, 1.5, n)
    pitch = rng.integers(36, 96, n)
    vel = rng.integers(1, 128, n)
    return [(float(a), float(a + d), int(p), int(v)) for a, d, p, v in zip(start, dur, pitch, vel)]


def scale(root: int = 60, step: float = 0.25) -> list:
    return [(i * step, (i + 1) * step, root + p, 80)
            for i, p in enumerate([0, 2, 4, 5, 7, 9, 11, 12, 11, 9, 7, 5, 4, 2, 0])]


@pytest.fixture
def midi_folder(tmp_path) -> Path:
    """Twelve small, distinct pieces as MIDI files in a nested folder."""
    rng = np.random.default_rng(0)
    d = tmp_path / "midi"
    (d / "sub").mkdir(parents=True)
    for i in range(12):
        notes = random_piece(rng, 40 + i, 12.0) + scale(48 + i)
        where = d / "sub" if i % 3 == 0 else d
        make_score(notes).dump_midi(str(where / f"piece{i:02d}.{'MID' if i == 5 else 'mid'}"))
    return d


def notes_of(score: symusic.Score) -> Notes:
    from cadenza.data.midi import notes_from_score
    return notes_from_score(score)


@pytest.fixture
def tiny_dataset(tmp_path, midi_folder) -> Path:
    from cadenza.config import PrepareConfig
    from cadenza.data.prepare import prepare
    out = tmp_path / "ds"
    prepare(PrepareConfig(sources=(str(midi_folder),), out=str(out), valid_frac=0.2,
                          test_frac=0.1), progress=False)
    return out


@pytest.fixture
def tiny_run(tiny_dataset, tmp_path) -> Path:
    """A run directory: a tiny performance-token Transformer trained 6 steps on tiny_dataset."""
    from cadenza.config import AugmentConfig, ModelConfig, TrainConfig
    from cadenza.train import train
    out = tmp_path / "run"
    train(ModelConfig(n_layer=1, d_model=32, n_head=4, d_ff=64, dropout=0.0, position="rope",
                      max_context=64),
          TrainConfig(data=str(tiny_dataset), out=str(out), context=64, batch_size=4,
                      max_steps=6, eval_every=3, augment=AugmentConfig()), quiet=True)
    return out


@pytest.fixture(scope="session")
def real_piano_scores(tmp_path_factory) -> list[symusic.Score]:
    """Two real piano pieces from music21's corpus, converted as the built-in corpus is."""
    from cadenza.data.corpus import _convert_one, _music21_root
    out = []
    d = tmp_path_factory.mktemp("real")
    for rel in ("joplin/maple_leaf_rag.mxl", "mozart/k545"):
        src = _music21_root() / rel
        files = [src] if src.is_file() else sorted(src.glob("*.mxl"))[:1]
        dst = d / (files[0].stem + ".mid")
        assert _convert_one((str(files[0]), str(dst)))
        out.append(symusic.Score(str(dst)))
    return out


class Server:
    """`cadenza studio` in its own process, with its own temporary folder."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cadenza", "studio", "--port", "0",
                                      "--device", "cpu", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines = []
        line = ""
        while "Cadenza Studio:" not in line:
            line = self.proc.stdout.readline()
            self.lines.append(line)
            if not line and self.proc.poll() is not None:
                raise AssertionError("studio did not start: " + "".join(self.lines))
        m = re.search(r"http://([\d.]+):(\d+)/(\?token=(\S+))?", line)
        self.host, self.port, self.token = m.group(1), int(m.group(2)), m.group(4)
        self.url = m.group(0)

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                headers: dict | None = None) -> tuple[int, dict, dict]:
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        h = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"raw": raw[:80]}
        return r.status, data, dict(r.getheaders())

    def work(self) -> Path:
        return next(self.tmp.glob("cadenza-studio-*"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Folders that tag their pieces: classical/Bach/*.mid and classical/Chopin/*.mid
    (hand-sequenced: --kind score) and pop/NNN/NNN.mid songs with beat_midi.txt (the POP909
    layout)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "src"
    for composer, lo in (("Bach", 48), ("Chopin", 60)):
        d = root / "classical" / composer
        d.mkdir(parents=True)
        for i in range(6):
            make_score(random_piece(rng, lo + i, 10.0)).dump_midi(str(d / f"{i}.mid"))
    for i in range(6):
        d = root / "pop" / f"{i + 1:03d}"
        d.mkdir(parents=True)
        make_score(random_piece(rng, 70 + i, 10.0)).dump_midi(str(d / f"{i + 1:03d}.mid"))
        (d / "beat_midi.txt").write_text("0.0 1.0 1.0\n0.5 1.0 0.0\n")
    return root
