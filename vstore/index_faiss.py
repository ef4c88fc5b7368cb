"""Low-level FAISS helpers shared by the index modules: messages, IVF access, vector
preparation and a guarded read of a FAISS file.

This module imports nothing else from ``vstore`` but its errors: every index module may use
it, it uses none of them.

``read_faiss_file`` is the only place a FAISS file is handed to ``faiss.read_index``. FAISS
trusts the sizes inside its files: a crafted file can make it allocate wildly, or return ids
that point past the store. So the caller checks the path, size and checksum first (see
``vstore.index.check_part``), this module checks the header fields it can parse without
FAISS, then reads, then checks what FAISS built (dimension, count, metric, stored ids).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

_FLAT_TYPES = {b"IxFI", b"IxF2"}  # IndexFlatIP, IndexFlatL2
# Every float index type FAISS writes starts with this header (checked: Flat, HNSW, IVF-Flat/PQ/SQ,
# PQ, SQ, PCA and Refine wrappers).
_HEADER = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, dummy, dummy, is_trained, metric_type


class FaissFileError(ValueError):
    """A FAISS file whose content disagrees with what it should hold; the message says how."""


def faiss_message(e: BaseException) -> str:
    """The last line of a FAISS exception (its C++ location lines are noise for a user)."""
    msg = str(e).strip().splitlines()
    return (msg[-1] if msg else type(e).__name__)[:300]


def ivf_of(index: faiss.Index) -> Optional[faiss.IndexIVF]:
    """The IVF part of ``index`` (through wrappers), None when it has none."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """(N, D) float32 C-contiguous copy, L2-normalised for cosine."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(x)
    return x


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def check_header(path: Path, size: int, dim: int, rows: int, metric: str) -> None:
    """Check the header fields of a FAISS file that FAISS would trust, before FAISS reads it:
    dimension, vector count, metric; for flat indexes the size of the one vector they hold."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size + 8)
    if len(head) < _HEADER.size:
        raise FaissFileError(f"{size} bytes is too short for a FAISS file")
    _, d, ntotal, _, _, trained, metric_type = _HEADER.unpack(head[:_HEADER.size])
    if d != dim:
        raise FaissFileError(f"{d}-d vectors, index.json says {dim}")
    if ntotal != rows:
        raise FaissFileError(f"{ntotal} vectors, index.json says {rows}")
    if metric_type != faiss_metric(metric):
        raise FaissFileError(f"metric type {metric_type}, index.json says {metric}")
    if trained != 1:
        raise FaissFileError("the index is not trained")
    if head[:4] in _FLAT_TYPES:  # then one vector of ntotal * d floats: the whole rest of the file
        (n_floats,) = struct.unpack("<Q", head[_HEADER.size:_HEADER.size + 8])
        if n_floats != rows * dim or size != _HEADER.size + 8 + 4 * rows * dim:
            raise FaissFileError(f"a flat index of {rows} x {dim} floats cannot be {size} bytes")


def read_faiss_file(path: Path, size: int, dim: int, rows: int, metric: str) -> faiss.Index:
    """Read a FAISS file already checked for path, size and checksum; ``FaissFileError`` when
    its header or the index FAISS builds from it disagrees with ``dim`` / ``rows`` / ``metric``."""
    check_header(path, size, dim, rows, metric)
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as e:
        raise FaissFileError(faiss_message(e)) from None
    if index.d != dim:
        raise FaissFileError(f"{index.d}-d vectors, index.json says {dim}")
    if index.ntotal != rows:
        raise FaissFileError(f"{index.ntotal} vectors, index.json says {rows}")
    if index.metric_type != faiss_metric(metric):
        raise FaissFileError(f"metric type {index.metric_type}, index.json says {metric}")
    check_ids(index, rows)
    return index


def check_ids(index: faiss.Index, rows: int) -> None:
    """IVF lists store an id per vector: each must be a row 0..rows-1 (other types number
    their vectors 0..ntotal-1 themselves)."""
    ivf = ivf_of(index)
    if ivf is None:
        return
    invlists = ivf.invlists
    seen = 0
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if not n:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)
        seen += n
        if int(ids.min()) < 0 or int(ids.max()) >= rows:
            raise FaissFileError(f"IVF list {lst} holds ids outside 0..{rows - 1}")
    if seen != rows:
        raise FaissFileError(f"IVF lists hold {seen} vectors, index.json says {rows}")
