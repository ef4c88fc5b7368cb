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
    level = logging.WARNING if quiet else (logging.INFO if verbose == 1 else logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose == 0 and not quiet:
        # the build's own summary and progress bar say what INFO would
        logging.getLogger("vstore").setLevel(logging.WARNING)
    ctx.obj = {"quiet": quiet, "verbose": verbose}


def _register() -> None:
    from . import build_cmds, demo_cmds, download_cmds, search_cmds, store_cmds, train_cmds
    from .serve import commands as serve_cmds
    for module in (demo_cmds, download_cmds, build_cmds, store_cmds, train_cmds, search_cmds, serve_cmds):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
