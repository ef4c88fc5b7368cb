"""`auto` between Flat and IVF by measured recall and latency on held-out queries (issue 11)."""
from __future__ import annotations

from test_index import vector_store

from vstore import Store
from vstore.index import IndexConfig, factory_for, read_meta
from vstore.index_build import build_index


def test_auto_measures_records_its_choice_and_appends_keep_it(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=120, frames=25)  # 3,000 frames
    cfg = IndexConfig(auto_measure_min=1_000, auto_sample=2_000, auto_queries=100)
    r = build_index(path, cfg)
    assert "auto measured on" in r.reason and "held-out queries" in r.reason
    meta = read_meta(path)
    assert meta.config.kind == "auto" and meta.config.auto_choice in ("flat", "ivf")
    assert meta.frame_part.factory == ("Flat" if meta.config.auto_choice == "flat" else factory_for(meta.config, 3000, 32))
    vector_store(path, n_videos=10, frames=25, first=120)
    r2 = build_index(path)
    assert r2.action == "appended" and read_meta(path).config.auto_choice == meta.config.auto_choice
    with Store.open(path) as s:
        assert s.n_frames == 3_250


def test_auto_keeps_flat_when_ivf_misses_the_recall_target(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=120, frames=25)
    # one probed list out of ~50 cannot find all 10 true neighbours of every query
    r = build_index(path, IndexConfig(auto_measure_min=1_000, auto_sample=2_000, auto_queries=100, nprobe=1,
                                      auto_recall=1.0))
    assert r.factory == "Flat" and read_meta(path).config.auto_choice == "flat", r.reason


def test_auto_rule_without_measurement_and_above_flat_max():
    assert factory_for(IndexConfig(), 50_000, 512) == "Flat"  # below auto_measure_min: exact
    assert factory_for(IndexConfig(auto_choice="ivf"), 200_000, 512).startswith("IVF")
    assert factory_for(IndexConfig(auto_choice="flat"), 2_000_000, 512).startswith("IVF")  # above flat_max
    assert factory_for(IndexConfig(auto_choice="ivf"), 200_000, 512, for_videos=True) == "Flat"


def test_auto_fits_the_memory_budget():
    # 200k x 512: Flat holds 400 MiB, IVF-Flat ~402 MiB, IVF-PQ64 ~14 MiB
    assert factory_for(IndexConfig(memory_budget_mb=1024), 200_000, 512) == "Flat"
    assert factory_for(IndexConfig(memory_budget_mb=300), 200_000, 512).endswith(",PQ64")
    assert factory_for(IndexConfig(memory_budget_mb=300, auto_choice="ivf"), 200_000, 512).endswith(",PQ64")
    assert factory_for(IndexConfig(memory_budget_mb=300), 2_000, 512, for_videos=True) == "Flat"  # 2k means: fits
    assert factory_for(IndexConfig(memory_budget_mb=300, kind="ivf"), 200_000, 512).endswith(",Flat")  # asked for
    import pytest

    from vstore.errors import IndexBuildError
    with pytest.raises(IndexBuildError, match="even as PQ64 codes, more than the index memory budget of 10 MiB"):
        factory_for(IndexConfig(memory_budget_mb=10), 200_000, 512)
    with pytest.raises(ValueError, match="memory_budget_mb must be >= 0"):
        IndexConfig(memory_budget_mb=-1)
    assert IndexConfig().memory_budget_bytes() > 1 << 30  # half of this machine's memory


def test_index_memory_budget_option(tmp_path):
    from click.testing import CliRunner

    from cli.main import main
    path = vector_store(tmp_path / "s", n_videos=40, frames=25)  # 1,000 x 32-d: 125 KiB as Flat
    r = CliRunner().invoke(main, ["index", str(path), "--memory-budget", "0", "--json"])
    assert r.exit_code == 0 and '"factory": "Flat"' in r.output, r.output
    assert read_meta(path).config.memory_budget_mb == 0
    r = CliRunner().invoke(main, ["index", str(path), "--memory-budget", "-5"])
    assert r.exit_code == 2 and "-5 is not in the range x>=0" in r.output
