"""Figures of a run (curves, confusion matrix), of a report (bar chart) and the embedding map. Headless (Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss, accuracy and F1 against training step, one colour per seed. A cross-validated
    run draws each fold as its own line (steps restart at every fold), in its seed's colour."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    seeds = sorted({h["seed"] for h in history})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, seed in enumerate(seeds):
        c = colours[i % len(colours)]
        tag = f" (seed {seed})" if len(seeds) > 1 else ""
        folds = sorted({(h.get("repeat", 0), h.get("fold", 0)) for h in history if h["seed"] == seed})
        for j, fold in enumerate(folds):
            hs = [h for h in history if h["seed"] == seed and (h.get("repeat", 0), h.get("fold", 0)) == fold]
            steps = [h["step"] for h in hs]
            first = j == 0  # one legend entry per seed
            axes[0].plot(steps, [h["train_loss"] for h in hs], color=c, label=("train" + tag) if first else None)
            axes[0].plot(steps, [h["eval_loss"] for h in hs], "--", color=c,
                         label=(hs[0]["split"] + tag) if first else None)
            axes[1].plot(steps, [h["eval_accuracy"] for h in hs], color=c, label=(tag or "accuracy") if first else None)
            axes[2].plot(steps, [h["eval_f1_micro"] for h in hs], color=c, label=("F1 micro" + tag) if first else None)
            axes[2].plot(steps, [h["eval_f1_macro"] for h in hs], ":", color=c,
                         label=("F1 macro" + tag) if first else None)
    split = history[0]["split"] if history else "eval"
    for ax, name in zip(axes, ("loss", f"{split} accuracy", f"{split} F1")):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_ylim(0, 1.02)
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> None:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, int(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_report(columns: list[str], metrics: list[str], means: np.ndarray, stds: np.ndarray, path: Path) -> None:
    """Grouped bars: one group per metric, one bar per run (with std error bars)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(columns) * len(metrics) / 2), 4.6))
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(metrics))
    for i, col in enumerate(columns):
        ax.bar(x + i * width - 0.4 + width / 2, means[:, i], width, yerr=stds[:, i], capsize=2, label=col)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(columns)), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


UNLABELLED_COLOUR = "#9a9a9a"
MAX_LEGEND_LABELS = 20


def label_colours(names: Sequence[str]) -> dict[str, Any]:
    """One colour per label (tab10, tab20, then evenly spaced hues)."""
    n = len(names)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "hsv")
    return {name: cmap(i if n <= 20 else i / n) for i, name in enumerate(names)}


def plot_embedding_map(xy: np.ndarray, labels: Sequence[Optional[str]], is_test: Sequence[bool],
                       misclassified: Sequence[Optional[bool]], path: Path, title: str,
                       run_name: Optional[str] = None) -> None:
    """Scatter of (V, 2) map coordinates: colour = label (unlabelled grey), test videos ringed
    in black, the ones ``run_name`` misclassified crossed in red."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    size = float(np.clip(6000 / max(n, 1), 3, 60))
    names = sorted({lab for lab in labels if lab})
    colours = label_colours(names)
    lab = np.array([x or "" for x in labels], dtype=object)
    test = np.asarray(is_test, dtype=bool)
    wrong = np.array([bool(w) for w in misclassified], dtype=bool)
    fig, ax = plt.subplots(figsize=(9.5, 7))
    none = lab == ""
    if none.any():
        ax.scatter(xy[none, 0], xy[none, 1], s=size, c=UNLABELLED_COLOUR, alpha=0.6, linewidths=0,
                   label=f"unlabelled ({int(none.sum())})")
    counts = {name: int((lab == name).sum()) for name in names}
    shown = sorted(names, key=lambda nm: -counts[nm])[:MAX_LEGEND_LABELS]
    for name in names:
        sel = lab == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colours[name], alpha=0.85, linewidths=0,
                   label=f"{name} ({counts[name]})" if name in shown else None)
    if test.any():
        ax.scatter(xy[test, 0], xy[test, 1], s=size * 2.2, facecolors="none", edgecolors="black", linewidths=0.9,
                   label=f"test video ({int(test.sum())})")
    if run_name is not None:
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=size * 3, marker="x", c="red", linewidths=1.6,
                   label=f"misclassified by {run_name} ({int(wrong.sum())})")
    if len(names) > len(shown):
        ax.plot([], [], " ", label=f"... {len(names) - len(shown)} more labels")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
