"""The package's layers, as docs/architecture.md draws them: every import between Cadenza's
own modules (at a module's top or inside a function) goes down or sideways within a layer,
never up, and no chain of imports comes back to where it started. Read from the source
files (ast), so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import cadenza

ROOT = Path(cadenza.__file__).parent

# bottom to top; a module may import its own layer and those below it
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"config", "atomic", "theory"}),
    ("data", {"data"}),  # MIDI, tokenizers, datasets: knows no model
    ("models", {"models"}),  # token ids in, logits out: knows no MIDI
    ("training", {"checkpoint", "progress", "train", "evaluate", "recipes", "adapt"}),
    ("generation", {"engine", "controls", "session", "generate", "render", "takes", "infill",
                    "duet", "tasks", "attention", "stats", "embed", "classify"}),
    ("applications", {"cli", "__main__", "studio", "live", "guard", "bench", "report",
                      "demo"}),
]
SIBLINGS = {("data", "models"), ("models", "data")}  # the same height, yet apart
MIDI_LIBRARIES = {"symusic", "miditok", "music21"}  # read and written in data/ only


def module_names() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = module_names()


def layer_of(module: str) -> int:
    head = module.split(".")[0] if module else ""
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i
    raise AssertionError(f"cadenza.{module}: in no layer of tests/test_layers.py; add it "
                         "where it belongs (and to docs/architecture.md)")


def imports(module: str) -> tuple[set[str], set[str]]:
    """(Cadenza modules, other top-level packages) that ``module`` imports anywhere."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{stem}.{a.name}" if stem else a.name
                ours.add(full if full in MODULES else stem)
        elif isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if top == "cadenza":
                ours.add(node.module.partition(".")[2])
            else:
                others.add(top)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "cadenza":
                    ours.add(a.name.partition(".")[2])
                else:
                    others.add(a.name.split(".")[0])
    ours.discard(module)
    return {m for m in ours if m in MODULES and m}, others


def test_every_module_has_a_layer_and_imports_only_down():
    upward = []
    for m in MODULES:
        if not m:  # cadenza/__init__.py: the version only
            continue
        here = layer_of(m)
        for dep in imports(m)[0]:
            there = layer_of(dep)
            pair = (LAYERS[here][0], LAYERS[there][0])
            if there > here or pair in SIBLINGS:
                upward.append(f"cadenza.{m} ({pair[0]}) imports cadenza.{dep} ({pair[1]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle():
    graph = {m: imports(m)[0] for m in MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_only_data_reads_midi():
    outside = sorted(f"cadenza.{m} imports {', '.join(sorted(lib))}" for m in MODULES
                     if m.split(".")[0] != "data"
                     and (lib := imports(m)[1] & MIDI_LIBRARIES))
    assert not outside, "\n".join(outside)


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The walk finds a lazy import inside a function and a circle through it."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    import symusic\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {"a": tmp_path / "a.py",
                                                           "b": tmp_path / "b.py"})
    assert imports("b") == ({"a"}, {"symusic"})
    try:
        test_no_import_circle()
    except AssertionError as e:
        assert "a -> b -> a" in str(e)
    else:
        raise AssertionError("the circle a -> b -> a was not found")
