"""Plain data records passed between the store and its producers and consumers."""
from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAX_ID_BYTES = 255  # a file name's limit: ids are file stems
MAX_LABEL_CHARS = 200  # string columns are as wide as their longest value; keep that bounded
MAX_SOURCE_BYTES = 4096  # PATH_MAX


def text_problem(value: object, what: str, max_bytes: int, controls: bool = False) -> Optional[str]:
    """Why ``value`` cannot be stored as a video id, label or source, or None when it can:
    not text, empty, control characters unless ``controls`` (a trailing NUL would be cut off by
    the fixed-width string columns), not encodable as UTF-8, or longer than ``max_bytes``."""
    if not isinstance(value, str) or not value:
        return f"{what} must be non-empty text"
    bad = next((c for c in value if (not controls and unicodedata.category(c) == "Cc") or "\ud800" <= c <= "\udfff"
                or c == "\0"), None)
    if bad is not None:
        return f"{what} {value[:60]!r} holds the control or invalid character {bad!r}"
    if len(value.encode("utf-8")) > max_bytes:
        return f"{what} {value[:60]!r}... is longer than {max_bytes} bytes"
    return None


def evenly_spaced(total: int, n: Optional[int]) -> np.ndarray:
    """(min(total, n),) int64 positions of ``n`` evenly spaced items among ``total``:
    ``floor((i + 0.5) * total / n)``; every item once when ``total <= n`` (or ``n`` is None).

    The one rule for choosing frames: which frames of a video a build samples, and which of a
    video's stored frames a model capped at ``n`` frames keeps (training and ``predict``).
    """
    if n is None or total <= n:
        return np.arange(total, dtype=np.int64)
    return np.floor((np.arange(n) + 0.5) * total / n).astype(np.int64)


def key_frame_index(video_id: str, total_frames: int) -> int:
    """The reference study's "random frame" of a video: ``sha256(id) % total_frames``.

    Deterministic across runs and machines (unlike Python's ``hash``), so the random-frame
    classifier sees the same frame every epoch and on every rebuild.
    """
    if total_frames <= 0:
        raise ValueError(f"total_frames must be positive, got {total_frames}")
    digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()
    return int(digest, 16) % total_frames


@dataclass
class VideoEntry:
    """One video's vectors and metadata, as written into a segment."""

    id: str
    embeddings: np.ndarray  # (T, D) float, one row per sampled frame
    frame_index: np.ndarray  # (T,) int64 frame numbers in presentation order
    timestamp: np.ndarray  # (T,) float64 seconds since the first frame
    label: Optional[str] = None
    source: str = ""
    total_frames: int = -1  # frames in the whole video; -1 = unknown (imported vectors)
    duration: float = math.nan  # seconds
    key_frame_index: int = -1
    key_frame_time: float = math.nan
    key_frame_image: Optional[np.ndarray] = None  # (S, S, 3) uint8 at the encoder's input size
    key_frame_embedding: Optional[np.ndarray] = None  # (D,)
    rotation: int = 0  # clockwise degrees the frames were turned for display (0, 90, 180, 270)
    hflip: bool = False  # frames were mirrored left-right (before the rotation) for display

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings)
        self.frame_index = np.asarray(self.frame_index, dtype=np.int64)
        self.timestamp = np.asarray(self.timestamp, dtype=np.float64)
        assert self.embeddings.ndim == 2, self.embeddings.shape
        assert len(self.frame_index) == len(self.timestamp) == len(self.embeddings)

    @property
    def n_frames(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class VideoTable:
    """Per-video metadata of a whole store, as parallel arrays (row = store video position)."""

    ids: list[str]
    labels: list[Optional[str]]
    sources: list[str]
    n_frames: np.ndarray  # (V,) int64 sampled frames
    total_frames: np.ndarray  # (V,) int64
    duration: np.ndarray  # (V,) float64
    frame_start: np.ndarray  # (V,) int64 first global frame row
    segment: np.ndarray  # (V,) int32 segment position in the manifest
    local: np.ndarray  # (V,) int32 row inside its segment
    has_key_frame: np.ndarray  # (V,) bool
    rotation: np.ndarray  # (V,) int16 clockwise display rotation applied to the frames; 0 in older stores
    hflip: np.ndarray  # (V,) bool mirrored for display; False in older stores
    _row_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, video_id: str) -> int:
        if not self._row_of:
            self._row_of = {v: i for i, v in enumerate(self.ids)}
        return self._row_of[video_id]

    def video_rows_of(self, frame_rows: np.ndarray) -> np.ndarray:
        """(R,) int64 store video row owning each global frame row (rows must be in range)."""
        return np.searchsorted(self.frame_start, np.asarray(frame_rows, dtype=np.int64), side="right") - 1

    def __contains__(self, video_id: str) -> bool:
        try:
            self.row(video_id)
            return True
        except KeyError:
            return False
