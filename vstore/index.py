"""FAISS indexes over a store: one over every frame embedding, one over per-video means.

Layout (``STORE/index/``)::

    index.json                  the commit point: config, covered generation/rows/fingerprint,
                                and size + SHA-256 of each FAISS file
    frames-<uuid>.faiss         FAISS ids = global frame rows (0..frames-1, store order)
    videos-<uuid>.faiss         FAISS ids = store video rows (0..videos-1)

FAISS files are written under a temporary name, fsynced and renamed to a fresh unique name;
then ``index.json`` is replaced atomically and only then are the files it no longer lists
deleted. A crash (kill -9 included) at any moment leaves the previous index usable.

An index covers a prefix of the store: its first ``videos`` videos / ``frames`` frame rows,
identified by a fingerprint over their (id, n_frames) sequence. ``compact`` keeps rows (same
fingerprint, nothing to redo); a build appends rows (only the new ones are added);
``verify --repair`` drops rows (fingerprint differs: rebuilt).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from .errors import IndexBuildError, IndexDamagedError, StaleIndexError
from .store import Store

log = logging.getLogger(__name__)

INDEX_DIR = "index"
META_NAME = "index.json"
FORMAT = "vstore-index"
FORMAT_VERSION = 1
KINDS = ("auto", "flat", "ivf", "hnsw")
METRICS = ("cosine", "ip", "l2")


@dataclass
class IndexConfig:
    # auto | flat | ivf | hnsw, or any FAISS index_factory string (e.g. "IVF1024,SQ8").
    kind: str = "auto"
    # cosine: vectors L2-normalised (copies; the store is untouched), inner product.
    # ip: raw inner product. l2: squared Euclidean distance (lower = closer).
    metric: str = "cosine"
    # auto: exact Flat search up to this many vectors (FAISS guideline: ~1M). Below it a
    # query scans everything (~0.1-0.3 s per query at 500k x 512 on 2 cores); above, IVF.
    flat_max: int = 500_000
    # auto: beyond this many vectors the IVF lists hold PQ codes (D/8 bytes per vector)
    # instead of full vectors, so 10M+ frames fit in memory. Recall drops a few points.
    pq_min: int = 10_000_000
    # IVF lists; 0 = 4 * sqrt(N) (FAISS guideline 4..16 sqrt(N)), at most N / 39.
    nlist: int = 0
    # IVF k-means trains on nlist * train_per_list sampled vectors (FAISS wants 39..256).
    train_per_list: int = 40
    # ... and on at least this many (PQ codebooks need ~10k), capped at N.
    min_train_rows: int = 20_000
    # k-means iterations (FAISS's IVF default is 10).
    train_iters: int = 10
    # HNSW graph degree, for kind=hnsw and for the coarse quantizer of large IVF indexes.
    hnsw_m: int = 32
    # HNSW build beam; higher = better graph, slower build (FAISS default 40).
    ef_construction: int = 40
    # IVF indexes of at least this many lists get an HNSW coarse quantizer: assigning a vector
    # to one of 16k+ centroids exactly costs more than the list scan (FAISS suggests it from
    # 65k lists). Below, the exact (flat) quantizer is both faster and more accurate.
    hnsw_quantizer_min: int = 16_384
    # Search defaults (override per query with nprobe= / ef=): IVF lists probed, HNSW beam
    # (also the HNSW quantizer's beam when vectors are assigned to lists).
    nprobe: int = 32
    ef_search: int = 128
    # Frame rows read from the store per block while building (memory stays at one block).
    block_rows: int = 32_768
    # Seed of the training sample, so rebuilding the same store gives the same index.
    seed: int = 0
    # Search on GPU copies of exact/IVF-Flat indexes when faiss sees a GPU (same results).
    gpu: bool = True
    # Opt-in: run IVF k-means on the GPU when present (much faster on big stores). Off by
    # default because GPU centroids differ from CPU ones by float rounding, so approximate
    # results would depend on the machine that built the index.
    gpu_train: bool = False

    def __post_init__(self) -> None:
        self.kind = str(self.kind).strip()
        if not self.kind:
            raise ValueError("index kind must be auto, flat, ivf, hnsw or a FAISS factory string")
        if self.kind.lower() in KINDS:
            self.kind = self.kind.lower()
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for name in ("flat_max", "pq_min", "train_per_list", "min_train_rows", "train_iters", "hnsw_m",
                     "ef_construction", "hnsw_quantizer_min", "nprobe", "ef_search", "block_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.nlist) < 0:
            raise ValueError(f"nlist must be >= 0 (0 = automatic), got {self.nlist}")

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "l2"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def auto_nlist(n: int, config: IndexConfig) -> int:
    """4 * sqrt(n) lists, but at least 39 training vectors per list (FAISS's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def factory_for(config: IndexConfig, n: int, d: int, *, for_videos: bool = False) -> str:
    """The FAISS factory string ``config`` means for ``n`` vectors of dimension ``d``.

    The video-mean index follows the same rules on its own count, except that a raw factory
    string applies to frames only (the video index is then ``auto``)."""
    kind = config.kind
    if kind not in KINDS and for_videos:
        kind = "auto"
    if kind == "auto":
        if n <= config.flat_max:
            return "Flat"
        kind = "ivf"
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{config.hnsw_m}"
    if kind == "ivf":
        nlist = config.nlist or auto_nlist(n, config)
        if for_videos:
            nlist = min(nlist, auto_nlist(n, config))
        quantizer = f"_HNSW{config.hnsw_m}" if nlist >= config.hnsw_quantizer_min else ""
        codes = "Flat"
        if config.kind == "auto" and n > config.pq_min:
            m = next(m for m in (d // 8, d // 4, d // 2, d) if m >= 1 and d % m == 0)
            codes = f"PQ{m}"
        return f"IVF{nlist}{quantizer},{codes}"
    return kind


def new_index(config: IndexConfig, factory: str, d: int) -> faiss.Index:
    try:
        index = faiss.index_factory(d, factory, config.faiss_metric)
    except RuntimeError as e:
        raise IndexBuildError(f"FAISS cannot make index {factory!r} for {d}-d vectors: {_faiss_message(e)}") from None
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.cp.niter = config.train_iters
        ivf.cp.seed = config.seed
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = config.ef_construction
    if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        faiss.downcast_index(ivf.quantizer).hnsw.efConstruction = config.ef_construction
    return index


def prepare_for_add(index: faiss.Index, config: IndexConfig) -> None:
    """An HNSW coarse quantizer assigns new vectors with beam ``ef_search`` (FAISS's default of
    16 misfiles enough vectors to cap IVF recall near 0.99 whatever nprobe)."""
    ivf = _ivf_of(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, config.ef_search)


def train_rows_for(index: faiss.Index, config: IndexConfig, n: int) -> int:
    """How many sampled vectors ``index`` trains on (0 when it needs no training)."""
    if index.is_trained:
        return 0
    ivf = _ivf_of(index)
    want = max(config.min_train_rows, ivf.nlist * config.train_per_list if ivf is not None else 0)
    return min(n, want)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """(N, D) float32 C-contiguous copy, L2-normalised for cosine."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(x)
    return x


def train(index: faiss.Index, sample: np.ndarray, gpu: bool = False) -> None:
    """Train ``index`` on ``sample`` (already prepared); FAISS errors become ``IndexBuildError``.

    ``gpu``: IVF k-means assignments on the GPU(s) when present (the index stays a CPU index)."""
    ivf = _ivf_of(index)
    if gpu and ivf is not None and faiss.get_num_gpus() > 0:  # pragma: no cover - needs a GPU
        try:
            flat = faiss.IndexFlatL2(ivf.d) if ivf.metric_type == faiss.METRIC_L2 else faiss.IndexFlatIP(ivf.d)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
        except (RuntimeError, AttributeError) as e:
            log.info("training on CPU: %s", _faiss_message(e))
    try:
        index.train(sample)
    except RuntimeError as e:
        raise IndexBuildError(f"training the index on {len(sample)} vectors failed: {_faiss_message(e)}") from None


def _faiss_message(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return (msg[-1] if msg else type(e).__name__)[:300]


def _ivf_of(index: faiss.Index) -> Optional[faiss.IndexIVF]:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


# -- metadata ---------------------------------------------------------------------------------
@dataclass
class IndexPart:
    """One FAISS file of the index."""

    file: str  # name inside STORE/index/
    bytes: int
    sha256: str
    rows: int  # vectors in it (ids 0..rows-1)
    factory: str  # FAISS factory string it was made from


@dataclass
class IndexMeta:
    config: IndexConfig
    generation: int  # store manifest generation covered
    dim: int
    encoder_id: Optional[str]
    videos: int  # the index covers the store's first `videos` videos...
    frames: int  # ... i.e. its first `frames` frame rows
    fingerprint: str  # sha256 over (id, n_frames) of those videos, see prefix_fingerprint
    frame_part: IndexPart
    video_part: IndexPart
    trained_rows: int = 0  # frame rows when the frame index was (re)built
    build_seconds: float = 0.0
    updated: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexMeta":
        if d.get("format") != FORMAT or int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} file")
        d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        return cls(config=IndexConfig.from_dict(d.pop("config")), frame_part=IndexPart(**d.pop("frame_part")),
                   video_part=IndexPart(**d.pop("video_part")), **d)


def index_dir(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def damaged(store_path: str | Path, what: str, reason: str) -> IndexDamagedError:
    return IndexDamagedError(f"index is damaged ({what}: {reason}); run `vstore index {store_path} --refresh`",
                             str(what))


def read_meta(store_path: str | Path) -> Optional[IndexMeta]:
    """The index metadata, None when the store has no index; ``IndexDamagedError`` if unreadable."""
    path = index_dir(store_path) / META_NAME
    if not path.is_file():
        return None
    try:
        return IndexMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise damaged(store_path, str(path), f"{type(e).__name__}: {e}") from None


def prefix_fingerprint(store: Store, n_videos: int) -> str:
    """sha256 over the (id, n_frames) sequence of the store's first ``n_videos`` videos, plus
    dimension and encoder: equal fingerprints mean equal frame rows 0..frames-1."""
    table = store.videos
    h = hashlib.sha256()
    h.update(f"{store.dim}|{(store.encoder or {}).get('id')}|{n_videos}|".encode())
    h.update("\n".join(table.ids[:n_videos]).encode("utf-8"))
    h.update(np.ascontiguousarray(table.n_frames[:n_videos], dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass
class IndexStatus:
    """How an index relates to a store snapshot.

    state: missing | fresh (same generation) | compatible (other generation, same rows: e.g.
    after compact) | append (rows added since) | rebuild (rows changed: verify --repair, other
    encoder) | newer (the index covers a later commit than this snapshot).
    """

    state: str
    reason: str = ""
    new_frames: int = 0
    new_videos: int = 0

    @property
    def usable(self) -> bool:
        return self.state in ("fresh", "compatible")


def index_status(store: Store, meta: Optional[IndexMeta]) -> IndexStatus:
    if meta is None:
        return IndexStatus("missing", "no index yet")
    if meta.generation == store.generation:
        return IndexStatus("fresh")
    if meta.generation > store.generation:
        return IndexStatus("newer", f"the index covers generation {meta.generation}, newer than this snapshot "
                                    f"(generation {store.generation}); reopen the store")
    if meta.dim != store.dim or meta.encoder_id != (store.encoder or {}).get("id"):
        return IndexStatus("rebuild", "the store now holds vectors of another encoder")
    if store.n_videos < meta.videos or prefix_fingerprint(store, meta.videos) != meta.fingerprint:
        return IndexStatus("rebuild", "frame rows changed (e.g. `vstore verify --repair` dropped a segment)")
    if store.n_videos == meta.videos:
        return IndexStatus("compatible", "same rows (e.g. after `vstore compact`)")
    return IndexStatus("append", f"{store.n_videos - meta.videos} video(s) added",
                       new_frames=store.n_frames - meta.frames, new_videos=store.n_videos - meta.videos)


def stale_error(store: Store, meta: IndexMeta, status: IndexStatus) -> StaleIndexError:
    what = (f"{status.new_frames} frame(s) of {status.new_videos} video(s) are not indexed"
            if status.state == "append" else status.reason)
    if status.state == "newer":
        return StaleIndexError(f"{store.path}: {status.reason}")
    return StaleIndexError(
        f"the index of {store.path} covers generation {meta.generation} but the store is at generation "
        f"{store.generation} ({what}); rerun with --refresh to update it first (or run `vstore index {store.path}`)")


def __getattr__(name: str):
    """The write side (``vstore.index_build``) and the read side (``vstore.index_load``) are
    reachable from here too: ``from vstore.index import build_index, load_index``."""
    if name in ("build_index", "IndexReport", "iter_rows"):
        from . import index_build
        return getattr(index_build, name)
    if name in ("load_index", "LoadedIndex", "drop_cache", "check_part"):
        from . import index_load
        return getattr(index_load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IndexConfig", "IndexMeta", "IndexPart", "IndexReport", "IndexStatus", "LoadedIndex", "build_index",
           "load_index", "read_meta", "index_status", "factory_for", "auto_nlist", "new_index", "train", "prepare",
           "prepare_for_add",
           "iter_rows", "prefix_fingerprint", "drop_cache", "INDEX_DIR", "KINDS", "METRICS"]
