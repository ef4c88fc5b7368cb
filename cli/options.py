"""Options shared by several commands, as small decorators, and the one way a command gets
an option's default: from the field of the component's config dataclass (``default_of``), so
the CLI never restates a default the code already has."""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Union

import click

from encoders.registry import DEFAULT_ENCODER
from vstore.raycluster import ENGINES, EngineConfig


def default_of(config: Union[type, str], name: str) -> Any:
    """The default of field ``name`` of dataclass ``config`` (a class, or "module:Class" to
    import it only when the value is needed)."""
    if isinstance(config, str):
        module, _, cls = config.partition(":")
        config = getattr(importlib.import_module(module), cls)
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{config.__name__}.{name} has no default")
    raise AttributeError(f"{config.__name__} has no field {name!r}")


class ConfigDefault:
    """A click ``default=`` read from a config dataclass when click needs it (invocation or
    ``--help``): for configs whose module imports torch, which the CLI loads only on demand.
    Give the option an explicit ``type=`` (click cannot guess one from this object)."""

    def __init__(self, config: str, name: str):
        self.config, self.name = config, name

    def __call__(self) -> Any:
        return default_of(self.config, self.name)

    def __str__(self) -> str:  # what --help shows as [default: ...]
        return str(self())

    def __repr__(self) -> str:
        return f"ConfigDefault({self.config!r}, {self.name!r})"


class DefaultsInHelp(click.Option):
    """An option whose help text names config defaults lazily: ``help`` holds ``{name}``
    fields filled from ``help_defaults={name: ConfigDefault(...)}`` when help is shown."""

    def __init__(self, *args, help_defaults: dict[str, ConfigDefault], **kwargs):
        super().__init__(*args, **kwargs)
        self.help_defaults = help_defaults

    def get_help_record(self, ctx: click.Context):
        template = self.help
        self.help = template.format(**{k: v() for k, v in self.help_defaults.items()})
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


def store_argument(f: Callable) -> Callable:
    return click.argument("store", type=click.Path(file_okay=False, path_type=str))(f)


def store_option(f: Callable) -> Callable:
    return click.option("--store", "store", required=True, type=click.Path(file_okay=False),
                        help="Store directory (created if missing).")(f)


def encoder_options(f: Callable) -> Callable:
    """--encoder / --device / --batch-size."""
    f = click.option("--batch-size", type=click.IntRange(min=1), default=None, cls=DefaultsInHelp,
                     help="Frames per encoder forward pass [default: {clip} for CLIP, {thumbnail} for thumbnail; "
                          "{ray_gpu} on the GPU encoder actors of --engine ray].",
                     help_defaults={"clip": ConfigDefault("encoders.clip_encoder:ClipConfig", "batch_size"),
                                    "thumbnail": ConfigDefault("encoders.thumbnail:ThumbnailConfig",
                                                               "batch_size"),
                                    "ray_gpu": ConfigDefault("encoders.build.ray_engine:RayConfig",
                                                             "gpu_batch_size")})(f)
    f = click.option("--device", type=str, default=ConfigDefault("encoders.clip_encoder:ClipConfig", "device"),
                     show_default=True, help="auto (CUDA when present, fp16 there), cpu, cuda or cuda:N.")(f)
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


def engine_options(f: Callable) -> Callable:
    """--engine local|ray / --address (the Ray cluster)."""
    f = click.option("--address", default=None, metavar="ADDR",
                     help="With --engine ray: auto (the cluster this machine joined with `ray start`), "
                          "ray://HEAD:10001, or HEAD:6379 [default: start a private Ray on this machine].")(f)
    f = click.option("--engine", type=click.Choice(ENGINES), default=default_of(EngineConfig, "engine"), show_default=True,
                     help="local: this machine. ray: a Ray cluster (pip install 'vstore[ray]'; docs/scale.md).")(f)
    return f
