"""vstore: the store and index of video frame embeddings.

This package knows vectors and their metadata, whoever made them; it imports nothing from
``encoders``, ``classifiers`` or ``cli``.
"""
from .config import StoreConfig
from .errors import (
                     IncompatibleEncoderError,
                     LabelsError,
                     SplitError,
                     StoreCorruptError,
                     StoreLockedError,
                     StoreNotFoundError,
                     StoreWriteError,
                     UnknownVideoError,
                     VStoreError,
)
from .maintenance import compact, verify
from .records import VideoEntry, VideoTable, key_frame_index
from .store import FrameBlock, PaddedVideos, Store
from .writer import StoreWriter

__all__ = [
    "Store", "StoreWriter", "StoreConfig", "VideoEntry", "VideoTable", "FrameBlock", "PaddedVideos",
    "key_frame_index", "compact", "verify",
    "VStoreError", "StoreNotFoundError", "StoreCorruptError", "StoreLockedError", "IncompatibleEncoderError",
    "UnknownVideoError", "LabelsError", "SplitError", "StoreWriteError",
]
