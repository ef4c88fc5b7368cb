"""GPU check: run every CUDA path of vstore once, check it against the CPU and measure it.

One command, under 8 minutes on one H100/H200 with 16 cores (about 2 minutes of it is making
the test videos):

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick  # dry run on a CPU (CI runs this)
    python benchmarks/gpu_check.py --deps                # which packages are missing, and stop

Checks (PASS/FAIL each; exit status 1 when one fails, 2 when a dependency is missing; a
warning, and "over_budget" in the JSON, when the whole run takes more than 8 minutes):
  1. encoder: CLIP on the device (fp16 on CUDA) vs CPU fp32 on the same decoded frames,
     cosine of every embedding >= 0.999;
  2. encoder alone: images/s at batch 256 (on the device, frames already decoded);
  3. `vstore build` frames/s, exact and keyframe sampling, with the default decoder count and
     with every core decoding (the decoders are the wall on a GPU machine), plus the Ray
     engine (GPU actor) when ray is importable (skip with --no-ray);
  4. training: one run of the linear and transformer classifiers on the device (AMP on CUDA)
     and on the CPU from the same store and seed: test accuracy within one video;
  5. FAISS: vstore's exact Flat and IVF-Flat indexes built and searched on the CPU; when faiss
     sees a GPU, searched on their GPU copies too (same ids), else skipped with the reason.

The CLIP has random weights (ViT-B/32-sized; a tiny one with --quick) so nothing is downloaded;
the videos are synthetic H.264 made here with PyAV. Results go to benchmarks/out/gpu_check.json
(or --out DIR) and are printed as a table. Needs torch plus vstore's other dependencies; the
wheels to bring to a machine without a registry are in benchmarks/README.md ("gpu_check").
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # run from a checkout, no install needed

# import name -> the distribution to bring (pip download NAME); torch is assumed present.
DEPENDENCIES = {"numpy": "numpy", "av": "av", "h5py": "h5py", "clip": "clip-anytorch", "ftfy": "ftfy",
                "regex": "regex", "tqdm": "tqdm", "click": "click", "sklearn": "scikit-learn",
                "matplotlib": "matplotlib", "faiss": "faiss-gpu (or faiss-cpu)",
                "pkg_resources": "setuptools<81"}
OPTIONAL = {"ray": "ray[data] (only for the Ray engine step)"}

VIT_B32 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
TINY = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)
# (clips, frames per clip, clip size, frames sampled per clip): 96 clips of 10 s at 640x360,
# 100 exact frames each; --quick: 8 clips of 24 frames at 96x64, 8 frames each
FULL = (96, 300, (640, 360), 100)
QUICK = (8, 24, (96, 64), 8)
BUDGET_S = 480  # the whole check should take under 8 minutes on one H100/H200 with 16 cores


def budget_note(total_s: float, budget_s: float = BUDGET_S) -> str:
    """A warning when the run took longer than its budget, else ""."""
    if total_s <= budget_s:
        return ""
    return (f"WARNING: the check took {total_s:.0f} s, over its {budget_s:.0f} s budget (8 minutes): "
            "see the steps' seconds above for where the time went")


def missing_dependencies() -> list[str]:
    missing = []
    for mod, dist in DEPENDENCIES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    return missing


class Report:
    def __init__(self):
        self.steps: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"\n== {name}", flush=True)
        t = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # one broken path must not hide the others' results
            import traceback
            traceback.print_exc()
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r.setdefault("ok", True)
        r["seconds"] = round(time.perf_counter() - t, 2)
        self.steps.append({"step": name, **r})
        shown = {k: v for k, v in r.items() if k not in ("ok",)}
        print(f"   {'PASS' if r['ok'] is True else 'SKIP' if r['ok'] is None else 'FAIL'}  {json.dumps(shown, default=str)}",
              flush=True)
        return r


def make_checkpoint(out: Path, quick: bool) -> Path:
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP
    path = out / ("clip-tiny.pt" if quick else "clip-vit-b32-random.pt")
    if not path.is_file():
        torch.manual_seed(0)
        model = CLIP(**(TINY if quick else VIT_B32))
        torch.save((model if quick else model.half()).state_dict(), path)
    return path


def _make_video(args: tuple[str, str, int, int, int, int]) -> str:
    from encoders.video.synthetic import class_frames, write_video
    path, kind, n, seed, w, h = args
    if not Path(path).is_file():
        tmp = Path(path).with_suffix(".tmp.mp4")
        # a keyframe every 2 s, as on typical web video (x264's default of 250 frames is rarer)
        write_video(tmp, class_frames(kind, n, seed, w, h), fps=30,
                    options={"preset": "ultrafast", "crf": "23", "x264-params": "keyint=60"})
        tmp.replace(path)
    return path


def make_videos(out: Path, n: int, frames: int, size: tuple[int, int], processes: bool = True
                ) -> tuple[Path, dict[str, str]]:
    """``n`` labelled synthetic clips under ``out`` (made once); in a process pool unless
    ``processes`` is False (a caller that must not fork, e.g. a Ray driver)."""
    from encoders.video.synthetic import CONTENT_CLASSES
    d = out / f"videos_{n}x{frames}_{size[0]}x{size[1]}"
    d.mkdir(parents=True, exist_ok=True)
    jobs, labels = [], {}
    for i in range(n):
        kind = CONTENT_CLASSES[i % len(CONTENT_CLASSES)]
        vid = f"{kind}-{i:03d}"
        labels[vid] = kind
        jobs.append((str(d / f"{vid}.mp4"), kind, frames, i, *size))
    if processes:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_make_video, jobs))
    else:
        for job in jobs:
            _make_video(job)
    (d / "labels.json").write_text(json.dumps(labels))
    return d, labels


def step_encoder(spec: str, device: str, videos: Path, quick: bool) -> dict[str, Any]:
    import numpy as np

    from encoders.registry import load_encoder
    from encoders.video.sampling import sample_video
    dev = load_encoder(spec, device=device)
    cpu = load_encoder(spec, device="cpu")
    paths = sorted(videos.glob("*.mp4"))[:2 if quick else 4]
    frames = np.concatenate([sample_video(p, 16, size=dev.input_size).images for p in paths])  # (N, S, S, 3)
    a, b = dev.encode_images(frames), cpu.encode_images(frames)  # (N, D) each
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"ok": bool(cos.min() >= 0.999), "frames": len(frames), "device": str(dev.device),
            "dtype": str(getattr(dev, "dtype", "?")), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def step_encoder_speed(spec: str, device: str, quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from encoders.registry import load_encoder
    batch = 32 if quick else 256
    enc = load_encoder(spec, device=device, batch_size=batch)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch * (2 if quick else 16), enc.input_size, enc.input_size, 3), dtype=np.uint8)
    enc.encode_images(images[:batch])  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    rates = []
    for _ in range(1 if quick else 3):
        sync()
        t = time.perf_counter()
        enc.encode_images(images)
        sync()
        rates.append(len(images) / (time.perf_counter() - t))
    return {"batch": batch, "images": len(images), "images_per_s": round(sorted(rates)[len(rates) // 2], 1),
            "device": str(enc.device)}


def step_build(spec: str, device: str, videos: Path, out: Path, frames: int, engine: str = "local",
               sampling: str = "exact", workers: int | None = None) -> dict[str, Any]:
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore import StoreConfig
    from vstore.labels import load_labels
    store = out / "stores" / f"{engine}-{sampling}-{workers}"
    shutil.rmtree(store, ignore_errors=True)
    kw: dict[str, Any] = {}
    batch = 256 if device.startswith("cuda") else None
    if engine == "ray":
        from encoders.build.ray_engine import RayConfig
        kw["ray_config"] = RayConfig(device=device)
        device = "cpu"  # the driver's encoder only names itself; the actors encode (batch 256 on a GPU)
    enc = load_encoder(spec, device=device, batch_size=batch)
    t = time.perf_counter()
    s = build_store([videos], store, enc, labels=load_labels(videos / "labels.json"),
                    config=BuildConfig(frames=frames, sampling=sampling, workers=workers, compact=False),
                    store_config=StoreConfig(segment_videos=64), progress=False, engine=engine, **kw)
    wall = time.perf_counter() - t
    return {"ok": not s.failures, "engine": engine, "sampling": sampling, "workers": workers, "videos": s.built,
            "frames": s.frames, "wall_s": round(wall, 2), "frames_per_s": round(s.frames / wall, 1),
            "videos_per_s": round(s.built / wall, 2),
            "failures": [f.reason for f in s.failures][:3], "store": str(store)}


def step_ray(rep: Report, spec: str, device: str, videos: Path, out: Path, frames: int) -> dict[str, Any]:
    """Step 3's Ray build: a local Ray (or the one this process is connected to), the encoder
    as an actor on the device (batches of 256 on a GPU)."""
    return rep.run("vstore build --engine ray (local Ray, encoder actor on the device)",
                   lambda: step_build(spec, "cpu" if device == "cpu" else "cuda", videos, out, frames, engine="ray"))


def step_train(store: Path, device: str, out: Path, quick: bool) -> dict[str, Any]:
    from classifiers.config import TrainConfig
    from classifiers.train import run_training
    from vstore import Store
    from vstore.split import SplitConfig, make_split, save_split
    with Store.open(store) as s:
        save_split(store, make_split(s, SplitConfig(test_size=0.25)))
    res: dict[str, Any] = {"ok": True}
    for model in ("linear", "transformer"):
        got = {}
        for dev in dict.fromkeys([device, "cpu"]):
            cfg = TrainConfig(model=model, epochs=1 if quick else 3, device=dev, seeds=1)
            m = run_training(store, cfg, out / "runs" / f"{model}-{dev.replace(':', '')}", progress=False)
            got[dev] = {"accuracy": m["accuracy"]["mean"] if isinstance(m["accuracy"], dict) else m["accuracy"],
                        "epoch_s": _epoch_seconds(m)}
        n_test = max(1, int(round(0.25 * _n_videos(store))))
        accs = [g["accuracy"] for g in got.values()]
        same = max(accs) - min(accs) <= 1.0 / n_test + 1e-9
        res[model] = got
        res["ok"] = res["ok"] and same
    return res


def _n_videos(store: Path) -> int:
    from vstore import Store
    with Store.open(store) as s:
        return s.n_videos


def _epoch_seconds(metrics: dict[str, Any]) -> Any:
    for key in ("epoch_seconds", "seconds_per_epoch"):
        if key in metrics:
            return metrics[key]
    per_seed = metrics.get("per_seed") or []
    return per_seed[0].get("epoch_seconds") if per_seed and isinstance(per_seed[0], dict) else None


def step_faiss(store: Path, quick: bool) -> dict[str, Any]:
    import faiss
    import numpy as np

    from vstore import Store
    from vstore.index import IndexConfig
    from vstore.index_build import build_index
    from vstore.index_load import load_index
    has_gpu = faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources")
    res: dict[str, Any] = {"ok": True}
    for kind in ("flat", "IVF64,Flat"):
        build_index(store, IndexConfig(kind=kind, min_train_rows=64 * 39), rebuild=True)
        with Store.open(store) as s:
            index, _ = load_index(s)
            gpu = index.gpu_copy("frames") if has_gpu else None
            n = min(1000, s.n_frames)
            q = np.ascontiguousarray(np.concatenate([b.embeddings for b in s.iter_blocks(dtype=np.float32)])[:n])
        faiss.normalize_L2(q)
        if not has_gpu:  # the CPU half still runs: each stored frame finds itself first
            _set_nprobe(index.frames, 8)
            _, ic = index.frames.search(q, 10)
            res[kind] = {"cpu_self_hit": float((ic[:, 0] == np.arange(n)).mean())}
            continue
        if gpu is None:
            res[kind] = "no GPU copy made"
            res["ok"] = False
            continue
        _set_nprobe(index.frames, 8)
        _set_nprobe(gpu, 8)
        dc, ic = index.frames.search(q, 10)
        dg, ig = gpu.search(q, 10)
        same = float((ic == ig).mean())
        res[kind] = {"same_ids": same, "max_distance_diff": float(np.abs(dc - dg).max())}
        res["ok"] = res["ok"] and same >= 0.999
    if not has_gpu:
        return {**res, "ok": None, "reason": "faiss sees no GPU (faiss-cpu, or no CUDA device): the CPU indexes were "
                                             "built and searched, the GPU copies not compared"}
    return res


def _set_nprobe(index, n: int) -> None:
    import faiss
    try:
        faiss.extract_index_ivf(index).nprobe = n
        return
    except (RuntimeError, AttributeError, TypeError):
        pass
    if hasattr(index, "setNumProbes"):  # a GPU IVF index
        index.setNumProbes(n)
    elif hasattr(index, "nprobe"):
        index.nprobe = n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    p.add_argument("--quick", action="store_true", help="tiny CLIP, a few tiny videos: checks the paths, not speed")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray engine step")
    p.add_argument("--deps", action="store_true", help="only list missing dependencies")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check", help="work and results directory")
    args = p.parse_args()
    missing = missing_dependencies()
    if missing or args.deps:
        print("missing: " + (", ".join(missing) or "nothing"))
        for mod, dist in OPTIONAL.items():
            if importlib.util.find_spec(mod) is None:
                print(f"optional, missing: {dist}")
        if missing:
            print("bring them as wheels: see benchmarks/README.md, section gpu_check")
            return 2
        return 0
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch sees no CUDA device (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda}); use --device cpu for a dry run")
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    info = {"device": args.device, "quick": args.quick, "cores": cores, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info))
    rep = Report()
    ckpt = make_checkpoint(out, args.quick)
    spec = f"clip:{ckpt}"
    n, length, size, frames = QUICK if args.quick else FULL
    t = time.perf_counter()
    videos, _ = make_videos(out, n, length, size)
    print(f"videos: {n} x {length} frames {size[0]}x{size[1]} in {videos} ({time.perf_counter() - t:.1f} s)")

    rep.run("encoder: device vs CPU fp32 (cosine >= 0.999)", lambda: step_encoder(spec, args.device, videos, args.quick))
    rep.run("encoder alone: images/s", lambda: step_encoder_speed(spec, args.device, args.quick))
    from encoders.build import auto_workers
    default_workers = auto_workers(torch.device(args.device).type)
    all_workers = max(1, cores - 1)  # the last core feeds the GPU
    builds = [("exact", default_workers), ("exact", all_workers), ("keyframe", all_workers)]
    first = None
    for sampling, w in dict.fromkeys(builds):
        r = rep.run(f"vstore build: {sampling}, {w} decoders",
                    lambda s=sampling, w=w: step_build(spec, args.device, videos, out, frames, sampling=s, workers=w))
        first = first or r.get("store")
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        step_ray(rep, spec, args.device, videos, out, frames)
    if first:
        rep.run("training: device vs CPU (accuracy within one test video)",
                lambda: step_train(Path(first), args.device, out, args.quick))
        rep.run("FAISS: GPU copy vs CPU index (same ids)", lambda: step_faiss(Path(first), args.quick))
    total = time.perf_counter() - rep.t0
    failed = [s["step"] for s in rep.steps if s["ok"] is False]
    over = budget_note(total)
    result = {"info": info, "steps": rep.steps, "total_seconds": round(total, 1), "budget_seconds": BUDGET_S,
              "over_budget": bool(over), "failed": failed}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{len(rep.steps)} steps in {total:.0f} s; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    if over:
        print(over)
    print(f"results: {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
