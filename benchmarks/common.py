"""Shared helpers of the benchmark scripts: interleaved timing, a cache dir, result tables.

Timings on a shared machine drift, so cases are timed side by side: every round runs each
case once (in a rotating order), and a ratio is the median over rounds of the per-round
ratio, not a ratio of two numbers taken minutes apart.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"  # git-ignored cache of generated videos, stores and results
sys.path.insert(0, str(ROOT.parent))  # run as `python benchmarks/x.py` from a checkout


def out_dir(*parts: str) -> Path:
    p = OUT.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (a smoke run)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds per case (default {repeats})")
    return p


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Seconds of each case in each of ``repeats`` rounds, after ``warmup`` untimed rounds:
    ``{"wall": {case: [s, ...]}, "cpu": {case: [s, ...]}}``. CPU time is this process's (all
    its threads, not its children): for single-process cases it is the figure that other jobs
    on a shared machine disturb least."""
    names = list(cases)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no case always first
        for n in order:
            c, t = time.process_time(), time.perf_counter()
            cases[n]()
            t, c = time.perf_counter() - t, time.process_time() - c
            if r >= warmup:
                wall[n].append(t)
                cpu[n].append(c)
    return {"wall": wall, "cpu": cpu}


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den] (rounds timed side by side)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def verdict(what: str, value: float, goal: float, higher_is_better: bool) -> dict[str, Any]:
    ok = value >= goal if higher_is_better else value <= goal
    line = f"{what}: {value:.2f}x  (goal {'>=' if higher_is_better else '<='} {goal:g}x)  {'PASS' if ok else 'FAIL'}"
    print(line)
    return {"what": what, "value": round(value, 4), "goal": goal,
            "higher_is_better": higher_is_better, "pass": ok}


def table(rows: list[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_end": load_average(),
            "python": platform.python_version(), "platform": platform.platform()}


def save(name: str, result: dict[str, Any], quiet: bool = False) -> Path:
    path = out_dir() / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), "argv": sys.argv[1:], **result}
    path.write_text(json.dumps(result, indent=2, default=float))
    if not quiet:
        print(f"results written to {path}")
    return path
