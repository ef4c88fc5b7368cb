"""Render docs/cli.md from the click commands' own help (run: ``python -m cli.docs``).

A test regenerates it and compares, so the page cannot drift from the code.
"""
from __future__ import annotations

import sys

import click

WIDTH = 100  # fixed, so the page does not depend on the terminal it was generated in


def _context(cmd: click.Command, name: str, parent=None) -> click.Context:
    # make_context applies the command's context_settings (e.g. -h as well as --help)
    return cmd.make_context(name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH,
                            max_content_width=WIDTH)


def command_help(group: click.Group, name: str) -> str:
    cmd = group.commands[name]
    with _context(group, "vstore") as parent, _context(cmd, name, parent) as ctx:
        return cmd.get_help(ctx)


def render(group: click.Group) -> str:
    with _context(group, "vstore") as ctx:
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
