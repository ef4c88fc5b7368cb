"""``vstore report``: the reference study's results table from several runs.

Rows are metrics, columns are runs (model x mixup); cells are ``mean +/- std`` over seeds
(and folds, for ``--folds`` runs) when a run had several. Written as Markdown with a PNG bar
chart beside it.

Paired comparisons: for every pair of runs evaluated the same way (the same stored split, or
the same ``--folds K --repeats R`` on the same store), the mean difference in accuracy over
the test videos (each video one unit, each run's correctness on it averaged over its seeds
and repeats), its 95% paired-bootstrap interval and p-value (``classifiers.folds``). A
difference whose p-value is under 0.05 is marked significant. Runs of one store evaluated
differently (other folds, another split) are listed as not compared, with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vstore.fsutil import atomic_write_bytes

from .folds import UNITS_NAME, comparable, paired_bootstrap, read_units
from .metrics import SCALARS
from .plots import plot_report
from .runs import Run, load_run

METRIC_NAMES = {"accuracy": "Accuracy", "f1_micro": "F1 micro", "f1_macro": "F1 macro"}


def _column(run: Run) -> str:
    m = run.metrics
    name = m["model"] + (" + mixup" if m.get("mixup") else "")
    cfg = m.get("config", {})
    if m["model"] == "knn":
        name += f" (k={cfg.get('k')}, {cfg.get('level')})"
    if cfg.get("shuffle_labels"):
        name += " (shuffled labels)"
    return name


def unique_columns(runs: Sequence[Run]) -> list[str]:
    """Column titles; runs of the same model are told apart by directory name, then by position
    (counted on the plain titles, so every one of them is suffixed, the last included)."""
    plain = [_column(r) for r in runs]
    cols = [f"{c} [{Path(r.path).name}]" if plain.count(c) > 1 else c for c, r in zip(plain, runs)]
    return [f"{c} ({i + 1})" if cols.count(c) > 1 else c for i, c in enumerate(cols)]


def _cell(run: Run, metric: str) -> str:
    m = run.metrics
    if m.get("seeds", 1) > 1 or m.get("folds", 1) > 1:
        return f"{m[metric]:.3f} ± {m[metric + '_std']:.3f}"
    return f"{m[metric]:.3f}"


def build_report(run_dirs: Sequence[str | Path]) -> tuple[str, list[Run]]:
    runs = [load_run(p) for p in run_dirs]
    cols = unique_columns(runs)
    lines = ["| Metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for metric in SCALARS:
        lines.append(f"| {METRIC_NAMES[metric]} | " + " | ".join(_cell(r, metric) for r in runs) + " |")
    lines.append("| Test videos | " + " | ".join(str(r.metrics.get("n_test", "?")) for r in runs) + " |")
    lines.append("| Seeds | " + " | ".join(str(r.metrics.get("seeds", 1)) for r in runs) + " |")
    if any(r.metrics.get("folds", 1) > 1 for r in runs):
        lines.append("| Folds x repeats | " + " | ".join(
            f"{r.metrics.get('folds', 1)} x {r.metrics.get('repeats', 1)}" for r in runs) + " |")
    stores = sorted({r.metrics.get("store", "?") for r in runs})
    encoders = sorted({str(r.metrics.get("encoder")) for r in runs})
    notes = [f"Store: {', '.join(stores)}; encoder: {', '.join(encoders)}."]
    if len(stores) > 1:
        notes.append("**Warning:** these runs come from different stores; their figures are not comparable.")
    if len({tuple(r.metrics.get("label_names", [])) for r in runs}) > 1:
        notes.append("**Warning:** these runs have different label sets.")
    text = "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
    paired = paired_table(runs, cols)
    return text + ("\n" + paired if paired else ""), runs


def paired_comparisons(runs: Sequence[Run], refused: list[dict] | None = None) -> list[dict]:
    """Every pair of runs of one store evaluated the same way: mean accuracy difference and
    paired test over the test videos. Pairs of one store evaluated differently go to
    ``refused`` (``{"a", "b", "reason"}``) instead of being paired on the videos they share."""
    units = {i: read_units(Path(r.path) / UNITS_NAME) for i, r in enumerate(runs) if (Path(r.path) / UNITS_NAME).is_file()}
    out = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            if i not in units or j not in units or runs[i].metrics.get("store") != runs[j].metrics.get("store"):
                continue
            ok, why = comparable(units[i], units[j])
            if not ok:
                if refused is not None:
                    refused.append({"a": i, "b": j, "reason": why})
                continue
            ids = sorted(units[i].correct)
            res = paired_bootstrap(np.array([units[i].correct[v] for v in ids]),
                                   np.array([units[j].correct[v] for v in ids]))
            out.append({"a": i, "b": j, "n": res.n, "mean_diff": res.mean_diff, "ci": (res.ci_low, res.ci_high),
                        "p_value": res.p_value, "significant": res.significant,
                        "evaluations": units[i].evaluations})
    return out


def paired_table(runs: Sequence[Run], cols: Sequence[str]) -> str:
    refused: list[dict] = []
    rows = paired_comparisons(runs, refused)
    lines: list[str] = []
    if rows:
        lines += ["## Paired comparisons", "",
                  "Accuracy of A minus accuracy of B over the test videos (one unit per video: each run's "
                  "correctness on it averaged over its seeds and repeats); 95% paired-bootstrap interval over "
                  "videos and two-sided p-value (10,000 resamples).", "",
                  "| A | B | videos | mean difference | 95% interval | p | significant (p < 0.05) |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {cols[r['a']]} | {cols[r['b']]} | {r['n']} | "
                         f"{r['mean_diff']:+.4f} | [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | {r['p_value']:.4f} | "
                         f"{'**yes**' if r['significant'] else 'no'} |")
    if refused:
        lines += ([] if lines else ["## Paired comparisons"]) + ["",
                  "**Not compared** (runs of this store evaluated on different folds or splits: a paired test "
                  "needs every video tested in the same place by both):", ""]
        lines += [f"* {cols[r['a']]} vs {cols[r['b']]}: {r['reason']}" for r in refused]
    return "\n".join(lines) + "\n" if lines else ""


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (Markdown) and ``out`` with suffix ``.png`` (bar chart)."""
    out = Path(out)
    text, runs = build_report(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    text = f"# Results\n\n{text}\n![results]({png.name})\n"
    atomic_write_bytes(out, text.encode("utf-8"))
    means = np.array([[r.metrics[m] for r in runs] for m in SCALARS])
    stds = np.array([[r.metrics.get(m + "_std", 0.0) for r in runs] for m in SCALARS])
    plot_report(unique_columns(runs), [METRIC_NAMES[m] for m in SCALARS], means, stds, png)
    return out, png
