"""Every subcommand documents every flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["prepare", "train", "generate", "evaluate", "demo", "download", "stats", "bench",
            "report"]


def test_top_level_help_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "cadenza", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help(command):
    from cadenza.cli import build_parser
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
