"""A memory-mapped training view of a store: every video's frames as one padded (V, T, D)
float16 array and a (V, T) mask, written once per store generation, then mapped with
``np.memmap`` and wrapped as tensors without copying (see docs/FORMAT.md, "Training view").

Layout: ``STORE/cache/train-view/g<generation>-t<T>/`` holding ``frames.f16`` (raw
C-order float16), ``valid.u8`` (raw uint8 0/1) and ``view.json`` (shape, generation, a
SHA-256 of the ids in order, SHA-256, size and modification time of both files). It is
written block by block from the segments (bounded memory) into a temporary directory, the
files' checksums are recomputed from disk and compared with those of the blocks written, and
the directory is renamed into place: a crash leaves no half view.

Opening checks it, and a view that fails a check is a cache to rebuild, never data to use:
a damaged ``view.json``, a view of other videos, or a file of the wrong size is rebuilt at
once; a file whose modification time is not the one recorded (it was written since) has its
SHA-256 recomputed, and is rebuilt if that differs. (A file changed while keeping its size and
modification time, e.g. bit rot under the file system, is only caught by ``verify_train_view``;
the store's own chunks carry checksums, the view is a cache of them.) When the rebuilt view
fails too, the error is raised.

Which views are kept: views of other generations are removed when a view is opened, so a
store that changed (a new generation) is never trained from stale frames. Views of the same
generation with another ``T`` (``--max-frames``) are kept: each is valid, and a user who
alternates between two caps would otherwise rewrite a view every run; each costs its size on
disk until the next generation (``vstore compact``, a build) removes it, or the user deletes
``cache/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import StoreCorruptError
from .store import Store

log = logging.getLogger(__name__)

VIEW_DIR = Path("cache") / "train-view"
FILE_BYTES = 8 << 20  # checksums are computed over reads of this size
SYNC_BYTES = 64 << 20  # the view is written to disk (and out of the page cache) this many bytes at a time


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _drop_cache(fd: int, upto: int) -> None:
    """Let the kernel drop the file's pages before ``upto`` from the page cache (after they
    reached the disk): writing or checking a view many times the memory limit of a cgroup
    must not fill that cgroup with its page cache. Advice only (no-op where unsupported)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, upto, os.POSIX_FADV_DONTNEED)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        done = 0
        while chunk := f.read(FILE_BYTES):
            h.update(chunk)
            done += len(chunk)
            if done % SYNC_BYTES < FILE_BYTES:
                _drop_cache(f.fileno(), done)
    return h.hexdigest()


class _SyncedWriter:
    """Appends to a new file, hashing what it writes; every ``SYNC_BYTES`` the data is forced
    to disk and dropped from the page cache, so dirty pages stay bounded (a view written
    through a shared mapping left its whole size dirty until the end: more than a cgroup's
    limit, the kernel kills the process rather than write back in time)."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.written = self.synced = 0

    def write(self, a: np.ndarray) -> None:
        b = np.ascontiguousarray(a).data
        self.f.write(b)
        self.sha.update(b)
        self.written += b.nbytes
        if self.written - self.synced >= SYNC_BYTES:
            self.sync()

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        _drop_cache(self.f.fileno(), self.written)
        self.synced = self.written

    def close(self) -> str:
        self.sync()
        self.f.close()
        return self.sha.hexdigest()


@dataclass
class TrainView:
    path: Path
    ids: list[str]
    frames: np.memmap  # (V, T, D) float16, copy-on-write mapping (the file is never written)
    valid: np.memmap  # (V, T) uint8

    def rows(self, video_ids: Sequence[str]) -> np.ndarray:
        pos = {v: i for i, v in enumerate(self.ids)}
        return np.array([pos[v] for v in video_ids], dtype=np.int64)

    def advise_random(self) -> None:
        """Tell the kernel the frames will be read in random order (a shuffled epoch over a
        view larger than memory): no readahead, so a 12 KB row costs a 12 KB read, not the
        128 KB+ window that evicts the rows still to be gathered (measured: 500 MB/s read
        from disk for ~30 MB/s of rows). Advice only; no-op without ``mmap.madvise``."""
        mm = getattr(self.frames, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)


def _view_path(store: Store, T: int) -> Path:
    return Path(store.path) / VIEW_DIR / f"g{store.generation}-t{T}"


def open_train_view(store: Store, max_frames: Optional[int] = None, block_videos: int = 256,
                    progress: bool = False) -> TrainView:
    """The store's training view (written first if this generation has none, rewritten if the
    one on disk fails a check; see the module doc)."""
    n = store.videos.n_frames
    T = int(min(n.max(), max_frames)) if max_frames else int(n.max())
    path = _view_path(store, T)
    root = path.parent
    if root.is_dir():  # invalidate: views of other generations (same generation, other T: kept)
        for old in root.iterdir():
            if (not old.name.startswith(f"g{store.generation}-") and not old.name.startswith(".tmp-")
                    and old.is_dir()):
                shutil.rmtree(old, ignore_errors=True)
    if (path / "view.json").is_file():
        try:
            return _map(store, path)
        except StoreCorruptError as e:
            log.warning("the training view %s failed a check (%s); rebuilding it", path, e)
            shutil.rmtree(path, ignore_errors=True)
    elif path.exists():  # a directory without its view.json: not a view
        log.warning("the training view %s has no view.json; rebuilding it", path)
        shutil.rmtree(path, ignore_errors=True)
    _write_view(store, path, T, max_frames, block_videos, progress)
    return _map(store, path)


def _file_record(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _map(store: Store, path: Path) -> TrainView:
    try:
        meta = json.loads((path / "view.json").read_text(encoding="utf-8"))
        V, T, D = (int(x) for x in meta["shape"])
        sums, records = dict(meta["sha256"]), dict(meta.get("files") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StoreCorruptError(f"{path}/view.json is damaged ({type(e).__name__}: {e})", str(path)) from e
    ids = list(store.videos.ids)
    if meta.get("generation") != store.generation or meta.get("ids_sha256") != _ids_digest(ids) or V != len(ids):
        raise StoreCorruptError(f"{path} does not match the store's videos", str(path))
    rechecked = {}
    for name, size in (("frames.f16", V * T * D * 2), ("valid.u8", V * T)):
        try:
            now = _file_record(path / name)
        except OSError as e:
            raise StoreCorruptError(f"{path / name} cannot be read ({e})", str(path)) from e
        if now["size"] != size:
            raise StoreCorruptError(f"{path / name} has {now['size']} bytes, not {size}", str(path))
        if now != records.get(name):  # written since the view was (or a view without records): check its content
            if _file_sha256(path / name) != sums.get(name):
                raise StoreCorruptError(f"{path / name} does not match its checksum", str(path))
            rechecked[name] = now
    if rechecked:  # the content is the one written: record the files as they are now, so the next open is cheap
        log.info("%s: %s checked against the view's checksums (modified since written)", path, ", ".join(rechecked))
        tmp = path / f".view.json.{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(json.dumps({**meta, "files": {**records, **rechecked}}, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path / "view.json")
        except OSError as e:  # a read-only store: check again next time
            log.info("cannot update %s/view.json (%s)", path, e)
            tmp.unlink(missing_ok=True)
    frames = np.memmap(path / "frames.f16", dtype=np.float16, mode="c", shape=(V, T, D))
    valid = np.memmap(path / "valid.u8", dtype=np.uint8, mode="c", shape=(V, T))
    return TrainView(path, ids, frames, valid)


def _write_view(store: Store, path: Path, T: int, max_frames: Optional[int], block_videos: int,
                progress: bool) -> None:
    from tqdm.auto import tqdm
    ids = list(store.videos.ids)
    V, D = len(ids), int(store.dim or 0)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        frames, valid = _SyncedWriter(tmp / "frames.f16"), _SyncedWriter(tmp / "valid.u8")
        try:
            for a in tqdm(range(0, V, block_videos), desc="training view", unit="block", disable=not progress):
                block = store.load_padded(ids[a:a + block_videos], max_frames=max_frames, dtype=np.float16)
                f = np.zeros((len(block.ids), T, D), dtype=np.float16)  # (b, T, D): pad to the view's T
                f[:, :block.embeddings.shape[1]] = block.embeddings
                m = np.zeros((len(block.ids), T), dtype=np.uint8)
                m[:, :block.valid.shape[1]] = block.valid
                frames.write(f)
                valid.write(m)
        finally:
            hf, hv = frames.close(), valid.close()
        sums = {"frames.f16": hf, "valid.u8": hv}
        for name, want in sums.items():  # verify what reached the disk
            if _file_sha256(tmp / name) != want:
                raise StoreCorruptError(f"{tmp / name}: checksum mismatch right after writing (disk error?)", str(tmp))
        meta = {"format": "vstore-train-view", "version": 1, "shape": [V, T, D], "dtype": "float16",
                "generation": store.generation, "ids_sha256": _ids_digest(ids), "max_frames": max_frames,
                "sha256": sums, "files": {name: _file_record(tmp / name) for name in sums}}
        (tmp / "view.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for name in (*sums, "view.json"):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, path)
        except OSError:  # another process put its view there first: use that one
            if not (path / "view.json").is_file():
                raise
        log.info("wrote the training view %s (%d videos x %d frames x %d)", path, V, T, D)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_train_view(view: TrainView) -> None:
    """Recompute both files' SHA-256 and compare with view.json (``vstore``'s tests; slow on big views)."""
    meta = json.loads((view.path / "view.json").read_text(encoding="utf-8"))
    for name, want in meta["sha256"].items():
        if _file_sha256(view.path / Path(name).name) != want:
            raise StoreCorruptError(f"{view.path / name} does not match its checksum; delete {view.path}", str(view.path))
