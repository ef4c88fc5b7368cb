"""Exact nearest-neighbour search over (some of) a store's frames, streamed from the store.

Used when a filter leaves few rows (cheaper than the index), when an index type cannot apply
a filter, when an approximate index returns fewer hits than the filter allows, and for kNN
without a fresh index. Memory: one block of rows and (Q, k) running results.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from .index_build import iter_rows
from .index_faiss import prepare
from .store import Store

# At most this many allowed frames are read video by video; more are streamed block by block.
GATHER_MAX_ROWS = 65_536
_QUERY_TILE = 1024  # queries scored at once


class TopK:
    """Best ``k`` (score, id) per query over blocks of candidates; ties go to the lower id."""

    def __init__(self, n_queries: int, k: int, higher: bool):
        self.k, self.sign = k, (1.0 if higher else -1.0)
        self.scores = np.full((n_queries, k), -np.inf, dtype=np.float32)  # (Q, k) signed: higher = better
        self.ids = np.full((n_queries, k), -1, dtype=np.int64)

    def update(self, scores: np.ndarray, ids: np.ndarray, qsel: slice = slice(None)) -> None:
        """scores (q, R) of queries ``qsel`` against candidate ids (R,)."""
        s = self.sign * scores.astype(np.float32, copy=False)
        if s.shape[1] > self.k:
            part = np.argpartition(-s, self.k - 1, axis=1)[:, :self.k]
            s, cand = np.take_along_axis(s, part, axis=1), ids[part]
        else:
            cand = np.broadcast_to(ids, s.shape)
        all_s = np.concatenate([self.scores[qsel], s], axis=1)
        all_i = np.concatenate([self.ids[qsel], cand], axis=1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :self.k]
        self.scores[qsel] = np.take_along_axis(all_s, order, axis=1)
        self.ids[qsel] = np.take_along_axis(all_i, order, axis=1)

    def results(self) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for s, i in zip(self.scores, self.ids):
            ok = np.isfinite(s) & (i >= 0)
            out.append((i[ok], (self.sign * s[ok]).astype(np.float32)))
        return out


def score_matrix(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """(Q, R) similarity (cosine/ip) or squared L2 distance between prepared vectors."""
    s = q @ x.T
    if metric == "l2":
        s = np.maximum((q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * s, 0)
    return s


def _allowed_blocks(store: Store, allowed_v: Optional[np.ndarray], block_rows: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(global rows (R,), embeddings (R, D) float32, video rows (R,)) of the allowed frames."""
    table = store.videos
    if allowed_v is None or int(table.n_frames[allowed_v].sum()) > GATHER_MAX_ROWS:
        mask = None if allowed_v is None else np.repeat(allowed_v, table.n_frames)
        for start, emb, vrows in iter_rows(store, 0, block_rows):
            rows = np.arange(start, start + len(emb))
            if mask is not None:
                keep = mask[start:start + len(emb)]
                if not keep.any():
                    continue
                rows, emb, vrows = rows[keep], emb[keep], vrows[keep]
            yield rows, emb, vrows
        return
    # Few rows: read just the allowed videos, as runs of consecutive videos of one segment.
    vids = np.flatnonzero(allowed_v)
    breaks = np.flatnonzero((np.diff(vids) != 1) | (np.diff(table.segment[vids]) != 0)) + 1
    for run in np.split(vids, breaks):
        seg = store.segments[int(table.segment[run[0]])]
        a = int(seg.numeric["frame_offset"][table.local[run[0]]])
        b = int(seg.numeric["frame_offset"][table.local[run[-1]]]) + int(table.n_frames[run[-1]])
        emb = seg.read_embeddings(a, b, out=np.empty((b - a, seg.dim), dtype=np.float32))
        start = int(table.frame_start[run[0]])
        yield np.arange(start, start + b - a), emb, np.repeat(run, table.n_frames[run])


def exact_frame_search(store: Store, queries: np.ndarray, k: int, metric: str,
                       allowed_v: Optional[np.ndarray] = None, per_video: bool = False,
                       block_rows: int = 32_768) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact (rows, scores) per query over the allowed frames, streamed from the store.

    ``queries`` (Q, D) are prepared (normalised for cosine). With ``per_video`` the best frame
    of each video competes, so the rows returned belong to ``k`` distinct videos."""
    higher = metric != "l2"
    if not per_video:
        top = TopK(len(queries), k, higher)
        for rows, emb, _ in _allowed_blocks(store, allowed_v, block_rows):
            x = prepare(emb, metric)
            for a in range(0, len(queries), _QUERY_TILE):
                top.update(score_matrix(queries[a:a + _QUERY_TILE], x, metric), rows, slice(a, a + _QUERY_TILE))
        return top.results()
    V = store.n_videos
    best = np.full((len(queries), V), -np.inf, dtype=np.float32)  # (Q, V) signed best score per video
    best_row = np.full((len(queries), V), -1, dtype=np.int64)
    sign = 1.0 if higher else -1.0
    for rows, emb, vrows in _allowed_blocks(store, allowed_v, block_rows):
        s = sign * score_matrix(queries, prepare(emb, metric), metric)  # (Q, R)
        starts = np.flatnonzero(np.r_[True, vrows[1:] != vrows[:-1]])
        run_best = np.maximum.reduceat(s, starts, axis=1)  # (Q, U)
        run_of_col = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(vrows)]))
        first = np.minimum.reduceat(np.where(s == run_best[:, run_of_col], np.arange(len(rows)), len(rows)),
                                    starts, axis=1)  # (Q, U) column of each run's best frame
        u = vrows[starts]
        better = run_best > best[:, u]
        best[:, u] = np.where(better, run_best, best[:, u])
        best_row[:, u] = np.where(better, rows[first], best_row[:, u])
    top = TopK(len(queries), k, True)
    for a in range(0, len(queries), _QUERY_TILE):
        qs = slice(a, a + _QUERY_TILE)
        top.update(best[qs], np.arange(V), qs)
    out = []
    for vrow, s in top.results():
        qi = len(out)
        out.append((best_row[qi, vrow], (sign * s).astype(np.float32)))
    return out
