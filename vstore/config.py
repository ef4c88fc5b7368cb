"""The store's configuration, saved inside its manifest and rebuilt from it on open."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

EMBEDDING_DTYPES = ("float16", "float32")


@dataclass
class StoreConfig:
    # Frame embeddings are stored in this dtype. float16 halves disk use and load time and
    # keeps CLIP cosine similarities to ~1e-3; choose float32 when bit-exact vectors matter.
    dtype: str = "float16"
    # Frame rows per HDF5 chunk. 1024 x 512-d float16 = 1 MiB: big enough for fast sequential
    # reads, small enough that streaming reads stay bounded. Blocks are multiples of this.
    chunk_rows: int = 1024
    # Checksums on every chunk (embeddings: a 64-bit sum verified with numpy; other data:
    # HDF5's Fletcher-32): a flipped bit on disk raises an error on read instead of returning
    # a wrong vector. Costs about a third of a plain read of the embeddings.
    checksum: bool = True
    # gzip level for the stored key-frame images (0 = uncompressed). Level 1 roughly halves
    # them at negligible cost.
    image_compression: int = 1
    # A build commits a segment after this many videos...
    segment_videos: int = 128
    # ...or after this many seconds, whichever comes first; it bounds the work a crash can lose.
    commit_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"dtype must be one of {EMBEDDING_DTYPES}, got {self.dtype!r}")
        if not 1 <= int(self.chunk_rows) <= 1 << 20:
            raise ValueError(f"chunk_rows must be in 1..1048576, got {self.chunk_rows}")
        if not 0 <= int(self.image_compression) <= 9:
            raise ValueError(f"image_compression must be a gzip level 0..9, got {self.image_compression}")
        if int(self.segment_videos) < 1:
            raise ValueError(f"segment_videos must be >= 1, got {self.segment_videos}")
        if float(self.commit_seconds) <= 0:
            raise ValueError(f"commit_seconds must be > 0, got {self.commit_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
