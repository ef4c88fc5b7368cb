"""Benchmark: `vstore serve` latency and throughput for vector (and text) queries.

A store of N synthetic 512-d frame vectors (bench_index's clustered generator, 100 frames
per video) whose recorded encoder is a ViT-B/32-sized CLIP with random weights (so text
queries run the real text tower), indexed with `vstore index`'s `auto`. Held-out query
vectors are sent as JSON over keep-alive HTTP connections to servers started as separate
processes on 127.0.0.1:

* batched: `vstore serve`'s defaults (micro-batching up to 32, 2 search threads);
* parallel: no batching (max_batch 1), 8 search threads;
* one-at-a-time: no batching, one search thread (searches run one after another; the event
  loop still parses and answers other requests meanwhile). The batched server at 1 client is
  the strict one-query-at-a-time figure; both ratios are printed.

Per round (rounds interleaved, order rotated): 1 client sending queries one after another
(p50/p99 latency, queries/s) and 8 concurrent clients (queries/s, p50/p99), for every
server. The clients are `wrk` (C, one thread, keep-alive connections, a Lua script cycling
through the query bodies) when it is installed (`apt-get install wrk`), else threads of this
process (`--client python`): on a 2-core machine eight Python clients take about as much
CPU as the server, so their figures measure the clients as much as the server. Also
`vstore search --vector q.npy` as one process per query on the same store, and text
queries (server latency minus the text encoder's own time on the same prompts).

Goals (issue 11): p50 <= 10 ms at 1 client and >= 50x faster than the CLI; 8 clients >= 2x
the queries/s of one-at-a-time serving; text = encoder + at most 10 ms.

    python benchmarks/bench_serve.py --frames 172800 1000000   # the issue's sizes
    python benchmarks/bench_serve.py --quick                   # 20k frames, 1 round (a smoke run)
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from bench_build import clip_checkpoint
from bench_index import Clustered

ROOT = common.ROOT.parent
MODES = {"batched": {}, "parallel": {"max_batch": 1, "search_threads": 8},
         "one-at-a-time": {"max_batch": 1, "search_threads": 1}}
PROMPTS = ["a plate of pasta", "a red car on a road", "a cat on a sofa", "people dancing", "a mountain lake",
           "a football match", "a chef cooking", "a city at night", "a dog running", "a beach at sunset"]


def make_store(n: int, dim: int = 512, per_video: int = 100) -> Path:
    from vstore import Store, StoreConfig, StoreWriter, VideoEntry
    from vstore.index_build import build_index
    path = common.out_dir("serve") / f"store-{n}"
    if (path / "index" / "index.json").is_file():
        with Store.open(path) as s:
            if s.n_frames == n:
                return path
    shutil.rmtree(path, ignore_errors=True)
    from encoders.clip_encoder import ClipConfig, ClipEncoder
    identity = ClipEncoder(ClipConfig(model=str(clip_checkpoint()), device="cpu")).identity
    x = Clustered(dim).draw(n, seed=1)
    t = time.perf_counter()
    Store.create(path, StoreConfig(segment_videos=512)).close()
    with StoreWriter(path, identity) as w:
        for v, a in enumerate(range(0, n, per_video)):
            emb = x[a:a + per_video]
            w.add(VideoEntry(id=f"v{v:06d}", embeddings=emb, frame_index=np.arange(len(emb)) * 30,
                             timestamp=np.arange(len(emb)) * 1.2, label=f"c{v % 10}"))
    r = build_index(path)
    print(f"store {n} frames written and indexed ({r.factory}) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, store: Path, **config: Any):
        self.port = free_port()
        cfg = dict(port=self.port, device="cpu", **config)
        code = ("import sys; sys.path.insert(0, %r); from cli.serve.app import serve; "
                "from cli.serve.config import ServeConfig; serve(%r, ServeConfig(**%r))") % (str(ROOT), str(store), cfg)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while True:  # started when /healthz answers
            if self.proc.poll() is not None:
                raise RuntimeError(f"server failed: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                status, _ = self.post("/healthz", None)
                if status == 200:
                    break
            except OSError:
                time.sleep(0.2)

    def post(self, path: str, body: bytes | None, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        if body is None:
            c.request("GET", path)
        else:
            c.request("POST", path, body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_clients(server: Server, bodies: list[bytes], clients: int) -> dict[str, float]:
    """Every body once, spread over ``clients`` threads with one keep-alive connection each."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        mine = []
        for b in bodies[c::clients]:
            t = time.perf_counter()
            status, data = server.post("/api/search", b, conn)
            mine.append(time.perf_counter() - t)
            if status != 200:
                errors.append(data[:200].decode())
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    assert not errors, errors[:3]
    ms = np.array(lat) * 1000
    return {"qps": len(bodies) / wall, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(%r) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/api/search", {["content-type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("VSTORE %%d %%d %%d %%.6f %%.1f %%.1f\\n", summary.requests, errors, summary.errors.status,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(server: Server, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` keep-alive connections from one wrk thread for ``seconds``, cycling through
    ``bodies``; any socket error or non-2xx answer fails the run."""
    d = common.out_dir("serve")
    (d / "bodies.txt").write_bytes(b"\n".join(bodies) + b"\n")
    (d / "post.lua").write_text(WRK_SCRIPT % str(d / "bodies.txt"))
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s",
                          str(d / "post.lua"), f"http://127.0.0.1:{server.port}"],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"^VSTORE (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$", out, re.M)
    assert m, out
    n, errors, status, secs, p50_us, p99_us = (float(x) for x in m.groups())
    assert errors == 0 and status == 0, out
    return {"qps": n / secs, "p50_ms": p50_us / 1000, "p99_ms": p99_us / 1000}


def cli_seconds(store: Path, q: np.ndarray, repeats: int) -> float:
    qpath = common.out_dir("serve") / "q.npy"
    np.save(qpath, q)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli.main", "search", str(store), "--vector", str(qpath), "-k", "10",
                        "--json"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def text_overhead(server: Server, rounds: int) -> dict[str, float]:
    """Text queries: client latency vs the server's own time in the text encoder (``embed_ms``,
    timed inside the same request, so other jobs on the machine slow both alike)."""
    assert server.post("/api/search", json.dumps({"text": "warm up", "k": 10}).encode())[0] == 200
    latency, encoder = [], []
    for r in range(rounds):
        for p in PROMPTS:
            t = time.perf_counter()
            status, data = server.post("/api/search", json.dumps({"text": f"{p} {r}", "k": 10}).encode())
            latency.append(time.perf_counter() - t)
            assert status == 200
            encoder.append(json.loads(data)["embed_ms"] / 1000)
    over = [a - b for a, b in zip(latency, encoder)]
    return {"text_query_p50_ms": 1000 * statistics.median(latency), "encode_text_p50_ms": 1000 * statistics.median(encoder),
            "overhead_ms": 1000 * statistics.median(over)}


def in_process_batches(store: Path, q: np.ndarray, repeats: int) -> dict[str, Any]:
    """``vstore.search`` alone, in this process on one FAISS thread (as the server runs it):
    ms per query when distinct queries are searched one by one vs in batches of 8 and 32.
    The evidence for (or against) batching concurrent queries into one FAISS search."""
    import faiss

    from vstore import Store
    from vstore.search import search
    faiss.omp_set_num_threads(1)
    per = {1: [], 8: [], 32: []}
    with Store.open(store) as s:
        search(s, q[:8], 10)
        m = (len(q) // 32) * 32
        for r in range(repeats):
            for b in list(per)[r % 3:] + list(per)[:r % 3]:
                t = time.perf_counter()
                for i in range(0, m, b):
                    search(s, q[i:i + b], 10)
                per[b].append(1000 * (time.perf_counter() - t) / m)
    return {"ms_per_query": {b: statistics.median(v) for b, v in per.items()},
            "batch8_vs_single": statistics.median(a / b for a, b in zip(per[8], per[1])),
            "batch32_vs_single": statistics.median(a / b for a, b in zip(per[32], per[1])), "rounds": per}


def bench_size(n: int, args) -> dict[str, Any]:
    store = make_store(n)
    gen = Clustered(512)
    q = gen.draw(args.queries, seed=7)
    bodies = [json.dumps({"vector": [round(float(v), 6) for v in row], "k": 10}).encode() for row in q]
    out: dict[str, Any] = {"frames": n, "client": args.client}
    with open(store / "index" / "index.json") as f:
        out["index"] = json.load(f)["frame_part"]["factory"]
    out["cli_s"] = cli_seconds(store, q[0], 3 if not args.quick else 2)
    print(f"[{n}] index {out['index']}; `vstore search` per process: {out['cli_s']:.2f} s", flush=True)
    out["in_process"] = in_process_batches(store, q, 3 if args.quick else 2 * args.repeats + 1)
    ms = out["in_process"]["ms_per_query"]
    print(f"[{n}] in-process search, ms per query: single {ms[1]:.3f}, batches of 8 {ms[8]:.3f}, of 32 {ms[32]:.3f}",
          flush=True)
    servers = {m: Server(store, **cfg) for m, cfg in MODES.items()}
    try:
        for s in servers.values():  # warm: first queries page the index in
            run_clients(s, bodies[:20], 1)
        rounds: dict[str, list[dict]] = {f"{m}/{c}": [] for m in MODES for c in (1, 8)}
        names = list(MODES)
        for r in range(args.repeats):
            for m in names[r % len(names):] + names[:r % len(names)]:
                if args.client == "wrk":
                    rounds[f"{m}/1"].append(run_wrk(servers[m], bodies, 1, args.seconds))
                    rounds[f"{m}/8"].append(run_wrk(servers[m], bodies, 8, args.seconds))
                else:
                    rounds[f"{m}/1"].append(run_clients(servers[m], bodies[:args.single], 1))
                    rounds[f"{m}/8"].append(run_clients(servers[m], bodies, 8))
                print(f"[{n}] round {r} {m}: 1 client p50 {rounds[f'{m}/1'][-1]['p50_ms']:.2f} ms; "
                      f"8 clients {rounds[f'{m}/8'][-1]['qps']:.0f} q/s", flush=True)
        out["rounds"] = rounds
        summary = {key: {k: statistics.median(x[k] for x in v) for k in v[0]} for key, v in rounds.items()}
        out["summary"] = summary
        out["ratio_8c_batched_vs_one_at_a_time"] = statistics.median(
            b["qps"] / o["qps"] for b, o in zip(rounds["batched/8"], rounds["one-at-a-time/8"]))
        out["ratio_8c_batched_vs_1c_batched"] = statistics.median(  # vs answering one query at a time
            b["qps"] / o["qps"] for b, o in zip(rounds["batched/8"], rounds["batched/1"]))
        out["ratio_8c_batched_vs_parallel"] = statistics.median(
            b["qps"] / o["qps"] for b, o in zip(rounds["batched/8"], rounds["parallel/8"]))
        out["cli_over_p50"] = out["cli_s"] * 1000 / summary["batched/1"]["p50_ms"]
        if not args.no_text:
            out["text"] = text_overhead(servers["batched"], 1 if args.quick else 2)
        b = servers["batched"].post("/api/info", None)[1]
        out["server_batches"] = json.loads(b)["server"]
    finally:
        for s in servers.values():
            s.close()
    return out


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--frames", type=int, nargs="+", default=[172_800, 1_000_000], help="store sizes (frames)")
    p.add_argument("--queries", type=int, default=800, help="queries per 8-client burst")
    p.add_argument("--single", type=int, default=200, help="queries per 1-client run")
    p.add_argument("--no-text", action="store_true", help="skip the text-query measurement")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator: wrk (auto: when on PATH) or Python threads in this process")
    p.add_argument("--seconds", type=float, default=8, help="seconds per wrk run")
    args = p.parse_args()
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    if args.quick:
        args.frames, args.queries, args.single, args.repeats, args.seconds = [20_000], 200, 60, 1, 3
    result: dict[str, Any] = {"loadavg_at_start": common.load_average(), "sizes": []}
    for n in args.frames:
        r = bench_size(n, args)
        result["sizes"].append(r)
        common.save("bench_serve" + ("_quick" if args.quick else ""), result)
        s = r["summary"]
        common.table([[m, s[f"{m}/1"]["p50_ms"], s[f"{m}/1"]["p99_ms"], s[f"{m}/1"]["qps"], s[f"{m}/8"]["p50_ms"],
                       s[f"{m}/8"]["p99_ms"], s[f"{m}/8"]["qps"]] for m in MODES],
                     ["server", "1c p50 ms", "1c p99 ms", "1c q/s", "8c p50 ms", "8c p99 ms", "8c q/s"])
        common.verdict(f"[{n}] CLI per process / served p50 (1 client)", r["cli_over_p50"], 50, True)
        common.verdict(f"[{n}] 8 clients: batched q/s / one-at-a-time server's q/s", r["ratio_8c_batched_vs_one_at_a_time"],
                       2, True)
        common.verdict(f"[{n}] batched: 8 clients' q/s / 1 client's (queries answered one at a time)",
                       r["ratio_8c_batched_vs_1c_batched"], 2, True)
        print(f"[{n}] p50 at 1 client: {s['batched/1']['p50_ms']:.2f} ms (goal <= 10 ms)")
        if "text" in r:
            print(f"[{n}] text query p50 {r['text']['text_query_p50_ms']:.1f} ms = encoder "
                  f"{r['text']['encode_text_p50_ms']:.1f} ms + {r['text']['overhead_ms']:.1f} ms (goal <= 10 ms)")


if __name__ == "__main__":
    main()
