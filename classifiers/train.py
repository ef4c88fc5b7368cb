"""Training and evaluation of the three classifiers (and the kNN / zero-shot baselines),
from a store's stored split to a run directory (see ``classifiers.runs``)."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vstore import Store
from vstore.errors import SplitError
from vstore.split import load_split

from .config import BASELINES, TrainConfig
from .data import SplitData, load_split_data
from .metrics import aggregate_seeds, classification_metrics
from .mixup import Mixup, mix_targets, soft_cross_entropy
from .models import ModelConfig, build_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    from encoders.base import resolve_device as _resolve
    return _resolve(name)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


@dataclass
class SeedResult:
    seed: int
    history: list[dict[str, Any]]
    model: nn.Module
    epoch_seconds: list[float] = field(default_factory=list)  # training time per epoch, evaluation excluded


@torch.no_grad()
def predict_proba(model: nn.Module, data: SplitData, batch_size: int = 256, amp: bool = False) -> np.ndarray:
    """(V, C) class probabilities for every video of ``data``, in its order."""
    model.eval()
    out = torch.empty(len(data), model.cfg.n_classes)
    for idx, batch in data.batches(batch_size):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=amp and data.device.type == "cuda"):
            logits = model(batch)
        out[idx.cpu()] = torch.softmax(logits.float(), dim=-1).cpu()
    return out.numpy()


def evaluate(model: nn.Module, data: SplitData, label_names: list[str], amp: bool = False) -> dict[str, Any]:
    probs = predict_proba(model, data, amp=amp)
    y = data.y.cpu().numpy()
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return {"loss": loss, **classification_metrics(y, probs.argmax(1), label_names), "probabilities": probs}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    visual = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    groups = [{"params": rest, "lr": cfg.lr}]
    if visual:
        groups.append({"params": visual, "lr": cfg.encoder_lr})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data: SplitData, cfg: TrainConfig,
                generator: torch.Generator, mixup: Optional[Mixup]):
    """One epoch as a generator of per-step losses (the hot loop: tensor slicing only).
    AMP on CUDA is bfloat16 autocast, which needs no gradient scaler."""
    model.train()
    use_amp = cfg.amp and data.device.type == "cuda"
    autocast = (lambda: torch.autocast(data.device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    onehot = F.one_hot(data.y, model.cfg.n_classes).float()  # (V, C), gathered with the batches
    for idx, batch in data.batches(cfg.batch_size, shuffle=generator, extra={"targets": onehot}):
        mix = mixup.sample(len(idx), data.device) if mixup is not None else None
        targets = mix_targets(batch.pop("targets"), mix)  # (B, C)
        with autocast():
            logits = model(batch, mix)  # (B, C)
        loss = soft_cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield loss.detach()


def train_seed(seed: int, cfg: TrainConfig, model_cfg: ModelConfig, train: SplitData, evalset: SplitData,
               eval_name: str, label_names: list[str], encoder_factory=None, progress: bool = True) -> SeedResult:
    gen = seed_everything(seed)
    encoder = encoder_factory() if encoder_factory else None
    model = build_model(model_cfg, encoder).to(train.device)
    opt = make_optimizer(model, cfg)
    mixup = Mixup(cfg.alpha, seed=seed) if cfg.mixup else None
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    step, running, last_f1 = 0, [], float("nan")

    def do_eval(epoch: int) -> None:
        nonlocal running, last_f1
        m = evaluate(model, evalset, label_names, amp=cfg.amp)
        model.train()
        last_f1 = m["f1_micro"]
        history.append({"seed": seed, "epoch": epoch, "step": step, "split": eval_name,
                        "train_loss": float(torch.stack(running).mean()) if running else float("nan"),
                        "eval_loss": m["loss"], "eval_accuracy": m["accuracy"],
                        "eval_f1_micro": m["f1_micro"], "eval_f1_macro": m["f1_macro"]})
        running = []

    for epoch in range(1, cfg.epochs + 1):
        bar = tqdm(total=steps_per_epoch, desc=f"{cfg.run_name} seed {seed} epoch {epoch}/{cfg.epochs}",
                   unit="step", leave=False, dynamic_ncols=True,
                   disable=None if progress else True)  # None: no per-epoch bars in logs (not a terminal)
        t0, eval_time = time.perf_counter(), 0.0
        for loss in train_steps(model, opt, train, cfg, gen, mixup):
            step += 1
            running.append(loss)
            bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0:
                te = time.perf_counter()
                do_eval(epoch)
                eval_time += time.perf_counter() - te
            if bar.n % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", f1=f"{last_f1:.3f}", refresh=False)
        epoch_seconds.append(time.perf_counter() - t0 - eval_time)
        if not cfg.eval_every or (epoch == cfg.epochs and (not history or history[-1]["step"] != step)):
            do_eval(epoch)
        bar.set_postfix(loss=f"{float(loss):.3f}", f1=f"{last_f1:.3f}")
        bar.close()
    return SeedResult(seed, history, model, epoch_seconds)


def _baseline(store: Store, cfg: TrainConfig, train_ids: list[str], test_ids: list[str]) -> np.ndarray:
    if cfg.model == "knn":
        from .knn import knn_predict
        return knn_predict(store, train_ids, test_ids, k=cfg.k, level=cfg.level)
    from .zeroshot import zero_shot_predict
    return zero_shot_predict(store, test_ids, prompt=cfg.prompt)


def run_training(store_path: str | Path, cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train (or evaluate a baseline) on the store's split; write the run into ``out_dir``."""
    from .runs import check_out_dir
    check_out_dir(Path(out_dir))  # before training, not after
    with Store.open(store_path) as store:
        return _run_training(store, store_path, cfg, out_dir, progress)


def _run_training(store: Store, store_path: str | Path, cfg: TrainConfig, out_dir: str | Path,
                  progress: bool) -> dict[str, Any]:
    from .runs import save_run
    split = load_split(store_path)
    ids = set(store.videos.ids)
    train_ids = [v for v in store.videos.ids if split.assignment.get(v) == "train"]
    test_ids = [v for v in store.videos.ids if split.assignment.get(v) == "test"]
    val_ids = [v for v in store.videos.ids if split.assignment.get(v) == "val"]
    if not test_ids or not train_ids:
        raise SplitError(f"the split of {store_path} has {len(train_ids)} train and {len(test_ids)} test videos; "
                         "rerun `vstore split`")
    missing = sum(1 for v in split.assignment if v not in ids)
    if missing:
        log.warning("%d video(s) of the split are no longer in the store", missing)
    new = sum(1 for v, l in zip(store.videos.ids, store.videos.labels) if l and v not in split.assignment)
    if new:
        log.warning("%d labelled video(s) were added after the split and are not used; rerun `vstore split`", new)
    label_names = store.label_names
    y_test = store.label_indices(test_ids)
    t0 = time.perf_counter()

    if cfg.model in BASELINES:
        probs = _baseline(store, cfg, train_ids, test_ids)
        m = classification_metrics(y_test, probs.argmax(1), label_names)
        metrics = _metrics_doc(cfg, [m], label_names, store, len(train_ids), test_ids, probs, time.perf_counter() - t0)
        save_run(out_dir, cfg, metrics, history=[], model_state=None, model_cfg=None, store=store,
                 test_probs=probs, test_ids=test_ids)
        return metrics

    device = resolve_device(cfg.device)
    need_images = cfg.model == "random-frame" and (cfg.mixup or cfg.finetune)
    load = dict(need_images=need_images, max_frames=cfg.max_frames,
                memory_budget=cfg.memory_budget_mb * 2**20 if cfg.memory_budget_mb else None)
    train = load_split_data(store, train_ids, cfg.model, device, **load)
    test = load_split_data(store, test_ids, cfg.model, device, **load)
    evalset, eval_name = (load_split_data(store, val_ids, cfg.model, device, **load), "val") if val_ids else (test, "test")
    T = int(store.videos.n_frames.max()) if cfg.max_frames is None else cfg.max_frames
    model_cfg = ModelConfig(model=cfg.model, dim=int(store.dim), n_classes=len(label_names), max_frames=T,
                            layers=cfg.layers, finetune=cfg.finetune)
    encoder_factory = None
    if need_images:
        from encoders.registry import encoder_for_store
        encoder_factory = lambda: encoder_for_store(store.encoder, device=str(device))  # noqa: E731
    per_seed, history, probs0, first = [], [], None, None
    for seed in range(cfg.seeds):
        r = train_seed(seed, cfg, model_cfg, train, evalset, eval_name, label_names, encoder_factory, progress)
        m = evaluate(r.model, test, label_names, amp=cfg.amp)
        probs = m.pop("probabilities")
        m.pop("loss")
        m["epoch_seconds"] = r.epoch_seconds
        per_seed.append(m)
        history += r.history
        if seed == 0:
            probs0, first = probs, r.model
        log.info("%s seed %d: accuracy %.3f, F1 micro %.3f", cfg.run_name, seed, m["accuracy"], m["f1_micro"])
    metrics = _metrics_doc(cfg, per_seed, label_names, store, len(train_ids), test_ids, probs0, time.perf_counter() - t0)
    save_run(out_dir, cfg, metrics, history=history, model_state=first.state_dict(), model_cfg=model_cfg,
             store=store, test_probs=probs0, test_ids=test_ids)
    return metrics


def _metrics_doc(cfg: TrainConfig, per_seed: list[dict], label_names: list[str], store: Store, n_train: int,
                 test_ids: list[str], probs: np.ndarray, seconds: float) -> dict[str, Any]:
    agg = aggregate_seeds(per_seed)
    return {
        "model": cfg.model, "mixup": cfg.mixup, "seeds": cfg.seeds, "name": cfg.run_name,
        **{k: agg[k] for k in ("accuracy", "f1_micro", "f1_macro", "accuracy_std", "f1_micro_std", "f1_macro_std")},
        "per_seed": per_seed, "per_class": agg["per_class"], "confusion_matrix": agg["confusion_matrix"],
        "label_names": label_names, "n_train": n_train, "n_test": len(test_ids),
        "store": str(Path(store.path).resolve()), "store_generation": store.generation,
        "encoder": (store.encoder or {}).get("name"), "sampling": store.manifest.store_sampling,
        "config": asdict(cfg), "seconds": seconds,
    }
