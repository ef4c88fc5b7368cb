"""A small seeded fuzzer (issue 13): random mutations of manifest.json, segment bytes, labels files
CSV tables and index/index.json, each run through the CLI, asserting for every case:

* exit status 0, 1 or 3 only; exit 1 with exactly one ``Error:`` line; never a traceback;
* no hang (a per-case time limit);
* no file changed outside the store;
* the store's committed videos unchanged: every video the store still serves has the vectors it
  was built with (a damaged store may refuse to open, never answer wrongly).

In-process through ``CliRunner`` (fast); segment bytes go to HDF5's C library, so those cases
run in a subprocess that is killed and restarted if a case hangs or crashes. ``VSTORE_FUZZ_SCALE``
multiplies the number of cases (default 1: a few hundred in all).
"""
from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.main import main  # noqa: E402
from vstore import Store, StoreConfig, StoreWriter, VideoEntry  # noqa: E402

pytestmark = pytest.mark.hostile

SCALE = float(os.environ.get("VSTORE_FUZZ_SCALE", "1"))
CASE_SECONDS = 30  # a case running longer is a hang (generous: CI machines are shared)
ENC = {"id": "test:8", "name": "test", "dim": 8, "spec": None}
HOSTILE_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 63, 10 ** 30, float("inf"), "", "../victim.txt",
                  "/etc/hostname", "segments/../../victim.txt", "x" * 5000, "=cmd|' /C calc'!A0", "\0", "\udce9",
                  [], {}, [[[[]]]], {"a": 1}, "segments", ".", "manifest.json"]


def n_cases(base: int) -> int:
    return max(1, int(base * SCALE))


# -- the world each case runs in --------------------------------------------------------------------
def make_world(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/store (6 videos in 3 segments, vectors known) beside root/victim.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "victim.txt").write_text("outside the store")
    store = root / "store"
    rng = np.random.default_rng(0)
    Store.create(store, StoreConfig(segment_videos=2, chunk_rows=4, dtype="float32")).close()
    vectors = {}
    with StoreWriter(store, ENC) as w:
        for i in range(6):
            vectors[f"v{i}"] = rng.normal(size=(5, 8)).astype(np.float32)
            w.add(VideoEntry(id=f"v{i}", embeddings=vectors[f"v{i}"], frame_index=np.arange(5),
                             timestamp=np.arange(5) / 5, label=("cat", "dog")[i % 2], source=f"/v/v{i}.mp4"))
    return store, vectors


def outside_snapshot(root: Path, store: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and store not in p.parents}


def check_served_vectors(store: Path, vectors: dict[str, np.ndarray]) -> None:
    """Whatever the store still serves is what was committed (or it refuses to open)."""
    from vstore import VStoreError
    try:
        s = Store.open(store)
    except VStoreError:
        return
    with s:
        for vid in s.videos.ids:
            try:
                got = s.get_embeddings(vid)
            except VStoreError:
                continue
            assert vid in vectors and np.array_equal(got, vectors[vid]), f"{vid}: wrong vectors served"


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_case(args: list[str]) -> "click.testing.Result":  # noqa: F821
    """One CLI invocation in-process, under a time limit; asserts the exit contract."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        r = CliRunner().invoke(main, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    check_result(args, r.exit_code, r.output, r.exception)
    return r


def check_result(args, code, output, exception=None) -> None:
    where = f"{args}: exit {code}\n{output[-2000:]}"
    assert not isinstance(exception, Hang), f"hang: {args}"
    assert code in (0, 1, 3), where
    assert "Traceback" not in output, where
    assert exception is None or isinstance(exception, SystemExit), f"{where}\n{exception!r}"
    if code == 1:
        assert sum(line.startswith("Error:") for line in output.splitlines()) == 1, where


# -- mutations --------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(max(1, len(b)))
        if op == 0 and b:  # flip bits
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:  # random bytes over a range
            n = rng.randint(1, 64)
            b[pos:pos + n] = bytes(rng.randrange(256) for _ in range(n))
        elif op == 2:  # truncate
            del b[pos:]
        elif op == 3:  # insert
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and b:  # duplicate a slice elsewhere
            n = rng.randint(1, 256)
            b[rng.randrange(len(b)):0] = b[pos:pos + n]
        else:  # zero a range
            n = rng.randint(1, 512)
            b[pos:pos + n] = bytes(min(n, len(b) - pos))
    return bytes(b)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate_json(obj, rng: random.Random):
    """Replace, delete or add a value at a random place of a JSON document."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            return rng.choice(HOSTILE_VALUES)
        path = rng.choice(paths)
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        op = rng.randrange(4)
        if op == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == 1 and isinstance(parent, dict):
            parent[rng.choice(["extra", "file", "segments", "dim", "__proto__"])] = rng.choice(HOSTILE_VALUES)
        else:
            parent[path[-1]] = rng.choice(HOSTILE_VALUES)
    return obj


def dump_json(obj, rng: random.Random) -> bytes:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    data = text.encode("utf-8", "surrogatepass")
    return mutate_bytes(data, rng) if rng.random() < 0.3 else data


# -- the fuzzers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_world")
    store, vectors = make_world(root / "w")
    return root / "w", store, vectors


def test_fuzz_manifest(world, tmp_path):
    """manifest.json mutated structurally and byte-wise; read commands, then repair and compact."""
    pristine, _, vectors = world
    root, store = tmp_path / "w", tmp_path / "w" / "store"
    rng = random.Random(1301)
    manifest = json.loads((pristine / "store" / "manifest.json").read_text())
    for case in range(n_cases(150)):
        shutil.copytree(pristine, root, symlinks=True)
        outside = outside_snapshot(root, store)
        (store / "manifest.json").write_bytes(dump_json(mutate_json(manifest, rng), rng))
        commands = [["info", str(store)], ["verify", str(store)]]
        if case % 3 == 0:
            commands += [["verify", str(store), "--repair"], ["compact", str(store), "--max-frames", "12"]]
        for args in commands:
            run_case(args)
        assert outside_snapshot(root, store) == outside, f"case {case}: a file outside the store changed"
        check_served_vectors(store, vectors)
        shutil.rmtree(root)


def test_fuzz_labels_and_csv_tables(world, tmp_path, tiny_video):
    """Labels files (JSON and CSV, our downloaded.csv among them) and failures.csv, mutated; a
    build reads them (its video is new) and info reads failures.csv."""
    pristine, _, _ = world
    rng = random.Random(1302)
    labels_json = {"v0": "cat", "tiny": "=cmd", "v1": "dog"}
    labels_csv = "id,category,path,duration,title\ntiny,'=cmd,tiny.mp4,1.000,'@t\nv0,cat,v0.mp4,,\"a,b\"\n"
    failures = "id,path,reason\nx,/nowhere/x.mp4,decode error\n'-y,/nowhere/'-y.mp4,\"multi\nline\"\n"
    for case in range(n_cases(80)):
        root = tmp_path / f"c{case}"
        root.mkdir()
        store = root / "store"
        (root / "victim.txt").write_text("outside the store")
        kind = case % 3
        if kind == 0:
            data = dump_json(mutate_json(labels_json, rng), rng)
            name = "labels.json"
        elif kind == 1:
            data = mutate_bytes(labels_csv.encode(), rng)
            name = "labels.csv"
        else:
            data = mutate_bytes(labels_csv.encode(), rng)
            name = "downloaded.csv"
        (root / name).write_bytes(data)
        if case % 2:
            shutil.copytree(tiny_video.parent.parent / "store", store)
            (store / "failures.csv").write_bytes(mutate_bytes(failures.encode(), rng))
            run_case(["info", str(store)])
        outside = outside_snapshot(root, store)
        r = run_case(["-q", "build", str(tiny_video), "--store", str(store), "--encoder", "thumbnail", "--workers", "0",
                      "--frames", "2", "--labels", str(root / name)])
        assert outside_snapshot(root, store) == outside
        if r.exit_code != 1 and (store / "failures.csv").exists():
            (store / "failures.csv").read_text(encoding="utf-8")  # always valid UTF-8 once we wrote it


@pytest.fixture(scope="module")
def indexed_world(tmp_path_factory):
    """The world with a flat FAISS index of its store (``vstore index``)."""
    root = tmp_path_factory.mktemp("fuzz_indexed") / "w"
    store, vectors = make_world(root)
    r = CliRunner().invoke(main, ["index", str(store), "--kind", "flat"])
    assert r.exit_code == 0, r.output
    np.save(root / "q.npy", vectors["v3"][2])
    return root, store, vectors


def test_fuzz_index_json(indexed_world, tmp_path):
    """index/index.json mutated structurally and byte-wise: search (which must never answer from
    vectors the store does not hold) and index --refresh."""
    pristine, _, vectors = indexed_world
    rng = random.Random(1304)
    meta = json.loads((pristine / "store" / "index" / "index.json").read_text())
    for case in range(n_cases(40)):
        root = tmp_path / f"c{case}"  # a new path per case: no index cached across cases
        shutil.copytree(pristine, root, symlinks=True)
        store = root / "store"
        outside = outside_snapshot(root, store)
        (store / "index" / "index.json").write_bytes(dump_json(mutate_json(meta, rng), rng))
        r = run_case(["search", str(store), "--vector", str(root / "q.npy"), "-k", "1", "--json"])
        if r.exit_code == 0:
            hits = json.loads(r.output)["hits"]
            assert not hits or (hits[0]["video_id"], hits[0]["frame_index"]) == ("v3", 2), f"case {case}: {hits}"
        if case % 2:
            run_case(["index", str(store), "--refresh"])
        assert outside_snapshot(root, store) == outside
        check_served_vectors(store, vectors)
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> Path:
    """One 6-frame video, and a thumbnail store of it (``tiny_video.parent.parent / "store"``)."""
    from encoders.video.synthetic import make_class_video
    d = tmp_path_factory.mktemp("fuzz_video")
    (d / "videos").mkdir()
    video = d / "videos" / "tiny.mp4"
    make_class_video(video, "blue_stripes", n_frames=6, seed=0)
    r = CliRunner().invoke(main, ["-q", "build", str(video), "--store", str(d / "store"), "--encoder", "thumbnail",
                                  "--workers", "0", "--frames", "2"])
    assert r.exit_code == 0, r.output
    return video


# -- segment bytes, in a contained subprocess -------------------------------------------------------
SEGMENT_COMMANDS = (("info",), ("verify",), ("search", "--vector", "{q}", "-k", "3"), ("verify", "--repair"))


def segment_cases(pristine: Path, work: Path, seed: int, start: int, count: int):
    """Yield (case, args, store) after writing a mutated segment into a fresh copy of the world."""
    rng = random.Random(seed)
    seg_files = sorted((pristine / "store" / "segments").glob("*.h5"))
    for case in range(start + count):
        target = rng.choice(seg_files)
        data = mutate_bytes(target.read_bytes(), rng)
        fix_sha = rng.random() < 0.7  # mostly: damage that passes the manifest's size/SHA check
        command = SEGMENT_COMMANDS[case % len(SEGMENT_COMMANDS)]
        if case < start:
            continue
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(pristine, work, symlinks=True)
        store = work / "store"
        (store / "segments" / target.name).write_bytes(data)
        if fix_sha:
            import hashlib
            m = json.loads((store / "manifest.json").read_text())
            for s in m["segments"]:
                if s["file"].endswith(target.name):
                    s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            (store / "manifest.json").write_text(json.dumps(m))
        q = work / "q.npy"
        np.save(q, np.ones(8, np.float32))
        args = [command[0], str(store)] + [a.format(q=q) for a in command[1:]]
        yield case, args, store


def segment_worker(pristine: str, work: str, seed: int, start: int, count: int) -> None:
    """Runs in the subprocess: one JSON line per finished case."""
    runner = CliRunner()
    vectors = {k: v for k, v in np.load(Path(pristine) / "vectors.npz").items()}
    for case, args, store in segment_cases(Path(pristine), Path(work), seed, start, count):
        print(json.dumps({"start": case}), flush=True)
        r = runner.invoke(main, args)
        problem = None
        try:
            check_result(args, r.exit_code, r.output, r.exception)
            check_served_vectors(store, vectors)
        except AssertionError as e:
            problem = str(e)
        print(json.dumps({"case": case, "code": r.exit_code, "problem": problem}), flush=True)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_fuzz_segment_bytes(world, tmp_path):
    """Segment files mutated (with and without a matching manifest SHA-256): info, verify,
    search (exact, no index), verify --repair. A hang or a crash of the HDF5 library is caught
    by the parent, which restarts the worker after the case."""
    pristine, _, vectors = world
    np.savez(pristine / "vectors.npz", **vectors)
    total, seed = n_cases(60), 1303
    done: dict[int, dict] = {}
    start = 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    while start < total:
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_fuzz; "
                f"test_fuzz.segment_worker({str(pristine)!r}, {str(tmp_path / 'seg')!r}, {seed}, {start}, "
                f"{total - start})")
        err = open(tmp_path / "worker.err", "w+")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                cwd=tmp_path)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, limit = None, 120 + CASE_SECONDS  # the first case also pays the imports
        while True:
            try:
                line = lines.get(timeout=limit)
            except queue.Empty:
                proc.kill()
                done[current] = {"case": current, "problem": f"hang: case {current}"}
                break
            if line is None:
                break
            msg = json.loads(line)
            if "start" in msg:
                current, limit = msg["start"], CASE_SECONDS
            else:
                done[msg["case"]] = msg
        proc.wait()
        if proc.returncode != 0 and current is not None and current not in done:
            err.seek(0)
            done[current] = {"case": current, "problem": f"crash (status {proc.returncode}): {err.read()[-500:]}"}
        err.close()
        start = max(done) + 1 if done else total
    problems = {c: m["problem"] for c, m in sorted(done.items()) if m.get("problem")}
    assert len(done) == total, f"{total - len(done)} case(s) never ran"
    assert not problems, "\n".join(f"case {c}: {p}" for c, p in problems.items())
