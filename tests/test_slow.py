"""Slow tests, kept out of the default run: `python -m pytest -m slow`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cadenza.config import PrepareConfig
from cadenza.data.corpus import build_corpus
from cadenza.data.prepare import prepare


@pytest.mark.slow
def test_builtin_chorales_build_and_prepare(tmp_path):
    """The real built-in corpus: ~409 chorales from music21, prepared without leaks."""
    folder = build_corpus("chorales", workers=2)
    assert len(list(folder.glob("*.mid"))) > 400
    res = prepare(PrepareConfig(sources=("builtin:chorales",), out=str(tmp_path / "ds"),
                                workers=2), progress=False)
    m = res.manifest
    assert m["totals"]["pieces"] > 380 and set(m["splits"]) == {"train", "valid", "test"}
    by_split: dict[str, set] = {}
    for f in m["files"]:
        by_split.setdefault(f["split"], set()).add(f["music_sha1"])
    assert not (by_split["train"] & (by_split["valid"] | by_split["test"]))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from cadenza.config import DemoConfig
    from cadenza.demo import run_demo
    out = run_demo(DemoConfig(out=str(tmp_path / "demo"), minutes=0.5, precision="fp32",
                              seconds=4.0))
    # half a minute on one thread: clearly better than guessing among 391 tokens
    assert out.val_nll < math.log(391) - 0.5 and len(out.samples) == 3
    assert [Path(p).name for p in out.piano_samples] == [
        "pop909-024", "pop909-113", "schubert-moment-musical-3"]
    for s in out.samples + out.piano_samples:
        names = {p.name for p in (tmp_path / "demo").rglob("*") if str(p).startswith(s)}
        assert {"sample-0.mid", "sample-0.png", "sample-0.json"} <= names
