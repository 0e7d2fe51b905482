"""The README stays true: its configuration table is the code's, and what it tells a newcomer to run
exists."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.cli import build_parser, config_table
from daemon.config import VARIABLES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_config_table_matches_the_settings():
    # Given the table between the markers
    table = README.split("<!-- config-table:start -->\n")[1].split("<!-- config-table:end -->")[0]
    # Then it is exactly what `python -m daemon config-doc` prints (regenerate it from there)
    assert table == config_table()
    assert all(f"`{var.name}`" in table for var in VARIABLES)


def test_every_cli_command_shown_in_the_readme_exists():
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    shown = set(re.findall(r"python -m daemon (\w[\w-]*)", README))
    assert shown <= commands
    assert {"worker", "enqueue", "cancel"} <= shown


def test_readme_shows_the_two_commands_and_the_three_ways_to_enqueue():
    assert "make test" in README and "make demo" in README
    assert "rq enqueue" in README and "node enqueue.mjs" in README and "python -m daemon enqueue" in README
