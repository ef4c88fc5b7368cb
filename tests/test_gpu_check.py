"""benchmarks/gpu_check.py dry-runs on CPU (`--device cpu --quick`), as CI must be able to:
every step runs and passes or is skipped with its reason, and its JSON says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # --no-ray: Ray talks on the network; tests/test_ray.py runs it inside a loopback namespace
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--no-ray",
                        "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"].split(":")[0]: s for s in result["steps"]}
    assert set(steps) == {"encoder", "encoder alone", "vstore build", "training", "FAISS"}
    assert not result["failed"]
    enc = next(s for s in result["steps"] if s["step"].startswith("encoder:"))
    assert enc["ok"] is True and enc["cosine_min"] >= 0.999
    builds = [s for s in result["steps"] if s["step"].startswith("vstore build")]
    assert builds and all(b["ok"] and b["videos"] == 8 and b["frames_per_s"] > 0 for b in builds)
    assert steps["FAISS"]["ok"] is None and "no GPU" in steps["FAISS"]["reason"]  # skipped, with the reason
    assert steps["FAISS"]["flat"]["cpu_self_hit"] >= 0.9  # ... after its CPU half ran
    assert "IVF64,Flat" in steps["FAISS"]
    assert "6 steps in" in r.stdout  # 2 builds (exact, keyframe); the Ray step runs in tests/netns_ray.py
    assert result["over_budget"] is False and result["budget_seconds"] == 480 and "WARNING" not in r.stdout


def test_gpu_check_warns_past_eight_minutes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert gpu_check.budget_note(479.9) == "" and gpu_check.budget_note(480) == ""
    assert gpu_check.budget_note(481).startswith("WARNING: the check took 481 s, over its 480 s budget")


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cuda", "--out", str(tmp_path)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "torch sees no CUDA device" in r.stdout, r.stdout + r.stderr
