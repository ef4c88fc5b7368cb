"""Issue 14, section 5: a store several times larger than the process's memory limit trains
to the end, through the memory-mapped training view.

A synthetic store of ``--factor`` x ``--limit-mb`` of float16 frames (labels carry a signal,
so the F1 says the training was real) is trained with ``vstore train --model transformer``
inside a cgroup v1 memory cgroup of ``--limit-mb`` (the kernel kills the process if it goes
over). The first run writes the training view under the limit too. Reports the exit status,
the cgroup's peak usage (page cache included) and OOM count, the run's F1 and the time.

Needs root and a writable cgroup v1 memory hierarchy (``/sys/fs/cgroup/memory``).

    python benchmarks/bench_memlimit.py                       # 1.5 GiB limit, 6 GiB store (~20 min)
    python benchmarks/bench_memlimit.py --quick               # 32 frames per video: a shorter epoch
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np


def make_store(path: Path, videos: int, frames: int, dim: int, classes: int = 4) -> None:
    """``videos`` x ``frames`` x ``dim`` float16 frames, written video by video (bounded memory):
    a per-class direction plus per-video and per-frame noise."""
    from vstore import Store, StoreConfig
    from vstore.records import VideoEntry
    from vstore.split import SplitConfig, make_split, save_split
    from vstore.writer import StoreWriter
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    Store.open_or_create(path, StoreConfig(segment_videos=4096)).close()  # segments as large as compacted ones
    identity = {"name": "synthetic", "id": f"synthetic:{dim}", "spec": None, "dim": dim}
    with StoreWriter(path, identity, build_info={"synthetic": True}) as w:
        for i in range(videos):
            c = i % classes
            base = centres[c] * 0.3 + rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
            x = base[None] + rng.normal(size=(frames, dim)).astype(np.float32) * (0.5 / np.sqrt(dim))
            w.add(VideoEntry(id=f"v{i:06d}", embeddings=(x * 10).astype(np.float16), frame_index=np.arange(frames),
                             timestamp=np.arange(frames) / 25.0, label=f"class{c}", source="synthetic"))
    with Store.open(path) as s:
        save_split(path, make_split(s, SplitConfig(test_size=0.1, seed=0)))


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0], repeats=1)
    p.add_argument("--limit-mb", type=int, default=1536,
                   help="the cgroup's memory limit (1.5 GiB: torch, scikit-learn and the store take ~1.2 GiB)")
    p.add_argument("--factor", type=float, default=4.0, help="store size / limit")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--dim", type=int, default=64, help="64: an epoch of a 3 GiB store in minutes on 2 CPU cores")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.frames, args.dim = 32, 64
    cg_root = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (cg_root / "memory.limit_in_bytes").exists():
        sys.exit("needs root and a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    per_video = args.frames * args.dim * 2
    videos = int(np.ceil(args.factor * (args.limit_mb << 20) / per_video))
    out = common.out_dir("memlimit")
    store = out / f"store-{videos}x{args.frames}x{args.dim}"
    if not (store / "manifest.json").is_file():
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        make_store(store, videos, args.frames, args.dim)
        print(f"wrote {store} ({videos:,} videos) in {time.perf_counter() - t:.0f} s", flush=True)
    shutil.rmtree(store / "train_view", ignore_errors=True)  # written under the limit, as a first run would
    store_bytes = videos * per_video
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    cg = cg_root / f"vstore-bench-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(args.limit_mb << 20))
        if (cg / "memory.memsw.limit_in_bytes").exists():  # no swapping around the limit either
            (cg / "memory.memsw.limit_in_bytes").write_text(str(args.limit_mb << 20))
        cmd = [sys.executable, "-m", "cli.main", "-q", "train", str(store), "--model", "transformer", "--epochs",
               str(args.epochs), "--out", str(run)]
        t = time.perf_counter()
        proc = subprocess.run(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *cmd],
                              cwd=common.ROOT.parent, env={**os.environ, "PYTHONPATH": str(common.ROOT.parent)},
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak = int((cg / "memory.max_usage_in_bytes").read_text())
        oom = (cg / "memory.oom_control").read_text()
        failcnt = int((cg / "memory.failcnt").read_text())
    finally:
        cg.rmdir()
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    result = {"limit_mb": args.limit_mb, "store_bytes": store_bytes, "store_over_limit": store_bytes / (args.limit_mb << 20),
              "videos": videos, "frames": args.frames, "dim": args.dim, "epochs": args.epochs, "exit": proc.returncode,
              "wall_s": wall, "peak_usage_bytes": peak, "failcnt": failcnt, "oom_control": oom,
              "f1_micro": metrics.get("f1_micro"), "stderr_tail": proc.stderr[-2000:]}
    print(f"store {store_bytes / 2**30:.2f} GiB = {result['store_over_limit']:.1f}x the {args.limit_mb} MiB limit; "
          f"`vstore train --model transformer --epochs {args.epochs}` exit {proc.returncode} in {wall:.0f} s; "
          f"cgroup peak {peak / 2**20:.0f} MiB (page cache included), limit hits {failcnt}; "
          f"test F1 micro {metrics.get('f1_micro')}")
    if proc.returncode:
        print(proc.stderr[-2000:])
    common.verdict(f"trains to the end with the store {result['store_over_limit']:.1f}x the memory limit",
                   1.0 if proc.returncode == 0 else 0.0, 1.0, True)
    common.save("bench_memlimit", result)


if __name__ == "__main__":
    main()
