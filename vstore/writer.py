"""The write side of a store: append whole videos, committed in atomic segments.

Commit protocol (see docs/FORMAT.md): write the segment under a temporary name, fsync, rename,
fsync the directory; then replace manifest.json atomically. A crash at any moment leaves the
previous manifest in force, so the store holds exactly the committed videos; leftovers of the
interrupted commit are removed by the next writer.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import IncompatibleEncoderError, IncompatibleSamplingError, StoreWriteError, VStoreError
from .fsutil import WriteLock, command_line, remove_temp_files
from .manifest import (
    IMPORTED,
    SEGMENT_DIR,
    Manifest,
    SegmentEntry,
    describe_sampling,
    orphan_segments,
    read_manifest,
    write_manifest,
)
from .records import MAX_ID_BYTES, MAX_LABEL_CHARS, MAX_SOURCE_BYTES, VideoEntry, text_problem
from .segment import write_segment
from .store import LOCK_NAME, Store

log = logging.getLogger(__name__)


def describe_encoder(encoder: Optional[dict]) -> str:
    if not encoder:
        return "no encoder"
    return f"{encoder.get('name', encoder.get('id', '?'))} ({encoder.get('dim', '?')}-d)"


def check_encoder(manifest: Manifest, encoder: dict, store_path: Path) -> None:
    """Refuse to mix vectors of different encoders (or dimensions) in one store."""
    if manifest.encoder is None or manifest.n_videos == 0 and manifest.dim is None:
        return
    old = manifest.encoder
    if old.get("id") != encoder.get("id") or int(old.get("dim", -1)) != int(encoder.get("dim", -2)):
        raise IncompatibleEncoderError(
            f"{store_path} holds vectors of {describe_encoder(old)}; refusing to add vectors of "
            f"{describe_encoder(encoder)}. Use --encoder {old.get('name', '?')} or a new --store.")


def clean_leftovers(path: Path, manifest: Manifest) -> int:
    """Remove temporary files and unlisted segments of interrupted writes (build, compaction).
    Call only while holding the store's write lock."""
    seg_dir = Path(path) / SEGMENT_DIR
    seg_dir.mkdir(exist_ok=True)
    removed = remove_temp_files(seg_dir) + remove_temp_files(Path(path))
    for p in orphan_segments(path, manifest):
        p.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d leftover file(s) of an interrupted write in %s", removed, path)
    return removed


def check_sampling(manifest: Manifest, sampling: dict[str, Any], store_path: Path) -> None:
    """Refuse to mix videos sampled differently (another frame count or mode, or imported
    vectors) in one store: a model trained on it, and ``predict``, assume one way."""
    have = manifest.store_sampling
    if not have or not sampling or have == sampling:
        return
    if have.get("sampling") == IMPORTED:
        how = "import them into a new --store"
    elif sampling.get("sampling") == IMPORTED:
        how = "import into a new --store"
    else:
        how = f"rerun with {describe_sampling(have)}, or build into a new --store"
    raise IncompatibleSamplingError(
        f"{store_path} holds {describe_sampling(have)}; refusing to add {describe_sampling(sampling)}: {how}")


class StoreWriter:
    """Appends videos to a store under its write lock.

    Videos are buffered and committed as one segment every ``segment_videos`` videos or
    ``commit_seconds`` seconds (store config), and on ``close``. Use as a context manager: on
    an error or Ctrl-C the complete videos already buffered are still committed.
    """

    def __init__(self, path: str | Path, encoder: dict, build_info: Optional[dict[str, Any]] = None,
                 on_commit: Optional[Callable[[int, int], None]] = None,
                 sampling: Optional[dict[str, Any]] = None):
        self.path = Path(path)
        self.encoder = dict(encoder)
        self.dim = int(encoder["dim"])
        self.build_info = build_info or {}
        self.sampling = dict(sampling or {})  # see Manifest.sampling; {} = not known
        self.on_commit = on_commit
        self._lock = WriteLock(self.path / LOCK_NAME, command_line()).acquire()
        try:
            self.manifest = read_manifest(self.path)
            check_encoder(self.manifest, self.encoder, self.path)
            check_sampling(self.manifest, self.sampling, self.path)
            clean_leftovers(self.path, self.manifest)
            # Opening validates what is there; we only need the committed ids.
            with Store(self.path, self.manifest, Store._open_segments(self.path, self.manifest)) as store:
                self.committed: set[str] = set(store.videos.ids)
        except BaseException:
            self._lock.release()
            raise
        self._buffer: list[VideoEntry] = []
        self._buffer_ids: set[str] = set()
        self._buffer_started = time.monotonic()
        self.videos_committed = 0

    # -- appending --------------------------------------------------------------------------------
    def __contains__(self, video_id: str) -> bool:
        return video_id in self.committed or video_id in self._buffer_ids

    def add(self, entry: VideoEntry) -> None:
        problem = (text_problem(entry.id, "video id", MAX_ID_BYTES)
                   or (entry.label is not None and text_problem(entry.label, "label", 4 * MAX_LABEL_CHARS))
                   or (entry.source and text_problem(entry.source, "source", MAX_SOURCE_BYTES, controls=True)))
        if problem:
            raise VStoreError(f"video {entry.id!r}: {problem}; not stored")
        if entry.id in self:
            raise VStoreError(f"video {entry.id!r} is already in {self.path}")
        if entry.embeddings.shape[1] != self.dim:
            raise IncompatibleEncoderError(
                f"video {entry.id}: {entry.embeddings.shape[1]}-d vectors, but {self.path} holds {self.dim}-d")
        if not self._buffer:
            self._buffer_started = time.monotonic()
        self._buffer.append(entry)
        self._buffer_ids.add(entry.id)
        cfg = self.manifest.config
        if (len(self._buffer) >= cfg.segment_videos
                or time.monotonic() - self._buffer_started >= cfg.commit_seconds):
            self.commit()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def commit(self) -> None:
        """Write the buffered videos as one segment and make them part of the store."""
        if not self._buffer:
            return
        m = self.manifest
        name = f"{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}.h5"
        try:
            path, size, digest = write_segment(self.path / SEGMENT_DIR, name, self._buffer, m.config, self.dim)
        except OSError as e:
            raise self._write_error(e) from e
        n_frames = sum(e.n_frames for e in self._buffer)
        labels = set(m.label_names) | {e.label for e in self._buffer if e.label}
        new = m.next(
            encoder=self.encoder, dim=self.dim, label_names=tuple(sorted(labels)),
            segments=m.segments + (SegmentEntry(f"{SEGMENT_DIR}/{name}", len(self._buffer), n_frames, size, digest),),
            build=self.build_info or m.build, sampling=m.store_sampling or self.sampling,
        )
        try:
            write_manifest(self.path, new)
        except BaseException as e:
            path.unlink(missing_ok=True)  # not committed: do not leave an orphan behind
            if isinstance(e, OSError):
                raise self._write_error(e) from e
            raise
        self.manifest = new
        self.committed |= self._buffer_ids
        self.videos_committed += len(self._buffer)
        log.debug("committed %d videos (%d frames) as %s, generation %d",
                  len(self._buffer), n_frames, name, new.generation)
        if self.on_commit:
            self.on_commit(len(self._buffer), new.generation)
        self._buffer, self._buffer_ids = [], set()

    def _write_error(self, e: OSError) -> StoreWriteError:
        return StoreWriteError(
            f"could not write to {self.path} ({e.strerror or e}); free disk space (or fix permissions) and "
            f"rerun: the {self.manifest.n_videos} videos committed so far are intact")

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # An error elsewhere (or Ctrl-C): keep the complete videos we have, then let it propagate.
        try:
            if self._buffer and not isinstance(exc, (OSError, StoreWriteError)):
                log.warning("committing %d finished video(s) before stopping", len(self._buffer))
                self.commit()
        except Exception as e:  # pragma: no cover - reported, the original error wins
            log.error("could not commit buffered videos: %s", e)
        finally:
            self._lock.release()

