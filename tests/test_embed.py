"""cadenza embed / similar (issue 40): a piece as the mean of the model's hidden states,
deterministic, unit length, windows that cover the music; similar ranks an exact copy first,
reads a library's embeddings from its cache the second time, and bad input is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cadenza.cli import main
from cadenza.config import ConfigError, EmbedConfig
from cadenza.data.midi import BadInput
from cadenza.embed import embed_one, run_embed, similar
from cadenza.session import Session


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CADENZA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_embed_is_deterministic_unit_length_and_windows_cover_the_piece(tiny_run, midi_folder,
                                                                        tmp_path):
    ck = str(tiny_run / "best")
    cfg = EmbedConfig(inputs=(str(midi_folder),), out=str(tmp_path / "a"), checkpoint=ck,
                      window_seconds=4.0)
    index = run_embed(cfg)
    run_embed(cfg.replace(out=str(tmp_path / "b")))
    a, b = (np.load(tmp_path / d / "embeddings.npy") for d in "ab")
    assert a.shape == (12, 32) and np.array_equal(a, b)  # every file, the same twice
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert len({tuple(r.round(5)) for r in a}) == 12  # distinct pieces, distinct vectors
    w = np.load(tmp_path / "a" / "windows.npy")
    rows = [f["windows"]["rows"] for f in index["files"]]
    assert rows[0][0] == 0 and rows[-1][1] == len(w)
    assert all(r[1] > r[0] for r in rows)
    # each piece lasts about 12 s: its windows of 4 s start at 0 and reach its end
    spans = index["files"][0]["windows"]["spans"]
    assert spans[0][0] == 0.0 and 12.0 <= spans[-1][1] <= 20.0
    on_disk = json.loads((tmp_path / "a" / "index.json").read_text())
    assert on_disk["files"][3]["sha256"] == index["files"][3]["sha256"]
    # another layer is another vector (the default: the last block's, after the final
    # norm); a layer the model lacks is one line
    s = Session.load("pretrained:piano")
    f = midi_folder / "piece01.mid"
    first, last = embed_one(s, f, layer=0).vector, embed_one(s, f).vector
    assert first.shape == last.shape == (384,) and not np.allclose(first, last)
    with pytest.raises(ConfigError, match="--layer 4: this model has 4 blocks"):
        embed_one(s, f, layer=4)


def test_similar_ranks_an_exact_copy_first_and_reads_the_cache_again(tiny_run, midi_folder,
                                                                      tmp_path, home,
                                                                      monkeypatch):
    ck = str(tiny_run / "best")
    query = tmp_path / "query.mid"
    shutil.copy(midi_folder / "piece07.mid", query)
    rows = similar(str(query), str(midi_folder), top=3, checkpoint=ck)
    assert rows[0]["path"].endswith("piece07.mid") and rows[0]["score"] == pytest.approx(1.0)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert len(list(home.rglob("*.npy"))) == 12  # the library's embeddings, cached
    import cadenza.embed as embed
    calls = []
    real = embed.embed_one
    monkeypatch.setattr(embed, "embed_one", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    again = similar(str(query), str(midi_folder), top=3, checkpoint=ck)
    assert again == rows and calls == [query]  # only the query was read again
    assert main(["similar", str(query), "--library", str(midi_folder), "--checkpoint", ck,
                 "--top", "2", "--json"]) == 0


def test_bad_input_is_one_line_and_writes_nothing(tiny_run, midi_folder, tmp_path, home,
                                                  capsys):
    ck = str(tiny_run / "best")
    empty = tmp_path / "empty"
    empty.mkdir()
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("not a MIDI file")
    for args, said in (
            (["similar", str(midi_folder / "piece01.mid"), "--library", str(empty)],
             f"--library {empty}"),
            (["similar", str(not_midi), "--library", str(midi_folder)], "QUERY"),
            (["similar", str(tmp_path / "nope.mid"), "--library", str(midi_folder)],
             "QUERY"),
            (["embed", str(empty), "--out", str(tmp_path / "e")], "FILES"),
            (["embed", str(midi_folder), "--out", str(tmp_path / "e"), "--window-seconds",
              "-1"], "--window-seconds"),
            (["similar", str(not_midi), "--library", str(midi_folder), "--top", "0"],
             "--top")):
        assert main([*args, "--checkpoint", ck]) == 2, args
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "e").exists()
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(BadInput, match="not empty"):
        run_embed(EmbedConfig(inputs=(str(midi_folder),), out=str(out), checkpoint=ck))
    assert (out / "mine.txt").read_text() == "a user's file"
