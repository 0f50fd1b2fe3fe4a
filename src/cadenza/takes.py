"""Takes: what every command that writes music leaves in its ``--out`` folder, written one
way for all of them (generate, infill, harmonize/accompany, the duet's session).

A take is one unit: ``open_take`` checks the folder and makes a temporary one inside it,
each sample's files are written there (``write_sample``: BASE.mid with one track per part,
BASE.png, BASE.wav; ``write_audio`` alone for a file written otherwise;
``write_sidecar``: BASE.json), and ``place_take`` moves them into place, each sample's JSON
last, so that old and new files never mix and a killed command leaves no half take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import process_dir, write_bytes
from .data.midi import Notes, score_from_tracks, write_midi
from .render import Roll, render_wav


def open_take(out: str, force: bool) -> tuple[Path, list[Path]]:
    """Before anything is generated: ``out`` must be a folder (made if need be) without an
    earlier take's samples, unless ``force``. Returns the new take's temporary folder inside
    it (a killed command's is removed by the next) and the earlier take's files."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise PermissionError(f"--out {out}: is a file, not a folder")
    earlier = sorted(p for p in out_dir.glob("sample-*") if p.is_file()) \
        if out_dir.is_dir() else []
    if earlier and not force:
        raise FileExistsError(f"--out {out}: holds samples of an earlier take "
                              f"({earlier[0].name}, ...); choose another folder, or pass "
                              "--force to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return process_dir(out_dir, ".cadenza-take-"), earlier
    except OSError as e:
        raise PermissionError(f"--out {out}: cannot write there ({e.strerror})") from e


def place_take(take: Path, out_dir: Path, earlier: list[Path], samples: int) -> None:
    """A complete take into ``out_dir``: the earlier take's files go first (``--force``),
    then each sample's files are moved in, its JSON last."""
    for old in earlier:
        old.unlink(missing_ok=True)
    for k in range(samples):
        for f in sorted(take.glob(f"sample-{k}.*"), key=lambda f: f.suffix == ".json"):
            os.replace(f, out_dir / f.name)


def write_sample(base: Path, tracks: dict[str, Notes], roll: Roll,
                 soundfont: str | None | bool, warn: bool = True) -> Path | None:
    """BASE.mid (one track per entry), BASE.png (``roll``) and, unless ``soundfont`` is
    False, BASE.wav; returns the WAV (None when no synthesizer or SoundFont is found, said
    once when ``warn``)."""
    write_midi(score_from_tracks(tracks), base.with_suffix(".mid"))
    roll.draw(base.with_suffix(".png"))
    return write_audio(base, soundfont, warn)


def write_audio(base: Path, soundfont: str | None | bool, warn: bool = True) -> Path | None:
    """BASE.wav from BASE.mid unless ``soundfont`` is False; None when no synthesizer or
    SoundFont is found (said once, when ``warn``)."""
    if soundfont is False:
        return None
    wav, why = render_wav(base.with_suffix(".mid"), base.with_suffix(".wav"), soundfont)
    if wav is None and warn:
        print(f"note: no WAV written: {why}")
    return wav


def write_sidecar(base: Path, record: dict[str, Any]) -> None:
    """BASE.json: what a sample is and how it was made, written atomically."""
    write_bytes(base.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
