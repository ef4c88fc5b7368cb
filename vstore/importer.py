"""Import the reference study's embeddings: ``DIR/<id>.json`` = list of frame vectors.

Each file holds one video's frame embeddings as a JSON list of vectors (``[[...], ...]``,
also accepted: ``[[[...]], ...]`` as saved from a ``(1, D)`` CLIP output, or an object with
one list-valued key such as ``{"embeddings": [...]}``). Frame positions are unknown, so
frame indices are 0..T-1 and timestamps NaN.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .config import StoreConfig
from .errors import VStoreError
from .labels import Labels
from .maintenance import compact
from .records import VideoEntry
from .store import Store
from .writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    imported: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def read_vectors(path: Path) -> np.ndarray:
    """(T, D) float32 from one reference-study JSON file; raises VStoreError if malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VStoreError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise VStoreError(f"{path}: expected a list of vectors or an object with one list of them")
        data = lists[0]
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise VStoreError(f"{path}: vectors are not all numbers of one length") from None
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim == 3 and arr.shape[1] == 1 else arr
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VStoreError(f"{path}: expected a (frames, dim) list of vectors, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise VStoreError(f"{path}: vectors contain NaN or infinity")
    return arr


def import_json(src: str | Path, store_path: str | Path, labels: Optional[Labels] = None,
                encoder: Optional[dict] = None, config: Optional[StoreConfig] = None,
                progress: bool = True) -> ImportSummary:
    """Import every ``*.json`` in ``src`` (id = file stem) into the store at ``store_path``.

    ``encoder`` is the identity to record (so text search can later embed queries the same
    way); by default the vectors are recorded as ``imported`` of their dimension.
    """
    src = Path(src)
    if not src.is_dir():
        raise VStoreError(f"{src} is not a directory of <id>.json files")
    files = sorted(p for p in src.glob("*.json") if p.is_file())
    if labels is not None:
        files = [p for p in files if p.resolve() != Path(labels.path).resolve()]
    if not files:
        raise VStoreError(f"{src} holds no .json files")
    summary = ImportSummary()
    first: Optional[np.ndarray] = None
    for path in files:  # the first readable file sets the dimension
        try:
            first, first_path = read_vectors(path), path
            break
        except VStoreError as e:
            log.warning("%s", e)
            summary.failures.append((str(path), str(e)))
    if first is None:
        raise VStoreError(f"no readable <id>.json file in {src}")
    files = [p for p in files if str(p) not in {f for f, _ in summary.failures}]
    dim = first.shape[1]
    identity = dict(encoder) if encoder else {"name": "imported", "id": f"imported:{dim}", "spec": None, "dim": dim}
    if int(identity["dim"]) != dim:
        raise VStoreError(f"{first_path}: {dim}-d vectors, but encoder {identity['name']} makes {identity['dim']}-d")
    Store.open_or_create(store_path, config).close()
    with StoreWriter(store_path, identity, build_info={"imported_from": str(src)}) as writer:
        for path in tqdm(files, unit="video", desc="import", disable=not progress):
            vid = path.stem
            if vid in writer:
                summary.skipped += 1
                continue
            try:
                vec = first if path == first_path else read_vectors(path)
                if vec.shape[1] != dim:
                    raise VStoreError(f"{path}: {vec.shape[1]}-d vectors, the others are {dim}-d")
            except VStoreError as e:
                log.warning("%s", e)
                summary.failures.append((str(path), str(e)))
                continue
            t = np.arange(len(vec))
            writer.add(VideoEntry(id=vid, embeddings=vec, frame_index=t, timestamp=np.full(len(vec), np.nan),
                                  label=labels.get(vid) if labels else None, source=str(path.resolve())))
            summary.imported += 1
    if summary.imported:
        compact(store_path)  # segments small enough to bound a crash's loss; merged for fast reads
    return summary
