"""Atomic file output: write to a temporary sibling, then rename over the target.

A crash or an error never leaves a half-written file under the final name. Also: the
digests that check a file arrived (or stayed) whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's current umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def user_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) the permissions the user's umask asks for;
    mkstemp/mkdtemp (and some writers) create them private."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    user_mode(tmp)  # mkstemp creates 0600; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir(target: str | Path) -> Path:
    """A fresh hidden directory beside ``target`` with the user's usual permissions
    (mkdtemp makes 0700), to be filled and then moved into place."""
    target = Path(target)
    d = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    user_mode(d, directory=True)
    return d


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """The directory form of :func:`atomic_path`: yield a fresh :func:`temp_dir` beside
    ``target`` to fill; on success it replaces ``target`` (:func:`replace_dir`), on any
    failure it is removed and ``target`` is untouched."""
    tmp = temp_dir(target)
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def aside(path: str | Path) -> Path:
    """Where :func:`replace_dir` parks the previous directory while swapping."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Move a finished directory into place. An existing target is first renamed aside
    (``.NAME.old``), so at every instant a complete directory exists under one of the two
    names; readers that must survive a crash mid-swap fall back to :func:`aside`."""
    out = Path(out)
    old = aside(out)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            os.rename(out, old)
    os.rename(tmp, out)  # a crash right before this leaves `old` complete
    shutil.rmtree(old, ignore_errors=True)


class Busy(RuntimeError):
    """Another live process holds the lock of a directory."""


@contextlib.contextmanager
def locked_dir(path: str | Path, flag: str) -> Iterator[None]:
    """Hold an exclusive OS lock on ``path/.lock`` (created with the folder) for the life of
    the block. The kernel releases it when the process dies, however it dies, so a crashed
    run never blocks the next one; a second process gets :class:`Busy` naming the holder's
    PID (written into the lock file). ``flag`` names the option in the message."""
    import fcntl
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)  # open() applies the umask
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"{flag} {path}: in use by another Cadenza process (PID {holder}); "
                       "wait for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def process_dir(root: str | Path, prefix: str) -> Path:
    """A new temporary folder ``root/PREFIX<pid>-XXXX`` owned by this process; those whose
    process is gone (killed before it could clean up) are removed first."""
    for d in Path(root).glob(prefix + "*"):
        try:
            os.kill(int(d.name[len(prefix):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not named by a PID, or another user's live process
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))


def file_digests(path: str | Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of a file (``"sha256"``, ``"sha1"``...), all from one read of it."""
    hs = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}
