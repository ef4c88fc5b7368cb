"""Segment files: immutable chunked HDF5 files holding a block of whole videos.

Layout (documented for users in docs/FORMAT.md)::

    /            attrs: format="vstore-segment", format_version, n_videos, n_frames, dim,
                        dtype, strings_sha256
    /videos/     one row per video: id, label, source, n_frames, frame_offset, total_frames,
                 duration, key_frame_index, key_frame_time, has_key_frame,
                 rotation, hflip (optional: 0 / False when absent),
                 key_frame_embedding (V, D), key_frame_image (V, S, S, 3) uint8
    /frames/     one row per sampled frame: embedding (F, D), frame_index, timestamp, video

Integrity (when the store config asks for it, the default): the frame embeddings carry one
64-bit additive checksum per chunk (``/frames/embedding_checksum``), verified with numpy on
every read at memory speed (HDF5's Fletcher-32 filter costs 4x a plain read); the other
numeric datasets use Fletcher-32; the variable-length strings are covered by a SHA-256
attribute. Damaged bytes raise ``StoreCorruptError`` instead of returning wrong vectors.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from .config import StoreConfig
from .errors import StoreCorruptError
from .fsutil import fsync_dir, temp_path
from .records import VideoEntry

log = logging.getLogger(__name__)

SEGMENT_FORMAT = "vstore-segment"
SEGMENT_FORMAT_VERSION = 1


def _fixed_utf8(values: Sequence[str]) -> np.ndarray:
    """Fixed-length, NUL-padded UTF-8: stored inside the dataset's own (checksummed) chunks.
    Variable-length strings would live in HDF5's global heap, which has no checksum and on
    which damaged bytes can send the HDF5 library into an endless loop."""
    encoded = [v.encode("utf-8") for v in values]
    width = max(1, max(map(len, encoded), default=1))
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width))  # numpy "S<width>" tagged UTF-8


def _text_attr(value: str) -> np.bytes_:
    """Attribute text as fixed-length bytes (kept in the checksummed object header)."""
    return np.bytes_(value.encode("utf-8"))


def _attr_text(attrs: h5py.AttributeManager, name: str) -> str:
    value = attrs.get(name)
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


_VIDEO_NUMERIC = ("n_frames", "frame_offset", "total_frames", "duration",
                  "key_frame_index", "key_frame_time", "has_key_frame")
_VIDEO_OPTIONAL = {"rotation": np.int16, "hflip": bool}  # added later: absent = 0 / False
_FRAME_NUMERIC = ("frame_index", "timestamp", "video")


def strings_digest(columns: Sequence[np.ndarray]) -> str:
    """SHA-256 over the stored fixed-length string columns: for each, its width as 8
    little-endian bytes, then its raw NUL-padded bytes."""
    h = hashlib.sha256()
    for col in columns:
        h.update(int(col.dtype.itemsize).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def chunk_checksums(rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """(n_chunks,) uint64: per block of ``chunk_rows`` rows, the wrapping sum of its bytes read
    as little-endian uint64 words (zero-padded to a multiple of 8 bytes).

    Any single flipped bit changes the sum; random damage goes unnoticed with odds 2**-64.
    """
    rows = np.ascontiguousarray(rows)
    n = len(rows)
    starts = np.arange(0, n, chunk_rows)
    row_bytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    if row_bytes % 8 == 0 and n:
        words = rows.view(np.uint8).reshape(n, row_bytes).view("<u8")  # (n, row_bytes / 8)
        full = n // chunk_rows
        sums = words[:full * chunk_rows].reshape(full, chunk_rows * words.shape[1]).sum(axis=1, dtype=np.uint64)
        if full * chunk_rows < n:  # sums wrap modulo 2**64
            sums = np.append(sums, words[full * chunk_rows:].sum(dtype=np.uint64))
        return sums.astype(np.uint64)
    out = np.empty(len(starts), dtype=np.uint64)
    for i, a in enumerate(starts):
        b = rows[a:a + chunk_rows].tobytes()
        out[i] = np.frombuffer(b + b"\0" * (-len(b) % 8), dtype="<u8").sum(dtype=np.uint64)
    return out


def _dataset(group: h5py.Group, name: str, data: np.ndarray, cfg: StoreConfig,
             chunks: Optional[tuple[int, ...]] = None, compression: Optional[int] = None,
             fletcher32: Optional[bool] = None) -> None:
    if chunks is None:
        chunks = (min(len(data), cfg.chunk_rows),) + tuple(data.shape[1:])
    group.create_dataset(
        name, data=data, chunks=chunks, fletcher32=cfg.checksum if fletcher32 is None else fletcher32,
        compression="gzip" if compression else None,
        compression_opts=compression if compression else None,
    )


def write_segment(directory: Path, final_name: str, entries: Sequence[VideoEntry],
                  cfg: StoreConfig, dim: int) -> tuple[Path, int, str]:
    """Write ``entries`` as ``directory/final_name``; returns (path, bytes, sha256).

    The file is written under a temporary name, fsynced, renamed and the directory fsynced,
    so the final name only ever refers to a complete file. On any error (disk full...) the
    temporary file is removed and the error re-raised.
    """
    assert entries, "a segment holds at least one video"
    dtype = np.dtype(cfg.dtype)
    n_frames = np.array([e.n_frames for e in entries], dtype=np.int64)
    assert (n_frames > 0).all(), "every stored video has at least one frame"
    offsets = np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64)
    total = int(n_frames.sum())
    for e in entries:
        if e.embeddings.shape[1] != dim:
            raise ValueError(f"video {e.id}: embedding dim {e.embeddings.shape[1]} != store dim {dim}")

    ids = [e.id for e in entries]
    labels = [e.label or "" for e in entries]
    sources = [e.source or "" for e in entries]
    has_key = np.array([e.key_frame_embedding is not None for e in entries], dtype=bool)
    images = [e.key_frame_image for e in entries if e.key_frame_image is not None]

    # The file is composed in memory and written out with plain file I/O: HDF5 never writes to
    # disk itself, so a full disk is an ordinary OSError (HDF5 hitting ENOSPC while closing a
    # file can crash the process) and the write is one sequential stream.
    buffer = io.BytesIO()
    # libver v110: object headers and chunk indexes carry checksums of their own.
    with h5py.File(buffer, "w", libver=("v110", "latest")) as f:
        strings = [_fixed_utf8(column) for column in (ids, labels, sources)]
        f.attrs.update({
            "format": _text_attr(SEGMENT_FORMAT), "format_version": SEGMENT_FORMAT_VERSION,
            "n_videos": len(entries), "n_frames": total, "dim": dim, "dtype": _text_attr(cfg.dtype),
            "strings_sha256": _text_attr(strings_digest(strings)),
        })
        v = f.create_group("videos")
        for name, data in zip(("id", "label", "source"), strings):
            v.create_dataset(name, data=data, chunks=(len(data),), fletcher32=cfg.checksum)
        numeric = {
            "n_frames": n_frames.astype(np.int32),
            "frame_offset": offsets,
            "total_frames": np.array([e.total_frames for e in entries], dtype=np.int64),
            "duration": np.array([e.duration for e in entries], dtype=np.float64),
            "key_frame_index": np.array([e.key_frame_index for e in entries], dtype=np.int64),
            "key_frame_time": np.array([e.key_frame_time for e in entries], dtype=np.float64),
            "has_key_frame": has_key,
            "rotation": np.array([e.rotation for e in entries], dtype=np.int16),
            "hflip": np.array([e.hflip for e in entries], dtype=bool),
        }
        for name, arr in numeric.items():
            _dataset(v, name, arr, cfg, chunks=(len(arr),))
        if has_key.any():
            key_emb = np.zeros((len(entries), dim), dtype=dtype)
            for i, e in enumerate(entries):
                if e.key_frame_embedding is not None:
                    key_emb[i] = e.key_frame_embedding
            _dataset(v, "key_frame_embedding", key_emb, cfg, chunks=(len(entries), dim))
        if images:
            shape = images[0].shape
            img = np.zeros((len(entries),) + shape, dtype=np.uint8)
            for i, e in enumerate(entries):
                if e.key_frame_image is not None:
                    if e.key_frame_image.shape != shape:
                        raise ValueError(f"video {e.id}: key frame {e.key_frame_image.shape} != {shape}")
                    img[i] = e.key_frame_image
            _dataset(v, "key_frame_image", img, cfg, chunks=(1,) + shape,
                     compression=cfg.image_compression)

        fr = f.create_group("frames")
        emb = np.concatenate([e.embeddings for e in entries]).astype(dtype, copy=False)  # (F, D)
        _dataset(fr, "embedding", emb, cfg, chunks=(min(total, cfg.chunk_rows), dim), fletcher32=False)
        if cfg.checksum:
            fr.create_dataset("embedding_checksum", data=chunk_checksums(emb, min(total, cfg.chunk_rows)))
        _dataset(fr, "frame_index", np.concatenate([e.frame_index for e in entries]), cfg)
        _dataset(fr, "timestamp", np.concatenate([e.timestamp for e in entries]), cfg)
        _dataset(fr, "video", np.repeat(np.arange(len(entries), dtype=np.int32), n_frames), cfg)
    data = buffer.getbuffer()
    tmp = temp_path(directory, ".h5")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        size = len(data)
        digest = hashlib.sha256(data).hexdigest()
        final = directory / final_name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return final, size, digest


def _check_links(f: h5py.File, where: str) -> None:
    """Refuse anything that could make a read leave the file: soft or external links,
    external raw storage and virtual datasets. One low-level walk over every link."""
    bad: list[str] = []
    datasets: list[bytes] = []

    def visit(name: bytes, info) -> Optional[bool]:
        # Never raise inside HDF5's iteration (h5py turns that into a SystemError): record and stop.
        try:
            if info.type != h5py.h5l.TYPE_HARD:
                kind = "SoftLink" if info.type == h5py.h5l.TYPE_SOFT else "ExternalLink"
                bad.append(f"/{name.decode()} is a {kind}")
                return True
            if h5py.h5o.get_info(f.id, name).type == h5py.h5o.TYPE_DATASET:
                datasets.append(name)
        except Exception as e:  # damaged metadata
            bad.append(f"/{name.decode(errors='replace')} cannot be read ({e})")
            return True
        return None
    f.id.links.visit(visit, info=True)
    if bad:
        raise StoreCorruptError(f"{where}: {bad[0]}; segments may not point outside themselves", where)
    for name in datasets:
        plist = h5py.h5d.open(f.id, name).get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL or plist.get_external_count():
            raise StoreCorruptError(f"{where}: dataset /{name.decode()} stores its data outside the file; refused",
                                    where)


class SegmentReader:
    """Read access to one committed segment. Small per-video arrays are loaded on open;
    frame data is read on demand."""

    def __init__(self, path: Path, expected_bytes: Optional[int] = None, dim: Optional[int] = None):
        self.path = Path(path)
        self.name = self.path.name
        self._columns: dict[str, np.ndarray] = {}  # frame_column's cache
        where = str(self.path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise StoreCorruptError(f"segment {where} listed in the manifest is missing", where) from None
        except OSError as e:
            raise StoreCorruptError(f"segment {where} cannot be read ({e.strerror or e})", where) from None
        if expected_bytes is not None and size != expected_bytes:
            raise StoreCorruptError(
                f"segment {where} is {size} bytes, the manifest says {expected_bytes}: it was truncated "
                f"or overwritten", where)
        try:
            # No HDF5 chunk cache: whole-chunk reads then go straight into our buffers.
            self.file = h5py.File(self.path, "r", rdcc_nbytes=0)
        except OSError as e:
            raise StoreCorruptError(f"segment {where} cannot be opened as HDF5 ({e})", where) from e
        try:
            self._load(where, dim)
        except StoreCorruptError:
            self.file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, SystemError) as e:  # HDF5 reports damage as any of these
            self.file.close()
            raise StoreCorruptError(f"segment {where} is damaged ({type(e).__name__}: {e})", where) from e

    def _load(self, where: str, dim: Optional[int]) -> None:
        f = self.file
        if _attr_text(f.attrs, "format") != SEGMENT_FORMAT:
            raise StoreCorruptError(f"{where} is not a vstore segment", where)
        _check_links(f, where)
        v = f["videos"]
        raw = [v[name][()] for name in ("id", "label", "source")]  # fixed-length UTF-8 bytes
        if strings_digest(raw) != _attr_text(f.attrs, "strings_sha256"):
            raise StoreCorruptError(f"segment {where}: video ids/labels/sources fail their checksum", where)
        self.ids, labels, self.sources = ([b.decode("utf-8") for b in col.tolist()] for col in raw)
        self.labels = [s or None for s in labels]
        self.numeric = {name: v[name][()] for name in _VIDEO_NUMERIC}
        self.n_videos = int(f.attrs["n_videos"])
        for name, dtype in _VIDEO_OPTIONAL.items():
            self.numeric[name] = v[name][()].astype(dtype) if name in v else np.zeros(self.n_videos, dtype)
        self.n_frames = int(f.attrs["n_frames"])
        self.dim = int(f.attrs["dim"])
        self.embedding = f["frames"]["embedding"]
        self.checksums = f["frames"]["embedding_checksum"][()] if "embedding_checksum" in f["frames"] else None
        if len(self.ids) != self.n_videos or self.embedding.shape != (self.n_frames, self.dim):
            raise StoreCorruptError(f"segment {where}: table sizes disagree with its header", where)
        if dim is not None and self.dim != dim:
            raise StoreCorruptError(f"segment {where} holds {self.dim}-d vectors, the store {dim}-d", where)
        n = self.numeric["n_frames"].astype(np.int64)
        off = self.numeric["frame_offset"]
        if n.sum() != self.n_frames or (len(off) and (off[0] != 0 or (off[1:] != np.cumsum(n)[:-1]).any())):
            raise StoreCorruptError(f"segment {where}: frame offsets are inconsistent", where)

    # -- frame data ------------------------------------------------------------------------
    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except (OSError, RuntimeError, ValueError) as e:
            raise StoreCorruptError(
                f"segment {self.path} is damaged ({e}); run `vstore verify {self.path.parent.parent} --repair` "
                "to drop it, then rebuild to re-add its videos", str(self.path)) from e

    @property
    def chunk_rows(self) -> int:
        return int(self.embedding.chunks[0]) if self.embedding.chunks else max(1, self.n_frames)

    def read_embeddings(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``start:stop`` of /frames/embedding, into ``out`` if given (any float dtype).

        Every chunk touched is read whole and its checksum verified before any row of it is
        returned; chunk-aligned reads into a buffer of the stored dtype go straight into it.
        """
        stored = self.embedding.dtype
        if out is None:
            out = np.empty((stop - start, self.dim), dtype=stored)
        if stop <= start:
            return out
        C = self.chunk_rows
        a, b = start // C * C, min(-(-stop // C) * C, self.n_frames)  # whole chunks covering the rows
        direct = a == start and b == stop and out.dtype == stored and out.flags.c_contiguous
        buf = out if direct else np.empty((b - a, self.dim), dtype=stored)
        self._guard(self.embedding.read_direct, buf, np.s_[a:b])
        self._verify(buf, a)
        if not direct:
            out[...] = buf[start - a:stop - a]
        return out

    def _verify(self, rows: np.ndarray, first_row: int) -> None:
        """Check the checksums of the whole chunks held in ``rows`` (starting at ``first_row``)."""
        if self.checksums is None:
            return
        first = first_row // self.chunk_rows
        got = chunk_checksums(rows, self.chunk_rows)
        want = self.checksums[first:first + len(got)]
        if not np.array_equal(got, want):
            bad = first + int(np.flatnonzero(got != want)[0])
            raise StoreCorruptError(
                f"segment {self.path}: frame rows {bad * self.chunk_rows}..{(bad + 1) * self.chunk_rows - 1} fail "
                f"their checksum (damaged on disk); run `vstore verify {self.path.parent.parent} --repair` "
                "to drop the segment, then rebuild to re-add its videos", str(self.path))

    def read_frame_column(self, name: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        return self._guard(lambda: self.file["frames"][name][start:stop])

    def frame_column(self, name: str) -> np.ndarray:
        """The whole ``/frames/<name>`` column (``frame_index`` or ``timestamp``: 8 bytes a
        frame, ~1% of the embeddings), read once and kept: a segment never changes, and a
        served search maps its hits to frames through this instead of two HDF5 reads per hit
        (which cost 3/4 of a search's time at 172,800 frames)."""
        assert name in ("frame_index", "timestamp"), name
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = self.read_frame_column(name)
            col.flags.writeable = False
        return col

    def read_key_frames(self, rows: np.ndarray) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """(images (R, S, S, 3) uint8 or None, embeddings (R, D) or None) for local rows."""
        v = self.file["videos"]
        order = np.argsort(rows)
        sorted_rows = np.asarray(rows)[order]
        inv = np.argsort(order)

        def read(name):
            if name not in v:
                return None
            data = self._guard(lambda: v[name][np.unique(sorted_rows)])
            _, pos = np.unique(sorted_rows, return_inverse=True)
            return data[pos][inv]
        return read("key_frame_image"), read("key_frame_embedding")

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # pragma: no cover - closing a damaged file
            pass
