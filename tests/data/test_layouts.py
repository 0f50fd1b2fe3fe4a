"""Corpus layouts recognised by content, each keeping its own split, on tiny fixtures shaped
like MAESTRO, POP909, ASAP and split folders; several sources in one call; --exclude."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cadenza.config import PrepareConfig
from cadenza.data.prepare import prepare
from cadenza.data.sources import SourceError, expand_sources
from tests.conftest import make_score, random_piece

PIANO = Path(__file__).resolve().parents[3] / "shared/data/piano"


def _piece(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_score(random_piece(np.random.default_rng(seed), 30, 8.0)).dump_midi(str(path))
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _splits(ds: Path) -> dict[str, str]:
    """file name -> split, from the manifest."""
    m = json.loads((ds / "manifest.json").read_text())
    return {Path(r["path"]).name: r["split"] for r in m["files"]}


def test_maestro_keeps_its_csv_split(tmp_path):
    root = tmp_path / "maestro-v3.0.0"
    rows = []
    for i, split in enumerate(["train", "train", "validation", "test", "train"]):
        rel = f"2018/perf{i}.midi"
        _piece(root / rel, i)
        rows.append({"canonical_composer": "C", "canonical_title": f"T{i}", "split": split,
                     "year": 2018, "midi_filename": rel, "audio_filename": "x.wav"})
    _write_csv(root / "maestro-v3.0.0.csv", rows)
    out = tmp_path / "ds"
    res = prepare(PrepareConfig(sources=(str(root),), out=str(out)), progress=False)
    assert _splits(out) == {"perf0.midi": "train", "perf1.midi": "train",
                            "perf2.midi": "valid", "perf3.midi": "test", "perf4.midi": "train"}
    assert res.manifest["per_source"][str(root)] == {
        "layout": "maestro", "splits": {"train": 3, "valid": 1, "test": 1}}
    assert f"from {root} (maestro): 3 train, 1 valid, 1 test" in res.summary()


def test_pop909_takes_each_songs_main_file_not_its_versions(tmp_path):
    root = tmp_path / "POP909"
    for i in range(1, 7):
        _piece(root / f"{i:03d}" / f"{i:03d}.mid", i)
        _piece(root / f"{i:03d}" / "versions" / f"{i:03d}-v1.mid", 100 + i)
    items, layouts = expand_sources([str(root)])
    assert layouts[str(root)] == "pop909"
    assert sorted(Path(it.path).name for it in items) == [f"{i:03d}.mid" for i in range(1, 7)]


def test_asap_metadata_keeps_the_maestro_split_and_finds_split_folders(tmp_path):
    root = tmp_path / "asap"
    rows = []
    for i, (split, title) in enumerate([("train", "A"), ("train", "A"), ("validation", "B"),
                                        ("validation", "B"), ("train", "C")]):
        rel = f"Bach/{title}/perf{i}.mid"
        _piece(root / split / rel, i)
        rows.append({"composer": "Bach", "title": title, "midi_performance": rel,
                     "maestro_split": split})
    _write_csv(root / "metadata.csv", rows)
    out = tmp_path / "ds"
    res = prepare(PrepareConfig(sources=(str(root),), out=str(out)), progress=False)
    assert _splits(out) == {"perf0.mid": "train", "perf1.mid": "train", "perf2.mid": "valid",
                            "perf3.mid": "valid", "perf4.mid": "train"}
    assert res.manifest["per_source"][str(root)]["layout"] == "asap"


def test_asap_without_a_split_column_keeps_performances_of_a_piece_together(tmp_path):
    root = tmp_path / "asap"
    rows = []
    for piece in range(12):  # three performances of each of 12 pieces
        for k in range(3):
            rel = f"Comp/P{piece}/perf{piece}_{k}.mid"
            _piece(root / rel, piece * 10 + k)
            rows.append({"composer": "Comp", "title": f"P{piece}", "midi_performance": rel})
    _write_csv(root / "metadata.csv", rows)
    out = tmp_path / "ds"
    prepare(PrepareConfig(sources=(str(root),), out=str(out), valid_frac=0.3, test_frac=0.2),
            progress=False)
    by_piece: dict[str, set[str]] = {}
    for name, split in _splits(out).items():
        by_piece.setdefault(name.split("_")[0], set()).add(split)
    assert all(len(s) == 1 for s in by_piece.values()), by_piece
    assert len(set().union(*by_piece.values())) >= 2  # the pieces do spread over splits


def test_split_folders_and_several_sources_in_one_call(tmp_path):
    a = tmp_path / "a"
    for i, top in enumerate(["train", "train", "train", "validation", "test"]):
        _piece(a / top / f"a{i}.mid", i)
    b = tmp_path / "b"  # a plain folder: content hash, with at least one valid piece
    for i in range(6):
        _piece(b / f"b{i}.mid", 50 + i)
    out = tmp_path / "ds"
    res = prepare(PrepareConfig(sources=(str(a), str(b)), out=str(out), test_frac=0.0),
                  progress=False)
    got = _splits(out)
    assert {k: v for k, v in got.items() if k.startswith("a")} == {
        "a0.mid": "train", "a1.mid": "train", "a2.mid": "train", "a3.mid": "valid",
        "a4.mid": "test"}
    per = res.manifest["per_source"]
    assert per[str(a)] == {"layout": "split-folders",
                           "splits": {"train": 3, "valid": 1, "test": 1}}
    assert per[str(b)]["layout"] == "folder" and sum(per[str(b)]["splits"].values()) == 6


def test_exclude_leaves_files_out_before_reading_them(tmp_path):
    root = tmp_path / "piano"
    for comp in ("Grieg", "Chopin"):
        for i in range(4):
            _piece(root / comp / f"{comp.lower()}{i}.mid", hash(comp) % 100 + i)
    (root / "Chopin" / "chopin3.mid").write_bytes(b"not midi")  # excluded: never read
    out = tmp_path / "ds"
    res = prepare(PrepareConfig(sources=(str(root),), out=str(out),
                                exclude=("Grieg/*", "piano/Chopin/chopin3.mid")),
                  progress=False)
    names = set(_splits(out))
    assert names == {"chopin0.mid", "chopin1.mid", "chopin2.mid"}
    assert res.skipped == [] and res.manifest["exclude"] == ["Grieg/*",
                                                             "piano/Chopin/chopin3.mid"]
    with pytest.raises(SourceError, match="every file matches --exclude"):
        expand_sources([str(root / "Grieg")], exclude=("Grieg/*",))


def test_the_shared_piano_corpora_keep_their_splits():
    if not (PIANO / "asap-maestro/metadata.csv").exists():
        pytest.skip(f"piano corpora not found in {PIANO}")
    items, layouts = expand_sources([str(PIANO / "pop909"), str(PIANO / "asap-maestro")])
    assert layouts == {str(PIANO / "pop909"): "pop909", str(PIANO / "asap-maestro"): "asap"}
    pop = [it for it in items if it.source.endswith("pop909")]
    asap = [it for it in items if it.source.endswith("asap-maestro")]
    assert len(pop) == 909 and all(it.split is None for it in pop)
    assert len(asap) == 445
    assert sum(it.split == "valid" for it in asap) == 46
    assert all(("/validation/" in it.path) == (it.split == "valid") for it in asap)


def _maestro_subset(root: Path) -> list[dict]:
    """A folder shaped like ../shared's maestro-v3: metadata.csv with MAESTRO's canonical
    composer and split, files under SPLIT/YEAR/."""
    rows = []
    for i, (composer, title, split) in enumerate([
            ("Frédéric Chopin", "Ballade No. 1", "train"),
            ("Frédéric Chopin", "Ballade No. 1", "train"),
            ("Johann Sebastian Bach / Ferruccio Busoni", "Chaconne", "train"),
            ("Isaac Albéniz", "Tango", "validation"),
            ("Ludwig van Beethoven", "Sonata Op. 111", "validation")]):
        rel = f"{split}/2018/MIDI-Unprocessed_{i:02d}_R1_2018_wav--1.midi"
        _piece(root / rel, 40 + i)
        rows.append({"canonical_composer": composer, "canonical_title": title,
                     "split": split, "year": 2018, "file": rel, "duration": 8.0})
    return rows


def test_maestro_metadata_csv_keeps_its_split_and_tags_each_composer(tmp_path):
    root = tmp_path / "maestro-v3"
    _write_csv(root / "metadata.csv", _maestro_subset(root))
    out = tmp_path / "ds"
    res = prepare(PrepareConfig(sources=(str(root),), out=str(out), tags=True),
                  progress=False)
    assert res.manifest["per_source"][str(root)]["layout"] == "maestro"
    assert sorted(_splits(out).values()) == ["train"] * 3 + ["valid"] * 2
    m = json.loads((out / "manifest.json").read_text())
    style = {Path(r["path"]).name[:20]: (r.get("style"), r.get("kind")) for r in m["files"]}
    assert sorted(set(style.values())) == [("Albeniz", "live"), ("Bach", "live"),
                                           ("Beethoven", "live"), ("Chopin", "live")]
    assert m["tags"]["styles"] == ["Albeniz", "Bach", "Beethoven", "Chopin"]


def test_maestro_json_table_is_read_like_its_csv(tmp_path):
    root = tmp_path / "maestro-v3.0.0"
    rows = _maestro_subset(root)
    cols = {c: {str(i): r[c] for i, r in enumerate(rows)}
            for c in ("canonical_composer", "canonical_title", "split", "year")}
    cols["midi_filename"] = {str(i): r["file"] for i, r in enumerate(rows)}
    (root / "maestro-v3.0.0.json").write_text(json.dumps(cols))
    items, layouts = expand_sources([str(root)])
    assert layouts[str(root)] == "maestro"
    assert [(it.split, it.composer.split()[-1]) for it in items] == [
        ("train", "Chopin"), ("train", "Chopin"), ("train", "Busoni"), ("valid", "Albéniz"),
        ("valid", "Beethoven")]
    assert items[0].group == items[1].group != items[2].group  # a piece shares its split


def test_composer_names_map_onto_the_folder_names():
    from cadenza.data.styles import composer_style
    assert {n: composer_style(n) for n in (
        "Frédéric Chopin", "Isaac Albéniz", "Ludwig van Beethoven", "Leoš Janáček",
        "Carl Maria von Weber", "Johann Sebastian Bach / Ferruccio Busoni",
        "Sergei Rachmaninoff", "Pyotr Ilyich Tchaikovsky / Mikhail Pletnev",
        "Nikolai Rimsky-Korsakov / Sergei Rachmaninoff", "")} == {
        "Frédéric Chopin": "Chopin", "Isaac Albéniz": "Albeniz",
        "Ludwig van Beethoven": "Beethoven", "Leoš Janáček": "Janacek",
        "Carl Maria von Weber": "Weber", "Johann Sebastian Bach / Ferruccio Busoni": "Bach",
        "Sergei Rachmaninoff": "Rachmaninoff",
        "Pyotr Ilyich Tchaikovsky / Mikhail Pletnev": "Tchaikovsky",
        "Nikolai Rimsky-Korsakov / Sergei Rachmaninoff": "Rimsky-Korsakov", "": ""}


@pytest.mark.parametrize("damage, says", [
    ("missing", "MAESTRO's recordings without its table"),
    ("no-file-column", "no midi_filename (or file) column"),
    ("bad-split", "row 3: needs a file and a split"),
    ("bad-json", "cannot read"),
])
def test_a_missing_or_malformed_maestro_table_is_one_line(tmp_path, damage, says):
    import subprocess
    import sys
    root = tmp_path / "maestro-v3"
    rows = _maestro_subset(root)
    if damage == "no-file-column":
        _write_csv(root / "maestro-v3.0.0.csv", [{k: v for k, v in r.items() if k != "file"}
                                                 for r in rows])
    elif damage == "bad-split":
        rows[1]["split"] = "holdout"
        _write_csv(root / "metadata.csv", rows)
    elif damage == "bad-json":
        (root / "maestro-v3.0.0.json").write_text("{not json")
    with pytest.raises(SourceError, match=re.escape(says)):
        expand_sources([str(root)])
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "cadenza", "prepare", str(root), "--out",
                        str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and says.split(":")[0] in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


@pytest.mark.skipif(not (PIANO / "maestro-v3/metadata.csv").exists(),
                    reason="../shared/data/piano/maestro-v3 not found")
def test_the_shared_maestro_subset_keeps_its_split_and_composers():
    items, layouts = expand_sources([str(PIANO / "maestro-v3")])
    assert layouts == {str(PIANO / "maestro-v3"): "maestro"}
    assert {it.split for it in items} == {"train", "valid"}
    assert sum(it.split == "valid" for it in items) == 96
    by_piece: dict[str, set] = {}
    for it in items:
        by_piece.setdefault(it.group, set()).add(it.split)
        assert Path(it.path).parts[-3] == {"train": "train", "valid": "validation"}[it.split]
    assert all(it.composer for it in items)
