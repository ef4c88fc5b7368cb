"""Classification metrics in the reference study's terms (accuracy, F1 micro/macro), per
class, and the confusion matrix; plus aggregation over seeds."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_micro": float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


SCALARS = ("accuracy", "f1_micro", "f1_macro")


def aggregate_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and (population) standard deviations of the scalar metrics over seeds; per-class
    figures averaged; confusion matrices summed."""
    out: dict[str, Any] = {}
    for k in SCALARS:
        vals = np.array([m[k] for m in per_seed], dtype=np.float64)
        out[k] = float(vals.mean())
        out[f"{k}_std"] = float(vals.std())
    names = list(per_seed[0]["per_class"])
    out["per_class"] = {n: {k: float(np.mean([m["per_class"][n][k] for m in per_seed]))
                            for k in ("precision", "recall", "f1")} | {"support": per_seed[0]["per_class"][n]["support"]}
                        for n in names}
    out["confusion_matrix"] = np.sum([np.array(m["confusion_matrix"]) for m in per_seed], axis=0).tolist()
    return out
