"""Runs tests/netns_ray.py (the Ray build and index engines) in a network namespace with only
the loopback interface, so Ray binds 127.0.0.1 and can reach nothing else; skipped with the
reason when Ray is not installed or the namespace cannot be made (needs root / user
namespaces)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _netns_reason() -> str:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) not installed"
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return "" if r.returncode == 0 else f"cannot make a loopback-only network namespace: {r.stderr.strip()[:200]}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ray_engines_on_loopback():
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, VSTORE_RAY_NETNS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("RAY_ADDRESS", None)
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -rs -p no:cacheprovider"
             " -o python_files=netns_*.py -o timeout=400 tests/netns_ray.py")
    r = subprocess.run(["unshare", "-n", "sh", "-c", inner], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1400)
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0, f"Ray tests failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    # Every inner test ran and passed: a skip (no Ray Data, a fixture that could not start)
    # would also exit 0.
    expected = len(re.findall(r"^def test_", (REPO / "tests" / "netns_ray.py").read_text(), re.M))
    summary = [line for line in r.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)][-1]
    counts = {what: int(n) for n, what in re.findall(r"(\d+) (\w+)", summary)}
    assert counts.get("passed") == expected and set(counts) <= {"passed", "warnings", "warning"}, summary
