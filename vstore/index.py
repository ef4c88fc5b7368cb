"""FAISS indexes over a store: one over every frame embedding, one over per-video means.

Layout (``STORE/index/``)::

    index.json                  the commit point: config, covered generation/rows/fingerprint,
                                and size + SHA-256 of each FAISS file
    frames-<uuid>.faiss         FAISS ids = global frame rows (0..frames-1, store order)
    videos-<uuid>.faiss         FAISS ids = store video rows (0..videos-1)

FAISS files are written under a temporary name, fsynced and renamed to a fresh unique name;
then ``index.json`` is replaced atomically and only then are the files it no longer lists
deleted. A crash (kill -9 included) at any moment leaves the previous index usable.

An index covers a prefix of the store: its first ``videos`` videos / ``frames`` frame rows,
identified by a fingerprint over their (id, n_frames) sequence and by the content of the
vectors themselves: per segment, the sum of the segment's own chunk checksums over the
covered rows (``content_digests``). ``compact`` keeps rows (same fingerprint, same sums over
the rows, nothing to redo); a build appends rows (only the new ones are added);
``verify --repair`` drops rows, and a rebuild of the same ids from other content changes the
sums: either way the index is rebuilt, and search refuses it until then.

This module is the metadata side (settings, index.json, freshness, checked file access);
``index_faiss`` holds the FAISS helpers it uses, ``index_build`` writes an index and
``index_load`` loads one for search.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from .errors import IndexBuildError, IndexDamagedError, StaleIndexError, StoreCorruptError
from .fsutil import inside
from .index_faiss import FaissFileError, faiss_message, faiss_metric, ivf_of, read_faiss_file
from .manifest import SegmentEntry
from .segment import SegmentReader, chunk_checksums, file_sha256
from .store import Store
from .sysmem import memory_limit_bytes

log = logging.getLogger(__name__)

INDEX_DIR = "index"
META_NAME = "index.json"
FORMAT = "vstore-index"
FORMAT_VERSION = 2  # 2: content digests of the covered rows
KINDS = ("auto", "flat", "ivf", "hnsw")
# Upper bound of the search beams (nprobe, ef): FAISS allocates per-query buffers of that size,
# and no index vstore builds has more lists or needs a wider beam.
MAX_BEAM = 1 << 20
METRICS = ("cosine", "ip", "l2")


@dataclass
class IndexConfig:
    # auto | flat | ivf | hnsw, or any FAISS index_factory string (e.g. "IVF1024,SQ8").
    kind: str = "auto"
    # cosine: vectors L2-normalised (copies; the store is untouched), inner product.
    # ip: raw inner product. l2: squared Euclidean distance (lower = closer).
    metric: str = "cosine"
    # auto, when nothing was measured (a store below auto_measure_min, the video-mean index,
    # an index.json written before measuring): exact Flat up to this many vectors, IVF beyond.
    flat_max: int = 500_000
    # auto, from this many vectors up (any size beyond): choose Flat or IVF by measurement, as
    # autofaiss does. Both are built on a sample of auto_sample rows and searched one query at
    # a time (what a served store pays) with auto_queries held-out stored rows; IVF wins when
    # its recall@10 against Flat is >= auto_recall and its latency, scaled to the store's size
    # (Flat ~ N, IVF ~ sqrt(N)), is at most 1 / auto_min_speedup of Flat's: exact answers are
    # given up only for a clear gain, so timing noise does not flip the choice. Below: Flat
    # (an exact query over < 20k x 512 costs ~1 ms, and so small a sample measures nothing).
    auto_measure_min: int = 20_000
    auto_sample: int = 50_000
    auto_queries: int = 200
    auto_recall: float = 0.95
    auto_min_speedup: float = 2.0
    # What that measurement chose ("flat" | "ivf"; "" = not measured) and on how many frames,
    # recorded in index.json so appends keep the choice; a store grown 4x since measures again.
    auto_choice: str = ""
    auto_rows: int = 0
    # auto: beyond this many vectors the IVF lists hold PQ codes (D/8 bytes per vector)
    # instead of full vectors, so 10M+ frames fit in memory. Recall drops a few points.
    pq_min: int = 10_000_000
    # auto: the frame index must fit in this many MiB of RAM (0 = half the machine's memory,
    # or of the process's cgroup limit: vstore.sysmem).
    # Flat and IVF-Flat hold 4*D (+8 for an IVF id) bytes a vector, IVF-PQ D/8 + 8: auto
    # takes the most exact kind that fits, so a store too large for full vectors gets PQ
    # codes before pq_min (autofaiss's max_index_memory_usage).
    memory_budget_mb: int = 0
    # IVF lists; 0 = 4 * sqrt(N) (FAISS guideline 4..16 sqrt(N)), at most N / 39.
    nlist: int = 0
    # IVF k-means trains on nlist * train_per_list sampled vectors (FAISS wants 39..256).
    train_per_list: int = 40
    # ... and on at least this many (PQ codebooks need ~10k), capped at N.
    min_train_rows: int = 20_000
    # k-means iterations (FAISS's IVF default is 10).
    train_iters: int = 10
    # HNSW graph degree, for kind=hnsw and for the coarse quantizer of large IVF indexes.
    hnsw_m: int = 32
    # HNSW build beam; higher = better graph, slower build (FAISS default 40).
    ef_construction: int = 40
    # IVF indexes of at least this many lists get an HNSW coarse quantizer: assigning a vector
    # to one of 16k+ centroids exactly costs more than the list scan (FAISS suggests it from
    # 65k lists). Below, the exact (flat) quantizer is both faster and more accurate.
    hnsw_quantizer_min: int = 16_384
    # Search defaults (override per query with nprobe= / ef=): IVF lists probed, HNSW beam
    # (also the HNSW quantizer's beam when vectors are assigned to lists).
    nprobe: int = 32
    ef_search: int = 128
    # Frame rows read from the store per block while building (memory stays at one block).
    block_rows: int = 32_768
    # Seed of the training sample, so rebuilding the same store gives the same index.
    seed: int = 0
    # Search on GPU copies of exact/IVF-Flat indexes when faiss sees a GPU (same results).
    gpu: bool = True
    # Opt-in: run IVF k-means on the GPU when present (much faster on big stores). Off by
    # default because GPU centroids differ from CPU ones by float rounding, so approximate
    # results would depend on the machine that built the index.
    gpu_train: bool = False

    def __post_init__(self) -> None:
        self.kind = str(self.kind).strip()
        if not self.kind:
            raise ValueError("index kind must be auto, flat, ivf, hnsw or a FAISS factory string")
        if self.kind.lower() in KINDS:
            self.kind = self.kind.lower()
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for name in ("flat_max", "pq_min", "train_per_list", "min_train_rows", "train_iters", "hnsw_m",
                     "ef_construction", "hnsw_quantizer_min", "nprobe", "ef_search", "block_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nprobe", "ef_search"):
            if int(getattr(self, name)) > MAX_BEAM:
                raise ValueError(f"{name} must be <= {MAX_BEAM}, got {getattr(self, name)}")
        for name in ("auto_measure_min", "auto_sample", "auto_queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not float(self.auto_min_speedup) >= 1.0:
            raise ValueError(f"auto_min_speedup must be >= 1, got {self.auto_min_speedup}")
        if int(self.auto_rows) < 0:
            raise ValueError(f"auto_rows must be >= 0, got {self.auto_rows}")
        if self.auto_choice not in ("", "flat", "ivf"):
            raise ValueError(f"auto_choice must be '', 'flat' or 'ivf', got {self.auto_choice!r}")
        if not 0.0 <= float(self.auto_recall) <= 1.0:
            raise ValueError(f"auto_recall must be in 0..1, got {self.auto_recall}")
        if int(self.nlist) < 0:
            raise ValueError(f"nlist must be >= 0 (0 = automatic), got {self.nlist}")
        if int(self.memory_budget_mb) < 0:
            raise ValueError(f"memory_budget_mb must be >= 0 (0 = half the machine's memory), got {self.memory_budget_mb}")

    def memory_budget_bytes(self) -> int:
        """The budget ``auto`` fits the frame index into (``memory_budget_mb``; 0 = half of RAM)."""
        if self.memory_budget_mb:
            return int(self.memory_budget_mb) << 20
        return memory_limit_bytes() // 2  # the machine's memory, or the cgroup's limit

    @property
    def faiss_metric(self) -> int:
        return faiss_metric(self.metric)

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "l2"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def auto_nlist(n: int, config: IndexConfig) -> int:
    """4 * sqrt(n) lists, but at least 39 training vectors per list (FAISS's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def factory_for(config: IndexConfig, n: int, d: int, *, for_videos: bool = False) -> str:
    """The FAISS factory string ``config`` means for ``n`` vectors of dimension ``d``.

    The video-mean index follows the same rules on its own count, except that a raw factory
    string applies to frames only (the video index is then ``auto``)."""
    kind = config.kind
    if kind not in KINDS and for_videos:
        kind = "auto"
    budget = config.memory_budget_bytes()
    if kind == "auto":
        choice = "" if for_videos else config.auto_choice  # measured on frames only
        if not choice:  # nothing measured: the count rule
            choice = "flat" if n <= config.flat_max else "ivf"
        if choice == "flat" and n * 4 * d <= budget:
            return "Flat"
        kind = "ivf"
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{config.hnsw_m}"
    if kind == "ivf":
        nlist = config.nlist or auto_nlist(n, config)
        if for_videos:
            nlist = min(nlist, auto_nlist(n, config))
        quantizer = f"_HNSW{config.hnsw_m}" if nlist >= config.hnsw_quantizer_min else ""
        codes = "Flat"
        if config.kind == "auto" and (n > config.pq_min or n * (4 * d + 8) > budget):
            m = next(m for m in (d // 8, d // 4, d // 2, d) if m >= 1 and d % m == 0)
            codes = f"PQ{m}"
            if n * (m + 8) > budget and not for_videos:
                raise IndexBuildError(f"{n:,} vectors need {n * (m + 8) >> 20:,} MiB even as PQ{m} codes, more than "
                                      f"the index memory budget of {budget >> 20:,} MiB; raise it "
                                      "(--memory-budget MB) or pick a smaller index with --kind")
        return f"IVF{nlist}{quantizer},{codes}"
    return kind


def new_index(config: IndexConfig, factory: str, d: int) -> faiss.Index:
    try:
        index = faiss.index_factory(d, factory, config.faiss_metric)
    except RuntimeError as e:
        raise IndexBuildError(f"FAISS cannot make index {factory!r} for {d}-d vectors: {faiss_message(e)}") from None
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.niter = config.train_iters
        ivf.cp.seed = config.seed
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = config.ef_construction
    if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        faiss.downcast_index(ivf.quantizer).hnsw.efConstruction = config.ef_construction
    return index


def prepare_for_add(index: faiss.Index, config: IndexConfig) -> None:
    """An HNSW coarse quantizer assigns new vectors with beam ``ef_search`` (FAISS's default of
    16 misfiles enough vectors to cap IVF recall near 0.99 whatever nprobe)."""
    ivf = ivf_of(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, config.ef_search)


def train_rows_for(index: faiss.Index, config: IndexConfig, n: int) -> int:
    """How many sampled vectors ``index`` trains on (0 when it needs no training)."""
    if index.is_trained:
        return 0
    ivf = ivf_of(index)
    want = max(config.min_train_rows, ivf.nlist * config.train_per_list if ivf is not None else 0)
    return min(n, want)


def train(index: faiss.Index, sample: np.ndarray, gpu: bool = False) -> None:
    """Train ``index`` on ``sample`` (already prepared); FAISS errors become ``IndexBuildError``.

    ``gpu``: IVF k-means assignments on the GPU(s) when present (the index stays a CPU index)."""
    ivf = ivf_of(index)
    if gpu and ivf is not None and faiss.get_num_gpus() > 0:  # pragma: no cover - needs a GPU
        try:
            flat = faiss.IndexFlatL2(ivf.d) if ivf.metric_type == faiss.METRIC_L2 else faiss.IndexFlatIP(ivf.d)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
        except (RuntimeError, AttributeError) as e:
            log.info("training on CPU: %s", faiss_message(e))
    try:
        index.train(sample)
    except RuntimeError as e:
        raise IndexBuildError(f"training the index on {len(sample)} vectors failed: {faiss_message(e)}") from None


# -- metadata ---------------------------------------------------------------------------------
@dataclass
class IndexPart:
    """One FAISS file of the index."""

    file: str  # name inside STORE/index/
    bytes: int
    sha256: str
    rows: int  # vectors in it (ids 0..rows-1)
    factory: str  # FAISS factory string it was made from


@dataclass
class IndexMeta:
    config: IndexConfig
    generation: int  # store manifest generation covered
    dim: int
    encoder_id: Optional[str]
    videos: int  # the index covers the store's first `videos` videos...
    frames: int  # ... i.e. its first `frames` frame rows
    fingerprint: str  # sha256 over (id, n_frames) of those videos, see prefix_fingerprint
    frame_part: IndexPart
    video_part: IndexPart
    trained_rows: int = 0  # frame rows when the frame index was (re)built
    build_seconds: float = 0.0
    updated: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # [end row, digest] per store segment over the covered rows (content_digests); empty in
    # index.json files of format version 1, which are therefore rebuilt.
    content: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexMeta":
        """Parse index.json, checking every field's type and range (``ValueError`` otherwise)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or _int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} file of format version <= {FORMAT_VERSION}")
        d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        if not isinstance(d.get("config"), dict):
            raise ValueError("config is not an object")
        parts = {}
        for name in ("frame_part", "video_part"):
            p = d.pop(name, None)
            if not isinstance(p, dict):
                raise ValueError(f"{name} is not an object")
            parts[name] = IndexPart(file=_str(p.get("file")), bytes=_int(p.get("bytes")), sha256=_str(p.get("sha256")),
                                    rows=_int(p.get("rows")), factory=_str(p.get("factory")))
            if not re.fullmatch(r"[0-9a-f]{64}", parts[name].sha256):
                raise ValueError(f"{name}.sha256 is not a SHA-256")
        content = d.pop("content", [])
        if not isinstance(content, list) or not all(
                isinstance(c, list) and len(c) == 2 and isinstance(c[1], str) for c in content):
            raise ValueError("content is not a list of [end row, digest]")
        meta = cls(config=IndexConfig.from_dict(d.pop("config")), generation=_int(d.pop("generation")),
                   dim=_int(d.pop("dim")), encoder_id=d.pop("encoder_id", None), videos=_int(d.pop("videos")),
                   frames=_int(d.pop("frames")), fingerprint=_str(d.pop("fingerprint")),
                   trained_rows=_int(d.pop("trained_rows", 0)), content=[[_int(e), h] for e, h in content], **parts,
                   **{k: v for k, v in d.items() if k in ("build_seconds", "updated")})
        if meta.encoder_id is not None and not isinstance(meta.encoder_id, str):
            raise ValueError("encoder_id is not a string")
        if meta.dim < 1 or meta.frame_part.rows != meta.frames or meta.video_part.rows != meta.videos:
            raise ValueError(f"dim {meta.dim}, frames {meta.frames} / videos {meta.videos} disagree with the parts' "
                             f"rows {meta.frame_part.rows} / {meta.video_part.rows}")
        return meta


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def index_dir(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def damaged(store_path: str | Path, what: str, reason: str) -> IndexDamagedError:
    return IndexDamagedError(f"index is damaged ({what}: {reason}); run `vstore index {store_path} --refresh`",
                             str(what))


def read_meta(store_path: str | Path) -> Optional[IndexMeta]:
    """The index metadata, None when the store has no index; ``IndexDamagedError`` if unreadable."""
    path = index_dir(store_path) / META_NAME
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _META_MAX_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than an index.json holds")
        return IndexMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise damaged(store_path, str(path), f"{type(e).__name__}: {e}") from None


_META_MAX_BYTES = 64 << 20  # index.json holds one short entry per segment
# A FAISS file name as _write_part makes it: no separator, no leading dot.
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.faiss")


def max_part_bytes(meta: IndexMeta, rows: int) -> int:
    """A generous bound on a FAISS file of ``rows`` vectors: full vectors, an id each, HNSW links,
    IVF centroids (one per vector at most) and a D x D transform (PCA, OPQ) would all fit."""
    return (1 << 20) + 8 * meta.dim * meta.dim + rows * (8 * meta.dim + 64 + 16 * meta.config.hnsw_m)


def check_part(store_path: str | Path, meta: IndexMeta, part: IndexPart) -> Path:
    """The path of one FAISS file once its name, type, size and SHA-256 agree with index.json:
    a plain file name, a regular file (not a link or device) inside STORE/index/."""
    directory = index_dir(store_path)
    if not _PART_NAME.fullmatch(part.file):
        raise damaged(store_path, str(directory / META_NAME), f"{part.file!r} is not a file name inside {directory}")
    try:
        path = inside(directory, part.file, "index part")
    except StoreCorruptError as e:
        raise damaged(store_path, str(directory / META_NAME), str(e)) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise damaged(store_path, str(path), "file is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise damaged(store_path, str(path), "not a regular file")
    if st.st_size != part.bytes:
        raise damaged(store_path, str(path), f"{st.st_size} bytes, index.json says {part.bytes}")
    if st.st_size > max_part_bytes(meta, part.rows):
        raise damaged(store_path, str(path), f"{st.st_size} bytes is too large for {part.rows} vectors")
    if file_sha256(path) != part.sha256:
        raise damaged(store_path, str(path), "SHA-256 differs from index.json")
    return path


def read_part(store_path: str | Path, meta: IndexMeta, part: IndexPart) -> faiss.Index:
    """Read one FAISS file, every field checked before and after FAISS reads it."""
    path = check_part(store_path, meta, part)
    try:
        return read_faiss_file(path, part.bytes, meta.dim, part.rows, meta.config.metric)
    except FaissFileError as e:
        raise damaged(store_path, str(path), str(e)) from None


# -- freshness --------------------------------------------------------------------------------
def prefix_fingerprint(store: Store, n_videos: int) -> str:
    """sha256 over the (id, n_frames) sequence of the store's first ``n_videos`` videos, plus
    dimension and encoder: equal fingerprints mean the same videos own frame rows 0..frames-1."""
    table = store.videos
    h = hashlib.sha256()
    h.update(f"{store.dim}|{(store.encoder or {}).get('id')}|{n_videos}|".encode())
    h.update("\n".join(table.ids[:n_videos]).encode("utf-8"))
    h.update(np.ascontiguousarray(table.n_frames[:n_videos], dtype="<i8").tobytes())
    return h.hexdigest()


def content_digests(store: Store, n_frames: int) -> list[list]:
    """[end row, digest] per store segment over frame rows 0..n_frames-1: what the vectors are.

    The digest is the wrapping sum of the segment's chunk checksums (``segment.chunk_checksums``,
    held in memory by every open segment), so it costs no read except the one chunk that
    straddles ``n_frames``. Those sums add up row by row, which is what lets a compacted store
    (the same rows in other segments) match: see ``same_content``."""
    out: list[list] = []
    base = 0
    for seg, entry in zip(store.segments, store.manifest.segments):
        if base >= n_frames:
            break
        end = min(base + seg.n_frames, n_frames)
        out.append([end, _segment_digest(seg, entry, end - base)])
        base += seg.n_frames
    return out


def _segment_digest(seg: SegmentReader, entry: SegmentEntry, m: int) -> str:
    """Digest of rows 0..m-1 of one segment."""
    dtype = seg.embedding.dtype
    if seg.checksums is not None and (seg.dim * dtype.itemsize) % 8 == 0:
        C = seg.chunk_rows
        full = len(seg.checksums) if m == seg.n_frames else m // C
        total = int(seg.checksums[:full].sum(dtype=np.uint64))  # wraps modulo 2**64, like the checksums
        if full * C < m:
            rows = seg.read_embeddings(full * C, m)
            total = (total + int(chunk_checksums(rows, len(rows))[0])) % (1 << 64)
        return f"sum:{dtype.str}:{total:016x}"
    # No per-row additive checksum: the file's own SHA-256 (a compaction then forces a rebuild).
    if m == seg.n_frames:
        return f"sha256:{entry.sha256}"
    return "sha256-rows:" + hashlib.sha256(seg.read_embeddings(0, m).tobytes()).hexdigest()


def same_content(recorded: list, current: list) -> bool:
    """Whether two ``content_digests`` lists describe the same rows.

    Segment boundaries may differ (compaction merges and splits segments): the sums are then
    compared between the row boundaries both lists share."""
    recorded, current = [list(c) for c in recorded], [list(c) for c in current]
    if not recorded or not current or recorded[-1][0] != current[-1][0]:
        return False
    if not all(d.startswith("sum:") for _, d in recorded + current):
        return recorded == current
    common = {e for e, _ in recorded} & {e for e, _ in current}

    def sums(ranges: list) -> list[tuple[int, str, int]]:
        out, acc, dtypes = [], 0, set()
        for end, d in ranges:
            _, dtype, total = d.split(":")
            acc, dtypes = (acc + int(total, 16)) % (1 << 64), dtypes | {dtype}
            if end in common:
                out.append((end, ",".join(sorted(dtypes)), acc))
                acc, dtypes = 0, set()
        return out
    try:
        return sums(recorded) == sums(current)
    except ValueError:  # a digest that is not "sum:<dtype>:<hex>"
        return False


@dataclass
class IndexStatus:
    """How an index relates to a store snapshot.

    state: missing | fresh (same generation) | compatible (other generation, same rows: e.g.
    after compact) | append (rows added since) | rebuild (rows changed: verify --repair, other
    encoder, other content) | newer (the index covers a later commit than this snapshot).
    """

    state: str
    reason: str = ""
    new_frames: int = 0
    new_videos: int = 0

    @property
    def usable(self) -> bool:
        return self.state in ("fresh", "compatible")


def index_status(store: Store, meta: Optional[IndexMeta]) -> IndexStatus:
    """Compare ``meta`` with the store: the same generation is not enough, the covered rows
    must hold the same videos (prefix_fingerprint) and the same vectors (content_digests)."""
    if meta is None:
        return IndexStatus("missing", "no index yet")
    if meta.generation > store.generation:
        return IndexStatus("newer", f"the index covers generation {meta.generation}, newer than this snapshot "
                                    f"(generation {store.generation}); reopen the store")
    if meta.dim != store.dim or meta.encoder_id != (store.encoder or {}).get("id"):
        return IndexStatus("rebuild", "the store now holds vectors of another encoder")
    if (store.n_videos < meta.videos or store.n_frames < meta.frames
            or prefix_fingerprint(store, meta.videos) != meta.fingerprint):
        return IndexStatus("rebuild", "frame rows changed (e.g. `vstore verify --repair` dropped a segment)")
    if not meta.content:
        return IndexStatus("rebuild", "the index predates content checks")
    if not same_content(meta.content, content_digests(store, meta.frames)):
        return IndexStatus("rebuild", "the stored vectors differ from the indexed ones (e.g. videos rebuilt "
                                      "from other content)")
    if store.n_videos == meta.videos and store.n_frames == meta.frames:
        if meta.generation == store.generation:
            return IndexStatus("fresh")
        return IndexStatus("compatible", "same rows (e.g. after `vstore compact`)")
    return IndexStatus("append", f"{store.n_videos - meta.videos} video(s) added",
                       new_frames=store.n_frames - meta.frames, new_videos=store.n_videos - meta.videos)


def stale_error(store: Store, meta: IndexMeta, status: IndexStatus) -> StaleIndexError:
    what = (f"{status.new_frames} frame(s) of {status.new_videos} video(s) are not indexed"
            if status.state == "append" else status.reason)
    if status.state == "newer":
        return StaleIndexError(f"{store.path}: {status.reason}")
    if meta.generation == store.generation:
        return StaleIndexError(f"the index of {store.path} does not match the store ({what}); rerun with "
                               f"--refresh to rebuild it first (or run `vstore index {store.path}`)")
    return StaleIndexError(
        f"the index of {store.path} covers generation {meta.generation} but the store is at generation "
        f"{store.generation} ({what}); rerun with --refresh to update it first (or run `vstore index {store.path}`)")


__all__ = ["IndexConfig", "IndexMeta", "IndexPart", "IndexStatus", "read_meta", "index_status", "index_dir",
           "check_part", "read_part", "content_digests", "same_content", "factory_for", "auto_nlist", "new_index",
           "train", "prepare_for_add", "train_rows_for", "prefix_fingerprint", "INDEX_DIR", "KINDS", "MAX_BEAM", "METRICS"]
