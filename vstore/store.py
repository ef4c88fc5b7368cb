"""The read side of a store: open a committed snapshot and get vectors out of it fast.

A ``Store`` is a consistent snapshot: the manifest is read once and every segment it lists is
opened at once (segments are immutable), so a build or compaction running beside a reader
never changes what that reader sees. Reopen to see newer commits.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .config import StoreConfig
from .errors import StoreCorruptError, StoreNotFoundError, StoreWriteError, UnknownVideoError
from .fsutil import WriteLock, command_line, inside
from .manifest import SEGMENT_DIR, Manifest, read_manifest, write_manifest
from .records import VideoTable, evenly_spaced
from .segment import SegmentReader

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# Upper bound on the scratch buffer of gather reads (bytes); keeps memory bounded.
_SCRATCH_BYTES = 64 << 20


@dataclass
class FrameBlock:
    """A chunk-aligned run of consecutive frame rows of one segment."""

    start: int  # global frame row of the first row
    embeddings: np.ndarray  # (R, D)
    video_rows: np.ndarray  # (R,) int64 store video row of each frame
    frame_index: Optional[np.ndarray] = None  # (R,) int64
    timestamp: Optional[np.ndarray] = None  # (R,) float64


@dataclass
class PaddedVideos:
    """Many videos as one padded tensor, ready for ``torch.from_numpy``."""

    ids: list[str]
    embeddings: np.ndarray  # (V, T, D), zeros where padded
    valid: np.ndarray  # (V, T) bool, True = real frame (PyTorch's padding mask is ~valid)
    lengths: np.ndarray  # (V,) int64
    labels: list[Optional[str]]


class Store:
    """A committed snapshot of a store directory. Use ``Store.open`` / ``Store.create``."""

    def __init__(self, path: Path, manifest: Manifest, segments: list[SegmentReader]):
        self.path = Path(path)
        self.manifest = manifest
        self.segments = segments
        self._videos: Optional[VideoTable] = None

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "Store":
        path = Path(path)
        last_error: Optional[StoreCorruptError] = None
        for _ in range(3):  # a compaction may delete segments between our manifest read and open
            manifest = read_manifest(path)
            try:
                return cls(path, manifest, cls._open_segments(path, manifest))
            except StoreCorruptError as e:
                last_error = e
                if read_manifest(path).generation == manifest.generation:
                    break
        assert last_error is not None
        raise StoreCorruptError(
            f"{last_error}. Run `vstore verify {path} --repair` to drop the damaged segment; "
            f"the next `vstore build` re-adds its videos.", last_error.path) from last_error

    @staticmethod
    def _open_segments(path: Path, manifest: Manifest) -> list[SegmentReader]:
        readers: list[SegmentReader] = []
        try:
            for entry in manifest.segments:
                readers.append(SegmentReader(inside(path, entry.file, "segment"), expected_bytes=entry.bytes, dim=manifest.dim))
                if readers[-1].n_videos != entry.videos or readers[-1].n_frames != entry.frames:
                    raise StoreCorruptError(f"segment {entry.file} does not match the manifest", entry.file)
        except BaseException:
            for r in readers:
                r.close()
            raise
        return readers

    @classmethod
    def create(cls, path: str | Path, config: Optional[StoreConfig] = None) -> "Store":
        """Create an empty store; an existing store at ``path`` is an error."""
        path = Path(path)
        if (path / "manifest.json").exists():
            raise StoreNotFoundError(f"{path} already holds a store")
        if path.exists() and not path.is_dir():
            raise StoreNotFoundError(f"{path} exists and is not a directory")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise StoreNotFoundError(f"cannot create the store {path}: {blocker} is a file, not a folder; "
                                     "choose another --store")
        try:
            (path / SEGMENT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreWriteError(f"cannot create the store {path} ({e.strerror or e}); choose a --store on a "
                                  "writable filesystem with free space") from None
        with WriteLock(path / LOCK_NAME, command_line()):
            if not (path / "manifest.json").exists():
                try:
                    write_manifest(path, Manifest(config=config or StoreConfig()))
                except OSError as e:
                    raise StoreWriteError(f"cannot write {path / 'manifest.json'} ({e.strerror or e}); free "
                                          "disk space and rerun") from None
        return cls.open(path)

    @classmethod
    def open_or_create(cls, path: str | Path, config: Optional[StoreConfig] = None) -> "Store":
        path = Path(path)
        if (path / "manifest.json").exists():
            return cls.open(path)
        return cls.create(path, config)

    def reopen(self) -> "Store":
        self.close()
        return Store.open(self.path)

    def close(self) -> None:
        for r in self.segments:
            r.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata --------------------------------------------------------------------------------
    @property
    def config(self) -> StoreConfig:
        return self.manifest.config

    @property
    def encoder(self) -> Optional[dict]:
        return self.manifest.encoder

    @property
    def dim(self) -> Optional[int]:
        return self.manifest.dim

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.label_names)

    @property
    def n_videos(self) -> int:
        return self.manifest.n_videos

    @property
    def n_frames(self) -> int:
        return self.manifest.n_frames

    @property
    def videos(self) -> VideoTable:
        """Metadata of every video, in store order (the order of frame rows)."""
        if self._videos is None:
            self._videos = self._build_table()
        return self._videos

    def _build_table(self) -> VideoTable:
        ids, labels, sources = [], [], []
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("n_frames", "total_frames", "duration", "has_key_frame",
                                                                   "rotation", "hflip")}
        frame_start, segment, local = [], [], []
        base = 0
        for s, r in enumerate(self.segments):
            ids += r.ids
            labels += r.labels
            sources += r.sources
            for k in cols:
                cols[k].append(r.numeric[k])
            frame_start.append(base + r.numeric["frame_offset"])
            segment.append(np.full(r.n_videos, s, dtype=np.int32))
            local.append(np.arange(r.n_videos, dtype=np.int32))
            base += r.n_frames

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        return VideoTable(
            ids=ids, labels=labels, sources=sources,
            n_frames=cat(cols["n_frames"], np.int64), total_frames=cat(cols["total_frames"], np.int64),
            duration=cat(cols["duration"], np.float64), frame_start=cat(frame_start, np.int64),
            segment=cat(segment, np.int32), local=cat(local, np.int32),
            has_key_frame=cat(cols["has_key_frame"], bool),
            rotation=cat(cols["rotation"], np.int16), hflip=cat(cols["hflip"], bool),
        )

    def row(self, video_id: str) -> int:
        try:
            return self.videos.row(video_id)
        except KeyError:
            raise UnknownVideoError(f"video {video_id!r} is not in {self.path}") from None

    def rows(self, video_ids: Optional[Sequence[str]]) -> np.ndarray:
        if video_ids is None:
            return np.arange(len(self.videos), dtype=np.int64)
        return np.array([self.row(v) for v in video_ids], dtype=np.int64)

    def label_indices(self, video_ids: Optional[Sequence[str]] = None) -> np.ndarray:
        """(V,) int64 index into ``label_names``; -1 for unlabeled videos."""
        pos = {n: i for i, n in enumerate(self.label_names)}
        table = self.videos
        return np.array([pos.get(table.labels[r], -1) if table.labels[r] else -1
                         for r in self.rows(video_ids)], dtype=np.int64)

    # -- vectors ---------------------------------------------------------------------------------
    def get_embeddings(self, video_id: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
        """(T, D) frame embeddings of one video."""
        r = self.row(video_id)
        seg = self.segments[self.videos.segment[r]]
        start = int(seg.numeric["frame_offset"][self.videos.local[r]])
        n = int(self.videos.n_frames[r])
        out = np.empty((n, self.dim), dtype=dtype or seg.embedding.dtype)
        return seg.read_embeddings(start, start + n, out=out)

    def get_frames(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(frame_index (T,), timestamp (T,)) of one video's sampled frames."""
        r = self.row(video_id)
        seg = self.segments[self.videos.segment[r]]
        start = int(seg.numeric["frame_offset"][self.videos.local[r]])
        stop = start + int(self.videos.n_frames[r])
        return seg.read_frame_column("frame_index", start, stop), seg.read_frame_column("timestamp", start, stop)

    def iter_blocks(self, block_rows: Optional[int] = None, dtype: Optional[np.dtype] = None,
                    with_frames: bool = False) -> Iterator[FrameBlock]:
        """Every frame row in store order, in blocks of ``block_rows`` rounded up to whole chunks.

        Memory stays at one block whatever the store's size.
        """
        video_of_row_base = 0
        base = 0
        for _s, seg in enumerate(self.segments):
            chunk = seg.chunk_rows
            step = max(chunk, -(-(block_rows or chunk * 16) // chunk) * chunk)
            seg_video = seg.read_frame_column("video")  # (F,) local video row
            for start in range(0, seg.n_frames, step):
                stop = min(start + step, seg.n_frames)
                out = np.empty((stop - start, seg.dim), dtype=dtype or seg.embedding.dtype)
                emb = seg.read_embeddings(start, stop, out=out)
                block = FrameBlock(start=base + start, embeddings=emb,
                                   video_rows=video_of_row_base + seg_video[start:stop].astype(np.int64))
                if with_frames:
                    block.frame_index = seg.read_frame_column("frame_index", start, stop)
                    block.timestamp = seg.read_frame_column("timestamp", start, stop)
                yield block
            base += seg.n_frames
            video_of_row_base += seg.n_videos

    def frame_refs(self, rows: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Map global frame rows to (video ids, frame indices, timestamps), through each
        segment's cached frame columns (``SegmentReader.frame_column``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        table = self.videos
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_frames):
            raise IndexError(f"frame rows must be in 0..{self.n_frames - 1}")
        vrow = table.video_rows_of(rows)
        frame_index = np.empty(len(rows), dtype=np.int64)
        timestamp = np.empty(len(rows), dtype=np.float64)
        bases = np.concatenate([[0], np.cumsum([s.n_frames for s in self.segments])]).astype(np.int64)
        seg_of = table.segment[vrow] if len(rows) else np.zeros(0, np.int32)
        for seg_pos in np.unique(seg_of):
            sel = np.flatnonzero(seg_of == seg_pos)
            seg = self.segments[int(seg_pos)]
            local = rows[sel] - bases[seg_pos]
            frame_index[sel] = seg.frame_column("frame_index")[local]
            timestamp[sel] = seg.frame_column("timestamp")[local]
        return [table.ids[v] for v in vrow], frame_index, timestamp

    def iter_video_means(self, block_rows: Optional[int] = None, normalize: bool = False
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(video rows (b,) int64, means (b, D) float32) of whole videos, in store order, one
        block of frame rows (``iter_blocks``) at a time: memory stays at one block plus the
        partial sum of the one video a block boundary cuts, whatever the store's size. Every
        video is yielded once (one without frames as zeros)."""
        table = self.videos
        ends = table.frame_start + table.n_frames  # (V,) global frame row after each video's last
        D = self.dim or 0
        next_row = 0  # the first video not yet yielded
        carry: Optional[np.ndarray] = None  # (D,) float64 partial sum of video ``next_row``
        for block in self.iter_blocks(block_rows, dtype=np.float32):
            stop = block.start + len(block.embeddings)
            hi = int(block.video_rows[-1])  # rows are sorted: videos are contiguous in frame order
            sums = np.zeros((hi - next_row + 1, D), dtype=np.float64)
            _segment_sum(sums, block.video_rows - next_row, block.embeddings)
            if carry is not None:
                sums[0] += carry
            done = hi - next_row + (1 if ends[hi] <= stop else 0)  # videos complete after this block
            if done:
                yield self._means_of(np.arange(next_row, next_row + done, dtype=np.int64), sums[:done], normalize)
            carry = sums[done] if done <= hi - next_row else None
            next_row += done
        if next_row < len(table):  # trailing videos without frames (and a video the last block ended)
            rest = np.zeros((len(table) - next_row, D), dtype=np.float64)
            if carry is not None:
                rest[0] += carry
            yield self._means_of(np.arange(next_row, len(table), dtype=np.int64), rest, normalize)

    def _means_of(self, rows: np.ndarray, sums: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        means = (sums / np.maximum(self.videos.n_frames[rows], 1)[:, None]).astype(np.float32)  # (b, D)
        if normalize:
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return rows, means

    def video_means(self, video_ids: Optional[Sequence[str]] = None, normalize: bool = False) -> np.ndarray:
        """(V, D) float32 mean frame embedding per video, streamed block by block (``iter_video_means``)."""
        means = np.zeros((len(self.videos), self.dim or 0), dtype=np.float32)
        for rows, block in self.iter_video_means(normalize=normalize):
            means[rows] = block
        return means[self.rows(video_ids)] if video_ids is not None else means

    def load_padded(self, video_ids: Optional[Sequence[str]] = None, max_frames: Optional[int] = None,
                    dtype: Optional[np.dtype] = None) -> PaddedVideos:
        """Many videos as one ``(V, T, D)`` array plus mask, read with as few HDF5 calls as possible.

        ``T`` is the longest video (or ``max_frames``; longer videos are evenly subsampled).
        Runs of whole videos that fill the padded rows exactly are read straight into the
        output; everything else goes through a bounded scratch buffer.
        """
        table = self.videos
        rows = self.rows(video_ids)
        dtype = np.dtype(dtype or self.config.dtype)
        lengths_full = table.n_frames[rows]
        lengths = np.minimum(lengths_full, max_frames) if max_frames else lengths_full.copy()
        T = int(lengths.max()) if len(rows) else 0
        D = self.dim or 0
        out = np.zeros((len(rows), T, D), dtype=dtype)
        for seg_pos in np.unique(table.segment[rows]):
            sel = np.flatnonzero(table.segment[rows] == seg_pos)  # output positions in this segment
            self._fill_from_segment(self.segments[seg_pos], table.local[rows[sel]], sel,
                                    lengths_full[sel], T, max_frames, out)
        valid = np.arange(T)[None, :] < lengths[:, None]
        return PaddedVideos(ids=[table.ids[r] for r in rows], embeddings=out, valid=valid,
                            lengths=lengths.astype(np.int64), labels=[table.labels[r] for r in rows])

    @staticmethod
    def _fill_from_segment(seg: SegmentReader, local: np.ndarray, sel: np.ndarray, n: np.ndarray,
                           T: int, max_frames: Optional[int], out: np.ndarray) -> None:
        """Copy the frames of segment rows ``local`` into ``out[sel]``."""
        offsets = seg.numeric["frame_offset"]
        D = out.shape[2]
        consecutive = (np.diff(local) == 1).all() and (np.diff(sel) == 1).all()
        if consecutive and (n == T).all():
            # Fast path: the padded rows are exactly the stored rows; one read, no copy.
            start = int(offsets[local[0]])
            seg.read_embeddings(start, start + len(sel) * T, out=out[sel[0]:sel[-1] + 1].reshape(-1, D))
            return
        # Gather path: (stored row -> (output video, output slot)) for every kept frame, then
        # scan the covered rows in chunk-aligned blocks through a bounded scratch buffer.
        keeps = [evenly_spaced(int(c), max_frames) for c in n]
        src = np.concatenate([offsets[l] + k for l, k in zip(local, keeps)])  # (P,)
        dst_v = np.concatenate([np.full(len(k), s) for s, k in zip(sel, keeps)])
        dst_t = np.concatenate([np.arange(len(k)) for k in keeps])
        order = np.argsort(src, kind="stable")
        src, dst_v, dst_t = src[order], dst_v[order], dst_t[order]
        chunk = seg.chunk_rows
        step = max(chunk, (_SCRATCH_BYTES // max(1, D * seg.embedding.dtype.itemsize)) // chunk * chunk)
        a = int(src[0]) // chunk * chunk
        end = int(src[-1]) + 1
        while a < end:
            lo = np.searchsorted(src, a)
            if lo == len(src):
                break
            a = max(a, int(src[lo]) // chunk * chunk)  # skip chunks holding nothing we need
            b = min(a + step, seg.n_frames)
            hi = np.searchsorted(src, b)
            buf = seg.read_embeddings(a, b)
            out[dst_v[lo:hi], dst_t[lo:hi]] = buf[src[lo:hi] - a]
            a = b

    def key_frames(self, video_ids: Optional[Sequence[str]] = None) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """(images (V, S, S, 3) uint8, embeddings (V, D)) of the reference study's key frames.

        Either is None when the store holds none (e.g. vectors imported from JSON).
        """
        rows = self.rows(video_ids)
        table = self.videos
        images, embs = None, None
        for seg_pos in np.unique(table.segment[rows]):
            sel = np.flatnonzero(table.segment[rows] == seg_pos)
            img, emb = self.segments[seg_pos].read_key_frames(table.local[rows[sel]])
            if img is not None:
                if images is None:
                    images = np.zeros((len(rows),) + img.shape[1:], dtype=np.uint8)
                images[sel] = img
            if emb is not None:
                if embs is None:
                    embs = np.zeros((len(rows), emb.shape[1]), dtype=emb.dtype)
                embs[sel] = emb
        return images, embs


def _segment_sum(sums: np.ndarray, video_rows: np.ndarray, emb: np.ndarray) -> None:
    """sums[video_rows] += emb for sorted, run-length grouped ``video_rows``."""
    starts = np.flatnonzero(np.r_[True, video_rows[1:] != video_rows[:-1]])
    sums[video_rows[starts]] += np.add.reduceat(emb.astype(np.float64, copy=False), starts, axis=0)
