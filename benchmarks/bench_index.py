"""Benchmark: vstore's FAISS indexes vs NumPy brute force on clustered synthetic vectors.

Data (seeded, generated block by block): N x D unit vectors shaped like video-frame
embeddings: 100 "topic" directions; 10,000 clusters ("videos") each at a random offset of
norm 0.7 from a topic; a vector = its cluster centre + spread 0.8 inside a 32-d subspace of
its own (one of 32 random subspaces) + isotropic noise 0.5, then L2-normalised. Queries are
fresh draws from the same distribution (not database vectors). Metric: cosine.

For each of flat, ivf, hnsw and auto (the index ``vstore index`` builds by default, with the
same vstore code: ``factory_for``, ``new_index``, training sample, block-wise adds and
``index_search`` with the index's default nprobe / ef):
build time (training included), index size on disk, resident memory added, recall@10
against exact search, and queries/s for the 1,000 queries as one batch (also one query at a
time for the latency a CLI user sees). NumPy brute force = blocked matmul + argpartition
over the whole database; its result is the ground truth.

Incremental: adding 10% new vectors to the built auto index vs rebuilding it on all of
them (array level; ``--store`` also times ``vstore index`` on a real store: append vs --rebuild).

    python benchmarks/bench_index.py                    # 1M x 512, ~30+ min on 2 cores (HNSW build)
    python benchmarks/bench_index.py --n 200000 --kinds flat,ivf,auto
    python benchmarks/bench_index.py --quick            # 50k vectors, a smoke run
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # puts the checkout on sys.path
import faiss
import numpy as np

import vstore.index_build  # noqa: F401,E402  (loaded now: later edits of the tree cannot mix versions)
from vstore.index import IndexConfig, factory_for, new_index, prepare_for_add, train, train_rows_for
from vstore.index_faiss import prepare
from vstore.search import index_search

TOPICS, CLUSTERS, SUBSPACES, RANK = 100, 10_000, 32, 32
SPREAD, INSIDE, NOISE = 0.7, 0.8, 0.5
BLOCK = 65_536


# -- data ------------------------------------------------------------------------------------
class Clustered:
    """The generator described in the module doc; ``draw(n, seed)`` gives (n, D) float32."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        topics = _unit(rng.standard_normal((TOPICS, dim)).astype(np.float32))
        offsets = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
        offsets *= SPREAD / np.linalg.norm(offsets, axis=1, keepdims=True)
        self.centres = _unit(topics[rng.integers(0, TOPICS, CLUSTERS)] + offsets)  # (C, D)
        self.bases = np.stack([np.linalg.qr(rng.standard_normal((dim, RANK)))[0].T
                               for _ in range(SUBSPACES)]).astype(np.float32)  # (S, r, D)
        self.dim = dim

    def draw(self, n: int, seed: int) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        for a in range(0, n, BLOCK):
            rng = np.random.default_rng([seed, a])
            m = min(BLOCK, n - a)
            c = rng.integers(0, CLUSTERS, m)
            noise = rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(self.dim))
            x = self.centres[c] + noise
            z = rng.standard_normal((m, RANK), dtype=np.float32) * np.float32(INSIDE / np.sqrt(RANK))
            sub = c % SUBSPACES
            for j in range(SUBSPACES):
                sel = sub == j
                x[sel] += z[sel] @ self.bases[j]
            out[a:a + m] = _unit(x)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- brute force -----------------------------------------------------------------------------
def numpy_knn(x: np.ndarray, q: np.ndarray, k: int, block: int = 131_072) -> np.ndarray:
    """Exact top-k by inner product: blocked matmul + argpartition, merged across blocks."""
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for a in range(0, len(x), block):
        s = q @ x[a:a + block].T  # (Q, B)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, part + a], axis=1)
        keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, axis=1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


# -- vstore indexes ------------------------------------------------------------------------------
def build(cfg: IndexConfig, x: np.ndarray) -> tuple[faiss.Index, str, dict[str, float]]:
    """The index vstore builds for ``x`` with ``cfg`` (same sampling and block-wise adds)."""
    n, d = x.shape
    factory = factory_for(cfg, n, d)
    t0 = time.perf_counter()
    index = new_index(cfg, factory, d)
    n_train = train_rows_for(index, cfg, n)
    if n_train:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=n_train, replace=False))
        train(index, prepare(x[rows], cfg.metric))
    t_train = time.perf_counter() - t0
    add(index, x, cfg)
    return index, factory, {"train_s": t_train, "build_s": time.perf_counter() - t0, "train_rows": n_train}


def add(index: faiss.Index, x: np.ndarray, cfg: IndexConfig) -> None:
    prepare_for_add(index, cfg)
    for a in range(0, len(x), cfg.block_rows):
        index.add(prepare(x[a:a + cfg.block_rows], cfg.metric))


def index_bytes(index: faiss.Index) -> tuple[int, float]:
    """(size of the saved file, seconds to save it)."""
    with tempfile.TemporaryDirectory(dir=common.out_dir("index")) as tmp:
        t = time.perf_counter()
        faiss.write_index(index, os.path.join(tmp, "i.faiss"))
        return os.path.getsize(os.path.join(tmp, "i.faiss")), time.perf_counter() - t


def timed_search(index: faiss.Index, q: np.ndarray, k: int, nprobe: int, ef: int, repeats: int = 2
                 ) -> tuple[np.ndarray, float]:
    """(ids (Q, k), best-of-``repeats`` queries/s for the whole batch)."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index_search(index, q, k, nprobe, ef)
        best = min(best, time.perf_counter() - t)
    return ids, len(q) / best


def single_query_ms(index: faiss.Index, q: np.ndarray, k: int, nprobe: int, ef: int, n: int = 200) -> float:
    times = []
    for row in q[:n]:
        t = time.perf_counter()
        index_search(index, row[None], k, nprobe, ef)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def sweep(index: faiss.Index, factory: str, q: np.ndarray, truth: np.ndarray, k: int, cfg: IndexConfig
          ) -> list[dict[str, Any]]:
    rows = []
    if factory.startswith("IVF"):
        for nprobe in (4, 8, 16, 32, 64, 128):
            ids, qps = timed_search(index, q, k, nprobe, cfg.ef_search, repeats=1)
            rows.append({"nprobe": nprobe, "recall": recall_at(ids, truth, k), "qps": qps})
    elif factory.startswith("HNSW"):
        for ef in (16, 32, 64, 128, 256):
            ids, qps = timed_search(index, q, k, cfg.nprobe, ef, repeats=1)
            rows.append({"ef": ef, "recall": recall_at(ids, truth, k), "qps": qps})
    return rows


# -- store level (optional) --------------------------------------------------------------------
def store_level(x: np.ndarray, extra: np.ndarray, frames_per_video: int = 100) -> dict[str, Any]:
    """`vstore index` on a real store: initial build, append 10% videos, then --rebuild."""
    from vstore import StoreConfig, StoreWriter, VideoEntry
    from vstore.index_build import build_index

    path = common.out_dir("index") / "store"
    shutil.rmtree(path, ignore_errors=True)
    identity = {"name": "synthetic", "id": "synthetic:v1", "dim": x.shape[1], "spec": None}

    def write(vectors: np.ndarray, first: int) -> None:
        from vstore import Store
        Store.open_or_create(path, StoreConfig(segment_videos=256)).close()
        with StoreWriter(path, identity) as w:
            for v, a in enumerate(range(0, len(vectors), frames_per_video)):
                emb = vectors[a:a + frames_per_video]
                w.add(VideoEntry(id=f"v{first + v:07d}", embeddings=emb, frame_index=np.arange(len(emb)),
                                 timestamp=np.arange(len(emb)) / 25.0, label=f"c{(first + v) % 10}"))

    t = time.perf_counter()
    write(x, 0)
    out: dict[str, Any] = {"store_write_s": time.perf_counter() - t}
    r = build_index(path)
    out.update(initial_build_s=r.seconds, factory=r.factory)
    write(extra, len(x) // frames_per_video)
    r = build_index(path)
    assert r.action == "appended", r
    out["append_s"] = r.seconds
    r = build_index(path, rebuild=True)
    out["rebuild_s"] = r.seconds
    shutil.rmtree(path, ignore_errors=True)
    return out


def save(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """Write the results so far (also after each stage: a long run that dies keeps them)."""
    name = "bench_index" if args.n == 1_000_000 else f"bench_index_{args.n}"
    return common.save(name, {"faiss": faiss.__version__, "numpy": np.__version__, **result}, quiet=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="50k vectors: a smoke run")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1M)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="flat,ivf,hnsw,auto", help="comma-separated index kinds")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="FAISS OpenMP threads")
    p.add_argument("--no-sweep", action="store_true", help="skip the nprobe / ef sweeps")
    p.add_argument("--store", action="store_true", help="also time `vstore index` append vs rebuild on a real store")
    args = p.parse_args()
    if args.quick:
        args.n = 50_000
    faiss.omp_set_num_threads(args.threads)
    k = args.k
    result: dict[str, Any] = {"loadavg_at_start": common.load_average(), "n": args.n, "dim": args.dim,
                              "queries": args.queries, "k": k,
                              "threads": args.threads, "kinds": {}}
    gen = Clustered(args.dim)
    t = time.perf_counter()
    x = gen.draw(args.n, seed=1)  # (N, D)
    q = gen.draw(args.queries, seed=2)  # (Q, D)
    print(f"data: {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s, rss {rss_bytes() / 2**30:.2f} GiB")

    t = time.perf_counter()
    truth = numpy_knn(x, q, k)
    print(f"numpy brute force (ground truth): {time.perf_counter() - t:.1f} s", flush=True)

    built: dict[str, tuple[faiss.Index, str, IndexConfig]] = {}
    for kind in args.kinds.split(","):
        cfg = IndexConfig(kind=kind)
        gc.collect()
        rss0 = rss_bytes()
        index, factory, times = build(cfg, x)
        mem = rss_bytes() - rss0
        size, save_s = index_bytes(index)
        built[kind] = (index, factory, cfg)
        result["kinds"][kind] = {"factory": factory, **times, "save_s": save_s, "index_bytes": size,
                                 "rss_added_bytes": mem,
                                 "nprobe": cfg.nprobe if factory.startswith("IVF") else None,
                                 "ef": cfg.ef_search if "HNSW" in factory else None}
        print(f"{kind}: {factory} built in {times['build_s']:.1f} s (training {times['train_s']:.1f} s), "
              f"{size / 2**20:.0f} MiB", flush=True)
        save(args, result)

    # The machine may be shared: time every index and the NumPy baseline side by side, in rounds.
    cases = {"numpy": lambda: numpy_knn(x, q, k)}
    for kind, (index, _factory, cfg) in built.items():
        cases[kind] = (lambda index=index, cfg=cfg: index_search(index, q, k, cfg.nprobe, cfg.ef_search))
    times_by_case = common.interleaved(cases, repeats=args.repeats)["wall"]
    np_qps = args.queries / statistics.median(times_by_case["numpy"])
    result["numpy"] = {"seconds": times_by_case["numpy"], "qps": np_qps}
    print(f"numpy brute force: {np_qps:.1f} queries/s (median of {args.repeats} rounds)")
    rows = []
    for kind, (index, _factory, cfg) in built.items():
        entry = result["kinds"][kind]
        _, ids = index_search(index, q, k, cfg.nprobe, cfg.ef_search)
        entry["recall@10"] = recall_at(ids, truth, k)
        entry["qps"] = args.queries / statistics.median(times_by_case[kind])
        entry["speedup_vs_numpy"] = common.ratio(times_by_case, "numpy", kind)
        entry["single_query_ms"] = single_query_ms(index, q, k, cfg.nprobe, cfg.ef_search)
        if not args.no_sweep and kind != "auto":
            entry["sweep"] = sweep(index, factory, q, truth, k, cfg)
        rows.append([kind, factory, entry["build_s"], entry["index_bytes"] / 2**20, entry["rss_added_bytes"] / 2**20,
                     entry["recall@10"], entry["qps"], entry["speedup_vs_numpy"], entry["single_query_ms"]])
        print(f"{kind}: recall@{k} {entry['recall@10']:.4f}, {entry['qps']:.0f} q/s "
              f"({entry['speedup_vs_numpy']:.1f}x numpy), {entry['single_query_ms']:.2f} ms/query alone", flush=True)
        for sw in entry.get("sweep", []):
            print("   ", {key: round(v, 4) if isinstance(v, float) else v for key, v in sw.items()})
    save(args, result)
    print()
    common.table(rows, ["kind", "factory", "build s", "index MiB", "RSS+ MiB", f"recall@{k}", "q/s", "x numpy",
                        "ms/query"])
    auto_index = built["auto"][0] if "auto" in built else None
    built.clear()

    if auto_index is not None:
        cfg = IndexConfig()
        extra = gen.draw(args.n // 10, seed=3)
        t = time.perf_counter()
        add(auto_index, extra, cfg)
        inc_s = time.perf_counter() - t
        del auto_index
        gc.collect()
        everything = np.concatenate([x, extra])
        del x
        _, factory, times = build(cfg, everything)
        result["incremental"] = {"added": len(extra), "append_s": inc_s, "rebuild_s": times["build_s"],
                                 "rebuild_factory": factory}
        save(args, result)
        print(f"\nincremental: +{len(extra)} vectors appended in {inc_s:.1f} s vs rebuild ({factory}) "
              f"in {times['build_s']:.1f} s ({times['build_s'] / inc_s:.1f}x)")
        if args.store:
            result["store_level"] = store_level(everything[:args.n], extra)
            print("store level:", result["store_level"])
    result["peak_rss_bytes"] = peak_rss_bytes()
    auto = result["kinds"].get("auto")
    if auto:
        ok = auto["speedup_vs_numpy"] >= 10 and auto["recall@10"] >= 0.95
        result["verdict"] = {"speedup_vs_numpy": auto["speedup_vs_numpy"], "recall@10": auto["recall@10"],
                             "goal": "recall@10 >= 0.95 at >= 10x NumPy queries/s", "pass": ok}
        print(f"auto: recall@10 {auto['recall@10']:.4f} at {auto['speedup_vs_numpy']:.1f}x NumPy brute force "
              f"(goal >= 0.95 at >= 10x): {'PASS' if ok else 'FAIL'}")
    print(f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB")
    print(f"results written to {save(args, result)}")


if __name__ == "__main__":
    main()
