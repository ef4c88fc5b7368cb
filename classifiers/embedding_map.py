"""``vstore map``: a 2-D map of a store's videos from their mean frame embeddings.

Each video is its mean frame embedding (``Store.iter_video_means``, L2-normalised by default:
CLIP compares by cosine). The map is one of

* ``pca``: the first two principal components, computed exactly and streamed: one pass
  accumulates the (D, D) covariance, a second projects; memory is one block of frames plus
  the (V, 2) output, whatever the store's size. Deterministic (eigenvector signs fixed).
* ``tsne``: scikit-learn's t-SNE on the first ``pca_dims`` principal components (the same
  streamed PCA, so memory is (V, pca_dims)), perplexity capped at (V - 1) / 3.
* ``umap``: umap-learn's UMAP on the same components, when ``umap-learn`` is installed
  (``pip install 'vstore[map]'``; never required).

``auto`` picks UMAP when umap-learn imports, else t-SNE up to ``tsne_max_videos`` videos,
else PCA; fewer than ``MIN_NONLINEAR`` videos always get PCA. The method used, and why, goes
on the plot's title and into the JSON beside it. Coordinates are shifted and scaled by one
factor into [0, 1] (``unit_square``).

With a run (``vstore train --out RUN``) the videos that run predicted are marked where it was
wrong: its ``predictions.csv`` (the stored split's test videos, seed 0), or for a
``--folds`` run the out-of-fold predictions of repeat 0, seed 0 from ``test_units.csv``.
"Wrong" is against the label the run was scored with (recorded beside each prediction).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from vstore import Store
from vstore.csvfile import read_rows, write_csv
from vstore.errors import VStoreError
from vstore.fsutil import atomic_write_json, inside
from vstore.split import SPLIT_NAME, load_split

log = logging.getLogger(__name__)

METHODS = ("auto", "umap", "tsne", "pca")
MIN_NONLINEAR = 5  # t-SNE / UMAP need a few neighbours; fewer videos get PCA
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
CSV_HEADER = ("video_id", "x", "y", "label", "split", "misclassified", "predicted")


class MapError(VStoreError):
    """A map that cannot be made (an empty store, a run of another store...)."""


@dataclass
class MapConfig:
    method: str = "auto"  # auto (umap if umap-learn imports, else tsne up to tsne_max_videos, else pca) | umap | tsne | pca
    seed: int = 0  # random state of t-SNE and UMAP (PCA is deterministic)
    normalize: bool = True  # L2-normalise each video's mean embedding first (CLIP compares by cosine)
    pca_dims: int = 50  # t-SNE and UMAP run on this many principal components (streamed; bounds memory)
    tsne_max_videos: int = 20_000  # auto without umap-learn: more videos than this get PCA (t-SNE is slow there)
    umap_max_videos: int = 1_000_000  # auto with umap-learn: more videos than this get PCA
    perplexity: float = 30.0  # t-SNE; capped at (videos - 1) / 3
    n_neighbors: int = 15  # UMAP; capped at videos - 1
    block_rows: Optional[int] = None  # frame rows per read (None: the store's 16 chunks)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown map method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.pca_dims < 2:
            raise ValueError(f"pca_dims must be >= 2, got {self.pca_dims}")
        for name in ("tsne_max_videos", "umap_max_videos", "n_neighbors"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if self.perplexity <= 0:
            raise ValueError(f"perplexity must be > 0, got {self.perplexity}")
        if self.block_rows is not None and self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")


@dataclass
class EmbeddingMap:
    """Map coordinates of every video of a store, in store order."""

    ids: list[str]
    xy: np.ndarray  # (V, 2) float32
    labels: list[Optional[str]]
    splits: list[Optional[str]]  # train | val | test | None (no split, or in none)
    method: str  # the method used: pca | tsne | umap
    reason: str  # why that method
    generation: int
    predicted: list[Optional[str]] = field(default_factory=list)  # a run's prediction, None where it made none
    scored_label: list[Optional[str]] = field(default_factory=list)  # the label that prediction was scored with
    run: Optional[dict[str, Any]] = None  # which run, and which of its predictions
    explained_variance: Optional[list[float]] = None  # pca: share of variance of each axis

    @property
    def misclassified(self) -> list[Optional[bool]]:
        """True / False for the videos the run predicted, None for the others (or without a run)."""
        if not self.predicted:
            return [None] * len(self.ids)
        return [None if p is None else p != t for p, t in zip(self.predicted, self.scored_label)]

    @property
    def title(self) -> str:
        """What the plot says about the method: e.g. "16 videos, t-SNE (auto: umap-learn is not installed)"."""
        name = METHOD_NAMES[self.method]
        return f"{len(self.ids)} videos, {name}" + ("" if self.reason == "asked for" else f" ({self.reason})")


def umap_available() -> bool:
    try:
        import umap
    except Exception:  # ImportError, or umap-learn broken against this numba / numpy
        return False
    return hasattr(umap, "UMAP")  # not a leftover folder of an uninstalled umap-learn


def choose_method(cfg: MapConfig, n_videos: int) -> tuple[str, str]:
    """(method to use, why) for ``n_videos`` videos."""
    if n_videos < MIN_NONLINEAR and cfg.method in ("auto", "tsne", "umap"):
        why = f"{n_videos} video(s): fewer than {MIN_NONLINEAR}, too few for t-SNE or UMAP"
        if cfg.method != "auto":
            log.warning("--method %s: %s; using PCA", cfg.method, why)
        return "pca", ("auto: " if cfg.method == "auto" else f"asked for {cfg.method}; ") + why
    if cfg.method == "umap":
        if not umap_available():
            raise MapError("--method umap needs umap-learn (pip install 'vstore[map]' or umap-learn); "
                           "use --method auto, tsne or pca")
        return "umap", "asked for"
    if cfg.method in ("tsne", "pca"):
        return cfg.method, "asked for"
    if umap_available():
        if n_videos <= cfg.umap_max_videos:
            return "umap", "auto: umap-learn is installed"
        return "pca", f"auto: {n_videos} videos, more than umap_max_videos ({cfg.umap_max_videos})"
    if n_videos <= cfg.tsne_max_videos:
        return "tsne", "auto: umap-learn is not installed"
    return "pca", (f"auto: umap-learn is not installed and {n_videos} videos are more than "
                   f"tsne_max_videos ({cfg.tsne_max_videos})")


def streamed_pca(store: Store, k: int, cfg: MapConfig, progress: bool = False) -> tuple[np.ndarray, list[float]]:
    """((V, k) float32 principal components of the videos' mean embeddings, share of the
    variance of each), exact, in two streamed passes over the store (see module doc)."""
    V, D = len(store.videos), int(store.dim or 0)
    k = max(1, min(k, D))
    total = np.zeros(D, dtype=np.float64)
    gram = np.zeros((D, D), dtype=np.float64)
    with tqdm(total=2 * V, desc="map: mean embeddings", unit="video", disable=not progress) as bar:
        for rows, x in store.iter_video_means(cfg.block_rows, normalize=cfg.normalize):  # x: (b, D)
            x = x.astype(np.float64)
            total += x.sum(0)
            gram += x.T @ x
            bar.update(len(rows))
        mean = total / V
        cov = gram / V - np.outer(mean, mean)  # (D, D)
        values, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][:k]
        values, W = np.clip(values[order], 0, None), vectors[:, order]  # W: (D, k)
        W *= np.where(W[np.abs(W).argmax(0), np.arange(k)] < 0, -1.0, 1.0)  # sign: largest loading positive
        out = np.zeros((V, k), dtype=np.float32)
        for rows, x in store.iter_video_means(cfg.block_rows, normalize=cfg.normalize):
            out[rows] = (x.astype(np.float64) - mean) @ W
            bar.update(len(rows))
    trace = float(np.clip(np.diag(cov), 0, None).sum())
    return out, [float(v / trace) if trace > 0 else 0.0 for v in values]


def _embed_2d(z: np.ndarray, method: str, cfg: MapConfig) -> np.ndarray:
    """(V, k) principal components -> (V, 2) with t-SNE or UMAP."""
    n = len(z)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = min(cfg.perplexity, max(1.0, (n - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=cfg.seed).fit_transform(z)
    else:
        import umap
        xy = umap.UMAP(n_components=2, n_neighbors=max(2, min(cfg.n_neighbors, n - 1)),
                       random_state=cfg.seed).fit_transform(z)
    return np.asarray(xy, dtype=np.float32)


def unit_square(xy: np.ndarray) -> np.ndarray:
    """(V, 2) coordinates shifted and scaled by one factor into [0, 1] (the longer axis spans
    it): ratios of distances are kept, and no coordinate is negative (a CSV cell starting with
    "-" would be escaped as a formula by ``vstore.csvsafe``)."""
    xy = xy.astype(np.float64) - xy.min(0)
    span = float(xy.max()) if xy.size else 0.0
    return (xy / span if span > 0 else xy).astype(np.float32)


# -- a run's predictions ----------------------------------------------------------------------
def run_predictions(run_dir: str | Path, store: Store) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """({video id: (label scored with, predicted label)}, what they are) of a run of ``store``.

    Raises ``MapError`` for a run that kept no per-video predictions or is of another store."""
    from .folds import UNITS_NAME
    from .runs import load_run
    run = load_run(run_dir)
    path = Path(run_dir)
    m = run.metrics
    folds = int(m.get("folds", 1) or 1)
    if folds > 1:
        source, what = UNITS_NAME, f"out-of-fold predictions of repeat 0, seed 0 ({folds} folds)"
    else:
        source = "predictions.csv"
        what = "test videos of the stored split" + (f" (seed 0 of {m.get('seeds')})" if m.get("seeds", 1) > 1 else "")
    file = inside(path, source, "run file")
    if not file.is_file():
        raise MapError(f"{path} keeps no per-video predictions ({source} is missing: a run from an older vstore); "
                       f"retrain it with `vstore train ... --out {path}` to mark its mistakes on the map")
    rows, _ = read_rows(file)
    preds: dict[str, tuple[str, str]] = {}
    for r in rows:
        if folds > 1 and (r.get("repeat") != "0" or r.get("seed") != "0"):
            continue
        if not r.get("id") or r.get("predicted") is None or r.get("label") is None:
            raise MapError(f"{file} is damaged (a row without id, label or predicted); retrain the run")
        preds[r["id"]] = (r["label"], r["predicted"])
    known = set(store.videos.ids)
    missing = [v for v in preds if v not in known]
    trained_on = m.get("store", "?")
    if preds and len(missing) == len(preds):
        raise MapError(f"run {path} is not of {store.path}: none of its {len(preds)} predicted videos are in this "
                       f"store (it was trained on {trained_on})")
    if missing:
        log.warning("%d of the %d videos run %s predicted are no longer in %s; they are not on the map",
                    len(missing), len(preds), path, store.path)
        preds = {v: p for v, p in preds.items() if v in known}
    if str(Path(store.path).resolve()) != trained_on:
        log.warning("run %s was trained on %s, not %s (a copy?); its predicted videos are in this store",
                    path, trained_on, Path(store.path).resolve())
    labels = dict(zip(store.videos.ids, store.videos.labels))
    relabelled = [v for v, (t, _) in preds.items() if labels.get(v) != t]
    if relabelled:
        log.warning("%d video(s) have another label in the store than when run %s scored them (e.g. %s); "
                    "mistakes are marked against the run's labels", len(relabelled), path, relabelled[0])
    return preds, {"path": str(path), "name": m.get("name"), "predictions": what, "file": source,
                   "evaluated": len(preds), "misclassified": sum(1 for t, p in preds.values() if t != p)}


# -- the map ------------------------------------------------------------------------------------
def compute_map(store: Store, cfg: Optional[MapConfig] = None, run_dir: Optional[str | Path] = None,
                progress: bool = False) -> EmbeddingMap:
    """The map of every video of ``store`` (see module doc)."""
    cfg = cfg or MapConfig()
    V = len(store.videos)
    if V == 0 or not store.dim:
        raise MapError(f"{store.path} holds no videos; build it with `vstore build VIDEOS --store {store.path}`")
    preds, run_info = run_predictions(run_dir, store) if run_dir is not None else ({}, None)
    method, reason = choose_method(cfg, V)
    z, variance = streamed_pca(store, 2 if method == "pca" else min(cfg.pca_dims, V), cfg, progress)
    if method == "pca":
        xy = np.zeros((V, 2), dtype=np.float32)
        xy[:, :z.shape[1]] = z[:, :2]
    else:
        log.info("map: %s of %d videos on %d principal components", method, V, z.shape[1])
        xy = _embed_2d(z, method, cfg)
    assert xy.shape == (V, 2) and np.isfinite(xy).all()
    xy = unit_square(xy)
    table = store.videos
    splits: list[Optional[str]] = [None] * V
    if (Path(store.path) / SPLIT_NAME).is_file():
        assignment = load_split(store.path).assignment
        splits = [assignment.get(v) for v in table.ids]
    emap = EmbeddingMap(ids=list(table.ids), xy=xy, labels=list(table.labels), splits=splits, method=method,
                        reason=reason, generation=store.generation, run=run_info,
                        explained_variance=variance[:2] if method == "pca" else None)
    if run_dir is not None:
        emap.predicted = [preds[v][1] if v in preds else None for v in table.ids]
        emap.scored_label = [preds[v][0] if v in preds else None for v in table.ids]
    return emap


def write_map(emap: EmbeddingMap, cfg: MapConfig, out: str | Path, store_name: str) -> dict[str, Path]:
    """``out`` (PNG), the coordinates beside it (``.csv``) and what made them (``.json``)."""
    from .plots import plot_embedding_map
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise MapError(f"--out {out} must be a .png file (the CSV and JSON are written beside it)")
    if out.is_dir():
        raise MapError(f"--out {out} is a directory; give a file name such as {out / 'map.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"png": out, "csv": out.with_suffix(".csv"), "json": out.with_suffix(".json")}
    wrong = emap.misclassified
    run_note = ""
    if emap.run is not None:
        run_note = f"; {emap.run['misclassified']} of {emap.run['evaluated']} misclassified by {Path(emap.run['path']).name}"
    plot_embedding_map(emap.xy, emap.labels, [s == "test" for s in emap.splits], wrong, paths["png"],
                       f"{store_name}: {emap.title}{run_note}", run_name=Path(emap.run["path"]).name if emap.run else None)
    flag = {None: "", True: "1", False: "0"}
    write_csv(paths["csv"], CSV_HEADER, (
        [vid, f"{x:.6g}", f"{y:.6g}", label or "", split or "", flag[w], p or ""]
        for vid, (x, y), label, split, w, p in zip(emap.ids, emap.xy.tolist(), emap.labels, emap.splits, wrong,
                                                   emap.predicted or [None] * len(emap.ids))))
    atomic_write_json(paths["json"], {
        "format": "vstore-map", "config": asdict(cfg), "method": emap.method, "method_reason": emap.reason,
        "title": emap.title, "videos": len(emap.ids), "store": store_name, "store_generation": emap.generation,
        "explained_variance_ratio": emap.explained_variance, "run": emap.run,
        "files": {k: p.name for k, p in paths.items()}})
    return paths
