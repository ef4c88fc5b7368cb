"""Training data straight from the store, as tensors: no per-sample Python dataset.

A split is loaded once (chunk reads of the HDF5 segments), converted to float32 and moved to
the training device once; batches are index-selects on those tensors. What each model needs:

* ``linear``: the pooled (masked-mean) embedding per video, ``(V, D)``, computed at load.
* ``transformer`` and ``transformer-reference``: frames ``(V, T, D)`` + mask ``(V, T)``; when they would not fit the memory
  budget, they are streamed in chunk-aligned blocks of videos instead (``FrameStream``).
* ``random-frame``: the key-frame embedding ``(V, D)``, and the key-frame pixels
  ``(V, S, S, 3)`` uint8 when mixup or fine-tuning needs the encoder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from vstore import Store
from vstore.errors import SplitError
from vstore.sysmem import available_memory_bytes

from .models import SEQUENCE_MODELS, masked_mean

log = logging.getLogger(__name__)

GATHER_BYTES = 64 << 20  # in-memory batches are gathered in blocks of at most this many bytes


@dataclass
class SplitData:
    """One split's tensors. ``tensors`` maps batch keys to (V, ...) tensors on ``device``."""

    ids: list[str]
    y: torch.Tensor  # (V,) long class index
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    stream: Optional["FrameStream"] = None  # frames too large for memory
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: torch.Tensor, extra: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` of every in-memory tensor (and of ``extra``'s), one index-select each."""
        return {k: v.index_select(0, idx) for k, v in self._with(extra).items()}

    def _with(self, extra: Optional[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return self.tensors if not extra else {**self.tensors, **extra}

    def batches(self, batch_size: int, shuffle: Optional[torch.Generator] = None,
                extra: Optional[dict[str, torch.Tensor]] = None, block_bytes: int = GATHER_BYTES
                ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(row indices, batch) over the split; a random order drawn from ``shuffle`` if given.

        ``extra``: more (V, ...) tensors (e.g. targets) sliced with the same rows into the batch.
        In-memory rows are gathered in the epoch's order once per block of whole batches (the
        whole epoch for pooled (V, D) tensors, ~``block_bytes`` of frames otherwise) and each
        batch is a view of its block: one gather per block instead of one per batch.
        """
        if self.stream is not None:
            seed = None if shuffle is None else int(torch.randint(0, 2**31 - 1, (1,), generator=shuffle))
            yield from self.stream.batches(self, batch_size, seed, extra)
            return
        order = torch.arange(len(self)) if shuffle is None else torch.randperm(len(self), generator=shuffle)
        order = order.to(self.device)
        tensors = self._with(extra)
        row_bytes = sum(v[:1].numel() * v.element_size() for v in tensors.values())
        per_block = max(1, block_bytes // max(1, row_bytes * batch_size)) * batch_size
        for b in range(0, len(order), per_block):
            rows = order[b:b + per_block]
            block = {k: v.index_select(0, rows) for k, v in tensors.items()}  # (n, ...) each
            for a in range(0, len(rows), batch_size):
                yield rows[a:a + batch_size], {k: v[a:a + batch_size] for k, v in block.items()}


class FrameStream:
    """Frames of a split read from the store block by block (bounded memory).

    Each epoch visits the blocks in a random order and shuffles within each block.
    """

    def __init__(self, store: Store, ids: list[str], block_videos: int, max_frames: Optional[int]):
        self.store = store
        self.ids = ids
        self.block_videos = max(1, block_videos)
        self.max_frames = max_frames

    def batches(self, data: SplitData, batch_size: int, seed: Optional[int],
                extra: Optional[dict[str, torch.Tensor]] = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        n = len(self.ids)
        starts = np.arange(0, n, self.block_videos)
        rng = np.random.default_rng(seed) if seed is not None else None
        if rng is not None:  # a shuffled epoch: blocks in random order, rows shuffled inside
            starts = rng.permutation(starts)
        for a in starts:
            rows = np.arange(a, min(n, a + self.block_videos))
            if rng is not None:
                rows = rng.permutation(rows)
            padded = self.store.load_padded([self.ids[r] for r in rows], max_frames=self.max_frames)
            frames = torch.from_numpy(padded.embeddings).to(data.device, torch.float32)  # (b, T, D)
            valid = torch.from_numpy(padded.valid).to(data.device)  # (b, T)
            for s in range(0, len(rows), batch_size):
                idx = torch.from_numpy(rows[s:s + batch_size]).to(data.device)
                batch = data.batch(idx, extra)
                batch["frames"] = frames[s:s + batch_size]
                batch["valid"] = valid[s:s + batch_size]
                yield idx, batch


class ViewStream:
    """Frames of a split gathered from the store's memory-mapped training view
    (``vstore.train_view``): no copy of the split in memory; each block of whole batches is
    gathered from the mapping in the epoch's (fully shuffled) order. On a GPU the block is
    pinned and sent asynchronously as it is stored (float16 frames, uint8 mask: half the bytes
    of float32) and converted on the device; on the CPU it is converted in place."""

    def __init__(self, frames: torch.Tensor, valid: torch.Tensor, rows: np.ndarray,
                 block_bytes: int = GATHER_BYTES, file_order: bool = False):
        self.frames, self.valid = frames, valid  # (V_store, T, D) float16, (V_store, T) uint8: mapped
        self.rows = torch.from_numpy(rows)  # (V,) split position -> view row
        self.block_bytes = block_bytes
        # Gather each block in file order, then restore the epoch's order: fewer, closer reads
        # when the view is read from disk (larger than memory), an extra copy when it is warm.
        self.file_order = file_order

    def batches(self, data: SplitData, batch_size: int, seed: Optional[int],
                extra: Optional[dict[str, torch.Tensor]] = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        n = len(self.rows)
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        row_bytes = self.frames[0].numel() * 4
        per_block = max(1, self.block_bytes // max(1, row_bytes * batch_size)) * batch_size
        cuda = data.device.type == "cuda"
        for b in range(0, n, per_block):
            pos = order[b:b + per_block]
            src, back = self.rows[pos], None
            if self.file_order:
                src, order_of = src.sort()
                back = order_of.argsort()
            frames = self.frames.index_select(0, src)  # (n, T, D) float16
            valid = self.valid.index_select(0, src)  # (n, T) uint8
            if back is not None:
                frames, valid = frames[back], valid[back]
            if cuda:  # float16 over the bus, float32 on the device
                frames, valid = frames.pin_memory(), valid.pin_memory()
                frames = frames.to(data.device, non_blocking=True)
                valid = valid.to(data.device, non_blocking=True)
            frames, valid = frames.float(), valid.bool()  # (n, T, D) float32, (n, T) bool
            pos = pos.to(data.device)
            for a in range(0, len(pos), batch_size):
                idx = pos[a:a + batch_size]
                batch = data.batch(idx, extra)
                batch["frames"] = frames[a:a + batch_size]
                batch["valid"] = valid[a:a + batch_size]
                yield idx, batch


@torch.no_grad()
def pooled_data(data: SplitData, batch_size: int = 256) -> SplitData:
    """The same videos as (V, D) masked means of their frames (what the ``linear`` model and
    the ``transformer``'s linear part see), computed in one pass over ``data``'s frames."""
    if "pooled" in data.tensors:
        return data
    pooled: Optional[torch.Tensor] = None
    for idx, batch in data.batches(batch_size):
        mean = masked_mean(batch["frames"], batch["valid"])  # (B, D)
        if pooled is None:
            pooled = torch.empty(len(data), mean.shape[1], device=data.device)
        pooled[idx] = mean
    return SplitData(ids=data.ids, y=data.y, tensors={"pooled": pooled}, device=data.device)


def load_split_data(store: Store, ids: Sequence[str], model: str, device: torch.device, *,
                    need_images: bool = False, max_frames: Optional[int] = None,
                    memory_budget: Optional[int] = None, block_videos: int = 256,
                    memmap: Optional[bool] = None) -> SplitData:
    """Tensors of ``ids`` for ``model`` on ``device`` (see module doc).

    ``memmap`` (sequence models): True: frames come from the store's memory-mapped training
    view; None: from the view when they exceed the memory budget (else in memory); False:
    never (in memory, or streamed from the HDF5 segments beyond the budget)."""
    ids = list(ids)
    if not ids:
        raise SplitError(f"the split of {store.path} is empty for this set; rerun `vstore split`")
    y = torch.from_numpy(store.label_indices(ids)).to(device)
    if (y < 0).any():
        raise SplitError("the split lists unlabeled videos; rerun `vstore split` after relabelling")
    data = SplitData(ids=ids, y=y, device=device)
    if model == "linear":
        means = store.video_means(ids)  # (V, D) streamed from the store
        data.tensors["pooled"] = torch.from_numpy(means).to(device)
    elif model in SEQUENCE_MODELS:
        T = int(min(store.videos.n_frames[store.rows(ids)].max(), max_frames or 1 << 30))
        need = len(ids) * T * (store.dim or 0) * 4
        budget = memory_budget if memory_budget is not None else available_memory_bytes() // 2
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = min(budget, int(free * 0.5))
        view = None
        if memmap or (memmap is None and need > budget):
            from vstore.train_view import open_train_view
            try:
                view = open_train_view(store, max_frames=max_frames)
            except OSError as e:  # e.g. a read-only store: stream from the segments instead
                if memmap:
                    raise
                log.warning("cannot write the training view of %s (%s); streaming from the segments", store.path, e)
        if view is not None:
            cold = need > budget  # the page cache cannot hold the view: read only the rows gathered
            if cold:
                view.advise_random()
            frames = torch.from_numpy(view.frames)  # no copy: the mapping itself
            valid = torch.from_numpy(view.valid)
            data.stream = ViewStream(frames, valid, view.rows(ids), file_order=cold)
            log.info("frames of %d videos from the memory-mapped training view %s", len(ids), view.path)
        elif need <= budget:
            padded = store.load_padded(ids, max_frames=max_frames)
            data.tensors["frames"] = torch.from_numpy(padded.embeddings).to(device, torch.float32)  # (V, T, D)
            data.tensors["valid"] = torch.from_numpy(padded.valid).to(device)  # (V, T)
        else:
            per_video = max(1, T * (store.dim or 1) * 4)
            block = max(1, min(block_videos, budget // (4 * per_video)))
            log.info("frames of %d videos (%.1f GiB) exceed the memory budget; streaming blocks of %d videos",
                     len(ids), need / 2**30, block)
            data.stream = FrameStream(store, ids, block, max_frames)
    elif model == "random-frame":
        images, emb = store.key_frames(ids)
        if emb is None or not store.videos.has_key_frame[store.rows(ids)].all():
            raise SplitError(f"{store.path} holds no key frames for some videos (imported vectors?); "
                             "random-frame needs a store built from video files")
        data.tensors["key_embedding"] = torch.from_numpy(emb.astype(np.float32)).to(device)  # (V, D)
        if need_images:
            data.tensors["key_image"] = torch.from_numpy(images).to(device)  # (V, S, S, 3) uint8
    else:
        raise ValueError(f"unknown model {model!r}")
    return data
