"""The manifest: the single commit point of a store.

``STORE/manifest.json`` lists the committed segment files with their sizes and SHA-256, the
store config, the encoder that made the vectors and the label names. It is only ever replaced
atomically, so whatever is listed here is complete on disk and nothing else is part of the store.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from .config import StoreConfig
from .errors import StoreCorruptError, StoreNotFoundError
from .fsutil import atomic_write_json

FORMAT = "vstore"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SEGMENT_DIR = "segments"


IMPORTED = "imported"
IMPORTED_SAMPLING = {"frames": None, "sampling": IMPORTED}


def sampling_record(frames: Optional[int], sampling: str) -> dict[str, Any]:
    """How a store's videos were sampled, as recorded in its manifest and in every run."""
    return {"frames": None if frames is None else int(frames), "sampling": str(sampling)}


def describe_sampling(sampling: dict[str, Any]) -> str:
    """``--frames 100 --sampling exact``, or ``imported vectors`` (how they were sampled is unknown)."""
    if not sampling:
        return "unknown sampling"
    if sampling.get("sampling") == IMPORTED:
        return "imported vectors (their frame sampling is not recorded)"
    return f"--frames {sampling.get('frames')} --sampling {sampling.get('sampling')}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class SegmentEntry:
    file: str  # path relative to the store directory, e.g. "segments/00000003-1a2b3c4d.h5"
    videos: int
    frames: int
    bytes: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Any) -> "SegmentEntry":
        """One ``segments`` entry, every field checked (``TypeError``/``ValueError`` otherwise)."""
        if not isinstance(d, dict) or set(d) != {"file", "videos", "frames", "bytes", "sha256"}:
            raise ValueError(f"segment entry {str(d)[:80]!r} is not {{file, videos, frames, bytes, sha256}}")
        if not isinstance(d["file"], str) or not isinstance(d["sha256"], str):
            raise ValueError(f"segment entry {d['file']!r}: file and sha256 must be strings")
        counts = [d[k] for k in ("videos", "frames", "bytes")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counts):
            raise ValueError(f"segment entry {d['file']!r}: videos, frames and bytes must be counts")
        return cls(d["file"], *counts, d["sha256"])


@dataclass(frozen=True)
class Manifest:
    generation: int = 0
    config: StoreConfig = field(default_factory=StoreConfig)
    # Identity of the encoder that produced the vectors (see encoders.registry); None = empty store.
    encoder: Optional[dict[str, Any]] = None
    dim: Optional[int] = None
    label_names: tuple[str, ...] = ()
    segments: tuple[SegmentEntry, ...] = ()
    # How every video of the store was sampled, set by its first write and never changed:
    # {"frames": N, "sampling": "exact" | "keyframe"} for builds, {"frames": None, "sampling":
    # "imported"} for import-json; {} while the store is empty. Writers with other settings are
    # refused (see ``writer.check_sampling``).
    sampling: dict[str, Any] = field(default_factory=dict)
    # Settings of the last write (build config, or where vectors were imported from), for the record.
    build: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    @property
    def n_videos(self) -> int:
        return sum(s.videos for s in self.segments)

    @property
    def n_frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def store_sampling(self) -> dict[str, Any]:
        """``sampling``; for a store written before it was recorded, what its ``build`` says."""
        if self.sampling or not self.segments:
            return dict(self.sampling)
        if "imported_from" in self.build:
            return dict(IMPORTED_SAMPLING)
        if "frames" in self.build and "sampling" in self.build:
            return sampling_record(self.build["frames"], self.build["sampling"])
        return {}

    def next(self, **changes: Any) -> "Manifest":
        """The manifest of the next commit."""
        return replace(self, generation=self.generation + 1, updated=_now(), **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "config": self.config.to_dict(),
            "encoder": self.encoder,
            "dim": self.dim,
            "label_names": list(self.label_names),
            "segments": [asdict(s) for s in self.segments],
            "sampling": self.sampling,
            "build": self.build,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if d.get("format") != FORMAT:
            raise StoreCorruptError(f"{where} is not a vstore manifest (format={d.get('format')!r})", where)
        version = d.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise StoreCorruptError(f"{where} is malformed (format_version {str(version)[:40]!r})", where)
        if version > FORMAT_VERSION:
            raise StoreCorruptError(
                f"{where} has format version {d['format_version']}; this vstore reads up to "
                f"{FORMAT_VERSION}. Upgrade vstore.", where)
        try:
            encoder, dim, names = d.get("encoder"), d.get("dim"), d.get("label_names", [])
            if encoder is not None and not isinstance(encoder, dict):
                raise ValueError("encoder must be an object")
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
                raise ValueError(f"dim must be a positive integer, not {dim!r}")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("label_names must be a list of strings")
            if not isinstance(d.get("config", {}), dict) or not isinstance(d.get("segments", []), list) \
                    or not isinstance(d.get("build") or {}, dict):
                raise ValueError("segments must be a list and build an object")
            return cls(
                generation=int(d["generation"]),
                config=StoreConfig.from_dict(d.get("config", {})),
                encoder=encoder,
                dim=dim,
                label_names=tuple(names),
                segments=tuple(SegmentEntry.from_dict(s) for s in d.get("segments", ())),
                sampling=dict(d.get("sampling") or {}),
                build=dict(d.get("build") or {}),
                created=d.get("created", ""),
                updated=d.get("updated", ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise StoreCorruptError(f"{where} is malformed ({e}); restore it from a backup or rebuild the store", where) from e


def manifest_path(store_dir: Path) -> Path:
    return Path(store_dir) / MANIFEST_NAME


def read_manifest(store_dir: Path) -> Manifest:
    path = manifest_path(store_dir)
    if not path.is_file():
        if not Path(store_dir).exists():
            raise StoreNotFoundError(f"{store_dir} does not exist; create it with `vstore build VIDEOS --store {store_dir}`")
        raise StoreNotFoundError(f"{store_dir} is not a vstore store (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreCorruptError(f"{path} is not valid JSON ({e})", str(path)) from e
    if not isinstance(data, dict):
        raise StoreCorruptError(f"{path} is not a vstore manifest", str(path))
    return Manifest.from_dict(data, where=str(path))


def write_manifest(store_dir: Path, manifest: Manifest) -> None:
    atomic_write_json(manifest_path(store_dir), manifest.to_dict())


def orphan_segments(store_dir: Path, manifest: Manifest) -> list[Path]:
    """Segment files the manifest does not list, renamed by a commit (or a compaction) that died
    before its manifest write: such a file is named after the generation it would have made,
    so only unlisted files of a later generation than the manifest's count. (Older unlisted
    files are not ours to delete: the manifest may have been replaced by an older copy.)
    Only delete them while holding the write lock."""
    seg_dir = Path(store_dir) / SEGMENT_DIR
    if not seg_dir.is_dir():
        return []
    listed = {Path(s.file).name for s in manifest.segments}

    def later(name: str) -> bool:
        head = name.split("-", 1)[0]
        return head.isdigit() and int(head) > manifest.generation
    return sorted(p for p in seg_dir.glob("*.h5") if p.name not in listed and later(p.name))
