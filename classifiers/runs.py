"""A run directory: everything ``vstore train`` produced, and loading it back safely.

Files: ``metrics.json``, ``history.json``, ``curves.png``, ``confusion.png``,
``predictions.csv`` (test videos: true and predicted label, probabilities) and ``model.pt``
(weights and the full configs; loaded with ``torch.load(weights_only=True)``, so a file
carrying a pickle payload is refused).
"""
from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vstore import Store
from vstore.errors import VStoreError
from vstore.fsutil import atomic_write_bytes

from .config import TrainConfig
from .models import ModelConfig
from .plots import plot_confusion, plot_curves

RUN_FORMAT = "vstore-run"
FILES = ("metrics.json", "history.json", "curves.png", "confusion.png", "predictions.csv", "model.pt")


class RunError(VStoreError):
    """A run directory that is missing, incomplete or unsafe."""


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def save_run(out_dir: str | Path, cfg: TrainConfig, metrics: dict[str, Any], history: list[dict[str, Any]],
             model_state: Optional[dict[str, torch.Tensor]], model_cfg: Optional[ModelConfig], store: Store,
             test_probs: np.ndarray, test_ids: list[str]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = metrics["label_names"]
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "history.json", history)
    if history:
        plot_curves(history, out / "curves.png", f"{cfg.run_name} on {Path(store.path).name}")
    plot_confusion(metrics["confusion_matrix"], names, out / "confusion.png",
                   f"{cfg.run_name}: F1 micro {metrics['f1_micro']:.3f}" + (" (all seeds)" if cfg.seeds > 1 else ""))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "label", "predicted"] + [f"p_{n}" for n in names])
    y = store.label_indices(test_ids)
    for vid, t, p in zip(test_ids, y, test_probs):
        w.writerow([vid, names[t], names[int(p.argmax())]] + [f"{x:.5f}" for x in p])
    atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode("utf-8"))
    checkpoint = {
        "format": RUN_FORMAT, "format_version": 1,
        "train_config": asdict(cfg),
        "model_config": asdict(model_cfg) if model_cfg else None,
        "label_names": list(names),
        "store": str(Path(store.path).resolve()),
        "encoder": store.encoder,
        "build": store.manifest.build,
        "state_dict": {k: v.detach().cpu() for k, v in (model_state or {}).items()},
    }
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write_bytes(out / "model.pt", buf.getvalue())
    return out


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    checkpoint: Optional[dict[str, Any]] = None

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.metrics["config"])


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``model.pt`` through ``torch.load(weights_only=True)``: tensors and plain containers
    only; anything else (a pickle payload) is refused, never executed."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise RunError(f"{path} is not a safe vstore checkpoint (refused by weights_only loading: "
                       f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != RUN_FORMAT:
        raise RunError(f"{path} is not a vstore model checkpoint")
    return ck


def load_run(path: str | Path, with_checkpoint: bool = False, device: str | torch.device = "cpu") -> Run:
    path = Path(path)
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise RunError(f"{path} is not a vstore run directory (no metrics.json); create one with "
                       f"`vstore train STORE --out {path}`")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        for key in ("model", "mixup", "accuracy", "f1_micro", "f1_macro", "label_names"):
            metrics[key]
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{metrics_path} is damaged or not from vstore ({e})") from None
    run = Run(path, metrics)
    if with_checkpoint:
        if not (path / "model.pt").is_file():
            raise RunError(f"{path} has no model.pt")
        run.checkpoint = load_checkpoint(path / "model.pt", device)
    return run
