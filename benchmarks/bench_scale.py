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

Also measured: decode CPU-seconds per video of the clips above (exact and keyframe sampling,
in this process) and the encoder's images/s on 1 thread.

``--decode-model`` measures only docs/scale.md's cost-model inputs, without Ray (no namespace
needed): the CPU-seconds of ``sample_video(path, 100, size=224)`` in one process (1 decoder
thread, as a build's decode task) on 60 s 640x360 30 fps H.264 clips (x264 veryfast, B-frames,
scene cuts) made with keyint 250 (x264's default) and 60 (2-second GOPs), exact and keyframe
sampling, and for reference PyAV decoding every frame (no conversion); the median over 3 clips
x --repeats rounds:

    python benchmarks/bench_scale.py --decode-model
    python benchmarks/bench_scale.py --decode-model --clip-seconds 10 --keyint 250 --clips 5
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import common
from bench_build import clip_checkpoint, make_videos
from bench_sampling import FPS, GEN_VERSION, X264, encode_video

from encoders.build import BuildConfig, build_store
from encoders.video.sampling import sample_video
from vstore.raycluster import connect


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


def model_clips(seconds: int, keyint: int, n: int) -> list[Path]:
    """``n`` cached ``seconds``-long 640x360 clips (bench_sampling's generator and x264
    settings) with a keyframe at least every ``keyint`` frames."""
    x264 = {**X264, "x264-params": X264["x264-params"].replace("keyint=250", f"keyint={keyint}")}
    d = common.out_dir("scale", f"model_{seconds}s_k{keyint}_g{GEN_VERSION}")
    paths = []
    for i in range(n):
        path = d / f"clip{i:02d}.mp4"
        if not path.is_file():
            print(f"generating {path.parent.name}/{path.name} ({seconds} s, keyint {keyint})...", flush=True)
            encode_video(path, seconds * FPS, seed=300 + i, x264=x264)
        paths.append(path)
    return paths


def decode_all(path: Path) -> int:
    """Decode every frame of ``path`` with PyAV on one thread, converting none: the reference
    for exact sampling, which decodes from the keyframe before each target."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", 1
        return sum(1 for _ in container.decode(stream))


def decode_model(seconds: int, keyints: list[int], n_clips: int, frames: int, rounds: int) -> None:
    """docs/scale.md's d: decode CPU-seconds per video, exact and keyframe, per keyint."""
    clips = {k: model_clips(seconds, k, n_clips) for k in keyints}
    print(f"decode model: {n_clips} clips x {seconds} s 640x360 {FPS} fps per keyint, sample_video(path, {frames}, "
          f"size=224), 1 decoder thread, {rounds} round(s); {os.cpu_count()} cores; "
          f"load average {common.load_average()}", flush=True)
    cpu: dict[tuple[int, str], list[float]] = {}
    returned: dict[tuple[int, str], list[int]] = {}
    for _ in range(rounds):
        for k, paths in clips.items():
            for path in paths:
                for mode in ("exact", "keyframe", "decode all"):
                    c = time.process_time()
                    n = len(sample_video(path, frames, mode=mode, size=224).indices) if mode != "decode all" \
                        else decode_all(path)
                    cpu.setdefault((k, mode), []).append(time.process_time() - c)
                    returned.setdefault((k, mode), []).append(n)
    rows, result = [], {}
    for (k, mode), xs in cpu.items():
        d = statistics.median(xs)
        got = int(statistics.median(returned[(k, mode)]))
        rows.append([f"keyint {k}", mode, d, got, 1e6 * d / 3600])
        result[f"keyint{k}_{mode}"] = {"cpu_s_per_video": d, "cpu_s_all": xs, "frames_returned": got}
    common.table(rows, ["clips", "sampling", "CPU s/video (d)", "frames", "CPU-hours per 1M videos"])
    common.save("bench_scale_decode_model", {"clip_seconds": seconds, "keyints": keyints, "clips": n_clips,
                                             "frames": frames, "rounds": rounds, "decode": result})


def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode CPU counts k to compare")
    p.add_argument("--videos", type=int, default=None, help="clips to build (default 8; --quick 4)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per clip (default 32, --quick 8; --decode-model: 100)")
    p.add_argument("--marginal", action="store_true",
                   help="also build one video with each engine: the difference is the per-video cost without "
                        "the fixed start-up (Ray's encoder actor imports torch and loads the model per build)")
    p.add_argument("--decode-model", action="store_true",
                   help="only docs/scale.md's decode cost per video (d), exact and keyframe, no Ray")
    p.add_argument("--clip-seconds", type=int, default=60, help="--decode-model: clip length (default 60)")
    p.add_argument("--keyint", type=int, nargs="+", default=[250, 60],
                   help="--decode-model: x264 keyint of the clips, one set of clips each (default 250 60)")
    p.add_argument("--clips", type=int, default=3, help="--decode-model: clips per keyint (default 3)")
    args = p.parse_args()
    if args.decode_model:
        decode_model(args.clip_seconds, args.keyint, args.clips, args.frames or 100, 1 if args.quick else args.repeats)
        return
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
        connect(None, k + 1)  # the private Ray `vstore build --engine ray --ray-cpus k+1` starts
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
