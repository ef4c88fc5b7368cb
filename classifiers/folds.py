"""Cross-validation folds and paired comparisons of runs.

Folds: stratified K-fold over labelled videos, deterministic like ``vstore split``: within
each label, videos are ranked by ``sha256(f"fold{repeat}:{id}")`` and dealt round-robin into
``K`` folds, so two runs with the same ``--folds K --repeats R`` on the same store evaluate
on exactly the same videos, and a comparison between them can be paired.

Paired comparison (``paired_bootstrap``): for every test unit (a video in a fold of a repeat)
the difference of the two runs' correctness (each averaged over its seeds); the mean
difference, a 95% bootstrap interval over units and a two-sided bootstrap p-value. Identical
predictions give difference 0 and p = 1.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

UNITS_NAME = "test_units.csv"  # every evaluation's prediction per test video: repeat, fold, seed, id, ...


def stratified_folds(ids: Sequence[str], labels: Sequence[str], k: int, repeat: int = 0) -> list[list[str]]:
    """``k`` lists of ids (each label spread evenly over them), deterministic in ``repeat``."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    by_label: dict[str, list[str]] = {}
    for vid, lab in zip(ids, labels):
        by_label.setdefault(lab, []).append(vid)
    folds: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for lab in sorted(by_label):
        ranked = sorted(by_label[lab], key=lambda v: hashlib.sha256(f"fold{repeat}:{v}".encode()).hexdigest())
        for i, vid in enumerate(ranked):
            folds[(i + offset) % k].append(vid)
        offset += len(ranked)  # the next label starts where this one stopped: fold sizes stay even
    return folds


@dataclass
class PairedResult:
    n: int  # paired test units
    mean_diff: float  # mean of (a correct - b correct): accuracy of a minus accuracy of b
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, rounds: int = 10_000,
                     seed: int = 0) -> PairedResult:
    """Paired bootstrap over units of the difference in correctness (values in [0, 1])."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("paired comparison needs two equally long, non-empty vectors")
    d = a - b  # (N,)
    rng = np.random.default_rng(seed)
    means = np.empty(rounds)
    for s in range(0, rounds, 1000):  # bounded memory: 1000 resamples at a time
        r = min(1000, rounds - s)
        means[s:s + r] = d[rng.integers(0, len(d), size=(r, len(d)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    if not d.any():
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
        p = max(p, 1.0 / rounds)
    return PairedResult(len(d), float(d.mean()), float(lo), float(hi), p)


def unit_rows_csv(units: Sequence[tuple[int, int, int, Sequence[str], np.ndarray]], store: Any,
                  label_names: Sequence[str]) -> bytes:
    """``test_units.csv`` from ``(repeat, fold, seed, test ids, (V, C) probabilities)`` per
    evaluation (fold -1: the stored split's test set)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["repeat", "fold", "seed", "id", "label", "predicted"])
    for rep, fold, seed, ids, probs in units:
        y = store.label_indices(list(ids))
        for vid, t, p in zip(ids, y, probs):
            w.writerow([rep, fold, seed, vid, label_names[t], label_names[int(np.argmax(p))]])
    return buf.getvalue().encode("utf-8")


def read_units(path: str | Path) -> dict[tuple[int, int, str], float]:
    """``(repeat, fold, id) -> correctness`` averaged over seeds, from a ``test_units.csv``."""
    sums: dict[tuple[int, int, str], list[float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (int(row["repeat"]), int(row["fold"]), row["id"])
            sums.setdefault(key, []).append(float(row["label"] == row["predicted"]))
    return {k: float(np.mean(v)) for k, v in sums.items()}
