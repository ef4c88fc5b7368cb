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
from .fsutil import path_text
from .labels import Labels
from .maintenance import compact
from .manifest import IMPORTED_SAMPLING, manifest_path, read_manifest
from .records import MAX_ID_BYTES, VideoEntry, text_problem
from .store import Store
from .writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    imported: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    compact_error: Optional[str] = None  # the final merge of segments failed; the import did not


FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
FLOAT16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # ~6e-8: anything smaller becomes 0


def _bad_row(rows: list, path: Path) -> None:
    """Refuse what ``np.asarray`` would silently turn into numbers: booleans (True = 1.0) and
    numeric strings ("0.5"), naming the first offending row."""
    for i, row in enumerate(rows):
        flat = row[0] if isinstance(row, list) and len(row) == 1 and isinstance(row[0], list) else row
        if not isinstance(flat, list):
            raise VStoreError(f"{path}: row {i} is not a list of numbers")
        bad = next((x for x in flat if isinstance(x, bool) or not isinstance(x, (int, float))), None)
        if bad is not None or not flat:
            raise VStoreError(f"{path}: row {i} holds {bad!r} ({type(bad).__name__}); vectors must be numbers")


def read_vectors(path: Path, dtype: str = "float32") -> np.ndarray:
    """(T, D) float32 from one reference-study JSON file; raises VStoreError if malformed or
    if a value cannot be held by ``dtype`` (the store's: float16 turns 1e5 into inf and 1e-9 into 0)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VStoreError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise VStoreError(f"{path}: JSON nested too deeply to be a list of vectors") from None
    except OSError as e:
        raise VStoreError(f"{path}: cannot be read ({e.strerror or e})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise VStoreError(f"{path}: expected a list of vectors or an object with one list of them")
        data = lists[0]
    if not isinstance(data, list) or not data:
        raise VStoreError(f"{path}: expected a (frames, dim) list of vectors")
    _bad_row(data, path)
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise VStoreError(f"{path}: vectors are not all numbers of one length") from None
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim == 3 and arr.shape[1] == 1 else arr
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VStoreError(f"{path}: expected a (frames, dim) list of vectors, got shape {arr.shape}")
    limit, tiny = (FLOAT16_MAX, FLOAT16_TINY / 2) if dtype == "float16" else (float(np.finfo(np.float32).max), 0.0)
    mag = np.abs(arr)
    bad = ~np.isfinite(arr) | (mag > limit) | ((mag > 0) & (mag < tiny))
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        value = arr[row, col]
        why = "NaN or infinity" if not np.isfinite(value) else f"{value:g}, which {dtype} cannot hold"
        hint = " (import into a --dtype float32 store to keep it)" if dtype == "float16" and np.isfinite(value) \
            and mag[row, col] <= np.finfo(np.float32).max else ""
        raise VStoreError(f"{path}: row {row}, value {col} is {why}{hint}")
    return arr.astype(np.float32)


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
    store_path = Path(store_path)
    dtype = (read_manifest(store_path).config if manifest_path(store_path).exists() else config or StoreConfig()).dtype
    first: Optional[np.ndarray] = None
    for path in files:  # the first readable file sets the dimension
        try:
            first, first_path = read_vectors(path, dtype), path
            break
        except VStoreError as e:
            log.warning("%s", e)
            summary.failures.append((path_text(path), str(e)))
    if first is None:
        raise VStoreError(f"no readable <id>.json file in {src}")
    files = [p for p in files if path_text(p) not in {f for f, _ in summary.failures}]
    dim = first.shape[1]
    identity = dict(encoder) if encoder else {"name": "imported", "id": f"imported:{dim}", "spec": None, "dim": dim}
    if int(identity["dim"]) != dim:
        raise VStoreError(f"{first_path}: {dim}-d vectors, but encoder {identity['name']} makes {identity['dim']}-d")
    Store.open_or_create(store_path, config).close()
    with StoreWriter(store_path, identity, build_info={"imported_from": str(src)},
                     sampling=IMPORTED_SAMPLING) as writer:
        for path in tqdm(files, unit="video", desc="import", disable=not progress):
            vid = path_text(path.stem)
            if vid in writer:
                summary.skipped += 1
                continue
            try:
                problem = text_problem(vid, "video id (the file name)", MAX_ID_BYTES)
                if problem:
                    raise VStoreError(f"{path_text(path)}: {problem}; rename the file")
                vec = first if path == first_path else read_vectors(path, dtype)
                if vec.shape[1] != dim:
                    raise VStoreError(f"{path}: {vec.shape[1]}-d vectors, the others are {dim}-d")
            except VStoreError as e:
                log.warning("%s", e)
                summary.failures.append((path_text(path), str(e)))
                continue
            t = np.arange(len(vec))
            writer.add(VideoEntry(id=vid, embeddings=vec, frame_index=t, timestamp=np.full(len(vec), np.nan),
                                  label=labels.get(vid) if labels else None, source=path_text(path.resolve())))
            summary.imported += 1
    if summary.imported:
        try:
            compact(store_path)  # segments small enough to bound a crash's loss; merged for fast reads
        except VStoreError as e:  # e.g. disk full: the import itself is committed
            summary.compact_error = str(e)
            log.warning("the %d imported video(s) are committed; merging segments failed: %s", summary.imported, e)
    return summary
