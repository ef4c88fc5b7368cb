"""Frame thumbnails and source videos of a store's hits.

Paths come only from what the store records (``VideoTable.sources``, written by `vstore
build`); a request names a video id and a frame number, both looked up in the store, so no
request path ever reaches the filesystem. A thumbnail is decoded from the source video on
demand (``encoders.video.sampling.decode_frames``) and kept in a bounded LRU cache; when the
source is gone the video's stored key frame stands in.
"""
from __future__ import annotations

import io
import logging
import mimetypes
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from encoders.errors import VideoError
from vstore import Store
from vstore.errors import VStoreError

log = logging.getLogger(__name__)


class MediaNotFound(VStoreError):
    """A frame or file the store cannot provide (no such sampled frame, source gone...)."""


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    source: str  # "video" (decoded from the source) | "key frame" (stored, source gone)


def source_file(store: Store, video_id: str) -> Optional[Path]:
    """The recorded source video of ``video_id`` when it is still a regular file, else None."""
    src = store.videos.sources[store.row(video_id)]  # UnknownVideoError for an unknown id
    if not src:
        return None
    p = Path(src)
    return p if p.is_absolute() and p.is_file() else None


def video_media_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def sampled_position(store: Store, video_id: str, frame: int) -> int:
    """Position of frame number ``frame`` among ``video_id``'s sampled frames (``MediaNotFound``)."""
    frame_index, _ = store.get_frames(video_id)
    pos = np.flatnonzero(frame_index == frame)
    if not len(pos):
        raise MediaNotFound(f"video {video_id} has no sampled frame {frame}; its sampled frames are listed by "
                            f"GET /api/videos/{video_id}")
    return int(pos[0])


def to_jpeg(img: np.ndarray, width: int) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes at most ``width`` pixels wide (aspect kept)."""
    from PIL import Image
    im = Image.fromarray(img)
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class Thumbnails:
    """JPEG frames of stored videos, LRU-cached (``capacity`` images)."""

    def __init__(self, width: int = 320, capacity: int = 2048):
        self.width, self.capacity = width, capacity
        self._cache: OrderedDict[tuple, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _cached(self, key: tuple) -> Optional[Thumbnail]:
        with self._lock:
            t = self._cache.get(key)
            if t is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            return t

    def _put(self, key: tuple, t: Thumbnail) -> None:
        with self._lock:
            self._cache[key] = t
            self._cache.move_to_end(key)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)

    def get(self, store: Store, video_id: str, frame: int) -> Thumbnail:
        sampled_position(store, video_id, frame)
        src = source_file(store, video_id)
        if src is not None:
            st = os.stat(src)
            key = ("video", str(src), st.st_mtime_ns, st.st_size, frame)
            t = self._cached(key)
            if t is not None:
                return t
            self.misses += 1
            from encoders.video.sampling import decode_frames
            try:
                img = decode_frames(src, [frame]).get(frame)
            except (VideoError, OSError, ValueError) as e:
                log.warning("cannot decode frame %d of %s (%s); showing its key frame", frame, src, e)
                img = None
            except Exception as e:  # PyAV raises its own errors on damaged files
                log.warning("cannot decode frame %d of %s (%s: %s); showing its key frame", frame, src,
                            type(e).__name__, e)
                img = None
            if img is not None:
                t = Thumbnail(to_jpeg(img, self.width), "video")
                self._put(key, t)
                return t
        return self.key_frame(store, video_id)

    def key_frame(self, store: Store, video_id: str) -> Thumbnail:
        key = ("key", str(store.path), store.generation, video_id)
        t = self._cached(key)
        if t is not None:
            return t
        self.misses += 1
        images, _ = store.key_frames([video_id])
        if images is None or not store.videos.has_key_frame[store.row(video_id)]:
            raise MediaNotFound(f"the source video of {video_id} is gone and the store holds no key frame for it")
        t = Thumbnail(to_jpeg(images[0], self.width), "key frame")
        self._put(key, t)
        return t
