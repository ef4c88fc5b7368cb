"""Memory budgets follow the process's cgroup limit, not the machine's RAM (vstore.sysmem)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vstore.sysmem import available_memory_bytes, cgroup_limit_bytes, memory_limit_bytes, physical_memory_bytes

REPO = Path(__file__).resolve().parents[1]


def test_limits_read_from_a_cgroup_tree(tmp_path):
    """v2 and v1 layouts, the tightest of a cgroup and its parents, "max" and v1's huge
    no-limit number, and a container whose own cgroup is mounted as the root."""
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    (root / "a" / "memory.max").write_text(f"{3 << 30}\n")
    (root / "a" / "b" / "memory.max").write_text(f"{5 << 30}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    assert cgroup_limit_bytes(root, proc) == 3 << 30  # the parent's is tighter
    (root / "memory" / "x").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (root / "memory" / "x" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1: no limit
    proc.write_text("4:memory:/x\n1:cpu:/y\n")
    assert cgroup_limit_bytes(root, proc) == 1 << 30
    proc.write_text("4:memory:/not/mounted/here\n")  # a container: only the root's files are there
    assert cgroup_limit_bytes(root, proc) == 1 << 30
    proc.write_text("garbage\n")
    assert cgroup_limit_bytes(root, proc) is None


def test_this_process():
    assert 0 < available_memory_bytes() <= memory_limit_bytes() <= physical_memory_bytes()


def _v1_memory_cgroup() -> Path:
    base = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (base / "memory.limit_in_bytes").exists() or not os.access(base, os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 memory hierarchy (as on this project's CI machines)")
    d = base / f"vstore-test-{uuid.uuid4().hex[:8]}"
    try:
        d.mkdir()
        (d / "memory.limit_in_bytes").write_text(str(512 << 20))
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here ({e})")
    return d


def test_a_process_in_a_memory_cgroup_sees_its_limit():
    d = _v1_memory_cgroup()
    code = ("from vstore.sysmem import memory_limit_bytes, available_memory_bytes; "
            "from vstore.index import IndexConfig; "
            "print(memory_limit_bytes(), available_memory_bytes(), IndexConfig().memory_budget_bytes())")
    try:
        out = subprocess.run(["sh", "-c", f'echo $$ > {d}/cgroup.procs && exec "$0" -c "$1"',
                              sys.executable, code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, check=True).stdout.split()
    finally:
        d.rmdir()
    limit, avail, index_budget = map(int, out)
    assert limit == 512 << 20 and 0 < avail <= 512 << 20 and index_budget == 256 << 20
