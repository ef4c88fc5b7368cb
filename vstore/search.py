"""Nearest-neighbour search over a store: queries, filters applied before ranking, per-video hits.

``search(store, query, k)`` answers from the store's FAISS index (``vstore.index``); filters
(label, split, excluded videos) restrict the candidates *before* ranking, through a FAISS
``IDSelectorBitmap`` over the allowed rows, or, when few rows are allowed (or the index type
cannot filter), by exact search over just those rows read from the store. A filtered search
therefore returns ``k`` hits whenever ``k`` rows pass the filter.

Queries that need no encoder are built here (a stored frame, a stored video's mean, a
``.npy`` file); image and text queries live in ``encoders.queries``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import faiss
import numpy as np

from .errors import IndexDamagedError, QueryError
from .exact import TopK, exact_frame_search, score_matrix
from .index import MAX_BEAM, IndexConfig, damaged, index_status, read_meta
from .index_faiss import prepare
from .index_load import LoadedIndex, load_index
from .split import split_ids
from .store import Store

log = logging.getLogger(__name__)

LEVELS = ("frame", "video")
# Filters allowing at most this many frame rows are answered by exact search over those rows.
EXACT_MAX_ROWS = 65_536
_GPU_MAX_K = 2048  # FAISS GPU indexes return at most this many neighbours


@dataclass
class Hit:
    rank: int  # 1-based
    video_id: str
    frame_index: Optional[int]  # frame number in the video (None for video-level hits)
    timestamp: Optional[float]  # seconds since the video's first frame (None for video-level hits)
    score: float  # cosine similarity | inner product | squared L2 distance (lower = closer)
    label: Optional[str]
    row: int  # global frame row (frame level) or store video row (video level)

    def to_dict(self) -> dict:
        return asdict(self)


# -- queries without an encoder ---------------------------------------------------------------
def query_from_frame(store: Store, video_id: str, frame: int) -> np.ndarray:
    """(D,) stored embedding of ``video_id``'s sampled frame number ``frame`` (as search hits show it)."""
    frame_index, _ = store.get_frames(video_id)
    pos = np.flatnonzero(frame_index == int(frame))
    if not len(pos):
        near = frame_index[np.argsort(np.abs(frame_index - int(frame)), kind="stable")[:5]]
        raise QueryError(f"video {video_id} has no sampled frame {frame}; nearest sampled frames: "
                         f"{', '.join(map(str, sorted(near)))} (frame numbers as search results show them)")
    return store.get_embeddings(video_id, dtype=np.float32)[pos[0]]


def query_from_video(store: Store, video_id: str) -> np.ndarray:
    """(D,) mean frame embedding of a stored video."""
    return store.get_embeddings(video_id, dtype=np.float32).mean(axis=0, dtype=np.float64).astype(np.float32)


def query_from_npy(store: Store, path: str | Path) -> np.ndarray:
    """(D,) or (Q, D) query vector(s) from a ``.npy`` file."""
    try:
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise QueryError(f"cannot read query vector file {path}: {e}") from None
    return check_query(store, q, what=str(path))


def check_query(store: Store, query: np.ndarray, what: str = "query") -> np.ndarray:
    """``query`` as float32 (D,) or (Q, D) matching the store's dimension; ``QueryError`` otherwise."""
    q = np.asarray(query)
    if q.dtype.kind not in "fiu" or q.ndim not in (1, 2) or q.shape[-1] != store.dim or q.size == 0:
        raise QueryError(f"{what}: expected a ({store.dim},) or (Q, {store.dim}) numeric array for this store, "
                         f"got shape {q.shape} {q.dtype}")
    q = q.astype(np.float32)
    if not np.isfinite(q).all():
        raise QueryError(f"{what}: the query holds NaN or infinite values")
    return q


# -- filters ------------------------------------------------------------------------------------
def allowed_videos(store: Store, label: Union[str, Sequence[str], None] = None, split: Optional[str] = None,
                   exclude_videos: Iterable[str] = ()) -> Optional[np.ndarray]:
    """(V,) bool mask of the videos passing the filters, or None when there are no filters."""
    table = store.videos
    mask = None
    if label is not None:
        wanted = {label} if isinstance(label, str) else set(label)
        unknown = wanted - set(store.label_names)
        if unknown:
            raise QueryError(f"unknown label(s) {', '.join(sorted(unknown))}; {store.path} has "
                             f"{', '.join(store.label_names) or 'no labels'}")
        mask = np.array([lab in wanted for lab in table.labels], dtype=bool)
    if split is not None:
        in_split = set(split_ids(store.path, split, store))
        m = np.array([v in in_split for v in table.ids], dtype=bool)
        mask = m if mask is None else mask & m
    if isinstance(exclude_videos, str):
        exclude_videos = (exclude_videos,)
    excluded = [store.row(v) for v in exclude_videos]
    if excluded:
        mask = np.ones(len(table), dtype=bool) if mask is None else mask
        mask[excluded] = False
    return mask


class _Selector:
    """A FAISS IDSelectorBitmap over allowed ids; keeps the bitmap alive while in use."""

    def __init__(self, allowed: np.ndarray):  # (N,) bool
        self.bits = np.packbits(allowed, bitorder="little")
        self.sel = faiss.IDSelectorBitmap(len(self.bits), faiss.swig_ptr(self.bits))


# -- index search ------------------------------------------------------------------------------
class _NeedExact(Exception):
    """The index type cannot apply this filter: answer exactly instead."""


def _params(index: faiss.Index, nprobe: int, ef: int, kk: int, sel) -> tuple[Optional[faiss.SearchParameters], list]:
    """Typed FAISS search parameters for ``index`` (None for wrapper types such as PCA/Refine)."""
    base = faiss.downcast_index(index)
    keep: list = []
    if isinstance(base, faiss.IndexIVF):
        p = faiss.SearchParametersIVF()
        p.nprobe = min(nprobe, base.nlist)
        quantizer = faiss.downcast_index(base.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            qp = faiss.SearchParametersHNSW()
            qp.efSearch = max(ef, p.nprobe)
            p.quantizer_params = qp
            keep.append(qp)
    elif isinstance(base, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        p.efSearch = max(ef, kk)
    elif isinstance(base, faiss.IndexFlat):
        p = faiss.SearchParameters()
    else:
        return None, keep
    if sel is not None:
        p.sel = sel
    return p, keep


def index_search(index: faiss.Index, q: np.ndarray, k: int, nprobe: int, ef: int,
                 sel: Optional[faiss.IDSelector] = None) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS search with vstore's parameters: ``nprobe`` IVF lists (and an HNSW coarse
    quantizer beam of at least ``nprobe``), HNSW beam ``max(ef, k)``, optional id selector.

    q (Q, D) prepared. Returns (D (Q, k), I (Q, k)), -1 ids where fewer were found. Raises
    ``_NeedExact`` when a selector is asked of an index type that cannot take one."""
    params, keep = _params(index, nprobe, ef, k, sel)
    if params is None:
        if sel is not None:
            raise _NeedExact
        ps = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", max(ef, k)), ("quantizer_efSearch", max(ef, nprobe))):
            try:
                ps.set_index_parameter(index, name, value)
            except RuntimeError:
                pass
        return index.search(q, k)
    D, I = index.search(q, k, params=params)
    del keep
    return D, I


def _ann(loaded: LoadedIndex, which: str, q: np.ndarray, kk: int, selector: Optional[_Selector],
         nprobe: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search of the frame or video index (GPU copy when present and unfiltered).

    Every id FAISS returns is checked to be a row the index covers: search never answers
    with a row the store does not hold."""
    D = I = None
    if selector is None and kk <= _GPU_MAX_K:
        gpu = loaded.gpu_copy(which)
        if gpu is not None:  # pragma: no cover - needs a GPU
            try:
                faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
            except (RuntimeError, AttributeError):
                pass
            D, I = gpu.search(q, kk)
    if I is None:
        index = loaded.frames if which == "frames" else loaded.videos
        D, I = index_search(index, q, kk, nprobe, ef, selector.sel if selector else None)
    rows = loaded.meta.frames if which == "frames" else loaded.meta.videos
    if I.size and (int(I.max()) >= rows or int(I.min()) < -1):
        part = loaded.meta.frame_part if which == "frames" else loaded.meta.video_part
        raise damaged(loaded.store_path, part.file, f"FAISS returned ids outside 0..{rows - 1}")
    return D, I


def _frame_results(store: Store, loaded: LoadedIndex, q: np.ndarray, k: int, allowed_v: Optional[np.ndarray],
                   per_video: bool, nprobe: int, ef: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cfg = loaded.config
    table = store.videos
    n_allowed = store.n_frames if allowed_v is None else int(table.n_frames[allowed_v].sum())
    videos_allowed = store.n_videos if allowed_v is None else int(allowed_v.sum())
    if n_allowed == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in q]
    want = min(k, videos_allowed if per_video else n_allowed)

    def exact(qs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return exact_frame_search(store, qs, k, cfg.metric, allowed_v, per_video, cfg.block_rows)

    if allowed_v is not None and n_allowed <= EXACT_MAX_ROWS:
        return exact(q)
    selector = None if allowed_v is None else _Selector(np.repeat(allowed_v, table.n_frames))
    out: list = [None] * len(q)
    todo = np.arange(len(q))
    kk = min(k, n_allowed) if not per_video else min(n_allowed, max(4 * k, k + 32))
    while len(todo):
        try:
            D, I = _ann(loaded, "frames", q[todo], kk, selector, nprobe, ef)
        except _NeedExact:
            break
        again = []
        for qi, d, i in zip(todo, D, I):
            ok = i >= 0
            rows, scores = i[ok], d[ok]
            if per_video:
                vrows = table.video_rows_of(rows)
                _, first = np.unique(vrows, return_index=True)
                first = np.sort(first)[:k]
                rows, scores = rows[first], scores[first]
            if len(rows) >= want:
                out[qi] = (rows[:k].astype(np.int64), scores[:k].astype(np.float32))
            elif per_video and ok.all() and kk < n_allowed:
                again.append(qi)  # all kk were frames of too few videos: ask for more
        todo = np.array(again, dtype=np.int64)
        kk = min(n_allowed, kk * 4)
    short = [qi for qi, r in enumerate(out) if r is None]
    if short:  # the index returned fewer hits than the filter allows: answer those exactly
        log.info("index returned fewer than %d hits for %d query(ies); answering them by exact search", want,
                 len(short))
        for qi, r in zip(short, exact(q[short])):
            out[qi] = r
    return out


def _video_results(store: Store, loaded: LoadedIndex, q: np.ndarray, k: int, allowed_v: Optional[np.ndarray],
                   nprobe: int, ef: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cfg = loaded.config
    n_allowed = store.n_videos if allowed_v is None else int(allowed_v.sum())
    if n_allowed == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in q]
    want = min(k, n_allowed)
    selector = None if allowed_v is None else _Selector(allowed_v)
    try:
        D, I = _ann(loaded, "videos", q, min(k, store.n_videos), selector, nprobe, ef)
        out = [(i[i >= 0].astype(np.int64), d[i >= 0].astype(np.float32)) for d, i in zip(D, I)]
    except _NeedExact:
        out = [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in q]
    if all(len(r[0]) >= want for r in out):
        return out
    means = prepare(store.video_means(), cfg.metric)  # (V, D)
    ids = np.arange(store.n_videos) if allowed_v is None else np.flatnonzero(allowed_v)
    top = TopK(len(q), k, cfg.higher_is_better)
    top.update(score_matrix(q, means[ids], cfg.metric), ids)
    return top.results()


def frame_neighbours(store: Store, queries: np.ndarray, k: int, *, metric: str = "cosine",
                     allowed_v: Optional[np.ndarray] = None, use_index: bool = True, nprobe: Optional[int] = None,
                     ef: Optional[int] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame rows (<=k,), scores) per query (Q, D) among the frames of videos ``allowed_v``.

    Uses the store's frame index when it is fresh and built for ``metric`` (filtered to the
    allowed rows), else exact search streamed from the store. For kNN classification."""
    loaded = None
    if use_index:
        try:
            meta = read_meta(store.path)
            if meta is not None and meta.config.metric == metric and index_status(store, meta).usable:
                loaded, _ = load_index(store)
        except IndexDamagedError as e:
            log.warning("%s; using exact search", e)
    q = prepare(np.atleast_2d(check_query(store, queries)), metric)  # (Q, D)
    k, nprobe, ef = check_limits(store, k, nprobe, ef)
    if loaded is None:
        return exact_frame_search(store, q, k, metric, allowed_v)
    cfg = loaded.config
    return _frame_results(store, loaded, q, k, allowed_v, False, int(nprobe or cfg.nprobe), int(ef or cfg.ef_search))


def check_limits(store: Store, k: int, nprobe: Optional[int], ef: Optional[int]
                 ) -> tuple[int, Optional[int], Optional[int]]:
    """(k capped at the store's frame rows, nprobe, ef) after checking their ranges: k >= 1,
    beams in 1..MAX_BEAM. A k beyond the rows that can match would only size FAISS's result
    buffers (Q x k): ``search -k 1000000000`` must answer with every row, not allocate 12 GB."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise QueryError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    for name, value in (("nprobe", nprobe), ("ef", ef)):
        if value is not None and not 1 <= int(value) <= MAX_BEAM:
            raise QueryError(f"{name} must be in 1..{MAX_BEAM}, got {value}")
    return min(k, max(store.n_frames, 1)), nprobe, ef


def search(store: Store, query: np.ndarray, k: int = 10, *, label: Union[str, Sequence[str], None] = None,
           split: Optional[str] = None, exclude_videos: Iterable[str] = (), per_video: bool = False,
           nprobe: Optional[int] = None, ef: Optional[int] = None, refresh: bool = False,
           level: str = "frame") -> Union[list[Hit], list[list[Hit]]]:
    """The ``k`` nearest stored frames (or videos, ``level="video"``) to ``query``.

    query: (D,) vector -> list[Hit]; (Q, D) -> one list per query. Build it with
    ``query_from_frame`` / ``query_from_video`` / ``query_from_npy`` here, or
    ``encoders.queries.query_from_image`` / ``query_from_text``.
    label / split / exclude_videos: only videos with that label (or any of several), in
    that stored split (``vstore split``), and not excluded compete; applied before ranking.
    per_video: at most one hit (its best frame) per video.
    nprobe / ef: IVF lists probed / HNSW beam width (default: the index's settings).
    refresh: bring a stale or missing index up to date first, instead of raising
    ``StaleIndexError`` / ``IndexNotFoundError``.
    """
    if level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    k, nprobe, ef = check_limits(store, k, nprobe, ef)
    if store.n_frames == 0:
        raise QueryError(f"{store.path} holds no frames to search")
    q = check_query(store, query)
    single = q.ndim == 1
    loaded, snapshot = load_index(store, refresh=refresh)
    try:
        cfg: IndexConfig = loaded.config
        q = prepare(np.atleast_2d(q), cfg.metric)  # (Q, D)
        if cfg.metric == "cosine" and not np.linalg.norm(q, axis=1).all():
            raise QueryError("a query vector is all zeros; cosine similarity is undefined for it")
        allowed_v = allowed_videos(snapshot, label, split, exclude_videos)
        nprobe, ef = int(nprobe or cfg.nprobe), int(ef or cfg.ef_search)
        k = min(k, snapshot.n_videos if level == "video" else snapshot.n_frames)  # no more rows can match
        if level == "video":
            results = _video_results(snapshot, loaded, q, k, allowed_v, nprobe, ef)
        else:
            results = _frame_results(snapshot, loaded, q, k, allowed_v, per_video, nprobe, ef)
        hits = _to_hits(snapshot, results, level)
    finally:
        if snapshot is not store:
            snapshot.close()
    return hits[0] if single else hits


def _to_hits(store: Store, results: list[tuple[np.ndarray, np.ndarray]], level: str) -> list[list[Hit]]:
    table = store.videos
    all_rows = np.concatenate([r for r, _ in results]) if results else np.zeros(0, np.int64)
    if level == "frame":
        ids, fidx, ts = store.frame_refs(all_rows)
        vrows = table.video_rows_of(all_rows)
    else:
        vrows = all_rows
        ids = [table.ids[v] for v in vrows]
    out, pos = [], 0
    for rows, scores in results:
        hits = []
        for rank, (row, score) in enumerate(zip(rows, scores), 1):
            j = pos + rank - 1
            hits.append(Hit(rank=rank, video_id=ids[j], score=float(score), label=table.labels[vrows[j]],
                            row=int(row), frame_index=int(fidx[j]) if level == "frame" else None,
                            timestamp=float(ts[j]) if level == "frame" else None))
        out.append(hits)
        pos += len(rows)
    return out
