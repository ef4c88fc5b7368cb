"""Store maintenance: merge small segments (compact) and check every byte (verify/repair)."""
from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import StoreCorruptError, StoreWriteError
from .fsutil import WriteLock, command_line, fsync_dir, inside
from .manifest import SEGMENT_DIR, SegmentEntry, orphan_segments, read_manifest, write_manifest
from .records import VideoEntry
from .segment import SegmentReader, file_sha256, write_segment
from .store import LOCK_NAME
from .writer import clean_leftovers

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"


def _entries_of(seg: SegmentReader) -> list[VideoEntry]:
    """Every video of a segment as entries (used by compaction, one segment at a time)."""
    emb = seg.read_embeddings(0, seg.n_frames)
    fidx = seg.read_frame_column("frame_index")
    ts = seg.read_frame_column("timestamp")
    images, key_emb = seg.read_key_frames(np.arange(seg.n_videos))
    num = seg.numeric
    out = []
    for i, vid in enumerate(seg.ids):
        a = int(num["frame_offset"][i])
        b = a + int(num["n_frames"][i])
        has_key = bool(num["has_key_frame"][i])
        out.append(VideoEntry(
            id=vid, embeddings=emb[a:b], frame_index=fidx[a:b], timestamp=ts[a:b], label=seg.labels[i],
            source=seg.sources[i], total_frames=int(num["total_frames"][i]), duration=float(num["duration"][i]),
            key_frame_index=int(num["key_frame_index"][i]), key_frame_time=float(num["key_frame_time"][i]),
            key_frame_image=images[i] if images is not None and has_key else None,
            key_frame_embedding=key_emb[i] if key_emb is not None and has_key else None,
            rotation=int(num["rotation"][i]), hflip=bool(num["hflip"][i]),
        ))
    return out


@dataclass
class CompactResult:
    segments_before: int
    segments_after: int
    videos: int


def plan_compaction(frames: list[int], max_frames: int) -> list[list[int]]:
    """Group consecutive segments (by position) so that each group stays within
    ``max_frames``; segments already too big to join a neighbour stay alone (not rewritten)."""
    groups: list[list[int]] = []
    for i, n in enumerate(frames):
        if groups and sum(frames[j] for j in groups[-1]) + n <= max_frames:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


DEFAULT_MAX_FRAMES = 262_144  # ~256 MiB of 512-d float16 per merged segment


def compact(path: str | Path, max_frames_per_segment: int = DEFAULT_MAX_FRAMES) -> CompactResult:
    """Merge runs of consecutive small segments into segments of at most
    ``max_frames_per_segment`` frames. Video and frame order is preserved, so global frame
    rows (and index ids) keep their meaning; segments that cannot grow are not rewritten.
    Memory is bounded by one merged segment.
    """
    path = Path(path)
    read_manifest(path)  # not a store: an error, and no .lock left behind
    with WriteLock(path / LOCK_NAME, command_line()):
        m = read_manifest(path)
        segment_files = [inside(path, s.file, "segment") for s in m.segments]  # all, before any is touched
        try:
            clean_leftovers(path, m)  # e.g. the merged segment of a compaction killed before its commit
        except OSError as e:
            raise StoreWriteError(f"cannot clean {path / SEGMENT_DIR} ({e.strerror or e}); the store is "
                                  "unchanged. Check the folder's permissions and free space") from e
        groups = plan_compaction([s.frames for s in m.segments], max_frames_per_segment)
        if all(len(g) == 1 for g in groups):
            return CompactResult(len(m.segments), len(m.segments), m.n_videos)
        seg_dir = path / SEGMENT_DIR
        new_entries: list[SegmentEntry] = []
        written: list[Path] = []
        try:
            for group in groups:
                if len(group) == 1:
                    new_entries.append(m.segments[group[0]])
                    continue
                entries: list[VideoEntry] = []
                for pos in group:
                    reader = SegmentReader(segment_files[pos], expected_bytes=m.segments[pos].bytes, dim=m.dim)
                    try:
                        entries += _entries_of(reader)
                    finally:
                        reader.close()
                name = f"{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}.h5"
                p, size, digest = write_segment(seg_dir, name, entries, m.config, int(m.dim))
                written.append(p)
                new_entries.append(SegmentEntry(f"{SEGMENT_DIR}/{name}", len(entries),
                                                sum(e.n_frames for e in entries), size, digest))
            write_manifest(path, m.next(segments=tuple(new_entries)))
        except BaseException as e:
            for p in written:
                p.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise StoreWriteError(f"compaction of {path} failed ({e.strerror or e}); the store is unchanged. "
                                      "Free disk space and rerun") from e
            raise
        kept = {e.file for e in new_entries}
        for entry, file in zip(m.segments, segment_files):  # no longer listed: safe to delete
            if entry.file not in kept:
                file.unlink(missing_ok=True)
        fsync_dir(seg_dir)
        log.info("compacted %d segments into %d", len(m.segments), len(new_entries))
        return CompactResult(len(m.segments), len(new_entries), m.n_videos)


@dataclass
class VerifyReport:
    segments: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # segment file -> reason
    dropped_videos: list[str] = field(default_factory=list)
    repaired: bool = False
    orphans: list[str] = field(default_factory=list)  # unlisted segment files (removed by --repair)

    @property
    def ok(self) -> bool:
        return not self.bad


def _check_segment(path: Path, entry: SegmentEntry, dim: Optional[int]) -> Optional[str]:
    try:
        p = inside(path, entry.file, "segment")
    except StoreCorruptError as e:
        return str(e)
    if not p.is_file():
        return "file is missing"
    if p.stat().st_size != entry.bytes:
        return f"size {p.stat().st_size} != {entry.bytes} in the manifest (truncated?)"
    if file_sha256(p) != entry.sha256:
        return "SHA-256 differs from the manifest (bytes changed on disk)"
    try:
        reader = SegmentReader(p, expected_bytes=entry.bytes, dim=dim)
    except StoreCorruptError as e:
        return str(e)
    try:
        reader.read_embeddings(0, reader.n_frames)  # every chunk's checksum
        for name in ("frame_index", "timestamp", "video"):
            reader.read_frame_column(name)
        reader.read_key_frames(np.arange(reader.n_videos))
    except StoreCorruptError as e:
        return str(e)
    finally:
        reader.close()
    return None


def verify(path: str | Path, repair: bool = False) -> VerifyReport:
    """Check every segment against the manifest's size and SHA-256 and every chunk checksum.

    With ``repair``, damaged segments are moved to ``STORE/quarantine/`` and dropped from the
    manifest; their videos are reported so that the next build re-adds them.
    """
    path = Path(path)
    read_manifest(path)  # not a store: an error, and no .lock left behind
    lock = WriteLock(path / LOCK_NAME, command_line()) if repair else None
    if lock:
        lock.acquire()
    try:
        m = read_manifest(path)
        report = VerifyReport(segments=len(m.segments))
        report.orphans = [str(p.relative_to(path)) for p in orphan_segments(path, m)]
        for entry in m.segments:
            reason = _check_segment(path, entry, m.dim)
            if reason:
                report.bad[entry.file] = reason
                log.warning("%s: %s", entry.file, reason)
        if repair and report.orphans:
            clean_leftovers(path, m)  # under the lock: no commit is between its rename and manifest write
        if repair and report.bad:
            inside_files = {}
            for entry in m.segments:
                if entry.file not in report.bad:
                    continue
                try:
                    inside_files[entry.file] = src = inside(path, entry.file, "segment")
                    r = SegmentReader(src)
                    report.dropped_videos += r.ids
                    r.close()
                except StoreCorruptError:
                    pass  # ids unreadable; the next build re-adds whatever is missing anyway
            keep = tuple(s for s in m.segments if s.file not in report.bad)
            write_manifest(path, m.next(segments=keep))
            q = path / QUARANTINE_DIR
            q.mkdir(exist_ok=True)
            for src in inside_files.values():  # an entry pointing outside the store is only dropped
                if src.is_file() and not src.is_symlink():  # never a folder (`segments`) or a link
                    shutil.move(str(src), str(q / src.name))
            report.repaired = True
        return report
    finally:
        if lock:
            lock.release()
