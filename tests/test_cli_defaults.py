"""The CLI's option defaults are the config dataclasses' defaults (one source of truth), and
``--help`` shows them; no option in cli/*.py restates a default as a literal."""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import click
import pytest

from classifiers.config import TrainConfig
from classifiers.demo import DemoConfig
from classifiers.embedding_map import MapConfig
from cli.main import main
from cli.options import default_of
from encoders.build import BuildConfig
from encoders.build.ray_engine import RayConfig
from encoders.clip_encoder import ClipConfig
from encoders.download import DownloadConfig
from vstore.config import StoreConfig
from vstore.dedup import DedupConfig
from vstore.index import IndexConfig
from vstore.raycluster import EngineConfig
from vstore.search import search
from vstore.split import SplitConfig

REPO = Path(__file__).resolve().parents[1]

# (command, option parameter) -> (config dataclass, field)
DEFAULTS = {
    ("build", "frames"): (BuildConfig, "frames"),
    ("build", "sampling"): (BuildConfig, "sampling"),
    ("build", "workers"): (BuildConfig, "workers"),
    ("build", "video_timeout"): (BuildConfig, "video_timeout"),
    ("build", "dtype"): (StoreConfig, "dtype"),
    ("build", "segment_videos"): (StoreConfig, "segment_videos"),
    ("build", "device"): (ClipConfig, "device"),
    ("build", "engine"): (EngineConfig, "engine"),
    ("build", "ray_encoders"): (RayConfig, "encoders"),
    ("index", "engine"): (EngineConfig, "engine"),
    ("import-json", "dtype"): (StoreConfig, "dtype"),
    ("demo", "encoder_spec"): (DemoConfig, "encoder"),
    ("demo", "device"): (DemoConfig, "device"),
    ("demo", "videos_per_class"): (DemoConfig, "videos_per_class"),
    ("demo", "epochs"): (DemoConfig, "epochs"),
    ("download", "jobs"): (DownloadConfig, "jobs"),
    ("download", "retries"): (DownloadConfig, "retries"),
    ("download", "url_template"): (DownloadConfig, "url_template"),
    ("download", "fmt"): (DownloadConfig, "format"),
    ("download", "cookies"): (DownloadConfig, "cookies"),
    ("download", "timeout"): (DownloadConfig, "socket_timeout"),
    ("download", "backoff"): (DownloadConfig, "backoff"),
    ("download", "rate_limit_pause"): (DownloadConfig, "rate_limit_pause"),
    ("split", "test_size"): (SplitConfig, "test_size"),
    ("split", "val_size"): (SplitConfig, "val_size"),
    ("split", "seed"): (SplitConfig, "seed"),
    **{("train", name): (TrainConfig, name) for name in ("alpha", "epochs", "batch_size", "lr", "seeds", "eval_every",
                                                         "device", "layers", "max_frames", "k", "level", "prompt")},
    ("predict", "device"): (TrainConfig, "device"),
    ("map", "method"): (MapConfig, "method"),
    ("map", "seed"): (MapConfig, "seed"),
    **{("dedup", name): (DedupConfig, name) for name in ("frame_threshold", "min_share", "min_frames", "offset_slack",
                                                         "neighbours", "search", "nprobe", "report_pairs")},
}
# Options whose default means "keep what exists / let the component decide": help names the default.
HELP_DEFAULTS = {
    ("index", "kind"): (IndexConfig, "kind"),
    ("index", "metric"): (IndexConfig, "metric"),
    ("index", "hnsw_m"): (IndexConfig, "hnsw_m"),
    ("index", "ef_construction"): (IndexConfig, "ef_construction"),
    ("index", "nprobe"): (IndexConfig, "nprobe"),
    ("index", "ef_search"): (IndexConfig, "ef_search"),
    ("index", "memory_budget_mb"): (IndexConfig, "memory_budget_mb"),
    ("search", "device"): (ClipConfig, "device"),
}
# Literal defaults allowed in cli/*.py: none of these repeats a config field.
LITERALS = {"vstore-demo"}  # demo --out: a directory name, no component owns it


def _field_default(config: type, name: str):
    """The dataclass's own default, read without cli.options."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _option(command: str, param: str) -> tuple[click.Option, click.Context]:
    cmd = main.commands[command]
    opt = next(p for p in cmd.params if p.name == param)
    return opt, click.Context(cmd, info_name=command)


def _help(opt: click.Option, ctx: click.Context) -> str:
    return " ".join(opt.get_help_record(ctx)[1].split())


@pytest.mark.parametrize("key", sorted(DEFAULTS), ids="-".join)
def test_option_defaults_are_the_config_defaults(key):
    opt, ctx = _option(*key)
    want = _field_default(*DEFAULTS[key])
    assert opt.get_default(ctx) == want and default_of(*DEFAULTS[key]) == want
    if want is not None:  # shown in --help
        assert opt.show_default and f"[default: {want}" in _help(opt, ctx)


@pytest.mark.parametrize("key", sorted(HELP_DEFAULTS), ids="-".join)
def test_help_names_the_config_default(key):
    opt, ctx = _option(*key)
    assert opt.get_default(ctx) is None
    assert f"[default: {_field_default(*HELP_DEFAULTS[key])}" in _help(opt, ctx)


def test_search_defaults_are_the_api_defaults():
    params = inspect.signature(search).parameters
    for name in ("k", "level"):
        opt, ctx = _option("search", name)
        assert opt.get_default(ctx) == params[name].default


def test_a_changed_config_default_reaches_the_help(monkeypatch):
    """The help reads the dataclass when shown: no copy of the value exists in cli/."""
    monkeypatch.setattr(ClipConfig.__dataclass_fields__["batch_size"], "default", 96)
    opt, ctx = _option("build", "batch_size")
    assert "[default: 96 for CLIP" in _help(opt, ctx)


def test_no_option_restates_a_default_as_a_literal():
    found = []
    for path in sorted((REPO / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":
                for kw in node.keywords:
                    if (kw.arg == "default" and isinstance(kw.value, ast.Constant)
                            and kw.value.value not in (None, False) and kw.value.value not in LITERALS):
                        found.append(f"{path.name}:{node.lineno} default={kw.value.value!r}")
    assert not found, found


def test_default_of_errors():
    with pytest.raises(AttributeError, match="no field"):
        default_of(TrainConfig, "nope")
    assert default_of("vstore.split:SplitConfig", "test_size") == 0.1
