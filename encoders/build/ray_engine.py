"""``vstore build --engine ray``: the build as a Ray Data pipeline over a cluster.

    video list -> decode tasks (CPU, one video per task, the local engine's ``decode_task``)
               -> encoder actor pool (fixed size; one actor per GPU with ``num_gpus=1``, fp16,
                  or CPU actors when the cluster has no GPU; the local ``FrameBatcher``)
               -> embeddings back to the driver -> ``StoreWriter`` segments and commits here

Segments are written by the driver with the normal writer: workers never touch the store, so
the store needs no filesystem shared with them (only the video files, and a CLIP checkpoint
given as a path, must be readable on the workers under the same path). What travels back per
video is its embeddings (float32, ~200 KB for 101 x 512) and its key frame thumbnail; the
decoded frames stay on the workers' side of the encoder stage.

Failures: a video whose decode raises comes back as a failure row (its reason, as locally); a
decode worker that dies (killed, segfault) is retried ``task_retries`` times by Ray, then its
video is reported failed and the rest of the build goes on; a dead encoder actor is restarted
by Ray Data and its batch retried; an exception in the encoder (CUDA out of memory...) stops the
build with its message, as locally. Ray Data runs the pipeline in waves of ``wave_videos``
videos, which bounds what the driver and the object store hold.

Batch size: --batch-size when given (the same batch size as a local build gives bit-identical
vectors); otherwise ``gpu_batch_size`` (256) for GPU actors, which need large batches to be
busy, and the encoder's own default (64 for CLIP) for CPU actors.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import pickle
import signal
import warnings
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np

from vstore.raycluster import RayEngineError, connect, import_ray

from .workers import TaskFailure, describe_exception

if TYPE_CHECKING:
    from ..base import FrameEncoder
    from .pipeline import BuildConfig, DecodeTask

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    # None = start a private Ray on this machine; "auto" = the cluster this machine is part of
    # (`ray start`); "ray://head:10001" = a remote cluster through Ray Client.
    address: Optional[str] = None
    num_cpus: Optional[int] = None  # CPUs of a private Ray started here (None = all the cores)
    # Device of the encoder actors: auto = one GPU actor per GPU of the cluster (num_gpus=1,
    # fp16) when it has GPUs, else CPU actors; or cuda / cpu.
    device: str = "auto"
    encoders: int = 0  # encoder actors (fixed pool); 0 = one per GPU, or 1 CPU actor without GPUs
    encoder_cpus: float = 1.0  # CPUs a CPU encoder actor reserves (its torch threads)
    # Videos handed to an encoder actor at a time; 0 = auto (``videos_per_call``): the count in
    # 8..32 whose frames fill the encoder's batches best, since each call's last batch is padded
    # (16 x 33 frames in batches of 64 computed 9% padding; 31 x 33 computes 0.1%). The batch
    # size itself is --batch-size, as locally: the same batch size gives bit-identical vectors.
    videos_per_batch: int = 0
    # Frames per forward pass of a GPU actor when no batch size is given (--batch-size): GPUs
    # need large batches (ViT-B/32 fp16 on an H100 is far from busy at 64). CPU actors keep the
    # encoder's default. 0 = the encoder's default on GPUs too.
    gpu_batch_size: int = 256
    wave_videos: int = 2048  # videos per Ray Data pipeline run (bounds driver and object store memory)
    task_retries: int = 2  # a decode whose worker dies is retried this often before the video fails

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {self.device!r}")
        for name in ("encoders", "task_retries", "gpu_batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.videos_per_batch < 0:
            raise ValueError(f"videos_per_batch must be >= 0 (0 = auto), got {self.videos_per_batch}")
        if self.wave_videos < 1:
            raise ValueError(f"wave_videos must be >= 1, got {self.wave_videos}")
        if self.encoder_cpus <= 0:
            raise ValueError(f"encoder_cpus must be > 0, got {self.encoder_cpus}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")


def videos_per_call(images_per_video: int, batch_size: int, lo: int = 8, hi: int = 32) -> int:
    """Videos per encoder-actor call: the V in ``lo..hi`` whose ``V x images_per_video`` images
    leave the least padding in the call's last (padded, full-size) batch, as a fraction of
    the images; the smallest such V on ties. Exact for builds whose videos all yield the
    requested frames (the common case); others pad as much as any fixed count would."""
    assert images_per_video >= 1 and batch_size >= 1 and 1 <= lo <= hi
    return min(range(lo, hi + 1), key=lambda v: ((-v * images_per_video) % batch_size / (v * images_per_video), v))


def actor_batch_size(requested: Optional[int], device: str, encoder_default: int, gpu_default: int) -> int:
    """Frames per forward pass of the encoder actors: the batch size asked for (--batch-size)
    when given; else ``gpu_default`` on GPU actors (``device`` cuda) unless it is 0, and the
    encoder's default on CPU actors."""
    if requested:
        return requested
    if device == "cuda" and gpu_default:
        return gpu_default
    return encoder_default


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray)."""
    try:
        import ray
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # not in a Ray worker
        return ""


# -- the decode stage (Ray tasks) -------------------------------------------------------------
class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def decode_row(row: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One video: the local engine's ``decode_task``; an exception becomes the row's reason.

    The timeout interrupts the decode at its next return to Python (PyAV returns per packet);
    a decoder stuck inside one C call is not interrupted (the local engine kills the process)."""
    from .pipeline import DecodeTask, decode_task
    task = DecodeTask(**{k: row[k] for k in DecodeTask.__dataclass_fields__})
    out = {"video_id": task.video_id, "error": "", "payload": b"", "node": _node_id()}
    armed = False
    try:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        armed = True
    except ValueError:  # not the main thread of the worker: no timeout
        pass
    try:
        video = decode_task(task)
        out["payload"] = pickle.dumps(video, protocol=5)
    except _Timeout:
        out["error"] = f"timed out after {timeout:.0f} s (decoder hung?)"
    except Exception as e:  # reported per video, as the local engine does
        out["error"] = describe_exception(e)
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return out


# -- the encoder stage (a fixed Ray Data actor pool) ------------------------------------------
class EncoderActor:
    """Holds the encoder once per actor; embeds the frames of a batch of decoded videos."""

    def __init__(self, spec: str, device: str, batch_size: int, threads: int, expected_id: str):
        from ..registry import load_encoder
        if device == "cpu":
            import torch
            torch.set_num_threads(max(1, threads))
        self.encoder = load_encoder(spec, device=device, batch_size=batch_size)
        if self.encoder.identity.get("id") != expected_id:
            raise RayEngineError(f"{spec} loads different weights on worker {os.uname().nodename} "
                                 f"({self.encoder.identity.get('id')} vs {expected_id} on the driver)")
        self.batch_size = batch_size
        self.node = _node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        try:
            return self._embed(batch)
        except Exception as e:
            # Not one video's fault: reported to the driver, which stops the build (Ray Data,
            # told to drop failed blocks so that a dead decode worker costs only its video,
            # would otherwise drop these videos as if their decode workers had died).
            return {"video_id": [str(batch["video_id"][0])], "error": [""], "payload": [b""], "node": [""],
                    "encoder_node": [self.node], "fatal": [describe_exception(e)]}

    def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .pipeline import DecodeTask, FrameBatcher
        out: dict[str, list] = {"video_id": [], "error": [], "payload": [], "node": [], "encoder_node": []}
        batcher = FrameBatcher(self.encoder, self.batch_size)
        done = []
        decoded_on = dict(zip(batch["video_id"], batch["node"]))
        for vid, error, payload in zip(batch["video_id"], batch["error"], batch["payload"]):
            if error:
                out["video_id"].append(vid)
                out["error"].append(error)
                out["payload"].append(b"")
                out["node"].append(decoded_on[vid])
                out["encoder_node"].append("")
                continue
            video = pickle.loads(payload)
            done.extend(batcher.add(DecodeTask(vid, "", 0, "", 0, 0), video))
        done.extend(batcher.flush())  # a padded last batch: same vectors as the local engine
        for p in done:
            out["video_id"].append(p.task.video_id)
            out["error"].append("")
            out["node"].append(decoded_on[p.task.video_id])
            out["encoder_node"].append(self.node)
            # The frames stay here; the driver needs the metadata, thumbnail and vectors.
            out["payload"].append(pickle.dumps((replace(p.video, images=p.video.images[:0]), p.embeddings),
                                               protocol=5))
        out["fatal"] = [""] * len(out["video_id"])
        return out


def _encoder_pool(ray, config: RayConfig) -> tuple[str, int, dict[str, Any]]:
    """(device, pool size, Ray resources per actor) for the encoder stage."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 0))
    if config.device == "cuda" and gpus == 0:
        raise RayEngineError("--device cuda: the Ray cluster has no GPU")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and gpus > 0) else "cpu"
    if device == "cuda":
        n = config.encoders or gpus
        return device, n, {"num_gpus": 1, "num_cpus": 1}
    n = config.encoders or 1
    if cpus - n * config.encoder_cpus < 1:
        raise RayEngineError(f"the Ray cluster has {cpus:g} CPUs: {n} CPU encoder(s) of {config.encoder_cpus:g} "
                             "CPUs would leave none to decode; add CPUs or lower --ray-encoders")
    return device, n, {"num_cpus": config.encoder_cpus}


def ray_results(tasks: Sequence["DecodeTask"], encoder: "FrameEncoder", config: "BuildConfig",
                ray_config: Optional[RayConfig], batch_size: Optional[int]) -> Iterator[tuple["DecodeTask", Any]]:
    """The Ray engine, with the contract of ``pipeline.local_results``: yields ``(task,
    EmbeddedVideo)`` for each embedded video and ``(task, TaskFailure)`` for each failed one.
    ``batch_size``: the actors' frames per forward pass; None = by their device
    (``actor_batch_size``).

    When the pipeline has run, logs (INFO) how many videos each Ray node decoded and embedded,
    also as the record's ``decoded_on`` / ``encoded_on`` ({node id: videos})."""
    from .pipeline import EmbeddedVideo
    rc = ray_config or RayConfig()
    if not tasks:
        return
    spec = encoder.identity.get("spec")
    if not spec:
        raise RayEngineError(f"encoder {encoder.name} records no spec to load it on the Ray workers")
    started = connect(rc.address, rc.num_cpus)
    ray = import_ray()
    saved: dict[str, Any] = {}
    try:
        device, n_actors, resources = _encoder_pool(ray, rc)
        batch_size = actor_batch_size(batch_size, device, encoder.batch_size, rc.gpu_batch_size)
        threads = max(1, math.floor(rc.encoder_cpus))
        per_call = rc.videos_per_batch or videos_per_call(config.frames + 1, batch_size)  # + the key frame
        ctx = ray.data.DataContext.get_current()
        saved.update({k: getattr(ctx, k) for k in ("enable_progress_bars", "max_errored_blocks")})
        ctx.enable_progress_bars = False  # the driver's own bar says what matters
        ctx.max_errored_blocks = -1  # a decode task that died after its retries drops only its video
        log.info("Ray build: %d videos, %d %s encoder actor(s) (batches of %d, %d videos a call), %g cluster CPUs",
                 len(tasks), n_actors, device, batch_size, per_call, ray.cluster_resources().get("CPU", 0))
        decoded_on: collections.Counter = collections.Counter()  # node id -> videos decoded there
        encoded_on: collections.Counter = collections.Counter()  # node id -> videos embedded there
        for w in range(0, len(tasks), rc.wave_videos):
            wave = {t.video_id: t for t in tasks[w:w + rc.wave_videos]}
            ds = ray.data.from_items([asdict(t) for t in wave.values()], override_num_blocks=len(wave))
            with warnings.catch_warnings():  # Ray 2.60 deprecates the retry arguments' spelling, keeps them
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map(decode_row, fn_kwargs={"timeout": config.video_timeout}, num_cpus=1,
                            max_retries=rc.task_retries, retry_exceptions=False)
            ds = ds.map_batches(
                EncoderActor, batch_size=per_call, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                fn_constructor_kwargs=dict(spec=spec, device=device, batch_size=batch_size, threads=threads,
                                           expected_id=encoder.identity.get("id")),
                **resources)
            seen: set[str] = set()
            try:
                for row in ds.iter_rows():
                    if row["fatal"]:
                        raise RayEngineError(f"the encoder failed on Ray node {str(row['encoder_node'])[:8]}: "
                                             f"{row['fatal']}")
                    vid = str(row["video_id"])
                    task = wave[vid]
                    seen.add(vid)
                    decoded_on[str(row["node"])] += 1
                    if row["error"]:
                        yield task, TaskFailure(str(row["error"]))
                        continue
                    encoded_on[str(row["encoder_node"])] += 1
                    video, emb = pickle.loads(row["payload"])
                    yield task, EmbeddedVideo(task, video, video.images, emb, filled=len(emb))
            except (ray.exceptions.RayError, RayEngineError) as e:
                raise RayEngineError(f"the Ray pipeline stopped: {str(e).strip().splitlines()[-1][:300]}") from None
            for vid, task in wave.items():
                if vid not in seen:  # its task died more often than Ray retries it
                    yield task, TaskFailure(f"Ray worker died decoding it ({rc.task_retries + 1} attempts; "
                                            "killed, out of memory or a decoder crash: see the Ray logs)")
        log.info("Ray build: videos decoded per node %s; embedded per node %s",
                 {k[:8]: v for k, v in decoded_on.items()}, {k[:8]: v for k, v in encoded_on.items()},
                 extra={"decoded_on": dict(decoded_on), "encoded_on": dict(encoded_on)})
    finally:
        for k, v in saved.items():
            setattr(ray.data.DataContext.get_current(), k, v)
        if started:
            ray.shutdown()
