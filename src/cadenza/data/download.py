"""``cadenza download NAME``: the public piano corpora a user wants, from their official
addresses, into ``$CADENZA_HOME/corpora/NAME``.

- the archive is streamed into ``$CADENZA_HOME/downloads/FILE.part`` with a progress bar; a
  download cut off part way is resumed from where it stopped (HTTP ``Range``) by running the
  same command again;
- its size and SHA-256 are checked against the catalogue before anything is extracted; on a
  mismatch the partial file is removed and the command says so in one line;
- it is extracted into a temporary folder beside the destination, checked (the file the
  corpus must hold is there), and renamed into place: an interrupted command never leaves
  a half-extracted corpus, and ``.complete`` marks a finished one.

Nothing here runs at import or in tests against the network: the tests serve small archives
from a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..atomic import file_digests
from ..config import register_names
from .corpus import cadenza_home

CHUNK = 1 << 16
TIMEOUT = 30.0  # seconds without a byte before a download is given up (and can resume)
MARKER = ".complete"  # in a finished corpus: the address and the archive's SHA-256


class DownloadError(RuntimeError):
    """One line: what went wrong and what to do."""


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    filename: str
    size: int | None  # bytes; None where the source publishes none
    sha256: str | None
    inner: str  # the folder inside the archive that is the corpus
    expect: str  # a file the corpus must hold (relative to ``inner``)
    about: str
    license: str


CATALOG: dict[str, Archive] = {
    "maestro": Archive(
        "maestro",
        "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/"
        "maestro-v3.0.0-midi.zip", "maestro-v3.0.0-midi.zip",
        58416533, "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
        "maestro-v3.0.0", "maestro-v3.0.0.csv",
        "MAESTRO v3.0.0 MIDI: 1,276 live Disklavier performances, ~200 h, its own "
        "train/validation/test split (Hawthorne et al., ICLR 2019)", "CC BY-NC-SA 4.0"),
    "pop909": Archive(
        "pop909",
        "https://github.com/music-x-lab/POP909-Dataset/archive/refs/heads/master.zip",
        "POP909-Dataset-master.zip", None, None,
        "POP909-Dataset-master/POP909", "001/001.mid",
        "POP909: piano arrangements of 909 pop songs (Wang, Chen et al., ISMIR 2020). "
        "GitHub builds this archive on request and publishes no checksum: its content is "
        "checked instead, and the SHA-256 seen is printed", "MIT"),
}

register_names("corpus", lambda: sorted(CATALOG))  # download NAME


def download(name: str, url: str | None = None, home: Path | None = None,
             catalog: dict[str, Archive] | None = None, progress: bool = True,
             force: bool = False) -> Path:
    """Fetch, check and extract corpus ``name``; returns its folder. ``url``: a mirror of
    the same archive (checked against the same size and SHA-256)."""
    catalog = CATALOG if catalog is None else catalog
    if name not in catalog:
        raise DownloadError(f"download {name}: unknown corpus; choose one of "
                            f"{', '.join(sorted(catalog))}")
    a = catalog[name]
    home = cadenza_home() if home is None else Path(home)
    dest = home / "corpora" / name
    if (dest / MARKER).exists() and not force:
        return dest
    downloads = home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / (a.filename + ".part")
    _fetch(a, url or a.url, part, progress)
    digest = _check(a, part)
    _extract(a, part, dest)
    part.unlink()
    (dest / MARKER).write_text(f"{url or a.url}\nsha256 {digest}\n")
    return dest


def archive_sha256(dest: Path) -> str:
    """The SHA-256 of the archive a downloaded corpus came from (its marker records it)."""
    return (Path(dest) / MARKER).read_text().split()[-1]


def _fetch(a: Archive, url: str, part: Path, progress: bool) -> None:
    """Append to ``part`` from where it stops (a new file when the server ignores Range)."""
    have = part.stat().st_size if part.exists() else 0
    if a.size is not None and have >= a.size:
        return  # complete already: checked next
    req = urllib.request.Request(url, headers={"User-Agent": "cadenza"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past what we have: the file is whole
            return
        raise DownloadError(f"download {a.name}: {url} answered HTTP {e.code} "
                            f"({e.reason})") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"download {a.name}: cannot reach {url} ({reason}); are you "
                            "offline? Run the same command again to continue") from e
    with resp:
        if have and resp.status != 206:
            have = 0  # the server sent the whole file: start over
        length = resp.headers.get("Content-Length")
        served = have + int(length) if length else None
        if a.size is not None and served is not None and served != a.size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"download {a.name}: checksum mismatch ({url} serves "
                                f"{served:,} bytes, expected {a.size:,}); nothing was kept")
        total = a.size or served
        mode = "ab" if have else "wb"
        try:
            with open(part, mode) as f, tqdm(total=total, initial=have, unit="B",
                                             unit_scale=True, desc=a.filename,
                                             disable=not progress) as bar:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    bar.update(len(block))
        except (TimeoutError, OSError, http.client.HTTPException) as e:  # cut off: resume
            got = part.stat().st_size if part.exists() else 0
            raise DownloadError(f"download {a.name}: interrupted after {got:,} bytes "
                                f"({e}); run the same command again to resume") from e


def _check(a: Archive, part: Path) -> str:
    size = part.stat().st_size
    if a.size is not None and size < a.size:
        raise DownloadError(f"download {a.name}: got {size:,} of {a.size:,} bytes (the "
                            "connection closed early); run the same command again to resume")
    digest = file_digests(part, "sha256")["sha256"]
    if (a.size is not None and size != a.size) or (a.sha256 and digest != a.sha256):
        part.unlink()
        want = f"{a.size:,} bytes" if a.size is not None else "any size"
        raise DownloadError(f"download {a.name}: checksum mismatch ({size:,} bytes, SHA-256 "
                            f"{digest[:16]}..., expected {want}, "
                            f"{(a.sha256 or '?')[:16]}...); the download was removed, run "
                            "again")
    return digest


def _extract(a: Archive, archive: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{a.name}-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as z:
                root = tmp.resolve()
                for m in z.namelist():  # no member may land outside the folder
                    if not (tmp / m).resolve().is_relative_to(root):
                        raise DownloadError(f"download {a.name}: {archive.name} holds an "
                                            f"unsafe path {m!r}; not extracted")
                z.extractall(tmp)
        except zipfile.BadZipFile as e:
            archive.unlink()
            raise DownloadError(f"download {a.name}: {archive.name} is not a zip archive "
                                f"({e}); the download was removed, run again") from e
        corpus = tmp / a.inner
        if not (corpus / a.expect).is_file():
            raise DownloadError(f"download {a.name}: the archive has no {a.inner}/{a.expect}; "
                                "is the address right?")
        if dest.exists():
            shutil.rmtree(dest)
        corpus.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["CATALOG", "Archive", "DownloadError", "archive_sha256", "download"]
