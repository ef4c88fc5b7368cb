"""Cross-validation folds and paired comparisons of runs.

Folds: stratified K-fold over labelled videos, deterministic like ``vstore split``: within
each label, videos are ranked by ``sha256(f"fold{repeat}:{id}")`` and dealt round-robin into
``K`` folds, so two runs with the same ``--folds K --repeats R`` on the same store evaluate
on exactly the same videos, and a comparison between them can be paired.

Paired comparison (``paired_bootstrap``): the unit is the test video. For every video, each
run's correctness averaged over all of its evaluations of that video (its seeds, and its
repeats of the folds), then the difference between the two runs; the mean difference, a 95%
bootstrap interval over videos and a two-sided bootstrap p-value. A video evaluated R times
(``--repeats R``) or by S seeds still counts once: its evaluations are not independent (the
same video, models trained on mostly the same videos), and counting them apart would
overstate the evidence. Identical predictions give difference 0 and p = 1.

Two runs are paired only when they tested every video in the same place: the same set of
(repeat, fold, video) evaluations (``TestUnits.layout``), i.e. the same ``--folds/--repeats``
(or the same stored split) on the same videos. Runs on different folds are not compared
(``comparable`` says why), never paired on the videos they happen to share.

Held-out part (``stratified_holdout``): a fraction of each label's training videos, chosen by
hash rank like the folds, set aside as the validation part when a split has none.
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


def stratified_holdout(ids: Sequence[str], labels: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(kept, held out)``, both in the order of ``ids``: ``round(fraction * n)`` of each label's
    ``n`` videos (ranked by ``sha256(f"holdout:{id}")``), never a label's last video."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    by_label: dict[str, list[str]] = {}
    for vid, lab in zip(ids, labels):
        by_label.setdefault(lab, []).append(vid)
    held: set[str] = set()
    for vids in by_label.values():
        k = min(len(vids) - 1, round(fraction * len(vids)))
        ranked = sorted(vids, key=lambda v: hashlib.sha256(f"holdout:{v}".encode()).hexdigest())
        held.update(ranked[:max(0, k)])
    return [v for v in ids if v not in held], [v for v in ids if v in held]


def logistic_regression_folds(store_path: str | Path, k: int, repeat: int = 0) -> list[float]:
    """Accuracy per fold of converged scikit-learn logistic regression (its defaults, C = 1,
    run to ``tol`` 1e-8) on the standardised mean-pooled features of the folds that
    ``vstore train --folds k`` uses (the split's train + val videos, ``repeat``): the yardstick
    of the default recipe's convergence (``tests/test_quality.py``, ``bench_quality.py``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vstore import Store
    from vstore.split import load_split
    split = load_split(store_path)
    with Store.open(store_path) as s:
        pool = [v for v in s.videos.ids if split.assignment.get(v) in ("train", "val")]
        labels = dict(zip(s.videos.ids, s.videos.labels))
        x, y = dict(zip(pool, s.video_means(pool))), dict(zip(pool, s.label_indices(pool)))
    scores = []
    for fold in stratified_folds(pool, [labels[v] for v in pool], k, repeat=repeat):
        test = set(fold)
        tr, te = [v for v in pool if v not in test], [v for v in pool if v in test]
        scaler = StandardScaler().fit(np.stack([x[v] for v in tr]))
        lr = LogisticRegression(max_iter=20_000, tol=1e-8).fit(scaler.transform(np.stack([x[v] for v in tr])),
                                                               [y[v] for v in tr])
        predicted = lr.predict(scaler.transform(np.stack([x[v] for v in te])))
        scores.append(float((predicted == np.array([y[v] for v in te])).mean()))
    return scores


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
    """Paired bootstrap over units (test videos) of the difference in correctness (values in
    [0, 1]: a video's correctness averaged over its evaluations)."""
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


@dataclass
class TestUnits:
    """A run's test predictions as units for a paired comparison."""

    correct: dict[str, float]  # video id -> correctness averaged over its evaluations (repeats x seeds)
    layout: frozenset[tuple[int, int, str]]  # (repeat, fold, id) of every evaluation (fold -1: the stored split)
    evaluations: int  # rows of test_units.csv (videos x repeats x seeds)

    def describe(self) -> str:
        """``5 folds x 2 repeats`` or ``the stored split``, and how many videos."""
        folds = {(r, k) for r, k, _ in self.layout}
        if all(k == -1 for _, k in folds):
            where = "the stored split"
        else:
            repeats = len({r for r, _ in folds})
            where = f"{len(folds) // max(1, repeats)} folds x {repeats} repeat(s)"
        return f"{where}, {len(self.correct)} videos"


def read_units(path: str | Path) -> TestUnits:
    """A ``test_units.csv`` as units: each test video once, its correctness averaged over seeds
    and repeats (see the module doc)."""
    sums: dict[str, list[float]] = {}
    layout: set[tuple[int, int, str]] = set()
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            layout.add((int(row["repeat"]), int(row["fold"]), row["id"]))
            sums.setdefault(row["id"], []).append(float(row["label"] == row["predicted"]))
            n += 1
    return TestUnits({k: float(np.mean(v)) for k, v in sums.items()}, frozenset(layout), n)


def comparable(a: TestUnits, b: TestUnits) -> tuple[bool, str]:
    """Whether two runs can be paired (the same evaluations of the same videos), and if not why."""
    if a.layout == b.layout:
        return True, ""
    if set(a.correct) != set(b.correct):
        shared = len(set(a.correct) & set(b.correct))
        return False, (f"different test videos ({a.describe()} vs {b.describe()}; {shared} shared): "
                       "train both on the same split or the same --folds/--repeats")
    return False, (f"the same videos tested in different folds ({a.describe()} vs {b.describe()}): "
                   "train both with the same --folds/--repeats")
