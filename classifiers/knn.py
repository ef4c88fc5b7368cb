"""k-nearest-neighbour baseline: cosine kNN with a distance-weighted vote, no training.

``level="video"``: each test video's normalised mean embedding finds its ``k`` nearest
training videos (normalised means). ``level="frame"``: each test frame finds its ``k``
nearest training frames (through the store's frame index restricted to training rows when
the index is fresh and cosine, else by exact search streamed from the store), and the votes
of all of a video's frames are summed.

A neighbour at cosine similarity ``s`` votes for its label with weight ``1 / (1 - s)``, i.e.
the inverse cosine distance (scikit-learn's ``weights="distance"``), floored at distance
1e-6. Each test video's votes are normalised to sum to 1.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from vstore import Store, VStoreError
from vstore.search import frame_neighbours

log = logging.getLogger(__name__)

LEVELS = ("video", "frame")
MIN_DISTANCE = 1e-6
_TILE = 1024  # test vectors scored at once


def vote_weights(similarity: np.ndarray) -> np.ndarray:
    """Inverse cosine distance of neighbours at cosine ``similarity``."""
    return 1.0 / np.maximum(1.0 - similarity.astype(np.float64), MIN_DISTANCE)


def _labelled_train(store: Store, train_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(store video rows, label indices) of the labelled training videos."""
    rows = store.rows(list(train_ids))
    y = store.label_indices(list(train_ids))
    keep = y >= 0
    if not keep.any():
        raise VStoreError("kNN needs labelled training videos; none of the training videos has a label")
    if not keep.all():
        log.warning("kNN: %d unlabelled training video(s) ignored", int((~keep).sum()))
    return rows[keep], y[keep]


def _normalise(votes: np.ndarray) -> np.ndarray:
    total = votes.sum(axis=1, keepdims=True)
    uniform = np.full_like(votes, 1.0 / votes.shape[1])
    return np.where(total > 0, votes / np.where(total > 0, total, 1.0), uniform)


def knn_predict(store: Store, train_ids: Sequence[str], test_ids: Sequence[str], k: int = 10,
                level: str = "video", *, use_index: bool = True) -> np.ndarray:
    """(n_test, n_labels) class scores over ``store.label_names`` (rows sum to 1)."""
    if level not in LEVELS:
        raise ValueError(f"kNN level must be one of {', '.join(LEVELS)}, got {level!r}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_labels = len(store.label_names)
    train_rows, y_train = _labelled_train(store, train_ids)
    test_rows = store.rows(list(test_ids))
    votes = np.zeros((len(test_rows), n_labels), dtype=np.float64)  # (n_test, L)
    if not len(test_rows):
        return votes.astype(np.float32)
    if level == "video":
        means = store.video_means(normalize=True)  # (V, D)
        train = means[train_rows]  # (n_train, D)
        kk = min(int(k), len(train_rows))
        for a in range(0, len(test_rows), _TILE):
            sim = means[test_rows[a:a + _TILE]] @ train.T  # (t, n_train)
            nn = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]  # (t, kk)
            w = vote_weights(np.take_along_axis(sim, nn, axis=1))
            np.add.at(votes[a:a + _TILE], (np.arange(len(nn))[:, None], y_train[nn]), w)
        return _normalise(votes).astype(np.float32)
    # frame level: every test frame votes through its k nearest training frames
    table = store.videos
    allowed = np.zeros(len(table), dtype=bool)
    allowed[train_rows] = True
    label_of_video = np.full(len(table), -1, dtype=np.int64)
    label_of_video[train_rows] = y_train
    kk = min(int(k), int(table.n_frames[train_rows].sum()))
    group = max(1, 16_384 // max(1, int(table.n_frames[test_rows].max())))  # test videos per search batch
    for a in range(0, len(test_rows), group):
        rows = test_rows[a:a + group]
        frames = np.concatenate([store.get_embeddings(table.ids[r], dtype=np.float32) for r in rows])  # (F, D)
        owner = np.repeat(np.arange(len(rows)), table.n_frames[rows])  # (F,) position in this group
        found = frame_neighbours(store, frames, kk, metric="cosine", allowed_v=allowed, use_index=use_index)
        counts = np.array([len(r) for r, _ in found])
        nrows = np.concatenate([r for r, _ in found]).astype(np.int64)  # (sum counts,) training frame rows
        sims = np.concatenate([s for _, s in found])
        voter = a + np.repeat(owner, counts)  # test video (position in test_ids) of each vote
        vrows = table.video_rows_of(nrows)
        np.add.at(votes, (voter, label_of_video[vrows]), vote_weights(sims))
    return _normalise(votes).astype(np.float32)
