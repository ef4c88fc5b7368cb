"""`vstore dedup`'s finder (``vstore.dedup.find_duplicates``) on stores of synthetic vectors:
videos/s, frames/s and peak memory at growing store sizes, and recall/precision on planted
near-duplicate pairs.

Each store: V videos of 8-16 frames of D-d float16 vectors. A video's frames share a class
direction (20 classes) and a video direction, plus a per-frame component smoothed over time,
so a frame's cosine is ~0.86 to its neighbours in time, ~0.7 to other frames of its video,
~0.2 to other videos of its class. 1% of the videos are planted copies of others: trimmed
(0-4 frames cut at the start) with noise (cosine ~0.99 to the original's frames). The finder
runs with the store's FAISS index (IVF beyond 100k frames, else auto: Flat) in a fresh child process per
round, so ``ru_maxrss`` is that round's own peak; tracemalloc's peak counts the Python/NumPy
allocations (FAISS's index memory is C++ and shows only in ru_maxrss).

    python benchmarks/bench_dedup.py                 # 25k and 100k videos, 64-d, 3 rounds
    python benchmarks/bench_dedup.py --quick         # 5k videos, 2 rounds, + exact search
    python benchmarks/bench_dedup.py --videos 100000 --dim 256
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from common import OUT, med, out_dir, parser, save, table  # puts the checkout on sys.path

from vstore import Store, StoreConfig, StoreWriter, VideoEntry
from vstore.dedup import DedupConfig, find_duplicates
from vstore.index import IndexConfig
from vstore.index_build import build_index

SPACING = 1.0  # seconds between sampled frames
COPY_SHARE = 0.01


def make_store(path: Path, n_videos: int, dim: int, seed: int = 0) -> list[tuple[str, str]]:
    """Write the store (once; cached) and return its planted (copy, original) pairs."""
    planted_file = path.with_suffix(".planted.json")
    if (path / "manifest.json").exists() and planted_file.exists():
        return [tuple(p) for p in json.loads(planted_file.read_text())]
    rng = np.random.default_rng(seed)
    classes = rng.normal(size=(20, dim)) / np.sqrt(dim)
    n_copies = int(n_videos * COPY_SHARE)
    n_orig = n_videos - n_copies
    copy_of = rng.choice(n_orig, n_copies, replace=False)
    Store.create(path, StoreConfig(segment_videos=4096)).close()
    planted, kept = [], {}
    enc = {"id": f"synthetic:{dim}", "name": "synthetic", "dim": dim, "spec": None}
    wanted = set(copy_of.tolist())
    with StoreWriter(path, enc) as w:
        for i in range(n_orig):
            t = int(rng.integers(8, 17))
            u = rng.normal(size=(t + 1, dim)) / np.sqrt(dim)
            frames = 0.6 * classes[i % 20] + rng.normal(size=dim) / np.sqrt(dim) + 0.7 * (u[1:] + u[:-1]) / np.sqrt(2)
            if i in wanted:
                kept[i] = frames
            w.add(_entry(f"v{i:06d}", frames, 0, f"c{i % 20}"))
        for j, i in enumerate(copy_of):
            cut = int(rng.integers(0, 5))
            frames = kept[int(i)][cut:] + 0.15 * rng.normal(size=kept[int(i)][cut:].shape) / np.sqrt(dim)
            w.add(_entry(f"copy{j:05d}-of-v{int(i):06d}", frames, cut, f"c{int(i) % 20}"))
            planted.append((f"copy{j:05d}-of-v{int(i):06d}", f"v{int(i):06d}"))
    planted_file.write_text(json.dumps(planted))
    return planted


def _entry(vid: str, frames: np.ndarray, start: int, label: str) -> VideoEntry:
    n = len(frames)
    return VideoEntry(id=vid, embeddings=frames.astype(np.float32), frame_index=np.arange(n) * 25,
                      timestamp=(np.arange(n) + 0.5) * SPACING, label=label, duration=n * SPACING)


def child(store: str, search: str) -> None:
    """One timed round (in a fresh process): prints a JSON line."""
    planted = {frozenset(p) for p in json.loads(Path(store).with_suffix(".planted.json").read_text())}
    with Store.open(store) as s:
        _ = s.videos  # the table is loaded by any command; not part of the finder's time
        tracemalloc.start()
        t0, c0 = time.perf_counter(), time.process_time()
        r = find_duplicates(s, DedupConfig(search=search))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        found = {frozenset((p.a, p.b)) for p in r.pairs}
        print(json.dumps({"wall": wall, "cpu": cpu, "tracemalloc_peak": peak,
                          "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                          "videos": s.n_videos, "frames": s.n_frames, "pairs": len(found), "search": r.search,
                          "recall": len(found & planted) / max(1, len(planted)),
                          "precision": len(found & planted) / max(1, len(found)),
                          "aligned_pairs": r.stats["aligned_pairs"]}))


def run_rounds(store: Path, search: str, repeats: int) -> list[dict]:
    out = []
    for _ in range(repeats):
        p = subprocess.run([sys.executable, __file__, "--child", str(store), "--search", search], capture_output=True,
                           text=True, check=True)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    p = parser("vstore dedup throughput and memory on synthetic vectors", repeats=3)
    p.add_argument("--videos", type=int, nargs="+", default=None, help="store sizes (default 25000 100000)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--child", default=None, help=argparse_hidden())
    p.add_argument("--search", default="auto", help=argparse_hidden())
    a = p.parse_args()
    if a.child:
        child(a.child, a.search)
        return
    sizes = a.videos or ([5000] if a.quick else [25_000, 100_000])
    repeats = 2 if a.quick else a.repeats
    rows, results = [], []
    cases = [(n, "auto") for n in sizes] + ([(sizes[0], "exact")] if a.quick or sizes[0] <= 10_000 else [])
    for n, search in cases:
        path = out_dir("dedup") / f"store-{n}-{a.dim}"
        t = time.perf_counter()
        planted = make_store(path, n, a.dim)
        made = time.perf_counter() - t
        if search == "auto":
            t = time.perf_counter()
            # IVF beyond 100k frames: auto would measure Flat vs IVF there, and Flat's all-pairs
            # scan (N^2) is what an index is for avoiding
            build_index(path, IndexConfig(kind="ivf") if n * 12 > 100_000 else None, progress=False)
            indexed = time.perf_counter() - t
        else:
            indexed = 0.0
        rounds = run_rounds(path, search, repeats)
        wall = med([r["wall"] for r in rounds])
        r0 = rounds[0]
        row = {"videos": n, "frames": r0["frames"], "dim": a.dim, "search": r0["search"], "planted": len(planted),
               "wall_s_median": wall, "cpu_s_median": med([r["cpu"] for r in rounds]),
               "videos_per_s": n / wall, "frames_per_s": r0["frames"] / wall,
               "aligned_pairs_per_s": r0["aligned_pairs"] / wall,
               "tracemalloc_peak_mib": max(r["tracemalloc_peak"] for r in rounds) / 2**20,
               "maxrss_mib": max(r["maxrss"] for r in rounds) / 2**20, "recall": r0["recall"],
               "precision": r0["precision"], "pairs": r0["pairs"], "store_write_s": made, "index_build_s": indexed,
               "rounds": rounds}
        results.append(row)
        rows.append([n, r0["frames"], r0["search"], wall, n / wall, row["aligned_pairs_per_s"],
                     row["tracemalloc_peak_mib"], row["maxrss_mib"], r0["recall"], r0["precision"]])
        print(f"done {n} videos ({search}): {wall:.1f} s", flush=True)
    table(rows, ["videos", "frames", "search", "wall s (median)", "videos/s", "aligned pairs/s", "tracemalloc MiB",
                 "maxrss MiB", "recall", "precision"])
    save("bench_dedup", {"quick": a.quick, "dim": a.dim, "repeats": repeats, "results": results,
                         "out": str(OUT / "dedup")})


def argparse_hidden() -> str:
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
