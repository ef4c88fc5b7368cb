"""Loading a store's FAISS indexes: checked against index.json, kept in memory between searches.

Every field of each FAISS file is checked before and after ``faiss.read_index`` sees it
(``vstore.index.read_part``: FAISS may crash, hang or allocate wildly on crafted bytes). The
index of the last store loaded stays in memory, so repeated searches pay the check and the
read once; ``invalidate_cache`` forgets it. This is the top of the index modules: it may
build (``load_index(refresh=True)``), nothing below it loads.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import faiss

from .errors import IndexDamagedError, IndexNotFoundError, StaleIndexError
from .index import META_NAME, IndexConfig, IndexMeta, damaged, index_dir, index_status, read_meta, read_part, stale_error
from .index_build import build_index
from .index_faiss import faiss_message
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class LoadedIndex:
    """Both FAISS indexes of a store, checked and ready to search."""

    meta: IndexMeta
    frames: faiss.Index
    videos: faiss.Index
    store_path: Path
    _gpu: dict = field(default_factory=dict, repr=False)

    @property
    def config(self) -> IndexConfig:
        return self.meta.config

    def gpu_copy(self, which: str) -> Optional[faiss.Index]:
        """A GPU copy of the frame or video index when a GPU is present and the copy gives the
        same results as the CPU index (exact Flat, or IVF with an exact coarse quantizer)."""
        if not self.config.gpu or faiss.get_num_gpus() == 0:
            return None
        if which not in self._gpu:
            cpu = self.frames if which == "frames" else self.videos
            self._gpu[which] = None
            base = faiss.downcast_index(cpu)
            ivf = base if isinstance(base, faiss.IndexIVF) else None
            exact = isinstance(base, faiss.IndexFlat) or (
                ivf is not None and isinstance(ivf, faiss.IndexIVFFlat)
                and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat))
            if exact:
                try:
                    self._gpu[which] = faiss.index_cpu_to_all_gpus(cpu)
                except (RuntimeError, AttributeError) as e:  # pragma: no cover - needs a GPU
                    log.info("searching on CPU: this index cannot move to GPU (%s)", faiss_message(e))
        return self._gpu[which]


# Loaded indexes per store path: searching twice does not reread (and recheck) the files.
_CACHE: dict[Path, tuple[str, LoadedIndex]] = {}


def invalidate_cache(store_path: Optional[str | Path] = None) -> None:
    """Forget the loaded index of ``store_path`` (of every store when None), freeing its memory;
    the next search reads and checks the files again."""
    _CHECKED.clear()
    if store_path is None:
        _CACHE.clear()
    else:
        _CACHE.pop(Path(store_path).resolve(), None)


def load_index(store: Store, *, refresh: bool = False, progress: bool = False) -> tuple[LoadedIndex, Store]:
    """The store's index, checked and usable with this snapshot.

    Raises ``IndexNotFoundError``, ``StaleIndexError`` or ``IndexDamagedError``; with
    ``refresh`` it instead updates (or rebuilds) the index first and returns it with a newer
    snapshot of the store, which the caller closes: returns (index, store or newer snapshot).
    """
    opened: Optional[Store] = None
    for attempt in range(3):
        current = opened or store
        try:
            return _load_usable(current), current
        except (IndexNotFoundError, StaleIndexError, IndexDamagedError):
            if not refresh or attempt == 2:
                if opened is not None:
                    opened.close()
                raise
        report = build_index(store.path, progress=progress)
        invalidate_cache(store.path)
        log.info("index of %s %s (%s)", store.path, report.action, report.reason)
        if opened is not None:
            opened.close()
        opened = Store.open(store.path)
    raise AssertionError("unreachable")  # pragma: no cover


# Per store snapshot: the index.json (inode, mtime, size) it was last checked against, and
# the index that check found usable. A snapshot's segments never change, so while index.json
# is the same file a repeated search skips re-reading it and re-summing the segments'
# checksums (2.7 ms of a 5 ms search at 172,800 frames; `vstore serve` searches one snapshot
# thousands of times). Any replacement of index.json (always a rename) changes the inode.
_CHECKED: "weakref.WeakKeyDictionary[Store, tuple[tuple, LoadedIndex]]" = weakref.WeakKeyDictionary()


def _meta_stamp(store: Store) -> Optional[tuple]:
    try:
        st = os.stat(index_dir(store.path) / META_NAME)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _load_usable(store: Store) -> LoadedIndex:
    stamp = _meta_stamp(store)
    checked = _CHECKED.get(store)
    if stamp is not None and checked is not None and checked[0] == stamp \
            and any(loaded is checked[1] for _, loaded in _CACHE.values()):  # not invalidated since
        return checked[1]
    loaded = _check_and_load(store)
    if stamp is not None and stamp == _meta_stamp(store):
        _CHECKED[store] = (stamp, loaded)
    return loaded


def _check_and_load(store: Store) -> LoadedIndex:
    meta = read_meta(store.path)
    status = index_status(store, meta)
    if status.state == "missing":
        raise IndexNotFoundError(f"{store.path} has no search index yet; run `vstore index {store.path}` "
                                 "(or search with --refresh)")
    assert meta is not None
    if not status.usable:
        raise stale_error(store, meta, status)
    key = store.path.resolve()
    stamp = f"{meta.frame_part.sha256}:{meta.video_part.sha256}"
    cached = _CACHE.get(key)
    if cached and cached[0] == stamp:
        cached[1].meta = meta
        return cached[1]
    for attempt in range(3):  # a concurrent `vstore index` may replace the files as we read them
        try:
            loaded = LoadedIndex(meta, read_part(store.path, meta, meta.frame_part),
                                 read_part(store.path, meta, meta.video_part), store.path)
            break
        except IndexDamagedError:
            newer = read_meta(store.path)
            if attempt == 2 or newer is None or newer == meta:
                raise
            meta = newer
            if not index_status(store, meta).usable:
                raise stale_error(store, meta, index_status(store, meta)) from None
    if loaded.meta.dim != store.dim:
        raise damaged(store.path, META_NAME, f"{loaded.meta.dim}-d index for a {store.dim}-d store")
    _CACHE.clear()  # hold at most one store's index in memory
    _CACHE[key] = (f"{meta.frame_part.sha256}:{meta.video_part.sha256}", loaded)
    return loaded

