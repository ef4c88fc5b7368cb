"""Near-duplicate videos: re-uploads, trims, re-encodes, resized or letterboxed copies.

Every stored frame is a query. Its nearest frames of *other* videos come from the store's
FAISS frame index (``vstore.index_load``; cosine) when it is fresh, else from an exact
search streamed over the store's blocks (``vstore.exact``). A neighbour counts as a match
when its cosine similarity is at least ``frame_threshold``; per query frame only the best
match in each other video is kept.

Query frames are read in store order, in chunk-aligned blocks, so the frames of one video
arrive together: once a video's frames are all in, its matches are tallied per other video
and the pair (video a, video b) is *aligned*:

1. each matched frame gives an offset ``t_b - t_a`` (seconds; the frame of a at ``t_a`` shows
   in b at ``t_b``); the offset window of half-width ``offset_slack`` sampling intervals
   holding the most matches is kept (one consistent time offset: a trim shifts every frame
   by the same amount, while frames that merely look alike land at scattered offsets);
2. among those, the longest chain whose times increase in both videos (longest
   non-decreasing subsequence of ``t_b`` in the order of ``t_a``) is the alignment.

``share`` = chain length / a's sampled frames. The pair is a near-duplicate when, in either
direction, ``share >= min_share`` and the chain has at least ``min_frames`` frames: all of a
trimmed copy's frames are found in order in the original, a title card shared by two videos
is one or two frames of each. Then the tallies of that video are dropped: memory holds one
block of queries and their neighbours plus the pairs found, whatever the store's size.
"""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from .errors import DedupError
from .exact import exact_frame_search
from .index import index_status, read_meta
from .index_faiss import prepare
from .index_load import load_index
from .search import index_search
from .store import Store

log = logging.getLogger(__name__)

SEARCH_MODES = ("auto", "index", "exact")
_MAX_OWN_FRAMES = 1024  # extra neighbours asked for, at most, so a video's own frames cannot crowd out others
_EXACT_BLOCK_ROWS = 8192  # store rows scored at once by the exact search: (1024 queries x this) scores
_HIST_BINS = 40  # histogram of each frame's best other-video cosine, over [-1, 1]


@dataclass
class DedupConfig:
    # Two frames match when their embeddings' cosine similarity is at least this. Re-encoded,
    # resized and pillarboxed copies of a frame reach >= 0.99 with the thumbnail encoder
    # (tests/test_dedup.py); 0.9 is an assumption for CLIP ViT-B/32, not measured here: check the
    # histogram in dedup.json (best other-video cosine per frame) and adjust for your encoder.
    frame_threshold: float = 0.9
    # A pair is a near-duplicate when at least this share of one video's sampled frames is
    # matched, in order, in the other (0.5: a copy trimmed to half of the original still pairs).
    min_share: float = 0.5
    # ... and at least this many frames are (a shared title card of 1-2 frames never pairs).
    min_frames: int = 3
    # Matched frames must agree on one time offset within this many sampling intervals (of the
    # more coarsely sampled video of the pair): sampled frames of a trimmed copy fall up to half
    # an interval away from the original's; 0.75 leaves a margin.
    offset_slack: float = 0.75
    # Other-video neighbours kept per query frame (the search asks for this many plus the
    # query video's own frames): a video with more near-copies than this may miss a few pairs,
    # though its copies still end up in one group through each other.
    neighbours: int = 32
    # Query frames per search batch (rounded up to whole store chunks); memory ~ block x
    # (neighbours + frames per video) results.
    block_rows: int = 8192
    # auto: the store's FAISS frame index when it is fresh and cosine, else exact search
    # streamed over the store's blocks; index: require the index; exact: never use it.
    search: str = "auto"
    # IVF lists probed / HNSW beam when searching the index (0 = the index's own defaults).
    nprobe: int = 0
    ef: int = 0
    # Strongest pairs shown side by side in the report's PNG.
    report_pairs: int = 8

    def __post_init__(self) -> None:
        if not -1.0 <= float(self.frame_threshold) <= 1.0:
            raise ValueError(f"frame_threshold is a cosine similarity in -1..1, got {self.frame_threshold}")
        if not 0.0 < float(self.min_share) <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")
        if int(self.min_frames) < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if not 0.0 <= float(self.offset_slack) <= 100.0:
            raise ValueError(f"offset_slack must be in 0..100 sampling intervals, got {self.offset_slack}")
        for name in ("neighbours", "block_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}, got {self.search!r}")
        for name in ("nprobe", "ef", "report_pairs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Pair:
    """Two near-duplicate videos; ``a`` is the one whose frames were found in ``b``."""

    a: str
    b: str
    share: float  # matched / frames_a
    matched: int  # frames of the in-order chain
    frames_a: int
    frames_b: int
    offset: float  # seconds: a's frame at time t shows in b at t + offset (NaN without timestamps)
    cosine: float  # mean cosine of the chain's frame pairs
    frame_a: int  # the chain's most similar frame pair (frame numbers), for the report
    frame_b: int
    time_a: float
    time_b: float
    best_cosine: float

    @property
    def score(self) -> float:
        """share x mean cosine: how much of a is b, and how closely."""
        return self.share * self.cosine

    def key(self) -> tuple:
        return (-self.score, self.a, self.b)


@dataclass
class DedupResult:
    pairs: list[Pair]  # strongest first
    groups: list[list[str]]  # connected components of the pairs, largest first, ids sorted
    search: str  # "index (IVF...)" | "exact"
    stats: dict = field(default_factory=dict)


# -- alignment --------------------------------------------------------------------------------------
def align(t_a: np.ndarray, t_b: np.ndarray, sim: np.ndarray, slack: float) -> np.ndarray:
    """Positions of the matches forming the in-order alignment (see module doc).

    t_a (M,) strictly increasing times of a's matched frames, t_b (M,) the times of their
    matches in b, sim (M,) their cosines; ``slack`` is the half-width of the offset window
    (seconds). Returns the chain's positions (ascending)."""
    d = t_b - t_a  # (M,)
    order = np.argsort(d, kind="stable")
    ds = d[order]
    ends = np.searchsorted(ds, ds + 2 * slack + 1e-9, side="right")
    counts = ends - np.arange(len(ds))
    csum = np.r_[0.0, np.cumsum(sim[order])]
    weight = counts * 4.0 + (csum[ends] - csum[np.arange(len(ds))]) / (len(ds) + 1)  # most matches, then most similar
    start = int(np.argmax(weight))
    members = np.sort(order[start:ends[start]])  # back in a's order
    return members[_longest_non_decreasing(t_b[members])]


def _longest_non_decreasing(x: np.ndarray) -> np.ndarray:
    """Positions of one longest non-decreasing subsequence of ``x`` (patience sorting)."""
    tails: list[float] = []
    tail_pos: list[int] = []
    prev = np.full(len(x), -1, dtype=np.int64)
    for i, v in enumerate(x.tolist()):
        k = bisect.bisect_right(tails, v)
        if k:
            prev[i] = tail_pos[k - 1]
        if k == len(tails):
            tails.append(v)
            tail_pos.append(i)
        else:
            tails[k], tail_pos[k] = v, i
    out = []
    i = tail_pos[-1] if tail_pos else -1
    while i >= 0:
        out.append(i)
        i = int(prev[i])
    return np.array(out[::-1], dtype=np.int64)


def groups_of(pairs: list[Pair]) -> list[list[str]]:
    """Connected components of the pair graph (union-find), largest first, ids sorted."""
    parent: dict[str, str] = {}

    def find(v: str) -> str:
        parent.setdefault(v, v)
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v
    for p in pairs:
        ra, rb = find(p.a), find(p.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[str, list[str]] = {}
    for v in parent:
        comps.setdefault(find(v), []).append(v)
    return sorted((sorted(c) for c in comps.values()), key=lambda c: (-len(c), c[0]))


# -- neighbour search -------------------------------------------------------------------------------
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # q (Q, D), k -> (S (Q, k), I (Q, k))


def _searcher(store: Store, config: DedupConfig) -> tuple[Searcher, str]:
    """The frame-neighbour search to use and its description."""
    use_index = config.search == "index"
    if config.search == "auto":
        meta = read_meta(store.path)
        if meta is None:
            log.info("%s has no index: exact search over the store's frames", store.path)
        elif meta.config.metric != "cosine":
            log.info("the index of %s is %s, not cosine: exact search", store.path, meta.config.metric)
        elif not index_status(store, meta).usable:
            log.warning("the index of %s is stale (%s): exact search; run `vstore index %s` for speed",
                        store.path, index_status(store, meta).reason, store.path)
        else:
            use_index = True
    if use_index:
        loaded, _ = load_index(store)  # IndexNotFoundError / StaleIndexError / IndexDamagedError
        if loaded.config.metric != "cosine":
            raise DedupError(f"the index of {store.path} uses the {loaded.config.metric} metric; dedup needs "
                             f"cosine: rebuild it with `vstore index {store.path} --metric cosine` or use --search exact")
        nprobe, ef = config.nprobe or loaded.config.nprobe, config.ef or loaded.config.ef_search
        rows = loaded.meta.frames

        def by_index(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            S, I = index_search(loaded.frames, q, k, nprobe, ef)
            if I.size and (int(I.max()) >= rows or int(I.min()) < -1):
                raise DedupError(f"the index of {store.path} returned frame rows outside 0..{rows - 1}; "
                                 f"rebuild it with `vstore index {store.path} --rebuild`")
            return S, I
        return by_index, f"index ({loaded.meta.frame_part.factory})"

    def exact(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        S = np.full((len(q), k), -np.inf, dtype=np.float32)
        I = np.full((len(q), k), -1, dtype=np.int64)
        for r, (rows, scores) in enumerate(exact_frame_search(store, q, k, "cosine", block_rows=_EXACT_BLOCK_ROWS)):
            S[r, :len(rows)], I[r, :len(rows)] = scores, rows
        return S, I
    return exact, "exact"


# -- the finder -------------------------------------------------------------------------------------
class _Tally:
    """Matches of query frames whose video is not finished yet, as parallel arrays."""

    COLS = ("qv", "qrow", "qtime", "nv", "nrow", "sim")

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, **cols: np.ndarray) -> None:
        self.parts.append(cols)

    def take_before(self, video_row: Optional[int]) -> dict[str, np.ndarray]:
        """Remove and return the matches of query videos with row < ``video_row`` (all: None)."""
        if not self.parts:
            return {c: np.zeros(0) for c in self.COLS}
        cat = {c: np.concatenate([p[c] for p in self.parts]) for c in self.COLS}
        done = np.ones(len(cat["qv"]), bool) if video_row is None else cat["qv"] < video_row
        self.parts = [{c: v[~done] for c, v in cat.items()}] if (~done).any() else []
        return {c: v[done] for c, v in cat.items()}


def find_duplicates(store: Store, config: Optional[DedupConfig] = None, progress: bool = False) -> DedupResult:
    """Every near-duplicate pair of ``store``'s videos and their groups (see module doc)."""
    cfg = config or DedupConfig()
    if not store.n_frames:
        raise DedupError(f"{store.path} holds no frames; build it first")
    search, how = _searcher(store, cfg)
    table = store.videos
    n_frames = table.n_frames
    has_time = np.isfinite(table.duration) & (table.duration > 0)
    spacing = np.where(has_time, table.duration / np.maximum(n_frames, 1), 1.0)  # (V,) seconds per sampled frame
    found: dict[tuple[str, str], Pair] = {}
    hist = np.zeros(_HIST_BINS, dtype=np.int64)
    stats = {"query_frames": 0, "frame_matches": 0, "candidate_pairs": 0, "aligned_pairs": 0}
    tally = _Tally()
    bar = tqdm(total=store.n_frames, unit="frame", disable=not progress, dynamic_ncols=True, desc="dedup")
    try:
        for block in store.iter_blocks(block_rows=cfg.block_rows, dtype=np.float32, with_frames=True):
            q = prepare(block.embeddings, "cosine")  # (Q, D)
            qv = block.video_rows  # (Q,)
            own = int(n_frames[np.unique(qv)].max())
            k = min(store.n_frames, cfg.neighbours + min(own, _MAX_OWN_FRAMES))
            S, I = search(q, k)  # (Q, k)
            nv = np.where(I >= 0, table.video_rows_of(np.maximum(I, 0)), -1)  # (Q, k)
            other = (I >= 0) & (nv != qv[:, None])
            best = np.where(other, S, -np.inf).max(axis=1)
            hist += np.histogram(best[np.isfinite(best)], bins=_HIST_BINS, range=(-1.0, 1.0))[0]
            keep = other & (S >= cfg.frame_threshold)
            r, c = np.nonzero(keep)
            qtime = np.where(has_time[qv], block.timestamp, block.frame_index).astype(np.float64)  # (Q,)
            if len(r):
                # best match per (query frame, other video), then at most `neighbours` videos per frame
                order = np.lexsort((-S[r, c], nv[r, c], r))
                r, c = r[order], c[order]
                first = np.r_[True, (r[1:] != r[:-1]) | (nv[r[1:], c[1:]] != nv[r[:-1], c[:-1]])]
                r, c = r[first], c[first]
                by_sim = np.lexsort((-S[r, c], r))
                r, c = r[by_sim], c[by_sim]
                rank = np.arange(len(r)) - np.searchsorted(r, r)
                r, c = r[rank < cfg.neighbours], c[rank < cfg.neighbours]
                tally.add(qv=qv[r], qrow=block.start + r, qtime=qtime[r], nv=nv[r, c], nrow=I[r, c],
                          sim=S[r, c].astype(np.float64))
                stats["frame_matches"] += len(r)
            last = block.start + len(qv) >= store.n_frames
            _finish(store, tally.take_before(None if last else int(qv[-1])), cfg, spacing, has_time, found, stats)
            stats["query_frames"] += len(qv)
            bar.update(len(qv))
        _finish(store, tally.take_before(None), cfg, spacing, has_time, found, stats)
    finally:
        bar.close()
    pairs = sorted(found.values(), key=Pair.key)
    edges = np.linspace(-1.0, 1.0, _HIST_BINS + 1)
    stats["best_other_cosine_histogram"] = [[round(float(e), 3), int(n)] for e, n in zip(edges[:-1], hist) if n]
    stats["pairs"] = len(pairs)
    return DedupResult(pairs=pairs, groups=groups_of(pairs), search=how, stats=stats)


def _finish(store: Store, m: dict[str, np.ndarray], cfg: DedupConfig, spacing: np.ndarray, has_time: np.ndarray,
            found: dict[tuple[str, str], Pair], stats: dict) -> None:
    """Align every (finished query video, other video) tally in ``m`` and keep the pairs that pass."""
    if not len(m["qv"]):
        return
    qv, nv = m["qv"].astype(np.int64), m["nv"].astype(np.int64)
    order = np.lexsort((m["qrow"], nv, qv))
    m = {c: v[order] for c, v in m.items()}
    qv, nv = qv[order], nv[order]
    starts = np.flatnonzero(np.r_[True, (qv[1:] != qv[:-1]) | (nv[1:] != nv[:-1])])
    counts = np.diff(np.r_[starts, len(qv)])
    table = store.videos
    need = np.maximum(cfg.min_frames, np.ceil(cfg.min_share * table.n_frames[qv[starts]] - 1e-9))
    cand = np.flatnonzero(counts >= need)
    stats["candidate_pairs"] += len(cand)
    if not len(cand):
        return
    sel = np.concatenate([np.arange(starts[g], starts[g] + counts[g]) for g in cand])
    ids, nframe, ntime = store.frame_refs(m["nrow"][sel].astype(np.int64))
    ntime_all = np.full(len(qv), np.nan)
    nframe_all = np.zeros(len(qv), dtype=np.int64)
    ntime_all[sel], nframe_all[sel] = ntime, nframe
    qframe = store.frame_refs(m["qrow"][sel].astype(np.int64))[1]
    qframe_all = np.zeros(len(qv), dtype=np.int64)
    qframe_all[sel] = qframe
    for g in cand:
        s = slice(starts[g], starts[g] + counts[g])
        a, b = int(qv[starts[g]]), int(nv[starts[g]])
        timed = bool(has_time[a] and has_time[b])
        t_a = m["qtime"][s] if timed else m["qrow"][s] - table.frame_start[a]
        t_b = ntime_all[s] if timed else m["nrow"][s] - table.frame_start[b]
        slack = cfg.offset_slack * (max(spacing[a], spacing[b]) if timed else 1.0)
        chain = align(np.asarray(t_a, np.float64), np.asarray(t_b, np.float64), m["sim"][s], slack)
        stats["aligned_pairs"] += 1
        share = len(chain) / int(table.n_frames[a])
        if len(chain) < cfg.min_frames or share < cfg.min_share - 1e-9:
            continue
        sims = m["sim"][s][chain]
        top = chain[int(np.argmax(sims))]
        pair = Pair(a=table.ids[a], b=table.ids[b], share=round(share, 4), matched=len(chain),
                    frames_a=int(table.n_frames[a]), frames_b=int(table.n_frames[b]),
                    offset=float(np.median(t_b[chain] - t_a[chain])) if timed else math.nan,
                    cosine=float(sims.mean()), frame_a=int(qframe_all[s][top]), frame_b=int(nframe_all[s][top]),
                    time_a=float(m["qtime"][s][top]) if timed else math.nan,
                    time_b=float(ntime_all[s][top]) if timed else math.nan, best_cosine=float(sims.max()))
        key = tuple(sorted((pair.a, pair.b)))
        if key not in found or pair.key() < found[key].key():
            found[key] = pair
