"""Benchmark 6: `vstore build` on Ray vs the local engine at equal resources.

The same videos and encoder as bench_build (a ViT-B/32-sized CLIP with random weights, fp32 on
CPU; 640x360 H.264 clips, exact sampling) are built with

  * the local engine: ``k`` decode processes, the encoder in this process on 1 torch thread;
  * the Ray engine on a private Ray of ``k + 1`` CPUs: ``k`` decode task slots and one CPU
    encoder actor of 1 CPU (1 torch thread),

for k = 1 and 2, rounds interleaved (common.interleaved: medians of per-round ratios). Ray's
start-up (``ray.init``, once per k) is reported apart: a cluster is started once for many
builds. What each Ray build does pay is its dataset's start-up and the encoder actor's
(import torch, load the model): that is in its wall time. Goal: Ray build time / local
build time <= 1.15.

Ray must only talk on loopback here, so run it in a network namespace with only ``lo``:

    unshare -n sh -c 'ip link set lo up && python benchmarks/bench_scale.py'
    unshare -n sh -c 'ip link set lo up && python benchmarks/bench_scale.py --quick'

Also measured, for docs/scale.md's cost model: decode CPU-seconds per video (exact and
keyframe sampling, in this process) and the encoder's images/s on 1 thread.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import common
from bench_build import clip_checkpoint, make_videos

from encoders.build import BuildConfig, build_store
from encoders.video.sampling import sample_video


def run(videos: Path, encoder, frames: int, k: int, engine: str) -> float:
    """Wall seconds of one ``build_store`` of ``videos`` (a directory) into a fresh store."""
    from encoders.build.ray_engine import RayConfig
    store = common.OUT / "scale" / "stores" / f"{engine}-{k}"
    if store.exists():
        shutil.rmtree(store)
    t = time.perf_counter()
    s = build_store([videos], store, encoder, config=BuildConfig(frames=frames, workers=k), progress=False,
                    engine=engine, ray_config=RayConfig(device="cpu", encoder_cpus=1.0))
    wall = time.perf_counter() - t
    assert s.built == len(list(videos.glob("*.mp4"))) and not s.failures, s
    return wall


def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode CPU counts k to compare")
    p.add_argument("--videos", type=int, default=None, help="clips to build (default 8; --quick 4)")
    p.add_argument("--frames", type=int, default=None, help="exact frames per clip (default 32; --quick 8)")
    p.add_argument("--marginal", action="store_true",
                   help="also build one video with each engine: the difference is the per-video cost without "
                        "the fixed start-up (Ray's encoder actor imports torch and loads the model per build)")
    args = p.parse_args()
    import ray
    import torch

    from encoders.registry import load_encoder
    torch.set_num_threads(1)  # the local encoder gets the one CPU the Ray encoder actor gets
    n_videos, seconds, frames = (4, 10, 8) if args.quick else (8, 30, 32)
    n_videos, frames = args.videos or n_videos, args.frames or frames
    repeats = 1 if args.quick else args.repeats
    videos = make_videos(n_videos, seconds)
    one = videos.parent / f"{videos.name}-one"
    if args.marginal and not one.is_dir():
        one.mkdir()
        first = sorted(videos.glob("*.mp4"))[0]
        shutil.copy2(first, one / first.name)
    encoder = load_encoder(f"clip:{clip_checkpoint()}", device="cpu")
    paths = sorted(videos.glob("*.mp4"))
    print(f"{n_videos} videos x {seconds} s, {frames} exact frames each; {repeats} rounds; "
          f"{os.cpu_count()} cores; load average {common.load_average()}")

    decode = {}
    for mode in ("exact", "keyframe"):
        c = time.process_time()
        sampled = [sample_video(p, frames, mode=mode, size=encoder.input_size) for p in paths]
        decode[mode] = (time.process_time() - c) / len(paths)
    import numpy as np
    images = np.concatenate([s.images for s in sampled])
    encoder.encode_images(images[:encoder.batch_size])
    t = time.perf_counter()
    encoder.encode_images(images)
    enc_rate = len(images) / (time.perf_counter() - t)
    print(f"decode CPU s per video ({frames} frames of a {seconds} s 640x360 clip): exact {decode['exact']:.3f}, "
          f"keyframe {decode['keyframe']:.3f}; encoder alone {enc_rate:.1f} images/s on 1 thread")

    rows, verdicts, results = [], [], {}
    for k in args.workers:
        t = time.perf_counter()
        ray.init(num_cpus=k + 1, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t
        cases = {f"{engine} k={k}": (lambda k=k, e=engine: run(videos, encoder, frames, k, e))
                 for engine in ("local", "ray")}
        if args.marginal:  # the same builds of one video: their difference is the per-video cost
            cases.update({f"{engine} k={k}, 1 video": (lambda k=k, e=engine: run(one, encoder, frames, k, e))
                          for engine in ("local", "ray")})
        try:
            times = common.interleaved(cases, repeats, warmup=0 if args.quick else 1)["wall"]
        finally:
            ray.shutdown()
        r = common.ratio(times, f"ray k={k}", f"local k={k}")
        n_frames = n_videos * frames
        for name in cases:
            rows.append([name, common.med(times[name]), (n_frames if "1 video" not in name else frames)
                         / common.med(times[name])])
        results[k] = {"times": times, "ratio": r, "ray_init_s": ray_start}
        verdicts.append(common.verdict(f"Ray / local build time, k={k} (ray.init {ray_start:.1f} s apart)", r, 1.15,
                                       False))
        if args.marginal:
            # per round: (N-video build - 1-video build), Ray over local: the cost of the other
            # N - 1 videos, without either engine's fixed start-up (Ray's actor loads the model)
            marg = [(a - b) / (c - d) for a, b, c, d in zip(times[f"ray k={k}"], times[f"ray k={k}, 1 video"],
                                                            times[f"local k={k}"], times[f"local k={k}, 1 video"])]
            results[k]["marginal_ratios"] = marg
            for engine in ("local", "ray"):  # T(1) minus one video's marginal cost: the build's fixed start-up
                t1, tn = common.med(times[f"{engine} k={k}, 1 video"]), common.med(times[f"{engine} k={k}"])
                results[k][f"{engine}_fixed_s"] = t1 - (tn - t1) / (n_videos - 1)
            print(f"k={k}: fixed start-up per build: Ray {results[k]['ray_fixed_s']:.1f} s, "
                  f"local {results[k]['local_fixed_s']:.1f} s", flush=True)
            verdicts.append(common.verdict(f"Ray / local marginal time of {n_videos - 1} more videos, k={k} "
                                           "(fixed start-up excluded)", common.med(marg), 1.15, False))
    common.table(rows, ["case", "wall s", "frames/s"])
    common.save("bench_scale", {"decode_cpu_s_per_video": decode, "encoder_images_per_s_1thread": enc_rate,
                                "results": results, "verdicts": verdicts})


if __name__ == "__main__":
    main()
