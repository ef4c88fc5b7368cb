"""The documentation promises: every command has help with an example, docs/cli.md is the
commands' current help, and the README's command table lists every command."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.docs import command_help, render
from cli.main import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_with_an_example(name):
    text = command_help(main, name)
    assert main.commands[name].help, f"{name} has no help text"
    assert re.search(r"Examples?:\n\s+vstore " + re.escape(name), text), f"{name} has no example"


def test_cli_reference_is_current():
    current = (REPO / "docs" / "cli.md").read_text()
    assert current == render(main), "docs/cli.md is stale: run `python -m cli.docs > docs/cli.md`"


def test_readme_lists_every_command_and_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    for name in main.commands:
        assert f"| `{name}` |" in readme, f"README's command table lacks {name}"
    assert "pip install -e . && vstore demo" in readme
    assert 'pip install -e ".[dev]" && python -m pytest -q' in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && python -m pytest -q' in ci
