"""The config dataclasses are the only source of flags, and the recipe registry is the only
source of what `train --preset`, `demo` and `bench` train."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from cadenza import bench, cli
from cadenza.config import DemoConfig, ModelConfig, TrainConfig
from cadenza.recipes import RECIPES, train_configs


def _subparsers():
    ap = cli.build_parser()
    return next(a for a in ap._actions if a.dest == "command").choices


def _nested(cls, name):
    import typing
    t = cli._base(typing.get_type_hints(cls)[name])
    return t if is_dataclass(t) else None


def _all_configs(classes) -> set[type]:
    out = set()
    for cls in classes:
        out |= {cls} | _all_configs([n for f in fields(cls) if (n := _nested(cls, f.name))])
    return out


def test_every_config_field_has_exactly_one_flag_with_help_and_a_shown_default():
    subs = _subparsers()
    covered = set()
    for c in cli.COMMANDS:
        p = subs[c.name]
        actions = [a for a in p._actions if a.dest != "help"]
        by_dest: dict[str, list] = {}
        for a in actions:
            by_dest.setdefault(a.dest, []).append(a)
        expected = set()
        for cls in c.configs:
            for f, _ in cli.flag_fields(cls):
                covered.add((f.name, id(f)))
                dest = cli._dest(f)
                expected.add(dest)
                assert len(by_dest.get(dest, [])) == 1, (c.name, f.name, by_dest.get(dest))
                a = by_dest[dest][0]
                assert a.help and f.metadata["help"] in a.help, (c.name, f.name)
                switch = a.nargs == 0  # --force, --no-audio: off unless given
                if a.option_strings and not switch and cli._default(f) not in (None, "", ()):
                    shown = p._get_formatter()._expand_help(a)  # as --help prints it
                    assert "(default: " in shown, (c.name, f.name, shown)
        # no flag that is not a config field
        assert set(by_dest) == expected, (c.name, set(by_dest) ^ expected)
    # every field of every config a command takes is a flag or says where it comes from
    for cls in _all_configs([k for c in cli.COMMANDS for k in c.configs]):
        for f in fields(cls):
            if _nested(cls, f.name):
                continue
            assert f.metadata.get("derived") or (f.name, id(f)) in covered, (cls, f.name)


def test_no_flag_is_defined_anywhere_but_the_generator():
    src = Path(cli.__file__).parent
    found = []
    for py in src.rglob("*.py"):
        tree = ast.parse(py.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == \
                            "add_argument":
                        found.append((py.name, fn.name))
    assert found and {f for f in found if f != ("cli.py", "add_flags")} == \
        {("cli.py", "build_parser")}  # --version only
    assert sum(1 for f in found if f == ("cli.py", "build_parser")) == 1


def test_train_help_shows_the_preset_defaults_and_presets_lists_every_recipe():
    r = subprocess.run([sys.executable, "-m", "cadenza", "presets"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:-1]}
    assert set(lines) == set(RECIPES)
    assert lines["debug"][1].endswith("M") and lines["jsb16"][2] == "chorale16"
    # the parameter counts are the models' own: debug is far smaller than base
    assert float(lines["debug"][1][:-1]) * 20 < float(lines["base"][1][:-1])


def _train(*argv: str):
    return cli.train_args_configs(cli.build_parser().parse_args(["train", *argv]))


def test_train_preset_demo_builds_exactly_what_the_demo_trains(tmp_path):
    from cadenza.demo import chorale_data, demo_configs
    cfg = DemoConfig(out=str(tmp_path / "d"), minutes=0.5, precision="fp32", seed=3,
                     force=True)
    got = _train("--preset", "demo", "--data", str(chorale_data()), "--out",
                 str(tmp_path / "d" / "run"), "--minutes", "0.5", "--precision", "fp32",
                 "--seed", "3", "--force")
    assert got == demo_configs(cfg)


@pytest.mark.parametrize("name", ["jsb16", "pianoroll-jsb", "pianoroll-nottingham",
                                  "pianoroll-musedata", "pianoroll-piano-midi"])
def test_train_preset_builds_exactly_what_bench_trains(tmp_path, name):
    model, tcs = bench.recipe_configs(RECIPES[name], data=tmp_path / "b" / "data",
                                      out=tmp_path / "b", minutes=7, precision="fp32")
    assert len(tcs) == RECIPES[name].members
    got = _train("--preset", name, "--data", str(tmp_path / "b" / "data"), "--out",
                 tcs[0].out, "--minutes", "7", "--precision", "fp32")
    assert got == (model, tcs[0])
    assert got[0].position == RECIPES[name].model.position and got[1].minutes == 7


def test_train_preset_small_builds_what_bench_models_trains(tiny_dataset, tmp_path):
    tf = bench.models_configs(str(tiny_dataset), str(tmp_path), minutes=7,
                              precision="fp32")["transformer"]
    assert tf[0].n_layer == 4  # the published table's Transformer (small has 2 layers)
    assert _train("--preset", "small", "--n-layer", "4", "--data", str(tiny_dataset), "--out",
                  str(tmp_path / "transformer"), "--batch-size", "16", "--eval-every", "100",
                  "--log-every", "50", "--minutes", "7", "--precision", "fp32") == tf


def test_budget_and_context_rules_hold_for_the_python_api_too(tmp_path):
    kw = dict(data="d", out=str(tmp_path / "r"))
    m, t = train_configs("piano", minutes=3, **kw)  # a time budget replaces the steps
    assert (t.max_steps, t.minutes) == (0, 3)
    m, t = train_configs("small", max_steps=10, **kw)  # a step budget replaces the time
    assert (t.max_steps, t.minutes) == (10, 0)
    m, t = train_configs("small", max_steps=10, minutes=2, **kw)  # both: both
    assert (t.max_steps, t.minutes) == (10, 2)
    m, t = train_configs(context=1024, transpose=(0, 0), **kw)  # the small preset
    assert m.max_context == t.context == 1024 and t.augment.transpose == (0, 0)
    assert m == RECIPES["small"].configs(context=1024, transpose=(0, 0), **kw)[0]
    with pytest.raises(Exception, match="--n-layers: not a model or training setting"):
        train_configs(n_layers=3, **kw)


def test_every_model_is_a_token_model():
    from cadenza.models import TokenModel, build_model
    from cadenza.models.ensemble import Ensemble
    models = [build_model(ModelConfig(kind=k, vocab_size=40, n_layer=1, d_model=16, n_head=2,
                                      d_ff=32, max_context=32)) for k in
              ("transformer", "rnn", "lstm", "gru")]
    for m in models + [Ensemble(models)]:
        assert isinstance(m, TokenModel)
    assert [m.max_context for m in models] == [32, None, None, None]
    assert Ensemble(models).max_context == 32


def test_configs_validate_for_the_api_as_for_the_cli():
    from cadenza.config import ConfigError, GenerateConfig, SampleConfig
    assert SampleConfig().seconds == 20.0  # neither --tokens nor --seconds: 20 s
    with pytest.raises(ConfigError, match=r"--tokens: must be in \(0, 1000000\]"):
        SampleConfig(tokens=0)
    g = GenerateConfig(out="o", checkpoint=Path("a"))
    assert g.checkpoint == ("a",) and g.sample == SampleConfig()
    with pytest.raises(ConfigError, match="--transpositions"):
        GenerateConfig(out="o", transpositions=13)
    assert TrainConfig(max_steps=1) == TrainConfig.from_dict(TrainConfig(max_steps=1).to_dict())


def test_a_preset_named_on_resume_keeps_what_the_run_derived(tiny_dataset, tmp_path):
    """--preset debug on --resume: its values are changes the run refuses by name, but the
    positions' reach follows the run's --context, not the preset's."""
    from cadenza.train import train
    args = ["--preset", "debug", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"),
            "--d-model", "32", "--n-layer", "1", "--n-head", "2", "--d-ff", "64",
            "--context", "32", "--batch-size", "2", "--max-steps", "2", "--eval-every", "2"]
    train(*_train(*args), quiet=True)
    m, t = _train(*args, "--resume", "--max-steps", "4")
    assert (m.max_context, t.context, t.max_steps, t.resume) == (32, 32, 4, True)
    assert train(m, t, quiet=True).step == 4
