"""`vstore demo`: the newcomer's first command runs end to end offline."""
from __future__ import annotations

import json

from cli.main import main


def test_demo_runs_everything_and_says_where_to_look(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached CLIP weights: the demo must fall back
    out = tmp_path / "demo"
    r = runner.invoke(main, ["demo", "--out", str(out), "--videos-per-class", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert "running the demo with the offline `thumbnail` encoder instead" in r.output
    assert "Look at:" in r.output and str(out / "results.md") in r.output
    for name in ("results.md", "results.png", "search.png"):
        assert (out / name).stat().st_size > 0, name
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["knn", "linear", "linear-mixup", "random-frame", "random-frame-mixup", "transformer",
                    "transformer-mixup"]
    for run in runs[1:]:
        assert (out / "runs" / run / "curves.png").exists()
        assert json.loads((out / "runs" / run / "metrics.json").read_text())["n_test"] == 4
    # enough optimiser steps by default that the first table is true: the four classes are
    # separable by colour (20 steps used to leave linear at F1 0.75)
    assert "(75 epochs of batches of 8)" in r.output  # 12 training videos: 2 steps an epoch
    for run in ("linear", "linear-mixup", "knn"):
        assert json.loads((out / "runs" / run / "metrics.json").read_text())["f1_micro"] == 1.0, run
    md = (out / "results.md").read_text()
    assert "| knn (k=5, video) |" in md and "transformer + mixup" in md
