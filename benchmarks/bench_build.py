"""Benchmark 2: `vstore build` throughput vs the encoder alone on the same frames.

A ViT-B/32-sized OpenAI CLIP with random weights (saved once as a state dict, loaded through
``load_encoder("clip:/path")``, fp32 on CPU) embeds frames of short 640x360 H.264 videos.
``build_store`` (exact sampling, the encoder's 224 px input, decode worker processes) is
timed against ``encoder.encode_images`` on exactly the images the build embeds (the sampled
frames plus each video's key frame, decoded beforehand and held in memory, same batch size).
Ratio = encoder-alone time / build time for the same images (= build frames/s over
encoder-alone frames/s). Builds write a fresh store each time, timing includes starting the
decode processes, as `vstore build` does.

Also measured, to explain the ratio: the CPU time of decoding the same frames and of
encoding them (the best a dedicated machine could do follows: both jobs share its cores),
the build's total CPU (this process + its decode processes) against the encoder's, where
each build's wall time went (start-up, encoding, waiting for frames, tail), and the cost of
shipping decoded frames between processes (pickle).

Goal: build / encoder-alone >= 0.9.

    python benchmarks/bench_build.py              # 8 videos x 30 s, 32 frames each, workers 1 and 2
    python benchmarks/bench_build.py --nice       # also decode processes at nice 10 (experiment)
    python benchmarks/bench_build.py --quick      # 4 videos x 20 s, 16 frames each, 1 round
"""
from __future__ import annotations

import os
import pickle
import resource
import shutil
import time
import warnings
from pathlib import Path

import common
import numpy as np
from bench_sampling import FPS, encode_video

from encoders.build import BuildConfig, auto_workers, build_store
from encoders.video.sampling import sample_video

# No torch at module level: spawned decode processes re-import this script (as __mp_main__),
# and should stay as light as `vstore build`'s own.

CLIP_ARGS = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12)


def clip_checkpoint() -> Path:
    """ViT-B/32-sized CLIP, random weights, saved as an fp16 state dict (as OpenAI ships weights)."""
    path = common.out_dir("build") / "clip-vit-b32-random.pt"
    if not path.is_file():
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from clip.model import CLIP
        torch.manual_seed(0)
        model = CLIP(**CLIP_ARGS).half()
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def make_videos(n: int, seconds: int) -> Path:
    d = common.out_dir("build", f"videos_{n}x{seconds}s")
    for i in range(n):
        p = d / f"bench{i:02d}.mp4"
        if not p.is_file():
            print(f"generating {p.name} ({seconds} s)...", flush=True)
            encode_video(p, seconds * FPS, seed=100 + i)
    return d


TIMELINES: dict[str, list[dict]] = {}


def nice_decode_task(task):
    """encoders.build.pipeline.decode_task in a decode process lowered to nice 10 (experiment)."""
    import encoders.build.pipeline as build
    if os.getpriority(os.PRIO_PROCESS, 0) < 10:
        os.nice(10 - os.getpriority(os.PRIO_PROCESS, 0))
    return build.decode_task(task)


def run_build(videos: Path, encoder, frames: int, workers: int, tag: str, nice: bool = False) -> float:
    """One fresh build; records where its time went (startup, encoding, waiting, tail) in TIMELINES."""
    import encoders.build.pipeline as build
    store = common.OUT / "build" / "stores" / "".join(c if c.isalnum() else "_" for c in tag)
    if store.exists():
        shutil.rmtree(store)
    spans: list[tuple[float, float]] = []
    encode = encoder.encode_images

    def timed(batch):
        a = time.perf_counter()
        out = encode(batch)
        spans.append((a, time.perf_counter()))
        return out
    encoder.encode_images = timed  # instance attribute: the build's FrameBatcher calls it
    original_task = build.decode_task
    if nice:
        build.decode_task = nice_decode_task
    try:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        summary = build_store([videos], store, encoder,
                              config=BuildConfig(frames=frames, sampling="exact", workers=workers), progress=False)
        end = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # decode processes, joined by the pool
    finally:
        del encoder.encode_images
        build.decode_task = original_task
    assert summary.built == len(list(videos.glob("*.mp4"))) and not summary.failures, summary
    busy = sum(b - a for a, b in spans)
    TIMELINES.setdefault(tag, []).append({
        "wall": end - t, "startup": spans[0][0] - t, "encoding": busy,
        "waiting": (spans[-1][1] - spans[0][0]) - busy, "tail": end - spans[-1][1], "batches": len(spans),
        "children_cpu": (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)})
    return end - t


def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode worker counts to time (0: in-process)")
    p.add_argument("--nice", action="store_true", help="also time builds whose decode processes run at nice 10")
    args = p.parse_args()
    import torch

    from encoders.registry import load_encoder
    n_videos, seconds, frames = (4, 20, 16) if args.quick else (8, 30, 32)
    repeats = 1 if args.quick else args.repeats
    ckpt = clip_checkpoint()
    videos = make_videos(n_videos, seconds)
    encoder = load_encoder(f"clip:{ckpt}", device="cpu")
    paths = sorted(videos.glob("*.mp4"))
    print(f"{encoder!r}, batch size {encoder.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores; {n_videos} videos x {seconds} s, {frames} frames each (exact) + key frame; "
          f"{repeats} interleaved rounds; load average {common.load_average()}")

    # The images the build embeds, decoded beforehand (also: the decode CPU cost, in-process).
    c = time.process_time()
    sampled = [sample_video(p, frames, mode="exact", size=encoder.input_size, video_id=p.stem) for p in paths]
    decode_cpu = time.process_time() - c
    images = np.concatenate([np.concatenate([s.images, s.key_frame_image[None]]) for s in sampled])
    n_sampled = sum(len(s.images) for s in sampled)
    c = time.perf_counter()
    blob = [pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for s in sampled]
    _ = [pickle.loads(b) for b in blob]
    pickle_s = time.perf_counter() - c
    pickle_mb = sum(len(b) for b in blob) / 1e6

    cases = {"encoder alone": lambda: encoder.encode_images(images)}
    for w in args.workers:
        cases[f"build workers={w}"] = (lambda w=w: run_build(videos, encoder, frames, w, f"workers={w}"))
        if args.nice and w:
            cases[f"build workers={w}, decoders at nice 10"] = (
                lambda w=w: run_build(videos, encoder, frames, w, f"workers={w}, decoders at nice 10", nice=True))
    encoder.encode_images(images[:encoder.batch_size])  # warm-up: first-call allocations
    t = common.interleaved(cases, repeats, warmup=0)
    wall, cpu = t["wall"], t["cpu"]

    enc_wall, enc_cpu = common.med(wall["encoder alone"]), common.med(cpu["encoder alone"])
    # On a dedicated machine where the encoder alone keeps every core busy, decoding has to
    # share those cores: the build cannot beat encoder CPU / (encoder CPU + decode CPU).
    cores = os.cpu_count() or 1
    ideal = enc_cpu / (enc_cpu + decode_cpu)
    rows = []
    for k, v in wall.items():
        rows.append([k, common.med(v), n_sampled / common.med(v), len(images) / common.med(v),
                     common.ratio(wall, "encoder alone", k)])
    common.table(rows, ["case", "wall s", "sampled frames/s", "images/s", "encoder/this"])
    print(f"\nimages embedded: {len(images)} ({n_sampled} sampled + {len(sampled)} key frames)")
    print(f"encoder alone: {enc_cpu:.1f} CPU s in {enc_wall:.1f} s wall ({enc_cpu / enc_wall:.2f} of {cores} cores busy; "
          f"less than {cores} means other jobs took the rest)")
    print(f"decoding the same frames: {decode_cpu:.2f} CPU s ({100 * decode_cpu / enc_cpu:.1f}% of the encoder's CPU)")
    print(f"pickling + unpickling the decoded videos: {pickle_s * 1e3:.0f} ms for {pickle_mb:.1f} MB")
    print(f"bound on a dedicated machine whose {cores} cores the encoder keeps busy: "
          f"encoder CPU / (encoder + decode CPU) = {ideal:.3f}")
    cpu_ratios = {}
    for k in wall:
        if k.startswith("build"):
            tl = TIMELINES[k[len("build "):]]
            cpu_ratios[k] = common.med([enc_cpu / (c + x["children_cpu"]) for c, x in zip(cpu[k], tl)])
    print("encoder-alone CPU / build CPU (main + decode processes): "
          + ", ".join(f"{k[len('build '):]} {v:.3f}" for k, v in cpu_ratios.items()))
    print("\nwhere each build's time went (medians, s): startup = until the first batch is encoded, "
          "waiting = encoder idle between batches, tail = after the last batch")
    common.table([[tag, *(common.med([x[k] for x in tl]) for k in ("wall", "startup", "encoding", "waiting", "tail")),
                   common.med([x["encoding"] for x in tl]) / enc_wall,
                   common.med([enc_wall / (x["wall"] - x["startup"] - x["tail"]) for x in tl])]
                  for tag, tl in TIMELINES.items()],
                 ["build", "wall", "startup", "encoding", "waiting", "tail", "encoding/alone", "ratio w/o startup+tail"])

    ratios = {k: common.ratio(wall, "encoder alone", k) for k in wall if k.startswith("build")}
    best = max(ratios, key=ratios.get)
    print()
    verdicts = [common.verdict(f"{best} / encoder alone (frames/s)", ratios[best], 0.9, True)]
    default = f"build workers={auto_workers(encoder.device.type)}"  # what `vstore build` runs here
    if default in ratios and best != default:
        verdicts.append(common.verdict(f"{default} (the default here) / encoder alone", ratios[default], 0.9, True))
    common.save("bench_build" + ("_quick" if args.quick else ""), {
        "videos": n_videos, "seconds": seconds, "frames": frames, "repeats": repeats,
        "torch_threads": torch.get_num_threads(), "images": len(images), "sampled_frames": n_sampled,
        "median_wall_s": {k: common.med(v) for k, v in wall.items()},
        "median_cpu_s_main_process": {k: common.med(v) for k, v in cpu.items()},
        "decode_cpu_s": decode_cpu, "pickle_s": pickle_s, "pickle_mb": pickle_mb, "ideal_ratio": ideal,
        "ratios": ratios, "cpu_ratios": cpu_ratios, "times": t, "timelines": TIMELINES, "verdicts": verdicts,
    })


if __name__ == "__main__":
    main()
