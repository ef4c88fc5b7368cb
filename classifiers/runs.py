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
import logging
import pickle
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vstore import Store
from vstore.csvsafe import safe_row
from vstore.errors import VStoreError
from vstore.fsutil import TMP_PREFIX, fsync_file, inside, replace_dir
from vstore.segment import file_sha256

from .config import TrainConfig
from .models import ModelConfig
from .plots import plot_confusion, plot_curves

log = logging.getLogger(__name__)

RUN_FORMAT = "vstore-run"
FILES = ("metrics.json", "history.json", "curves.png", "confusion.png", "predictions.csv", "model.pt")


class RunError(VStoreError):
    """A run directory that is missing, incomplete or unsafe."""


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


def check_out_dir(out: Path) -> None:
    """``--out`` may be new, empty or an earlier run; anything else is not ours to replace."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise RunError(f"--out {out} exists and is not a vstore run (no metrics.json); refusing to replace "
                       "it: choose a new --out")


def save_run(out_dir: str | Path, cfg: TrainConfig, metrics: dict[str, Any], history: list[dict[str, Any]],
             model_state: Optional[dict[str, torch.Tensor]], model_cfg: Optional[ModelConfig], store: Store,
             test_probs: np.ndarray, test_ids: list[str], extra_files: Optional[dict[str, bytes]] = None) -> Path:
    """Write the run into a fresh directory beside ``out_dir``, then swap it in: ``out_dir``
    is the old run or the new one, whole, whenever the process dies. ``metrics.json`` records
    a run id and the SHA-256 of every other file, which ``load_run`` checks."""
    out = Path(out_dir)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for leftover in out.parent.glob(f"{TMP_PREFIX}run-{out.name}-*"):  # of a train killed while saving
        shutil.rmtree(leftover, ignore_errors=True)
    work = out.parent / f"{TMP_PREFIX}run-{out.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    run_id = uuid.uuid4().hex
    try:
        names = metrics["label_names"]
        (work / "history.json").write_bytes(_json_bytes(history))
        if history:
            plot_curves(history, work / "curves.png", f"{cfg.run_name} on {Path(store.path).name}")
        plot_confusion(metrics["confusion_matrix"], names, work / "confusion.png",
                       f"{cfg.run_name}: F1 micro {metrics['f1_micro']:.3f}" + (" (all seeds)" if cfg.seeds > 1 else ""))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "label", "predicted"] + [f"p_{n}" for n in names])
        y = store.label_indices(test_ids)
        for vid, t, p in zip(test_ids, y, test_probs):
            w.writerow(safe_row([vid, names[t], names[int(p.argmax())]] + [f"{x:.5f}" for x in p]))
        (work / "predictions.csv").write_bytes(buf.getvalue().encode("utf-8"))
        checkpoint = {
            "format": RUN_FORMAT, "format_version": 3, "run_id": run_id,
            "train_config": asdict(cfg),
            "model_config": asdict(model_cfg) if model_cfg else None,
            "label_names": list(names),
            "store": str(Path(store.path).resolve()),
            "encoder": store.encoder,
            "sampling": store.manifest.store_sampling,  # how the training videos' frames were sampled
            "build": store.manifest.build,
            "state_dict": {k: v.detach().cpu() for k, v in (model_state or {}).items()},
        }
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        (work / "model.pt").write_bytes(buf.getvalue())
        for name, data in (extra_files or {}).items():  # names chosen by the code (test_units.csv), never by input
            (work / Path(name).name).write_bytes(data)
        files = {p.name: file_sha256(p) for p in sorted(work.iterdir())}
        metrics["run"] = {"id": run_id, "files": files}
        (work / "metrics.json").write_bytes(_json_bytes(metrics))
        for p in work.iterdir():
            fsync_file(p)
        replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    checkpoint: Optional[dict[str, Any]] = None

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.metrics["config"])


def _refusal(e: BaseException) -> str:
    """What torch's refusal says about the payload, without its advice to load unsafely."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if "Unsupported global" in line or "Unsupported operand" in line), None)
    if detail is None:
        detail = next((line for line in lines if "weights_only" not in line and "trust" not in line.lower()),
                      type(e).__name__)
    return detail[:200]


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``model.pt`` through ``torch.load(weights_only=True)``: tensors and plain containers
    only; anything else (a pickle payload) is refused, never executed."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError) as e:
        raise RunError(f"{path} is refused by weights_only loading: it holds more than tensors and plain "
                       f"containers ({_refusal(e)}); do not load it otherwise, retrain with `vstore train`") from None
    if not isinstance(ck, dict) or ck.get("format") != RUN_FORMAT:
        raise RunError(f"{path} is not a vstore model checkpoint")
    mc = ck.get("model_config")
    version = ck.get("format_version", 1)
    if version < 2 and isinstance(mc, dict) and mc.get("model") == "transformer":
        mc["model"] = "transformer-reference"  # version 1's transformer is today's transformer-reference
        if isinstance(ck.get("train_config"), dict):
            ck["train_config"]["model"] = "transformer-reference"
    if version < 3 and isinstance(mc, dict):
        mc.setdefault("linear_path", False)  # version 2's transformer had no linear part
    return ck


def _check_files(path: Path, metrics: dict[str, Any]) -> None:
    """The run's files are the ones its metrics.json lists, byte for byte."""
    record = metrics.get("run")
    if record is None:  # a run saved before run ids existed
        log.warning("%s predates run ids; its files cannot be checked against each other", path)
        return
    redo = f"rerun `vstore train ... --out {path}`"
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise RunError(f"{path}/metrics.json has a damaged run record; {redo}")
    listed = record["files"]
    for name in FILES:
        if name == "metrics.json":
            continue
        p = inside(path, name, "run file")
        if name not in listed:
            if p.exists():
                raise RunError(f"{path}: {name} is not part of this run (left by another); {redo}")
            continue
        if not p.is_file() or file_sha256(p) != listed[name]:
            raise RunError(f"{path}: {name} {'is missing' if not p.exists() else 'is not the one this run wrote'} "
                           f"(files of different runs mixed, e.g. a train killed while saving); {redo}")


def load_run(path: str | Path, with_checkpoint: bool = False, device: str | torch.device = "cpu") -> Run:
    path = Path(path)
    metrics_path = inside(path, "metrics.json", "run file")
    if not metrics_path.is_file():
        raise RunError(f"{path} is not a vstore run directory (no metrics.json); create one with "
                       f"`vstore train STORE --out {path}`")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        for key in ("model", "mixup", "accuracy", "f1_micro", "f1_macro", "label_names"):
            metrics[key]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RunError(f"{metrics_path} is damaged or not from vstore ({type(e).__name__}: {str(e)[:200]})") from None
    _check_files(path, metrics)
    run = Run(path, metrics)
    if with_checkpoint:
        if not (path / "model.pt").is_file():
            raise RunError(f"{path} has no model.pt")
        run.checkpoint = load_checkpoint(path / "model.pt", device)
        want = (metrics.get("run") or {}).get("id")
        if want is not None and run.checkpoint.get("run_id") != want:
            raise RunError(f"{path}/model.pt belongs to another run than metrics.json; rerun `vstore train`")
    return run
