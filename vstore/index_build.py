"""Building and updating a store's FAISS indexes (the write side of ``vstore.index``).

Below ``index_load`` (which calls ``build_index`` for ``refresh``) and above ``index`` and
``index_faiss``; it neither loads for search nor touches the search cache (a loaded index is
keyed by its files' SHA-256, so a rebuilt one is never served from the cache).

Rows are streamed from the store in chunk-aligned blocks, so memory holds one block plus the
index itself (IVF k-means trains on a sample). FAISS ids are global frame rows and store
video rows, added in order: an append adds exactly rows ``frames..n_frames-1``.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import faiss
import numpy as np
from tqdm.auto import tqdm

from .errors import IndexBuildError, IndexDamagedError, StoreWriteError
from .fsutil import TMP_PREFIX, WriteLock, atomic_write_json, command_line, fsync_dir, fsync_file, temp_path
from .index import (
    META_NAME,
    IndexConfig,
    IndexMeta,
    IndexPart,
    auto_nlist,
    content_digests,
    factory_for,
    index_dir,
    index_status,
    new_index,
    prefix_fingerprint,
    prepare_for_add,
    read_meta,
    read_part,
    train,
    train_rows_for,
)
from .index_faiss import ivf_of, prepare
from .manifest import read_manifest
from .segment import file_sha256
from .store import LOCK_NAME, Store

log = logging.getLogger(__name__)


# -- reading the store ----------------------------------------------------------------------
def iter_rows(store: Store, start: int = 0, block_rows: int = 32_768) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first global row, embeddings (R, D) float32, video rows (R,)) from row ``start`` on,
    in chunk-aligned blocks (like ``Store.iter_blocks``, which always starts at row 0)."""
    base, vbase = 0, 0
    for seg in store.segments:
        if base + seg.n_frames > start:
            chunk = seg.chunk_rows
            step = max(chunk, -(-block_rows // chunk) * chunk)
            a = max(0, start - base)
            videos = seg.read_frame_column("video", a).astype(np.int64) + vbase  # (F - a,)
            a0 = a
            while a < seg.n_frames:
                b = min((a // step + 1) * step, seg.n_frames)
                emb = seg.read_embeddings(a, b, out=np.empty((b - a, seg.dim), dtype=np.float32))
                yield base + a, emb, videos[a - a0:b - a0]
                a = b
        base += seg.n_frames
        vbase += seg.n_videos


def sample_rows(store: Store, rows: np.ndarray, block_rows: int) -> np.ndarray:
    """(len(rows), D) float32 embeddings of sorted global ``rows``, streamed block by block."""
    out = np.empty((len(rows), store.dim), dtype=np.float32)
    filled = 0
    for start, emb, _ in iter_rows(store, int(rows[0]) if len(rows) else store.n_frames, block_rows):
        hi = np.searchsorted(rows, start + len(emb))
        out[filled:hi] = emb[rows[filled:hi] - start]
        filled = hi
        if filled == len(rows):
            break
    assert filled == len(rows), (filled, len(rows))
    return out


def measure_auto(store: Store, config: IndexConfig) -> tuple[str, str]:
    """(kind "flat" | "ivf", why) for ``kind=auto`` on a store of ``auto_measure_min`` frames
    or more, measured on a sample (see ``IndexConfig.auto_measure_min``)."""
    n, d = store.n_frames, int(store.dim)
    rng = np.random.default_rng(config.seed)
    m = min(n, config.auto_sample + config.auto_queries)
    picked = np.sort(rng.choice(n, m, replace=False))
    x = prepare(sample_rows(store, picked, config.block_rows), config.metric)  # (m, D)
    held_out = rng.permutation(m)[:min(config.auto_queries, m // 10)]
    q, base = x[held_out], np.delete(x, held_out, axis=0)  # queries are not in the indexed sample
    k = min(10, len(base))
    flat = new_index(config, "Flat", d)
    flat.add(base)
    nlist = auto_nlist(len(base), config)
    ivf = new_index(config, f"IVF{nlist},Flat", d)
    train(ivf, base[np.random.default_rng(config.seed).permutation(len(base))[:train_rows_for(ivf, config, len(base))]])
    ivf.add(base)
    ivf_of(ivf).nprobe = min(config.nprobe, nlist)

    def one_at_a_time(index: faiss.Index) -> tuple[float, np.ndarray]:
        found, times = [], []
        for row in q:
            t = time.perf_counter()
            found.append(index.search(row[None], k)[1][0])
            times.append(time.perf_counter() - t)
        return float(np.median(times)), np.array(found)

    t_flat, truth = one_at_a_time(flat)
    t_ivf, got = one_at_a_time(ivf)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
    scale = n / len(base)
    flat_ms, ivf_ms = 1000 * t_flat * scale, 1000 * t_ivf * np.sqrt(scale)
    why = (f"auto measured on {len(base)} rows, {len(q)} held-out queries: IVF recall@{k} {recall:.3f} at nprobe "
           f"{ivf_of(ivf).nprobe}, {ivf_ms:.2f} ms per query vs Flat {flat_ms:.2f} ms (scaled to {n} rows)")
    kind = "ivf" if recall >= config.auto_recall and ivf_ms * config.auto_min_speedup <= flat_ms else "flat"
    log.info("%s: %s", why, kind)
    return kind, f"{why}: {kind}"


class _MeanAccumulator:
    """Per-video mean embeddings from a stream of (video rows, embeddings) blocks in store order."""

    def __init__(self, n_frames: np.ndarray, first_video: int, n_videos: int, dim: int):
        self.n_frames = n_frames
        self.first = first_video
        self.sums = np.zeros((n_videos, dim), dtype=np.float64)  # (V_new, D)
        self.counts = np.zeros(n_videos, dtype=np.int64)

    def add(self, video_rows: np.ndarray, emb: np.ndarray) -> None:
        starts = np.flatnonzero(np.r_[True, video_rows[1:] != video_rows[:-1]])
        pos = video_rows[starts] - self.first
        self.sums[pos] += np.add.reduceat(emb.astype(np.float64), starts, axis=0)
        self.counts[pos] += np.diff(np.r_[starts, len(video_rows)])

    def means(self) -> np.ndarray:
        expected = self.n_frames[self.first:self.first + len(self.counts)]
        assert (self.counts == expected).all(), "every frame of every new video was read"
        return (self.sums / np.maximum(self.counts, 1)[:, None]).astype(np.float32)


# -- building -------------------------------------------------------------------------------
@dataclass
class IndexReport:
    action: str  # built | appended | unchanged | relabelled (metadata only)
    reason: str
    frames_added: int
    videos_added: int
    frames: int
    videos: int
    factory: str
    video_factory: str
    metric: str
    generation: int
    seconds: float


class FrameAdder:
    """Adds the frame vectors to the frame index, block by block as the store streams them
    (``iter_rows``'s blocks). ``vstore.index_ray.RayFrameAdder`` adds them in Ray tasks instead."""

    def __init__(self, index: faiss.Index, config: IndexConfig):
        self.index, self.config = index, config

    def add(self, start: int, emb: np.ndarray) -> None:
        """Rows ``start..start+len(emb)-1``, in store order, (R, D) float32."""
        self.index.add(prepare(emb, self.config.metric))

    def finish(self) -> None:
        """Called once after the last block: every row is in ``index`` on return."""


def _new_parts(store: Store, config: IndexConfig, progress: bool,
               adder: Callable[[faiss.Index, IndexConfig], FrameAdder] = FrameAdder) -> tuple[faiss.Index, faiss.Index, int]:
    """Build both indexes from scratch: (frame index, video index, trained rows)."""
    n, d = store.n_frames, int(store.dim)
    frames = new_index(config, factory_for(config, n, d), d)
    n_train = train_rows_for(frames, config, n)
    if n_train:
        rows = np.sort(np.random.default_rng(config.seed).choice(n, size=n_train, replace=False))
        t = time.monotonic()
        with tqdm(total=2, disable=not progress, desc=f"train {factory_for(config, n, d)} on {n_train} vectors",
                  bar_format="{desc}: {n}/{total} steps [{elapsed}]") as bar:
            sample = prepare(sample_rows(store, rows, config.block_rows), config.metric)
            bar.update(1)
            train(frames, sample, gpu=config.gpu_train)
            bar.update(1)
        del sample
        log.info("trained %s on %d vectors in %.1f s", factory_for(config, n, d), n_train, time.monotonic() - t)
    videos = new_index(config, factory_for(config, store.n_videos, d, for_videos=True), d)
    _append(store, frames, videos, 0, 0, config, progress, adder)
    return frames, videos, n


def _append(store: Store, frames: faiss.Index, videos: faiss.Index, from_row: int, from_video: int,
            config: IndexConfig, progress: bool, adder: Callable[[faiss.Index, IndexConfig], FrameAdder] = FrameAdder) -> None:
    """Add frame rows ``from_row..`` and videos ``from_video..`` of ``store`` (ids = rows)."""
    assert frames.ntotal == from_row and videos.ntotal == from_video, "ids are global rows, added in order"
    prepare_for_add(frames, config)
    prepare_for_add(videos, config)
    acc = _MeanAccumulator(store.videos.n_frames, from_video, store.n_videos - from_video, int(store.dim))
    with tqdm(total=store.n_frames - from_row, unit="frame", disable=not progress, desc="index",
              dynamic_ncols=True) as bar:
        add = adder(frames, config)
        for start, emb, vrows in iter_rows(store, from_row, config.block_rows):
            acc.add(vrows, emb)
            add.add(start, emb)
            bar.update(len(emb))
        add.finish()
    means = prepare(acc.means(), config.metric)  # (V_new, D)
    if len(means):
        if not videos.is_trained:
            train(videos, means)
        videos.add(means)
    assert frames.ntotal == store.n_frames and videos.ntotal == store.n_videos


def _write_part(directory: Path, stem: str, index: faiss.Index, factory: str) -> IndexPart:
    tmp = temp_path(directory, ".faiss")
    try:
        faiss.write_index(index, str(tmp))
        fsync_file(tmp)
        size, digest = tmp.stat().st_size, file_sha256(tmp)
        final = directory / f"{stem}-{uuid.uuid4().hex[:12]}.faiss"
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # FAISS reports a failed write (disk full) as RuntimeError
            reason = str(e).splitlines()[0].split("failed: ")[-1][:300]
            raise StoreWriteError(f"could not write the index into {directory} ({reason}); free disk space and "
                                  "rerun `vstore index`: the previous index is untouched") from e
        raise
    return IndexPart(final.name, size, digest, int(index.ntotal), factory)


def _commit(store: Store, meta: IndexMeta) -> None:
    """Make ``meta`` the index, then delete the files it does not list. Caller holds the lock."""
    directory = index_dir(store.path)
    fsync_dir(directory)
    try:
        atomic_write_json(directory / META_NAME, meta.to_dict())
    except OSError as e:
        raise StoreWriteError(f"could not write {directory / META_NAME} ({e.strerror or e}); free disk space and "
                              "rerun `vstore index`: the previous index is untouched") from e
    _clean(directory, keep={meta.frame_part.file, meta.video_part.file})


def _clean(directory: Path, keep: set[str]) -> None:
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX) or (p.suffix == ".faiss" and p.name not in keep):
            p.unlink(missing_ok=True)


# Fields that do not change what the FAISS files hold: changing them rewrites index.json only.
RUNTIME_FIELDS = ("nprobe", "ef_search", "gpu", "gpu_train", "block_rows")
# What ``auto`` measured (results, not settings): a config that does not carry them changes nothing.
MEASURED_FIELDS = ("auto_choice", "auto_rows")


def _build_settings(config: IndexConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS + MEASURED_FIELDS}


def _family(factory: str) -> str:
    """"IVF4000_HNSW32,Flat" -> "IVF_HNSW,Flat": the structure, without sizes."""
    return "".join(c for c in factory if not c.isdigit())


def _growth_reason(meta: IndexMeta, config: IndexConfig, store: Store) -> Optional[str]:
    """Why appending would be wrong for an ``auto`` index that has grown a lot."""
    if config.kind != "auto":
        return None
    if config.auto_choice and store.n_frames > 4 * max(config.auto_rows, 1):
        return (f"the store has grown {store.n_frames / max(config.auto_rows, 1):.1f}x since auto measured "
                f"{config.auto_choice} on {config.auto_rows} frames: measuring again")
    if not config.auto_choice and store.n_frames >= config.auto_measure_min:
        return f"the store reached {config.auto_measure_min:,} frames, where auto measures Flat against IVF"
    now = factory_for(config, store.n_frames, int(store.dim))
    if _family(now) != _family(meta.frame_part.factory):
        return f"auto now chooses {now} (was {meta.frame_part.factory})"
    if now.startswith("IVF") and store.n_frames > 4 * max(meta.trained_rows, 1):
        return f"the store has grown {store.n_frames / max(meta.trained_rows, 1):.1f}x since the IVF lists were trained"
    return None


def _plan(store: Store, meta: Optional[IndexMeta], config: IndexConfig, rebuild: bool) -> tuple[str, str]:
    """(build | append | meta | none, reason)."""
    status = index_status(store, meta)
    if rebuild:
        return "build", "rebuild asked for"
    if meta is None or status.state in ("missing", "rebuild", "newer"):
        return "build", status.reason
    if _build_settings(meta.config) != _build_settings(config):
        return "build", "index settings changed"
    if status.state == "append":
        grown = _growth_reason(meta, config, store)
        return ("build", grown) if grown else ("append", status.reason)
    if meta.generation != store.generation or asdict(meta.config) != asdict(config):
        return "meta", status.reason or "search settings changed"
    return "none", "up to date"


def build_index(store_path: str | Path, config: Optional[IndexConfig] = None, *, rebuild: bool = False,
                progress: bool = False, adder: Callable[[faiss.Index, IndexConfig], FrameAdder] = FrameAdder) -> IndexReport:
    """Create or bring up to date the index of the store at ``store_path``.

    ``config`` None keeps the existing index's settings (defaults for a new one); a config
    whose build settings differ from the existing index's rebuilds it. Otherwise only rows
    added since are indexed (none after ``compact``: index.json is relabelled), and the
    index is rebuilt when rows shifted (``verify --repair``) or its files are damaged.
    Holds the store's write lock throughout. ``adder`` adds the frame vectors (see
    ``FrameAdder``; ``vstore.index_ray`` passes one that adds them on a Ray cluster).
    """
    store_path = Path(store_path)
    t0 = time.monotonic()
    read_manifest(store_path)  # a clear StoreNotFoundError before trying to lock a missing directory
    with WriteLock(store_path / LOCK_NAME, command_line()):
        directory = index_dir(store_path)
        directory.mkdir(exist_ok=True)
        with Store.open(store_path) as store:
            if store.n_frames == 0:
                raise IndexBuildError(f"{store_path} holds no frames yet; build it first")
            try:
                meta = read_meta(store_path)
            except IndexDamagedError as e:
                log.warning("%s; rebuilding it", e)
                meta = None
            config = config or (meta.config if meta else IndexConfig())
            if meta is not None and config.kind == "auto" == meta.config.kind:  # what auto measured stays
                config = replace(config, auto_choice=meta.config.auto_choice, auto_rows=meta.config.auto_rows)
            plan, reason = _plan(store, meta, config, rebuild)
            frames = videos = None
            if plan == "append":
                assert meta is not None
                try:
                    frames = read_part(store_path, meta, meta.frame_part)
                    videos = read_part(store_path, meta, meta.video_part)
                except IndexDamagedError as e:
                    log.warning("%s; rebuilding it", e)
                    plan, reason = "build", str(e)
            if plan in ("none", "meta"):
                assert meta is not None
                try:  # `vstore index` also repairs an index whose files were damaged or crafted
                    read_part(store_path, meta, meta.frame_part)
                    read_part(store_path, meta, meta.video_part)
                except IndexDamagedError as e:
                    log.warning("%s; rebuilding it", e)
                    plan, reason = "build", str(e)
            if plan in ("none", "meta"):
                assert meta is not None
                meta = replace(meta, generation=store.generation, config=config,
                               content=content_digests(store, store.n_frames))
                if plan == "meta":
                    _commit(store, meta)
                else:
                    _clean(directory, {meta.frame_part.file, meta.video_part.file})
                return _report("relabelled" if plan == "meta" else "unchanged", reason, 0, 0, store, meta, t0)
            d = int(store.dim)
            if plan == "append":
                assert meta is not None and frames is not None and videos is not None
                log.info("adding %d new frame rows to the index of %s", store.n_frames - meta.frames, store_path)
                _append(store, frames, videos, meta.frames, meta.videos, config, progress, adder)
                trained, added = meta.trained_rows, (store.n_frames - meta.frames, store.n_videos - meta.videos)
                f_factory, v_factory = meta.frame_part.factory, meta.video_part.factory
            else:
                log.info("building the index of %s (%s)", store_path, reason)
                if config.kind == "auto" and store.n_frames >= config.auto_measure_min:
                    kind, why = measure_auto(store, config)
                    config, reason = replace(config, auto_choice=kind, auto_rows=store.n_frames), f"{reason}; {why}"
                elif config.kind == "auto":
                    config = replace(config, auto_choice="", auto_rows=0)
                frames, videos, trained = _new_parts(store, config, progress, adder)
                added = (store.n_frames, store.n_videos)
                f_factory = factory_for(config, store.n_frames, d)
                v_factory = factory_for(config, store.n_videos, d, for_videos=True)
            new_meta = IndexMeta(
                config=config, generation=store.generation, dim=d, encoder_id=(store.encoder or {}).get("id"),
                videos=store.n_videos, frames=store.n_frames, fingerprint=prefix_fingerprint(store, store.n_videos),
                frame_part=_write_part(directory, "frames", frames, f_factory),
                video_part=_write_part(directory, "videos", videos, v_factory),
                trained_rows=trained, build_seconds=round(time.monotonic() - t0, 3),
                content=content_digests(store, store.n_frames))
            _commit(store, new_meta)
            return _report("appended" if plan == "append" else "built", reason, added[0], added[1], store,
                           new_meta, t0)


def _report(action: str, reason: str, frames_added: int, videos_added: int, store: Store, meta: IndexMeta,
            t0: float) -> IndexReport:
    return IndexReport(action=action, reason=reason, frames_added=frames_added, videos_added=videos_added,
                       frames=meta.frames, videos=meta.videos, factory=meta.frame_part.factory,
                       video_factory=meta.video_part.factory, metric=meta.config.metric,
                       generation=store.generation, seconds=time.monotonic() - t0)


