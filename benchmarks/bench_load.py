"""Benchmark 3: loading a 1,728-video x 100-frame x 512-d float16 store as one tensor.

Compares ``Store.open(path).load_padded()`` with ``np.load`` of the same (V, T, D) array as
.npy and with reading the reference study's per-video JSON files (``<id>.json`` = list of 100
lists of 512 floats; ``json.load`` each + ``np.asarray`` into one float32 array). Also: the
same store written with ``checksum=False`` (the cost of verifying every chunk's checksum) and
a subset load of every other video (the gather path). The store is measured as ``vstore
build`` leaves it: written in 128-video commit segments (14), then compacted.

The page cache cannot be dropped without root, so every file is read once before timing and
all cases run warm: this measures the CPU cost of decoding each format, not the disk.

Experiments (``--no-experiments`` skips them): the time to open the store alone, and the
same data left in its 14 commit segments (a build run with ``--no-compact``).

Goals: store <= 1.5x the .npy time; JSON >= 100x the store time.

    python benchmarks/bench_load.py              # writes ~2.2 GB under benchmarks/out/load once
    python benchmarks/bench_load.py --quick      # 432 videos
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import common
import numpy as np

from vstore import Store, StoreConfig, StoreWriter
from vstore.maintenance import compact
from vstore.records import VideoEntry

T, D = 100, 512
IDENTITY = {"id": "bench", "name": "bench", "dim": D}


def vectors(v: int) -> np.ndarray:
    """(V, T, D) float32, deterministic, CLIP-like scale."""
    return (np.random.default_rng(0).standard_normal((v, T, D), dtype=np.float32) * 0.5)


def ids_of(v: int) -> list[str]:
    return [f"video{i:05d}" for i in range(v)]


def make_inputs(v: int) -> dict[str, Path]:
    """Store (default config), store with checksum=False, both compacted, .npy, JSON files;
    each made once (a ``<name>.done`` marker says it is complete)."""
    root = common.out_dir("load", f"v{v}")
    paths = {"npy": root / "embeddings.npy", "json": root / "json", "store": root / "store",
             "store_nocheck": root / "store_nocheck", "store_compact": root / "store_compact",
             "store_nocheck_compact": root / "store_nocheck_compact"}
    todo = [k for k, p in paths.items() if not (root / f"{k}.done").is_file()]
    if not todo:
        return paths
    print(f"writing {', '.join(todo)} for {v} videos under {root} (once)...", flush=True)
    t = time.perf_counter()
    emb, ids = vectors(v), ids_of(v)
    for key in todo:
        p = paths[key]
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        if key == "npy":
            np.save(p, emb.astype(np.float16))
        elif key == "json":
            p.mkdir()
            for vid, e in zip(ids, emb):
                with open(p / f"{vid}.json", "w") as f:
                    json.dump(e.tolist(), f)  # float32 values as Python floats, as the reference study saved them
        elif key.endswith("_compact"):
            src = paths[key[:-len("_compact")]]
            if not (root / f"{src.name}.done").is_file():
                raise RuntimeError(f"{src} missing")
            shutil.copytree(src, p)
            compact(p)
        else:
            Store.create(p, StoreConfig(checksum=key == "store")).close()
            with StoreWriter(p, IDENTITY) as w:
                for vid, e in zip(ids, emb):
                    w.add(VideoEntry(id=vid, embeddings=e, frame_index=np.arange(T), timestamp=np.arange(T) / 30.0))
        (root / f"{key}.done").write_text("ok\n")
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def warm(path: Path) -> int:
    """Read every byte once (page cache warm); returns the bytes read."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                n += len(chunk)
    return n


def load_store(path: Path, video_ids=None) -> np.ndarray:
    with Store.open(path) as s:
        return s.load_padded(video_ids).embeddings


def load_json(directory: Path, ids: list[str]) -> np.ndarray:
    out = np.empty((len(ids), T, D), np.float32)
    for i, vid in enumerate(ids):
        with open(directory / f"{vid}.json") as f:
            out[i] = np.asarray(json.load(f), dtype=np.float32)
    return out


def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=9)
    p.add_argument("--videos", type=int, default=None, help="videos in the store (default 1728; --quick 432)")
    p.add_argument("--json-repeats", type=int, default=2, help="timed rounds of the (slow) JSON case")
    p.add_argument("--no-experiments", action="store_true", help="skip opening alone and the uncompacted store")
    args = p.parse_args()
    v = args.videos or (432 if args.quick else 1728)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    paths = make_inputs(v)
    ids = ids_of(v)
    sizes = {k: warm(p) for k, p in paths.items()}
    print(f"{v} videos x {T} frames x {D}-d; files read once before timing (warm page cache); "
          f"{repeats} interleaved rounds; load average {common.load_average()}")

    # Correctness (untimed): every path returns the same vectors.
    ref = np.load(paths["npy"])
    for key in ("store", "store_compact", "store_nocheck_compact"):
        assert np.array_equal(load_store(paths[key]), ref), key
    assert np.array_equal(load_store(paths["store_compact"], ids[::2]), ref[::2])

    # "store" is what `vstore build` leaves: its small commit segments merged (build compacts
    # at the end); the same data as 14 uncommitted-size segments is shown for comparison.
    cases = {
        "np.load .npy": lambda: np.load(paths["npy"]),
        "store load_padded": lambda: load_store(paths["store_compact"]),
        "store load_padded, checksum=False": lambda: load_store(paths["store_nocheck_compact"]),
        "store subset (every other id)": lambda: load_store(paths["store_compact"], ids[::2]),
        "np.load .npy, every other video": lambda: np.load(paths["npy"])[::2].copy(),
    }
    if not args.no_experiments:
        cases.update({
            "x: Store.open + close only": lambda: Store.open(paths["store_compact"]).close(),
            "x: 14 segments (not compacted)": lambda: load_store(paths["store"]),
        })
    t = common.interleaved(cases, repeats, warmup=1)
    tj = common.interleaved({"JSON files": lambda: load_json(paths["json"], ids)}, args.json_repeats, warmup=0)
    cpu = {**t["cpu"], **tj["cpu"]}
    wall = {**t["wall"], **tj["wall"]}

    store_med = common.med(cpu["store load_padded"])
    rows = [[k, common.med(x), common.med(wall[k]), common.med(x) / store_med] for k, x in cpu.items()]
    common.table(rows, ["case", "CPU s", "wall s", "/ store"])
    print(f"\nbytes on disk: store {sizes['store_compact'] / 1e6:.0f} MB, npy {sizes['npy'] / 1e6:.0f} MB, "
          f"JSON {sizes['json'] / 1e6:.0f} MB")

    ratios = {
        "store_over_npy": common.ratio(cpu, "store load_padded", "np.load .npy"),
        "store_nocheck_over_npy": common.ratio(cpu, "store load_padded, checksum=False", "np.load .npy"),
        "checksum_cost": common.ratio(cpu, "store load_padded", "store load_padded, checksum=False"),
        "subset_over_full_store": common.ratio(cpu, "store subset (every other id)", "store load_padded"),
        "subset_over_npy_subset": common.ratio(cpu, "store subset (every other id)", "np.load .npy, every other video"),
        "json_over_store": common.med(cpu["JSON files"]) / store_med,
        "wall_store_over_npy": common.ratio(wall, "store load_padded", "np.load .npy"),
        **({} if args.no_experiments else {
            f"{k[3:]} / npy": common.ratio(cpu, k, "np.load .npy") for k in cpu if k.startswith("x: ")}),
        "wall_json_over_store": common.med(wall["JSON files"]) / common.med(wall["store load_padded"]),
    }
    print("\nratios of CPU times (median of per-round ratios; JSON: median over its own rounds)")
    common.table([[k, val] for k, val in ratios.items()], ["ratio", "value"])
    print(f"segments: {len(list((paths['store'] / 'segments').glob('*.h5')))} as committed during writing, "
          f"{len(list((paths['store_compact'] / 'segments').glob('*.h5')))} after the compaction a build ends with")
    print()
    verdicts = [
        common.verdict("store / np.load", ratios["store_over_npy"], 1.5, False),
        common.verdict("JSON / store", ratios["json_over_store"], 100, True),
    ]
    common.save("bench_load" + ("_quick" if args.quick else ""), {
        "videos": v, "repeats": repeats, "bytes": sizes, "ratios": ratios,
        "median_cpu_s": {k: common.med(x) for k, x in cpu.items()},
        "median_wall_s": {k: common.med(x) for k, x in wall.items()},
        "times": {"cpu": cpu, "wall": wall}, "verdicts": verdicts})


if __name__ == "__main__":
    main()
