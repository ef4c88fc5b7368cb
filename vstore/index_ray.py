"""``vstore index --engine ray``: the frame vectors of an IVF index added on a Ray cluster.

The plan, the training and the commit are the local ``build_index``'s: the IVF quantizer is
trained once, on the driver, on the same seeded sample. The frame rows are then streamed from
the store in the same blocks as locally and shipped, a group of blocks per task, to Ray tasks
that each fill an empty copy of the trained index (``add_with_ids``, ids = global rows, one
call per block exactly as the local engine adds them, so every vector is assigned to the same
list). The driver merges the returned inverted lists in row order (``merge_from``), which
leaves each list with the same entries in the same order as a sequential add: the index file
and every search result are the local engine's.

Only IVF indexes are split (their lists concatenate); Flat and HNSW indexes are added on the
driver as locally (a Flat add is a copy; an HNSW graph cannot be merged). The per-video index
is small and built on the driver. Tasks get their rows from the driver, so the workers need
no access to the store.
"""
from __future__ import annotations

import collections
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from .errors import IndexBuildError
from .index import IndexConfig
from .index_build import FrameAdder, IndexReport, build_index
from .index_faiss import prepare
from .raycluster import connect, import_ray

log = logging.getLogger(__name__)


@dataclass
class RayIndexConfig:
    address: Optional[str] = None  # as RayConfig.address: None = a private Ray here, "auto", "ray://head:10001"
    num_cpus: Optional[int] = None  # CPUs of a private Ray started here (None = all the cores)
    group_rows: int = 131_072  # frame rows per add task (~256 MiB of 512-d float32)
    in_flight: int = 0  # add tasks submitted ahead of the merge; 0 = 2 x cluster CPUs, at most 16
    task_retries: int = 3  # an add task whose worker dies is rerun (it is idempotent)

    def __post_init__(self) -> None:
        if self.group_rows < 1:
            raise ValueError(f"group_rows must be >= 1, got {self.group_rows}")
        if self.in_flight < 0 or self.task_retries < 0:
            raise ValueError("in_flight and task_retries must be >= 0")


def add_group(template: np.ndarray, blocks: list[tuple[int, np.ndarray]], metric: str) -> np.ndarray:
    """In a Ray task: an empty trained index plus the rows of ``blocks`` [(first row, (R, D))],
    one ``add_with_ids`` per block; returns the serialised index."""
    index = faiss.deserialize_index(template)
    for start, emb in blocks:
        index.add_with_ids(prepare(emb, metric), np.arange(start, start + len(emb), dtype=np.int64))
    return faiss.serialize_index(index)


class RayFrameAdder(FrameAdder):
    """``FrameAdder`` that adds an IVF index's rows in Ray tasks and merges them in row order."""

    def __init__(self, index: faiss.Index, config: IndexConfig, ray_config: RayIndexConfig):
        super().__init__(index, config)
        self.rc = ray_config
        self.ray = import_ray()
        self.parallel = isinstance(faiss.downcast_index(index), faiss.IndexIVF)
        if not self.parallel:
            log.info("%s: added on the driver (only IVF lists merge)", type(faiss.downcast_index(index)).__name__)
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.in_flight = self.rc.in_flight or max(1, min(16, 2 * cpus))
        self.task = self.ray.remote(num_cpus=1, max_retries=self.rc.task_retries)(add_group)
        self.template = None
        self.group: list[tuple[int, np.ndarray]] = []
        self.group_n = 0
        self.pending: collections.deque = collections.deque()
        self.next_row = int(index.ntotal)  # rows are merged strictly in order

    def add(self, start: int, emb: np.ndarray) -> None:
        if not self.parallel:
            return super().add(start, emb)
        self.group.append((start, emb))
        self.group_n += len(emb)
        if self.group_n >= self.rc.group_rows:
            self._submit()

    def _submit(self) -> None:
        if not self.group:
            return
        if self.template is None:
            empty = faiss.clone_index(self.index)  # trained quantizer and search settings, no rows
            empty.reset()
            self.template = self.ray.put(faiss.serialize_index(empty))
        while len(self.pending) >= self.in_flight:
            self._merge_oldest()
        first, n = self.group[0][0], self.group_n
        self.pending.append((first, n, self.task.remote(self.template, self.group, self.config.metric)))
        self.group, self.group_n = [], 0

    def _merge_oldest(self) -> None:
        first, n, ref = self.pending.popleft()
        try:
            part = faiss.deserialize_index(self.ray.get(ref))
        except self.ray.exceptions.RayError as e:
            raise IndexBuildError(f"adding rows {first}..{first + n - 1} on Ray failed: "
                                  f"{str(e).strip().splitlines()[-1][:300]}") from None
        assert first == self.next_row and part.ntotal == n, (first, self.next_row, part.ntotal, n)
        self.index.merge_from(part, 0)  # appends each list's entries: the ids keep row order
        self.next_row += n

    def finish(self) -> None:
        if not self.parallel:
            return
        self._submit()
        while self.pending:
            self._merge_oldest()


def build_index_ray(store_path: str | Path, config: Optional[IndexConfig] = None, *, rebuild: bool = False,
                    progress: bool = False, ray_config: Optional[RayIndexConfig] = None) -> IndexReport:
    """``build_index`` with the frame vectors added on a Ray cluster (same result)."""
    rc = ray_config or RayIndexConfig()
    started = connect(rc.address, rc.num_cpus)
    try:
        return build_index(store_path, config, rebuild=rebuild, progress=progress,
                           adder=functools.partial(RayFrameAdder, ray_config=rc))
    finally:
        if started:
            import_ray().shutdown()
