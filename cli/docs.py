"""Render docs/cli.md from the click commands' own help (run: ``python -m cli.docs``).

A test regenerates it and compares, so the page cannot drift from the code.
"""
from __future__ import annotations

import sys

import click


WIDTH = 100  # fixed, so the page does not depend on the terminal it was generated in


def command_help(group: click.Group, name: str) -> str:
    cmd = group.commands[name]
    with click.Context(group, info_name="vstore", terminal_width=WIDTH, max_content_width=WIDTH) as parent:
        with click.Context(cmd, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH) as ctx:
            return cmd.get_help(ctx)


def render(group: click.Group) -> str:
    with click.Context(group, info_name="vstore", terminal_width=WIDTH, max_content_width=WIDTH) as ctx:
        top = group.get_help(ctx)
    parts = ["# vstore command reference", "",
             "Generated from the commands' `--help` by `python -m cli.docs > docs/cli.md`; "
             "a test checks that it is current.", "", "```text", top.rstrip(), "```", ""]
    for name in sorted(group.commands):
        parts += [f"## vstore {name}", "", "```text", command_help(group, name).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    from .main import main
    sys.stdout.write(render(main))
