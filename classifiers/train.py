"""Training and evaluation of the three classifiers (and the kNN / zero-shot baselines),
from a store's stored split to a run directory (see ``classifiers.runs``)."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
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
from .data import SplitData, load_split_data, pooled_data
from .folds import UNITS_NAME, stratified_holdout, unit_rows_csv
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
    """The recipe's optimiser over the trainable parameters (a frozen part, such as the
    ``transformer``'s fitted linear part, is left out: no update, no weight decay)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    visual = [p for n, p in trainable if n.startswith("visual.")]
    rest = [p for n, p in trainable if not n.startswith("visual.")]
    groups = [{"params": rest, "lr": cfg.lr}]
    if visual:
        groups.append({"params": visual, "lr": cfg.encoder_lr})
    if cfg.recipe == "reference":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Per-step learning-rate schedule: constant, or cosine decay to 0 over ``total_steps``."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps))))


@torch.no_grad()
def feature_stats(data: SplitData) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) mean and std of the features a model standardises: pooled embeddings, key-frame
    embeddings, or every real frame (streamed blocks included), in float64."""
    if "pooled" in data.tensors or "key_embedding" in data.tensors:
        x = data.tensors.get("pooled", data.tensors.get("key_embedding")).double()  # (V, D)
        return x.mean(0).float(), x.std(0, unbiased=False).float()
    s = s2 = n = None
    for _, batch in data.batches(256):
        w = batch["valid"].double().unsqueeze(-1)  # (B, T, 1)
        f = batch["frames"].double() * w  # (B, T, D)
        bs, bs2, bn = f.sum((0, 1)), (f * f).sum((0, 1)), w.sum()
        s, s2, n = (bs, bs2, bn) if s is None else (s + bs, s2 + bs2, n + bn)
    mean = s / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().float()


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data: SplitData, cfg: TrainConfig,
                generator: torch.Generator, mixup: Optional[Mixup], scheduler=None):
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
        if scheduler is not None:
            scheduler.step()
        yield loss.detach()


@dataclass
class LinearPart:
    """What the ``transformer``'s linear part is trained on: exactly what ``--model linear``
    would be given for the same split or fold (pooled frames of every training video, its
    evaluation set, its recipe)."""

    cfg: TrainConfig  # the run's config with model "linear" and the linear epochs
    model_cfg: ModelConfig
    train: SplitData  # (V, D) pooled
    evalset: SplitData
    eval_name: str  # val (its best epoch kept) | test (curves only)
    stats: Optional[tuple[torch.Tensor, torch.Tensor]]  # (D,) mean and std of the pooled training features


def train_seed(seed: int, cfg: TrainConfig, model_cfg: ModelConfig, train: SplitData, evalset: SplitData,
               eval_name: str, label_names: list[str], encoder_factory=None, progress: bool = True,
               stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
               linear_part: Optional[LinearPart] = None) -> SeedResult:
    """Train one seed. ``stats``: (D,) mean and std for a model with ``standardize``. With
    ``cfg.keep_best`` and a validation ``evalset``, the weights of the evaluation with the
    lowest validation loss are the ones returned.

    A model with a linear part (``model_cfg.linear_path``) is trained in two stages: the linear
    part first, as ``--model linear`` (``linear_part``), then frozen while the rest trains; the
    weights before the second stage (the linear part alone) are a candidate for the best epoch."""
    gen = seed_everything(seed)
    encoder = encoder_factory() if encoder_factory else None
    model = build_model(model_cfg, encoder).to(train.device)
    if model_cfg.standardize and stats is not None:
        model.scale.set(stats[0].to(train.device), stats[1].to(train.device))
    if model_cfg.linear_path:
        if linear_part is None:
            raise ValueError("a model with a linear part needs the pooled data to train it (linear_part)")
        lp = linear_part
        lin = train_seed(seed, lp.cfg, lp.model_cfg, lp.train, lp.evalset, lp.eval_name, label_names,
                         progress=progress, stats=lp.stats)
        model.linear.load_state_dict(lin.model.state_dict())
        model.linear.requires_grad_(False)
        log.info("%s seed %d: linear part trained (%s F1 micro %.3f); training the temporal part",
                 cfg.run_name, seed, lp.eval_name, lin.history[-1]["eval_f1_micro"] if lin.history else float("nan"))
        gen = seed_everything(seed)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    scheduler = make_scheduler(opt, cfg, steps_per_epoch * cfg.epochs)
    mixup = Mixup(cfg.alpha, seed=seed) if cfg.mixup else None
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    step, last_f1 = 0, float("nan")
    # the epoch's training loss, summed on the device: one tensor, not one kept per step (a
    # list of per-step loss tensors grew the heap by ~270 KB a step on CPU: 4 GB over an epoch
    # of a 500k-video store) and no host sync per step on a GPU
    running, running_n = torch.zeros((), device=train.device), 0
    best: dict[str, Any] = {"loss": float("inf"), "state": None}

    def do_eval(epoch: int) -> None:
        nonlocal running_n, last_f1
        m = evaluate(model, evalset, label_names, amp=cfg.amp)
        model.train()
        last_f1 = m["f1_micro"]
        if cfg.keep_best and eval_name == "val" and m["loss"] < best["loss"]:
            best.update(loss=m["loss"], step=step, state={k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append({"seed": seed, "epoch": epoch, "step": step, "split": eval_name,
                        "train_loss": float(running) / running_n if running_n else float("nan"),
                        "eval_loss": m["loss"], "eval_accuracy": m["accuracy"],
                        "eval_f1_micro": m["f1_micro"], "eval_f1_macro": m["f1_macro"]})
        running.zero_()
        running_n = 0

    if model_cfg.linear_path and cfg.keep_best and eval_name == "val":  # epoch 0: the linear part alone
        m0 = evaluate(model, evalset, label_names, amp=cfg.amp)
        best.update(loss=m0["loss"], step=0, state={k: v.detach().clone() for k, v in model.state_dict().items()})
    for epoch in range(1, cfg.epochs + 1):
        bar = tqdm(total=steps_per_epoch, desc=f"{cfg.run_name} seed {seed} epoch {epoch}/{cfg.epochs}",
                   unit="step", leave=False, dynamic_ncols=True,
                   disable=None if progress else True)  # None: no per-epoch bars in logs (not a terminal)
        t0, eval_time = time.perf_counter(), 0.0
        for loss in train_steps(model, opt, train, cfg, gen, mixup, scheduler):
            step += 1
            running += loss
            running_n += 1
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
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        log.info("%s seed %d: kept the weights of step %d (lowest validation loss %.4f)%s",
                 cfg.run_name, seed, best["step"], best["loss"],
                 " (the linear part alone)" if model_cfg.linear_path and best["step"] == 0 else "")
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
    if not train_ids or (not test_ids and not (cfg.folds > 1 and cfg.cv_pool == "all")):
        raise SplitError(f"the split of {store_path} has {len(train_ids)} train and {len(test_ids)} test videos; "
                         "rerun `vstore split`")
    missing = sum(1 for v in split.assignment if v not in ids)
    if missing:
        log.warning("%d video(s) of the split are no longer in the store", missing)
    new = sum(1 for v, l in zip(store.videos.ids, store.videos.labels) if l and v not in split.assignment)
    if new:
        log.warning("%d labelled video(s) were added after the split and are not used; rerun `vstore split`", new)
    label_names = store.label_names
    t0 = time.perf_counter()

    if cfg.folds > 1:
        return _run_folds(store, cfg, out_dir, train_ids + val_ids, test_ids, progress, t0)
    r = _train_and_test(store, cfg, train_ids, val_ids, test_ids, progress)
    metrics = _metrics_doc(cfg, r.per_seed, label_names, store, len(train_ids), test_ids, r.probs[0],
                           time.perf_counter() - t0)
    save_run(out_dir, cfg, metrics, history=r.history, model_state=r.model.state_dict() if r.model else None,
             model_cfg=r.model_cfg,
             store=store, test_probs=r.probs[0], test_ids=test_ids,
             extra_files={UNITS_NAME: unit_rows_csv([(0, -1, seed, test_ids, p) for seed, p in zip(r.seeds, r.probs)],
                                                    store, label_names)})
    return metrics


@dataclass
class TrainTestResult:
    per_seed: list[dict[str, Any]]  # test metrics of each seed
    history: list[dict[str, Any]]
    probs: list[np.ndarray]  # (V_test, C) per seed
    model: nn.Module  # the first seed's
    model_cfg: Optional[ModelConfig]
    seeds: list[int] = field(default_factory=lambda: [0])  # the seed of each entry of per_seed and probs


SHUFFLE_SEED = 20_240_614  # the one fixed permutation of --shuffle-labels (the same noise for every seed)


def _shuffled(data: Optional[SplitData]) -> Optional[SplitData]:
    """``data`` with its labels permuted (the noise control ``--shuffle-labels``)."""
    if data is None:
        return None
    perm = torch.from_numpy(np.random.default_rng(SHUFFLE_SEED).permutation(len(data))).to(data.y.device)
    return replace(data, y=data.y[perm])


def _concat_pooled(a: SplitData, b: Optional[SplitData]) -> SplitData:
    if b is None:
        return a
    return SplitData(ids=a.ids + b.ids, y=torch.cat([a.y, b.y]), device=a.device,
                     tensors={"pooled": torch.cat([a.tensors["pooled"], b.tensors["pooled"]])})


def _train_and_test(store: Store, cfg: TrainConfig, train_ids: list[str], val_ids: list[str], test_ids: list[str],
                    progress: bool) -> TrainTestResult:
    """Train ``cfg.seeds`` seeds on ``train_ids`` (curves and best epoch on ``val_ids`` when
    given, else on ``cfg.holdout`` of the training videos held out when that is > 0, else
    curves only, on the test set) and evaluate each on ``test_ids``; baselines just predict."""
    label_names = store.label_names
    if cfg.model in BASELINES:
        probs = _baseline(store, cfg, train_ids, test_ids)
        m = classification_metrics(store.label_indices(test_ids), probs.argmax(1), label_names)
        return TrainTestResult([m], [], [probs], None, None)
    device = resolve_device(cfg.device)
    need_images = cfg.model == "random-frame" and (cfg.mixup or cfg.finetune)
    load = dict(need_images=need_images, max_frames=cfg.max_frames, memmap=cfg.memmap,
                memory_budget=cfg.memory_budget_mb * 2**20 if cfg.memory_budget_mb is not None else None)
    fit_ids, held_ids = train_ids, []
    if not val_ids and cfg.holdout > 0:
        labels = dict(zip(store.videos.ids, store.videos.labels))
        fit_ids, held_ids = stratified_holdout(train_ids, [labels[v] for v in train_ids], cfg.holdout)
        log.info("%s: %d of %d training videos held out as the validation part", cfg.run_name, len(held_ids),
                 len(train_ids))
    train = load_split_data(store, fit_ids, cfg.model, device, **load)
    test = load_split_data(store, test_ids, cfg.model, device, **load)
    val = load_split_data(store, val_ids, cfg.model, device, **load) if val_ids else None
    held = load_split_data(store, held_ids, cfg.model, device, **load) if held_ids else None
    if cfg.shuffle_labels:  # train and validate on noise; the test labels stay the real ones
        train, val, held = _shuffled(train), _shuffled(val), _shuffled(held)
    evalset, eval_name = (held, "val") if held is not None else (val, "val") if val is not None else (test, "test")
    T = int(store.videos.n_frames.max()) if cfg.max_frames is None else cfg.max_frames
    model_cfg = ModelConfig(model=cfg.model, dim=int(store.dim), n_classes=len(label_names), max_frames=T,
                            layers=cfg.layers, finetune=cfg.finetune, standardize=bool(cfg.standardize),
                            linear_path=cfg.linear_part)
    stats = feature_stats(train) if model_cfg.standardize else None
    linear_part = None
    if model_cfg.linear_path:  # as --model linear on this split: every training video, the split's val or test
        lin_train = _concat_pooled(pooled_data(train), pooled_data(held) if held is not None else None)
        lin_eval = pooled_data(val if val is not None else test)
        lin_cfg = replace(cfg, model="linear", epochs=cfg.linear_epochs, holdout=0.0)
        linear_part = LinearPart(lin_cfg, ModelConfig(model="linear", dim=model_cfg.dim, n_classes=model_cfg.n_classes,
                                                      standardize=model_cfg.standardize),
                                 lin_train, lin_eval, "val" if val is not None else "test",
                                 feature_stats(lin_train) if model_cfg.standardize else None)
    encoder_factory = None
    if need_images:
        from encoders.registry import encoder_for_store
        encoder_factory = lambda: encoder_for_store(store.encoder, device=str(device))  # noqa: E731
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    out = TrainTestResult([], [], [], None, model_cfg, seeds)
    for seed in seeds:
        r = train_seed(seed, cfg, model_cfg, train, evalset, eval_name, label_names, encoder_factory, progress,
                       stats=stats, linear_part=linear_part)
        m = evaluate(r.model, test, label_names, amp=cfg.amp)
        out.probs.append(m.pop("probabilities"))
        m.pop("loss")
        m["epoch_seconds"] = r.epoch_seconds
        out.per_seed.append(m)
        out.history += r.history
        if out.model is None:
            out.model = r.model
        log.info("%s seed %d: accuracy %.3f, F1 micro %.3f", cfg.run_name, seed, m["accuracy"], m["f1_micro"])
    return out


def _run_folds(store: Store, cfg: TrainConfig, out_dir: str | Path, pool_train: list[str], held_out: list[str],
               progress: bool, t0: float) -> dict[str, Any]:
    """``--folds K --repeats R``: stratified K-fold over the labelled videos (the stored
    split's test part held out, unless ``cfg.cv_pool == "all"``), every seed in every fold."""
    from .folds import stratified_folds
    from .runs import save_run
    pool = pool_train if cfg.cv_pool == "train" else sorted(pool_train + held_out)
    labels = dict(zip(store.videos.ids, store.videos.labels))
    per_fold, history, units, first = [], [], [], None
    for rep in range(cfg.repeats):
        folds = stratified_folds(pool, [labels[v] for v in pool], cfg.folds, repeat=rep)
        for k, test_ids in enumerate(folds):
            test_set = set(test_ids)
            train_ids = [v for v in pool if v not in test_set]
            test_ids = [v for v in pool if v in test_set]
            log.info("%s: repeat %d fold %d/%d (%d train, %d test)", cfg.run_name, rep, k + 1, cfg.folds,
                     len(train_ids), len(test_ids))
            r = _train_and_test(store, cfg, train_ids, [], test_ids, progress)
            for seed, m, p in zip(r.seeds, r.per_seed, r.probs):
                per_fold.append({"repeat": rep, "fold": k, "seed": seed, **m})
                units.append((rep, k, seed, test_ids, p))
            history += [{**h, "repeat": rep, "fold": k} for h in r.history]
            if first is None:
                first = r
    agg = aggregate_seeds(per_fold)
    metrics = _metrics_doc(cfg, per_fold, store.label_names, store, len(pool) - len(pool) // cfg.folds, pool,
                           units[0][4], time.perf_counter() - t0)
    metrics.update(per_fold=per_fold, per_seed=[], folds=cfg.folds, repeats=cfg.repeats, cv_pool=cfg.cv_pool,
                   n_evaluations=len(per_fold), confusion_matrix=agg["confusion_matrix"])
    save_run(out_dir, cfg, metrics, history=history,
             model_state=first.model.state_dict() if first.model is not None else None, model_cfg=first.model_cfg,
             store=store, test_probs=units[0][4], test_ids=units[0][3],
             extra_files={UNITS_NAME: unit_rows_csv(units, store, store.label_names)})
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
