"""Synthetic stores of frame-embedding sequences whose answer is known (tests, benchmarks).

Three kinds of labelled sequences, each video ``T`` frames of ``D``-d unit-scale vectors:

* ``order``: two classes holding the same frames in opposite order. A fixed direction ``u``
  of embedding space fades in (class ``fade-in``: weight ``t / (T - 1)``) or fades out
  (``fade-out``: ``1 - t / (T - 1)``) over per-video random content (a random vector per
  video plus per-frame noise). The multiset of fade weights is the same in both classes, so
  anything that pools frames without order (the mean-pooled ``linear``) is at chance.
* ``content``: ``n_classes`` classes, each a fixed direction present in every frame (with
  ``content_strength``) over the same per-video random content; order carries nothing.
* ``mixed``: four classes, two told apart by content (``content-0``, ``content-1``) and
  two only by order (``fade-in``, ``fade-out``).

``write_sequence_store`` puts such arrays into a real store (``StoreWriter``), with a stored
split, so training runs through exactly the code users run. Each video's key frame is the
reference study's (``sha256(id) % T`` of its T frames): its embedding is stored (no pixels), so
``random-frame`` trains on these stores (without mixup or fine-tuning, which need pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

KINDS = ("order", "content", "mixed")


@dataclass
class SequenceConfig:
    kind: str = "order"  # order | content | mixed
    n_videos: int = 600  # total videos (classes balanced)
    dim: int = 64  # embedding size
    frames: int = 24  # frames per video
    n_classes: int = 2  # content: number of classes; order: always 2; mixed: always 4
    fade: float = 0.5  # norm of the fading direction at full weight (per-video content: norm 1)
    content_strength: float = 0.5  # content: norm of the class direction
    noise: float = 0.5  # per-frame noise norm (the per-video content vector has norm 1)
    scale: float = 10.0  # everything times this: CLIP ViT-B/32's unnormalised image embeddings have norm ~10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "order":
            self.n_classes = 2
        if self.kind == "mixed":
            self.n_classes = 4
        if self.n_videos < 2 * self.n_classes or self.frames < 2 or self.dim < 2:
            raise ValueError("need >= 2 videos per class, >= 2 frames and >= 2 dimensions")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_sequences(cfg: SequenceConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, y, label_names)``: X (V, T, D) float32, y (V,) int; classes balanced, shuffled."""
    rng = np.random.default_rng(cfg.seed)
    V, T, D, C = cfg.n_videos, cfg.frames, cfg.dim, cfg.n_classes
    y = rng.permutation(np.arange(V) % C)  # (V,)
    x = _unit(rng, V, D)[:, None, :] + cfg.noise * _unit(rng, V * T, D).reshape(V, T, D)  # (V, T, D)
    ramp = np.linspace(0.0, 1.0, T)  # (T,)
    directions = _unit(np.random.default_rng(10_000 + cfg.seed), C, D)  # (C, D) fixed per data set
    if cfg.kind == "order":
        names = ["fade-in", "fade-out"]
        w = np.where(y[:, None] == 0, ramp[None], ramp[::-1][None])  # (V, T)
        x += cfg.fade * w[..., None] * directions[0]
    elif cfg.kind == "content":
        names = [f"content-{c}" for c in range(C)]
        x += cfg.content_strength * directions[y][:, None, :]
    else:  # two content classes and one fade-in / fade-out pair
        names = ["content-0", "content-1", "fade-in", "fade-out"]
        c = y < 2
        x[c] += cfg.content_strength * directions[y[c]][:, None, :]
        w = np.where((y[~c] == 2)[:, None], ramp[None], ramp[::-1][None])  # (V_order, T)
        x[~c] += cfg.fade * w[..., None] * directions[2]
    return (cfg.scale * x).astype(np.float32), y.astype(np.int64), names


def write_sequence_store(path: str | Path, x: np.ndarray, y: np.ndarray, label_names: list[str], *,
                         test_size: float = 0.2, split_seed: int = 0, segment_videos: int = 256,
                         ids: Optional[list[str]] = None) -> Path:
    """A store at ``path`` holding ``x`` (V, T, D) labelled ``label_names[y]``, with a stored
    stratified split (``test_size``; 0 = no split written)."""
    from vstore import Store, StoreConfig
    from vstore.records import VideoEntry, key_frame_index
    from vstore.split import SplitConfig, make_split, save_split
    from vstore.writer import StoreWriter

    path = Path(path)
    V, T, D = x.shape
    ids = ids or [f"v{i:06d}" for i in range(V)]
    Store.open_or_create(path, StoreConfig(segment_videos=segment_videos)).close()
    identity = {"name": "synthetic", "id": f"synthetic:{D}", "spec": None, "dim": D}
    with StoreWriter(path, identity, build_info={"synthetic": True}) as w:
        for i in range(V):
            key = key_frame_index(ids[i], T)  # the study's key frame
            w.add(VideoEntry(id=ids[i], embeddings=x[i], frame_index=np.arange(T), timestamp=np.arange(T) / 25.0,
                             label=label_names[int(y[i])], source="synthetic", total_frames=T,
                             key_frame_index=key, key_frame_time=key / 25.0, key_frame_embedding=x[i, key]))
    if test_size:
        with Store.open(path) as s:
            save_split(path, make_split(s, SplitConfig(test_size=test_size, seed=split_seed)))
    return path


def make_sequence_store(path: str | Path, cfg: SequenceConfig, test_size: float = 0.2) -> Path:
    x, y, names = make_sequences(cfg)
    return write_sequence_store(path, x, y, names, test_size=test_size, split_seed=cfg.seed)
