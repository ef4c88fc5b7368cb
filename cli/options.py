"""Options shared by several commands, as small decorators."""
from __future__ import annotations

import functools
from typing import Callable

import click

from encoders.registry import DEFAULT_ENCODER


def store_argument(f: Callable) -> Callable:
    return click.argument("store", type=click.Path(file_okay=False, path_type=str))(f)


def store_option(f: Callable) -> Callable:
    return click.option("--store", "store", required=True, type=click.Path(file_okay=False),
                        help="Store directory (created if missing).")(f)


def encoder_options(f: Callable) -> Callable:
    """--encoder / --device / --batch-size."""
    f = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Frames per encoder forward pass [default: 64 for CLIP, 256 for thumbnail].")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present, fp16 there), cpu, cuda or cuda:N.")(f)
    f = click.option("--encoder", "encoder_spec", default=DEFAULT_ENCODER, show_default=True, metavar="SPEC",
                     help="clip:<model> (any clip.available_models() name), clip:/path/to/checkpoint.pt, "
                          "or thumbnail (weight-free, offline).")(f)
    return f


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def labels_option(f: Callable) -> Callable:
    return click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="YouTube Videos Dataset CSV (link,...,category), downloaded.csv, "
                             "or JSON {id: label}.")(f)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def pass_quiet(f: Callable) -> Callable:
    """Adds -q/--quiet to a command (also accepted before it, on the group) and passes
    ``quiet``: no progress bars."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        kwargs["quiet"] = bool(kwargs.get("quiet")) or bool((ctx.find_root().obj or {}).get("quiet"))
        return f(*args, **kwargs)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(wrapper)
