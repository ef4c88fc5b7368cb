"""How much memory this process may use: the machine's, capped by its cgroup and rlimits.

A container, a Slurm job or a ``systemd-run -p MemoryMax=`` unit sees the whole machine in
``/proc/meminfo`` but is killed at its cgroup's limit, so every budget vstore derives from
"memory" (the index kind ``auto`` fits, the frames training keeps in RAM) comes from here:

* ``memory_limit_bytes()``: physical RAM, capped by the memory limit of this process's cgroup
  and of each cgroup above it (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) and by
  ``RLIMIT_AS``/``RLIMIT_DATA``;
* ``available_memory_bytes()``: ``MemAvailable``, capped by that limit minus what the cgroup
  already uses (page cache it holds counts as used, which errs on the safe side).
"""
from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Iterator, Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-aligned number


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _own_cgroups(proc_cgroup: Path = Path("/proc/self/cgroup")) -> Iterator[tuple[str, str]]:
    """(hierarchy, path) pairs of this process: ("v2", "/a/b") and ("memory", "/a/b") for v1."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            yield "v2", path
        elif "memory" in controllers.split(","):
            yield "memory", path


def _ancestors(base: Path, cgroup_path: str) -> Iterator[Path]:
    """The cgroup's directory and every one above it, under ``base`` (a container mounts its
    own cgroup as the root, so the path from /proc may not exist below ``base``: then only the
    root's files tell, and they are read too)."""
    rel = Path(cgroup_path.lstrip("/"))
    seen = set()
    for p in [rel, *rel.parents]:
        d = base / p
        if d not in seen and (p == Path(".") or d.is_dir()):
            seen.add(d)
            yield d


def _cgroup_limits(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
                   ) -> list[tuple[int, Optional[int]]]:
    """(limit, usage or None) of every cgroup of this process, or above it, that sets a limit."""
    out = []
    for kind, path in _own_cgroups(proc_cgroup):
        bases = [root, root / "unified"] if kind == "v2" else [root / "memory"]
        limit_name, usage_name = ("memory.max", "memory.current") if kind == "v2" else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
        for base in bases:
            for d in _ancestors(base, path):
                limit = _read_int(d / limit_name)
                if limit is not None:
                    out.append((limit, _read_int(d / usage_name)))
    return out


def cgroup_limit_bytes(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[int]:
    """The tightest memory limit of this process's cgroups, or None when there is none."""
    limits = _cgroup_limits(root, proc_cgroup)
    return min(limit for limit, _ in limits) if limits else None


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf (Windows)
        return 16 << 30


def memory_limit_bytes() -> int:
    """Physical RAM capped by this process's cgroup memory limit and its address-space rlimits."""
    limits = [physical_memory_bytes()]
    cg = cgroup_limit_bytes()
    if cg is not None:
        limits.append(cg)
    for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    return min(limits)


def available_memory_bytes() -> int:
    """Memory this process can still take: MemAvailable, capped by its cgroup's headroom."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    limit = memory_limit_bytes()
    avail = min(avail, limit) if avail is not None else limit // 2
    for cg_limit, used in _cgroup_limits():
        if used is not None:
            avail = min(avail, max(0, cg_limit - used))
    return avail
