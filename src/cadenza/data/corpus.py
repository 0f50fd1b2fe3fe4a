"""Built-in corpora, built on first use from the music21 package's own corpus.

Nothing is downloaded: music21 ships the scores. Each score is converted to a one-track
piano MIDI file under ``$CADENZA_HOME/corpus/vN/NAME/`` (default ``~/.cache/cadenza``; N the
conversion's version), keeping the score's beats, tempo map and time signatures; a
``.complete`` marker makes the cache trustworthy, so later runs skip the conversion.

- ``builtin:chorales``: the Bach chorales (BWV numbering, ~409 scores)
- ``builtin:keyboard``: solo keyboard pieces and the piano parts of accompanied works
- ``builtin:classical``: the above plus string quartets, Palestrina, Monteverdi, trecento
- ``builtin:openings``: three 12-second piano openings shipped as MIDI inside the package
  (``cadenza/openings``, none of them in the pretrained piano model's training data), the
  primers of ``cadenza demo``: ``--primer builtin:openings/schubert``

Try it: ``cadenza prepare builtin:chorales --out data/chorales``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import symusic
from tqdm import tqdm

from .midi import merge_tracks, write_midi

CORPORA = ("chorales", "keyboard", "classical", "openings")
OPENINGS = Path(__file__).resolve().parent.parent / "openings"  # shipped, not converted
# Bumped when the conversion changes, so that caches of an older one are not reused.
# 2: the score's own ticks and tempo map (1 baked the tempo into 120-bpm ticks).
CORPUS_VERSION = 2
KEYBOARD = ["mozart/k545", "joplin", "chopin", "schumann_clara/polonaise*",
            "schumann_robert/dichterliebe*", "schubert", "schoenberg/opus19", "cpebach/h186.mxl",
            "beach", "liliuokalani", "johnson_j_r", "handel/rinaldo", "weber", "verdi", "webern"]
QUARTETS = ["beethoven", "mozart/k155", "mozart/k156", "mozart/k458", "mozart/k80", "haydn"]
EARLY = ["palestrina", "monteverdi", "trecento"]


def cadenza_home() -> Path:
    return Path(os.environ.get("CADENZA_HOME", Path.home() / ".cache" / "cadenza"))


def _music21_root() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import music21
    return Path(music21.__file__).parent / "corpus"


def _expand(patterns: list[str]) -> list[Path]:
    root = _music21_root()
    out: list[Path] = []
    for pat in patterns:
        for p in sorted(root.glob(pat)):
            files = [p] if p.is_file() else sorted(p.rglob("*"))
            out += [f for f in files if f.suffix in (".mxl", ".xml", ".krn", ".mid")]
    return sorted(set(out))


def corpus_files(name: str) -> list[Path]:
    """The music21 score files behind a built-in corpus."""
    if name not in CORPORA:
        raise ValueError(f"unknown built-in corpus 'builtin:{name}'; "
                         f"choose one of {', '.join('builtin:' + c for c in CORPORA)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import corpus
    chorales = _bach_chorales(corpus)
    if name == "chorales":
        return chorales
    keyboard = _expand(KEYBOARD)
    if name == "keyboard":
        return keyboard
    return sorted(set(chorales + keyboard + _expand(QUARTETS) + _expand(EARLY)))


def _bach_chorales(corpus) -> list[Path]:
    files = []
    for p in corpus.getComposer("bach"):
        p = Path(p)
        digits = "".join(c for c in p.name[3:].split(".")[0].split("-")[0] if c.isdigit())
        # BWV 1-438: cantata movements and the four-part chorales; higher numbers in the
        # folder are other works (inventions, the Well-Tempered Clavier, ...)
        if p.name.startswith("bwv") and digits and int(digits) <= 438 and p.suffix in (
                ".mxl", ".xml", ".krn"):
            files.append(p)
    return sorted(files)


def build_corpus(name: str, workers: int = 1) -> Path:
    """Convert (once) and return the folder of MIDI files of a built-in corpus."""
    if name == "openings":
        return OPENINGS
    out = cadenza_home() / "corpus" / f"v{CORPUS_VERSION}" / name
    marker = out / ".complete"
    if marker.exists():
        return out
    files = corpus_files(name)
    out.mkdir(parents=True, exist_ok=True)
    root = _music21_root()
    jobs = [(str(f), str(out / (str(f.relative_to(root)).replace("/", "__") + ".mid")))
            for f in files]
    todo = [j for j in jobs if not Path(j[1]).exists()]
    failed = 0
    with ProcessPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_convert_one, todo, chunksize=4)
        for ok in tqdm(results, total=len(todo), desc=f"building builtin:{name}", unit="score",
                       disable=not todo):
            failed += not ok
    if failed:  # a fact about the corpus, said once as a plain line (not a Python warning)
        print(f"note: builtin:{name}: {failed} of {len(jobs)} scores could not be read by "
              "music21 and were left out")
    marker.write_text(f"{len(jobs) - failed} files\n")
    return out


def _convert_one(job: tuple[str, str]) -> bool:
    """music21 score -> one-track piano MIDI, written atomically. False if unreadable."""
    src, dst = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import converter, instrument

        try:
            score = converter.parse(src)
            parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
            keys = [p for p in parts
                    if isinstance(p.getInstrument(returnDefault=False),
                                  instrument.KeyboardInstrument)]
            if keys and len(keys) < len(parts):  # accompanied work: keep the piano parts
                for p in parts:
                    if p not in keys:
                        score.remove(p)
            try:
                expanded = score.expandRepeats()
                score = expanded
            except Exception:  # repeats music21 cannot expand: convert them as written
                pass
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d) / "x.mid"
                score.write("midi", fp=str(tmp))
                # one piano track on music21's own ticks and tempo map: a 16th stays a
                # 16th for the grid tokenizers (through seconds at 120 bpm, a chorale at
                # 76 bpm got 505 steps instead of 320)
                merged = merge_tracks(symusic.Score(str(tmp)))
            if not len(merged.tracks[0].notes):
                return False
            write_midi(merged, dst)
            return True
        except Exception:
            return False
