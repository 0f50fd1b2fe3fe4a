"""`cadenza download` against a local HTTP server on 127.0.0.1 (no test touches the
network): a whole download, a resumed one (HTTP Range), a checksum mismatch, offline."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cadenza.data.download import Archive, DownloadError, download
from tests.conftest import make_score, scale


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in (1, 2, 3):
            midi = io.BytesIO()
            path = Path(__file__).parent / f".song{i}.mid"
            make_score(scale(50 + i)).dump_midi(str(path))
            midi.write(path.read_bytes())
            path.unlink()
            z.writestr(f"Corpus-master/POP/{i:03d}/{i:03d}.mid", midi.getvalue())
        z.writestr("Corpus-master/README.md", "a tiny corpus\n" * 2000)  # some bulk
    return buf.getvalue()


class Server:
    """Serves ``files`` with Range support; ``cut`` drops a response after that many bytes
    (once per path), to simulate a connection that breaks part way."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut, self.ranges = files, {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/"
                                                      f"{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.cut.pop(self.path, None)
                self.wfile.write(body[:cut] if cut is not None else body)
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served():
    data = _archive()
    s = Server({"/corpus.zip": data})
    a = Archive("tiny", f"{s.url}/corpus.zip", "corpus.zip", len(data),
                hashlib.sha256(data).hexdigest(), "Corpus-master/POP", "001/001.mid",
                "a tiny corpus", "MIT")
    yield s, a, data
    s.close()


def test_download_checks_and_extracts_into_place(served, tmp_path):
    s, a, _ = served
    dest = download("tiny", home=tmp_path, catalog={"tiny": a}, progress=False)
    assert dest == tmp_path / "corpora" / "tiny" and (dest / ".complete").exists()
    assert sorted(p.name for p in dest.rglob("*.mid")) == ["001.mid", "002.mid", "003.mid"]
    assert not list((tmp_path / "downloads").iterdir())  # the archive is gone
    assert not [p for p in (tmp_path / "corpora").iterdir() if p.name.startswith(".")]
    s.files.clear()  # a second call needs no server
    assert download("tiny", home=tmp_path, catalog={"tiny": a}, progress=False) == dest


def test_an_interrupted_download_resumes_where_it_stopped(served, tmp_path):
    s, a, data = served
    s.cut["/corpus.zip"] = len(data) // 3
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download("tiny", home=tmp_path, catalog={"tiny": a}, progress=False)
    part = tmp_path / "downloads" / "corpus.zip.part"
    assert part.stat().st_size == len(data) // 3
    assert not (tmp_path / "corpora" / "tiny").exists()  # nothing half-extracted
    dest = download("tiny", home=tmp_path, catalog={"tiny": a}, progress=False)
    assert s.ranges[-1] == f"bytes={len(data) // 3}-"  # only the rest was asked for
    assert len(list(dest.rglob("*.mid"))) == 3 and not part.exists()


def test_a_checksum_mismatch_removes_the_download(served, tmp_path):
    s, a, _ = served
    bad = replace(a, sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch.*removed"):
        download("tiny", home=tmp_path, catalog={"tiny": bad}, progress=False)
    assert not list((tmp_path / "downloads").iterdir())
    assert not (tmp_path / "corpora" / "tiny").exists()
    # a corpus without a published checksum is checked by its content
    wrong = replace(a, size=None, sha256=None, expect="999/999.mid")
    with pytest.raises(DownloadError, match="has no Corpus-master/POP/999/999.mid"):
        download("tiny", home=tmp_path, catalog={"tiny": wrong}, progress=False)
    assert not (tmp_path / "corpora" / "tiny").exists()


def test_offline_is_one_clear_line(tmp_path):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    a = Archive("tiny", f"http://127.0.0.1:{port}/x.zip", "x.zip", 10, "0" * 64, "x", "y",
                "", "")
    with pytest.raises(DownloadError, match="cannot reach .*are you offline"):
        download("tiny", home=tmp_path, catalog={"tiny": a}, progress=False)


def test_cli_download_from_a_mirror_checks_the_official_checksum(served, tmp_path):
    s, _, _ = served
    env = {"CADENZA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "cadenza", "download", "maestro", "--url",
                        f"{s.url}/corpus.zip"], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "download maestro: checksum mismatch" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "corpora" / "maestro").exists()


def test_the_maestro_entry_downloads_a_corpus_that_prepare_reads_as_maestro(tmp_path):
    """The catalogue's own MAESTRO entry (its folder, its table) with the archive served
    here: the download lands where `prepare` finds MAESTRO's split and composers."""
    from cadenza.data.download import CATALOG
    from cadenza.data.sources import expand_sources
    entry = CATALOG["maestro"]
    buf = io.BytesIO()
    rows = ["canonical_composer,canonical_title,split,year,midi_filename,audio_filename,"
            "duration"]
    with zipfile.ZipFile(buf, "w") as z:
        for i, (composer, split) in enumerate([("Frédéric Chopin", "train"),
                                               ("Franz Liszt", "validation"),
                                               ("Joseph Haydn", "test")]):
            path = tmp_path / f"p{i}.mid"
            make_score(scale(50 + i)).dump_midi(str(path))
            rel = f"2018/MIDI-Unprocessed_{i}_wav--1.midi"
            z.writestr(f"{entry.inner}/{rel}", path.read_bytes())
            rows.append(f"{composer},Piece {i},{split},2018,{rel},{rel[:-5]}.wav,8.0")
        z.writestr(f"{entry.inner}/{entry.expect}", "\n".join(rows) + "\n")
    data = buf.getvalue()
    s = Server({"/maestro.zip": data})
    try:
        a = replace(entry, url=f"{s.url}/maestro.zip", size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
        dest = download("maestro", home=tmp_path / "home", catalog={"maestro": a},
                        progress=False)
    finally:
        s.close()
    items, layouts = expand_sources([str(dest)])
    assert layouts == {str(dest): "maestro"}
    assert [(it.split, it.composer) for it in items] == [
        ("train", "Frédéric Chopin"), ("valid", "Franz Liszt"), ("test", "Joseph Haydn")]
