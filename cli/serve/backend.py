"""The served state: one Store snapshot with its loaded index, swapped when a generation commits.

This is the only module of ``cli.serve`` that touches vstore's index loading and search
functions, so a rename there costs one edit here.

A ``Generation`` pins one committed snapshot (``Store.open``) whose index was checked usable.
A watcher thread stats ``manifest.json`` and ``index/index.json`` every ``poll_s``; when
either changes it opens the new snapshot and its index (refreshing a stale index when
``refresh``), then swaps the pointer under a lock. Requests hold a reference to the
generation they started on; a retired generation is closed when its last request ends.
A half-written state is never served: a store snapshot is only what a manifest committed,
and the swap happens only once its index loaded and checked.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional, TypeVar

import numpy as np

from vstore import Store
from vstore.errors import (
    IndexDamagedError,
    IndexNotFoundError,
    QueryError,
    StaleIndexError,
    StoreLockedError,
    VStoreError,
)
from vstore.index import index_dir, read_meta
from vstore.index_load import load_index
from vstore.search import Hit, check_query, search

from .batcher import MicroBatcher
from .config import ServeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
# Errors meaning "this snapshot and the index on disk no longer match": retried on a newer one.
_RETRY = (StaleIndexError, IndexDamagedError, IndexNotFoundError)


@dataclass(frozen=True)
class SearchParams:
    """Everything of a search but the query vector; equal params can share one FAISS search."""

    k: int = 10
    level: str = "frame"
    per_video: bool = False
    labels: Optional[tuple[str, ...]] = None
    split: Optional[str] = None
    exclude: tuple[str, ...] = ()
    nprobe: Optional[int] = None
    ef: Optional[int] = None


@dataclass
class Generation:
    """One committed store snapshot whose index loaded; closed when retired and unused."""

    store: Store
    index: dict[str, Any]  # what /api/info says about the index
    refs: int = 0
    retired: bool = False
    opened: float = field(default_factory=time.time)
    cache: dict[str, Any] = field(default_factory=dict)  # answers computed once per generation (the map)

    @property
    def generation(self) -> int:
        return self.store.generation


class Backend:
    """The store, its index and the encoder, loaded once and kept current."""

    def __init__(self, path: str | Path, config: Optional[ServeConfig] = None, watch: bool = True):
        self.path = Path(path)
        self.config = config or ServeConfig()
        self._lock = threading.Lock()  # guards _current and refs
        self._reload_lock = threading.Lock()  # one reload at a time
        self._once_lock = threading.Lock()  # per-generation answers (Backend.once)
        self._stamp = self._stamp_now()
        self.index_problem: Optional[str] = None  # why the newest generation is not served, if it is not
        self._current = self._open_generation(first=True)
        self._encoder: Any = None
        self._encoder_error: Optional[str] = None
        self._encoder_lock = threading.Lock()
        if self._current.store.encoder and self._current.store.encoder.get("spec"):
            try:  # loaded once, up front: the first image or text query does not pay for it
                self.encoder()
            except EncoderMissing as e:
                log.warning("%s; vector and stored-frame queries still work", e)
        self.batcher = MicroBatcher(self._run_batch, max_batch=self.config.max_batch,
                                    window_s=self.config.batch_window_ms / 1000, threads=self.config.search_threads,
                                    thread_init=self._search_thread_init)
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="vstore-serve-watch", daemon=True)
            self._watcher.start()

    # -- generations ---------------------------------------------------------------------------
    def _stamp_now(self) -> tuple:
        out = []
        for p in (self.path / "manifest.json", index_dir(self.path) / "index.json"):
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _open_generation(self, first: bool = False) -> Generation:
        """Open the newest committed snapshot with a usable index (raises VStoreError)."""
        store = Store.open(self.path)
        try:
            loaded, snapshot = load_index(store, refresh=self.config.refresh)
        except BaseException:
            store.close()
            raise
        if snapshot is not store:
            store.close()
        meta = loaded.meta
        info = {"state": "fresh", "generation": meta.generation, "frames": meta.frames, "videos": meta.videos,
                "kind": meta.config.kind, "metric": meta.config.metric, "factory": meta.frame_part.factory,
                "updated": meta.updated}
        return Generation(snapshot, info)

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.check()
            except Exception:  # never let the watcher die; the next poll retries
                log.exception("checking %s for a new generation failed", self.path)

    def check(self, force: bool = False) -> bool:
        """Serve the newest committed generation if the files changed; True when swapped."""
        stamp = self._stamp_now()
        if stamp == self._stamp and not force:
            return False
        with self._reload_lock:
            if stamp == self._stamp and not force:
                return False
            try:
                new = self._open_generation()
            except StoreLockedError as e:  # a writer holds the store: retry at the next poll
                self.index_problem = f"waiting to refresh the index: {e}"
                return False
            except _RETRY as e:  # keep serving the last good generation, say why
                self.index_problem = str(e)
                self._stamp = stamp
                log.warning("still serving generation %d: %s", self.current.generation, e)
                return False
            except VStoreError as e:  # e.g. a manifest replaced as we read: retry at the next poll
                self.index_problem = str(e)
                log.warning("cannot open the new state of %s yet: %s", self.path, e)
                return False
            self._stamp = stamp
            self.index_problem = None
            cur = self.current
            if new.generation == cur.generation and new.index == cur.index:
                new.store.close()
                return False
            self._swap(new)
            log.info("now serving generation %d (index generation %s)", new.generation, new.index["generation"])
            return True

    def _swap(self, new: Generation) -> None:
        with self._lock:
            old, self._current = self._current, new
            old.retired = True
            idle = old.refs == 0
        if idle:
            old.store.close()

    @property
    def current(self) -> Generation:
        return self._current

    @contextmanager
    def snapshot(self) -> Iterator[Generation]:
        """The generation to answer one request from, held until the request ends."""
        with self._lock:
            g = self._current
            g.refs += 1
        try:
            yield g
        finally:
            with self._lock:
                g.refs -= 1
                idle = g.retired and g.refs == 0
            if idle:
                g.store.close()

    async def run(self, fn: Callable[[Generation], Awaitable[T]]) -> T:
        """``await fn(generation)``, retried on the newest generation when the one it ran on went
        stale (a `vstore index` replaced the index under it): a swap never fails a request."""
        for attempt in range(3):
            with self.snapshot() as g:
                try:
                    return await fn(g)
                except _RETRY:
                    if attempt == 2:
                        raise
            await asyncio.to_thread(self.check, True)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.batcher.close()
        with self._lock:
            g = self._current
            g.retired = True
            idle = g.refs == 0
        if idle:
            g.store.close()

    def once(self, g: Generation, key: str, make: Callable[[], T]) -> T:
        """``make()`` computed once per generation and kept with it (one computation at a time:
        concurrent first requests wait for the first one's answer)."""
        with self._once_lock:
            if key not in g.cache:
                g.cache[key] = make()
            return g.cache[key]

    def embedding_map(self, g: Generation) -> Any:
        """The map of ``g``'s videos (``classifiers.embedding_map``, as `vstore map` makes it)."""
        from classifiers.embedding_map import MapConfig, compute_map
        cfg = MapConfig(method=self.config.map_method, seed=self.config.map_seed)
        return compute_map(g.store, cfg)

    # -- encoder -------------------------------------------------------------------------------
    def encoder(self):
        """The store's encoder, loaded once (``VStoreError`` when it cannot be had)."""
        with self._encoder_lock:
            if self._encoder is None and self._encoder_error is None:
                from encoders.queries import store_encoder
                try:
                    self._encoder = store_encoder(self.current.store, self.config.device)
                except VStoreError as e:
                    self._encoder_error = str(e)
            if self._encoder is None:
                raise EncoderMissing(f"image and text queries need the store's encoder, which cannot be loaded: "
                                     f"{self._encoder_error}")
            return self._encoder

    # -- search --------------------------------------------------------------------------------
    async def search_vector(self, g: Generation, q: np.ndarray, params: SearchParams) -> list[Hit]:
        """Hits of one (D,) query on generation ``g``, through the micro-batcher (the event loop
        awaits a search thread; it never blocks on the search)."""
        q = check_query(g.store, q)
        if q.ndim != 1:
            raise QueryError(f"give one ({g.store.dim},) vector per request, got shape {q.shape}")
        return await self.batcher.submit_async((id(g), params), (g, q))

    def _search_thread_init(self) -> None:
        """FAISS's OpenMP threads for searches on this thread (``faiss_threads``; 0 = FAISS's
        default). OpenMP keeps the count per thread: set on the main thread, it would not
        reach the search threads."""
        if self.config.faiss_threads:
            import faiss
            faiss.omp_set_num_threads(self.config.faiss_threads)

    def _run_batch(self, key: tuple, items: list[tuple[Generation, np.ndarray]]) -> list[list[Hit]]:
        params: SearchParams = key[1]
        g = items[0][0]
        Q = np.stack([q for _, q in items])  # (B, D)
        out = search(g.store, Q, params.k, label=list(params.labels) if params.labels else None, split=params.split,
                     exclude_videos=params.exclude, per_video=params.per_video, nprobe=params.nprobe, ef=params.ef,
                     level=params.level)
        return out


class EncoderMissing(VStoreError):
    """Text or image queries asked of a server whose encoder could not be loaded."""


def index_summary(backend: Backend, g: Generation) -> dict[str, Any]:
    """The served index's state for /api/info: what is served, and why a newer state is not."""
    try:
        meta = read_meta(g.store.path)
        on_disk = None if meta is None else meta.generation
    except IndexDamagedError as e:
        on_disk, backend.index_problem = None, str(e)
    problem = backend.index_problem
    return {**g.index, "state": "stale" if problem else "fresh", "problem": problem, "on_disk_generation": on_disk}
