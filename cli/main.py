"""The ``vstore`` click group: logging set-up, error translation and command registration."""
from __future__ import annotations

import logging
import sys

import click

from vstore.errors import VStoreError

EPILOG = """\b
Start with `vstore demo`. A typical session on your own videos:
  vstore download youtube.csv --out videos/
  vstore build videos/ --store runs/store --labels videos/downloaded.csv
  vstore split runs/store
  vstore train runs/store --model linear --mixup --out runs/linear-mixup
  vstore index runs/store && vstore search runs/store --text "a plate of pasta"
"""


PACKAGES = ("vstore", "encoders", "classifiers", "cli")  # the loggers -v / -vv turn up


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (CliRunner swaps it per invocation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def configure_logging(verbose: int, quiet: bool) -> None:
    """Set every vstore package's logger for this invocation: WARNING by default and with -q
    (the commands' summaries and progress bars say what INFO would), INFO with -v, DEBUG with
    -vv. Levels are set on each call, so in a reused process (CliRunner, API users) one call's
    level does not stick to the next; other handlers on the root logger (pytest's caplog) stay."""
    level = logging.WARNING if quiet or verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)  # other libraries: warnings and errors
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


class VStoreGroup(click.Group):
    """Turns domain errors into one-line messages (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VStoreError as e:
            raise click.ClickException(str(e)) from e
        except ValueError as e:  # config validation (__post_init__) of user-supplied values
            if isinstance(e, UnicodeError):
                raise
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("\ninterrupted; committed work is kept, rerun to resume", err=True)
            sys.exit(130)


@click.group(cls=VStoreGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings and errors only.")
@click.version_option(package_name="vstore")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """vstore: sample video frames, embed them with CLIP, store, search and classify them."""
    configure_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet, "verbose": verbose}


def _register() -> None:
    from . import build_cmds, dedup_cmds, demo_cmds, download_cmds, map_cmds, search_cmds, store_cmds, train_cmds
    from .serve import commands as serve_cmds
    for module in (demo_cmds, download_cmds, build_cmds, store_cmds, train_cmds, map_cmds, search_cmds, dedup_cmds,
                   serve_cmds):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
