"""``vstore build``: videos -> sampled frames -> embeddings -> committed store segments.

Decoding runs in isolated worker processes while this process encodes, so neither waits on
the other; a video that fails (corrupt, truncated, audio-only, a decoder that hangs or
crashes) is recorded in ``STORE/failures.csv`` and costs only itself. Videos are committed in
segments as they finish, so an interrupted build keeps its work and a rerun resumes.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vstore import Store, StoreConfig, StoreWriter, VideoEntry, VStoreError, compact
from vstore.fsutil import path_text
from vstore.labels import Labels
from vstore.manifest import sampling_record
from vstore.raycluster import ENGINES
from vstore.records import MAX_ID_BYTES, text_problem

from ..errors import EXIT_SOME_FAILED
from ..video.sampling import SAMPLING_MODES, SampledVideo, find_videos, sample_video
from .failures import Failure, FailureLog
from .workers import IsolatedPool, TaskFailure, run_inline

if TYPE_CHECKING:  # torch is only needed once an encoder exists
    from ..base import FrameEncoder
    from .ray_engine import RayConfig

log = logging.getLogger(__name__)



@dataclass
class BuildConfig:
    frames: int = 100  # frames sampled per video, evenly spaced (the reference study used 100)
    sampling: str = "exact"  # exact = those precise frames; keyframe = nearest keyframes (fast, approximate)
    # Decode processes; 0 decodes in this process (no crash isolation); None = auto: on a GPU
    # decoding is the bottleneck (up to 8 workers), on a CPU the encoder needs the cores
    # (a quarter of them, at least 1; decoding 100 frames costs ~10% of embedding them).
    workers: Optional[int] = None
    video_timeout: float = 600.0  # seconds before a stuck decode is killed and the video failed
    decode_threads: int = 1  # codec threads per decode process
    compact: bool = True  # merge the small segments a build commits into large ones at the end

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.video_timeout <= 0:
            raise ValueError(f"video_timeout must be > 0, got {self.video_timeout}")


@dataclass
class BuildSummary:
    built: int = 0
    skipped: int = 0  # already in the store
    failures: list[Failure] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    unlabeled: int = 0
    # videos already in the store whose label in --labels differs (they keep the stored one)
    relabelled: list[tuple[str, Optional[str], str]] = field(default_factory=list)
    compact_error: Optional[str] = None  # the end-of-build compaction failed; the build did not

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failures else 0


@dataclass(frozen=True)
class DecodeTask:
    video_id: str
    path: str
    frames: int
    sampling: str
    size: int
    threads: int


def auto_workers(device_type: str) -> int:
    cores = os.cpu_count() or 1
    return min(8, cores) if device_type == "cuda" else max(1, cores // 4)


def decode_task(task: DecodeTask) -> SampledVideo:
    """Runs in a worker process: sample one video at the encoder's input size."""
    return sample_video(task.path, task.frames, mode=task.sampling, size=task.size,
                        video_id=task.video_id, threads=task.threads)


@dataclass
class EmbeddedVideo:
    """One decoded video on its way through the encoder: what both engines yield per video."""
    task: DecodeTask
    video: SampledVideo
    images: np.ndarray  # (M, S, S, 3): the sampled frames, then the key frame if any
    embeddings: np.ndarray  # (M, D) float32, filled batch by batch
    filled: int = 0


class FrameBatcher:
    """Packs frames of consecutive videos into full encoder batches, so the encoder never runs
    a short batch except at the very end; yields videos as their last frame is embedded."""

    def __init__(self, encoder: "FrameEncoder", batch_size: int):
        self.encoder = encoder
        self.batch_size = batch_size
        self.parts: list[tuple[EmbeddedVideo, int, int]] = []  # image ranges not embedded yet
        self.buffered = 0

    def add(self, task: DecodeTask, video: SampledVideo) -> Iterator[EmbeddedVideo]:
        images = video.images
        if video.key_frame_image is not None:
            images = np.concatenate([images, video.key_frame_image[None]])
        p = EmbeddedVideo(task, video, images, np.empty((len(images), self.encoder.dim), np.float32))
        self.parts.append((p, 0, len(images)))
        self.buffered += len(images)
        while self.buffered >= self.batch_size:
            yield from self._encode(self.batch_size)

    def flush(self) -> Iterator[EmbeddedVideo]:
        while self.buffered:
            yield from self._encode(min(self.buffered, self.batch_size))

    def _encode(self, n: int) -> Iterator[EmbeddedVideo]:
        take, got = [], 0
        while got < n:
            p, a, b = self.parts[0]
            k = min(b - a, n - got)
            take.append((p, a, a + k))
            got += k
            if a + k == b:
                self.parts.pop(0)
            else:
                self.parts[0] = (p, a + k, b)
        batch = np.concatenate([p.images[a:b] for p, a, b in take])  # (n, S, S, 3)
        if n < self.batch_size:
            # Always a full batch: a frame's embedding then never depends on how many frames
            # share its batch (BLAS picks other kernels for small batches: ~1e-7 apart), so
            # any engine and any decode order give bit-identical vectors.
            batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
        emb = self.encoder.encode_images(batch)[:n]  # (n, D)
        self.buffered -= n
        pos = 0
        for p, a, b in take:
            p.embeddings[a:b] = emb[pos:pos + b - a]
            pos += b - a
            p.filled += b - a
            if p.filled == len(p.images):
                yield p


def local_results(tasks: Sequence[DecodeTask], encoder: "FrameEncoder", config: BuildConfig, batch_size: int
                  ) -> Iterator[tuple[DecodeTask, "EmbeddedVideo | TaskFailure"]]:
    """The local engine: decode in isolated processes, encode here; yields each video once
    embedded (or its failure), in completion order."""
    workers = auto_workers(encoder.device.type) if config.workers is None else config.workers
    if workers == 0:
        results = run_inline(decode_task, tasks)
    else:
        results = IsolatedPool(decode_task, min(workers, max(1, len(tasks))),
                               timeout=config.video_timeout).imap_unordered(tasks)
    batcher = FrameBatcher(encoder, batch_size)
    for task, result in results:
        if isinstance(result, TaskFailure):
            yield task, result
            continue
        for p in batcher.add(task, result):
            yield p.task, p
    for p in batcher.flush():
        yield p.task, p


def _entry(p: EmbeddedVideo, labels: Optional[Labels]) -> VideoEntry:
    v = p.video
    n = len(v.indices)
    has_key = v.key_frame_image is not None
    return VideoEntry(
        id=p.task.video_id, embeddings=p.embeddings[:n], frame_index=v.indices, timestamp=v.timestamps,
        label=labels.get(p.task.video_id) if labels else None, source=path_text(Path(p.task.path).resolve()),
        total_frames=v.total_frames, duration=v.duration, key_frame_index=v.key_frame_index,
        key_frame_time=v.key_frame_time, key_frame_image=v.key_frame_image if has_key else None,
        key_frame_embedding=p.embeddings[n] if has_key else None, rotation=v.rotation, hflip=v.hflip,
    )


def plan_videos(inputs: Sequence[str | Path]) -> tuple[list[tuple[str, Path]], list[Failure]]:
    """(id, path) of each video (id = file stem, see ``path_text`` for names that are not
    UTF-8) and failures for clashing or unusable ids."""
    seen: dict[str, Path] = {}
    clashes: list[Failure] = []
    for path in find_videos(list(inputs)):
        vid = path_text(path.stem)
        problem = text_problem(vid, "video id (the file name)", MAX_ID_BYTES)
        if problem:
            clashes.append(Failure(vid, path_text(path), f"{problem}; rename the file"))
            continue
        if vid in seen:
            clashes.append(Failure(vid, path_text(path), f"duplicate video id {vid!r}: also {path_text(seen[vid])}; "
                                   "rename one"))
            continue
        seen[vid] = path
    return list(seen.items()), clashes


def build_store(inputs: Sequence[str | Path], store_path: str | Path, encoder: "FrameEncoder",
                labels: Optional[Labels] = None, config: Optional[BuildConfig] = None,
                store_config: Optional[StoreConfig] = None, batch_size: Optional[int] = None,
                progress: bool = True, engine: str = "local", ray_config: Optional["RayConfig"] = None
                ) -> BuildSummary:
    """Build (or resume, or extend) the store at ``store_path`` from video files.

    ``engine``: ``local`` (decode processes on this machine, encoder in this process) or
    ``ray`` (a Ray Data pipeline on a cluster, see ``ray_engine``; segments are still
    written and committed here, so the store needs no filesystem shared with the workers)."""
    config = config or BuildConfig()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    store_path = Path(store_path)
    t0 = time.monotonic()
    videos, clashes = plan_videos(inputs)
    summary = BuildSummary()
    with Store.open_or_create(store_path, store_config) as existing:
        if labels:
            summary.relabelled = [(v, old, labels.get(v)) for v, old in zip(existing.videos.ids, existing.videos.labels)
                                  if labels.get(v) is not None and labels.get(v) != old]
    if summary.relabelled:
        v, old, new = summary.relabelled[0]
        log.warning("%d video(s) already in %s have another label in %s (e.g. %s: %s -> %s); they keep the "
                    "stored label: build into a new --store to relabel them", len(summary.relabelled), store_path,
                    labels.path, v, old, new)
    build_info = {**asdict(config), "encoder": encoder.name}
    failures = FailureLog(store_path)
    with StoreWriter(store_path, encoder.identity, build_info=build_info,
                     sampling=sampling_record(config.frames, config.sampling)) as writer:
        todo = [(vid, path) for vid, path in videos if vid not in writer]
        summary.skipped = len(videos) - len(todo)
        for f in clashes:
            failures.add(f)
            summary.failures.append(f)
        if labels:
            missing = sum(1 for vid, _ in todo if labels.get(vid) is None)
            if missing:
                log.warning("%d of %d videos to build have no label in %s", missing, len(todo), labels.path)
        log.info("%d videos found, %d already in %s, %d to build", len(videos), summary.skipped, store_path, len(todo))
        tasks = [DecodeTask(vid, str(path), config.frames, config.sampling, encoder.input_size, config.decode_threads)
                 for vid, path in todo]
        if engine == "ray":
            from .ray_engine import ray_results
            # batch_size None: the actors' device decides (large batches on GPU actors)
            results = ray_results(tasks, encoder, config, ray_config, batch_size)
        else:
            results = local_results(tasks, encoder, config, batch_size or encoder.batch_size)
        bar = tqdm(total=len(tasks), unit="video", disable=not progress, dynamic_ncols=True, desc="build")

        def advance() -> None:
            """One more video done (built or failed): the bar's count, rates and failures."""
            elapsed = max(time.monotonic() - t0, 1e-9)
            bar.set_postfix(frames_s=f"{summary.frames / elapsed:.1f}", videos_s=f"{summary.built / elapsed:.2f}",
                            failed=summary.failed, refresh=False)
            bar.update(1)

        def done(p: EmbeddedVideo) -> None:
            entry = _entry(p, labels)
            writer.add(entry)
            summary.built += 1
            summary.unlabeled += entry.label is None
            summary.frames += len(p.video.indices)
            advance()

        attempted = {f.id for f in clashes}
        try:
            with logging_redirect_tqdm():  # warnings print above the progress bar
                for task, result in results:
                    attempted.add(task.video_id)
                    if isinstance(result, TaskFailure):
                        f = Failure(task.video_id, path_text(task.path), result.reason)
                        log.warning("failed %s: %s", task.path, result.reason)
                        failures.add(f)
                        summary.failures.append(f)
                        advance()  # failed= counts it now, not at the next built video
                        continue
                    done(result)
        finally:
            results.close()  # stop decoders / the Ray pipeline now, not when garbage-collected
            bar.close()
            failures.finish(attempted, writer.committed)
    if config.compact and summary.built:
        # Segments were small so that a crash loses little; large ones read faster.
        try:
            compact(store_path)
        except VStoreError as e:  # disk full...: every video is committed already, the build succeeded
            summary.compact_error = str(e)
            log.warning("the %d built video(s) are committed; merging segments failed: %s", summary.built, e)
    summary.seconds = time.monotonic() - t0
    return summary
