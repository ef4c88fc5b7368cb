"""The Ray engines, run by tests/test_ray.py inside a network namespace that has only ``lo``
(Ray then binds 127.0.0.1 and talks to nothing else). Not collected by a plain pytest run
(files named netns_*.py); ``test_ray.py`` runs this module with ``-o python_files=netns_*.py``.

One two-node ``ray.cluster_utils.Cluster`` serves every test here (start-up is the slow
part); the private-Ray path (``--engine ray`` without ``--address``: ``ray.init(num_cpus=2)``
of a local Ray, ``--ray-cpus 2``) runs once, through the CLI in a subprocess.

Faults are made from outside the code under test: worker processes are SIGKILLed, the driver
is SIGKILLed, and a video named ``dies-*.mp4`` makes its decode worker exit (``poison-*.mp4``:
the encoder raise), through a Ray ``worker_process_setup_hook`` that only this module's
cluster installs (the production code has no such switch).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as cli_main
from encoders.build import BuildConfig, build_store
from encoders.build.ray_engine import RayConfig
from encoders.registry import load_encoder
from vstore import Store, StoreConfig
from vstore.index import IndexConfig
from vstore.index_build import build_index
from vstore.index_load import load_index
from vstore.index_ray import RayIndexConfig, build_index_ray
from vstore.labels import load_labels
from vstore.raycluster import PRIVATE_RAY_SYSTEM_CONFIG

ray = pytest.importorskip("ray")
if os.environ.get("VSTORE_RAY_NETNS") != "1":  # pragma: no cover - guarded by test_ray.py
    pytest.skip("runs inside the loopback-only namespace that tests/test_ray.py sets up", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
FRAMES = 4
N_VIDEOS = 8  # few: on 2 busy cores each Ray build costs tens of seconds
EXIT_SOME_FAILED = 3
DIES = "dies-"  # a video named so kills its decode worker, every attempt (see cluster)
POISON = "poison-"  # a video named so makes the encoder actor raise (see cluster)


@pytest.fixture(scope="session")
def cluster():
    from ray.cluster_utils import Cluster
    # Workers at the driver's priority, as a private Ray's (at Ray's default niceness 15 two busy
    # loops beside this suite slowed it from 148 s to over 1,700 s).
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "_system_config": PRIVATE_RAY_SYSTEM_CONFIG})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()

    def die_on_marked_videos():
        """Runs in each Ray worker of this test session (not of other drivers): decoding a
        ``dies-*.mp4`` notes the attempt beside the file and exits the worker at once, as a
        decoder segfault or the OOM killer would end it; embedding a ``poison-*`` video
        raises, as a CUDA out-of-memory error would."""
        import encoders.build.pipeline as pipeline
        real = pipeline.decode_task
        real_add = pipeline.FrameBatcher.add

        def add(self, task, video):
            if task.video_id.startswith(POISON):
                raise RuntimeError("CUDA out of memory (a test's poison video)")
            return real_add(self, task, video)
        pipeline.FrameBatcher.add = add

        def decode_task(task):
            if os.path.basename(task.path).startswith(DIES):
                with open(task.path + ".attempts", "a") as f:
                    f.write(f"{os.getpid()}\n")
                os._exit(1)
            return real(task)
        pipeline.decode_task = decode_task

    ray.init(address=c.address, log_to_driver=False, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": die_on_marked_videos})
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="session")
def videos(class_videos, tmp_path_factory) -> tuple[Path, Path]:
    """(directory: 8 of the class clips, two per class, plus one that is not a video; labels.json)."""
    src, labels = class_videos
    root = tmp_path_factory.mktemp("ray_videos")
    (root / "v").mkdir()
    for p in sorted(src.glob("*.mp4"))[:N_VIDEOS]:
        shutil.copy(p, root / "v" / p.name)
    (root / "v" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return root / "v", labels


@pytest.fixture(scope="session")
def spec(tiny_clip_path) -> str:
    return f"clip:{tiny_clip_path}"


def _build(videos, store, spec, engine, **kw):
    enc = load_encoder(spec, device="cpu")
    return build_store([videos[0]], store, enc, labels=load_labels(videos[1]),
                       config=BuildConfig(frames=FRAMES, workers=kw.pop("workers", 0), compact=kw.pop("compact", True)),
                       store_config=StoreConfig(dtype="float32", segment_videos=kw.pop("segment_videos", 4)),
                       progress=False, engine=engine, **kw)


def _build_cmd(videos, store, spec, *extra) -> list[str]:
    """`vstore build` arguments (after `vstore`) for the test videos."""
    return ["build", str(videos[0]), *extra, "--store", str(store), "--labels", str(videos[1]), "--frames", str(FRAMES),
            "--encoder", spec, "--dtype", "float32", "--engine", "ray"]


def last_bar(stderr: str) -> str:
    """The last state the build's progress bar printed (tqdm redraws with \\r)."""
    return [s for s in re.split(r"[\r\n]", stderr) if s.startswith("build:")][-1]


@pytest.fixture(scope="session")
def local_store(videos, spec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray_ref") / "local"
    s = _build(videos, path, spec, "local", compact=False)  # 2 segments: the Ray index merges 2+ parts
    assert s.built == N_VIDEOS and [f.id for f in s.failures] == ["broken"]
    return path


def contents(path: Path) -> dict:
    """Everything a build decides about each video, keyed by id."""
    with Store.open(path) as s:
        t = s.videos
        keys, key_emb = s.key_frames(t.ids)
        out = {}
        for i, vid in enumerate(t.ids):
            idx, ts = s.get_frames(vid)
            out[vid] = dict(label=t.labels[i], n=int(t.n_frames[i]), total=int(t.total_frames[i]),
                            duration=float(t.duration[i]), index=idx.tolist(), ts=ts.tolist(),
                            emb=s.get_embeddings(vid, np.float32).tobytes(),
                            key=None if keys is None else keys[i].tobytes(),
                            key_emb=None if key_emb is None else key_emb[i].tobytes())
        return out


def failures(path: Path) -> dict[str, str]:
    import csv
    with open(path / "failures.csv", newline="") as f:
        return {r["id"]: r["reason"] for r in csv.DictReader(f)}


def assert_same_store(a: Path, b: Path) -> None:
    ca, cb = contents(a), contents(b)
    assert sorted(ca) == sorted(cb)
    for vid in ca:
        assert ca[vid] == cb[vid], vid  # bit-identical embeddings, same frames and timestamps


def test_two_node_build_is_the_local_build(cluster, videos, spec, local_store, tmp_path, caplog):
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    with caplog.at_level(logging.INFO, logger="encoders.build.ray_engine"):
        s = _build(videos, tmp_path / "ray", spec, "ray", ray_config=RayConfig(videos_per_batch=3))
    assert s.built == N_VIDEOS and [f.id for f in s.failures] == ["broken"] and s.exit_code == EXIT_SOME_FAILED
    assert_same_store(local_store, tmp_path / "ray")
    assert failures(tmp_path / "ray") == failures(local_store)  # same reason, word for word
    # where the work ran, as the tasks and the actor reported their node ids
    rec = next(r for r in caplog.records if hasattr(r, "decoded_on"))
    decoded, encoded = rec.decoded_on, rec.encoded_on
    assert sum(decoded.values()) == N_VIDEOS + 1 and sum(encoded.values()) == N_VIDEOS, (decoded, encoded)
    # 3 CPUs: the encoder actor takes 1, decode tasks (spread) the rest: both nodes work
    assert set(decoded) | set(encoded) == nodes, (decoded, encoded, nodes)


def _my_descendants() -> set[int]:
    """Pids of the processes this test process started (the cluster's raylets and workers)."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    return mine


def _kill_first(marker: str, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first of our processes whose title holds ``marker`` (a running Ray task or
    actor method: Ray titles its workers ``ray::<what runs>``)."""
    while not stop.is_set() and not killed:
        for pid in _my_descendants():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and marker in title:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, title.strip("\x00")))
                return
        time.sleep(0.005)


def test_killed_decode_worker_and_encoder_actor_cost_only_a_retry(cluster, videos, spec, local_store, tmp_path):
    stop, killed_decoder, killed_actor = threading.Event(), [], []
    watchers = [threading.Thread(target=_kill_first, args=("decode_row", stop, killed_decoder), daemon=True),
                threading.Thread(target=_kill_first, args=("EncoderActor", stop, killed_actor), daemon=True)]
    for w in watchers:
        w.start()
    try:
        s = _build(videos, tmp_path / "ray", spec, "ray", ray_config=RayConfig(videos_per_batch=2))
    finally:
        stop.set()
        for w in watchers:
            w.join()
    assert killed_decoder and killed_actor, (killed_decoder, killed_actor)
    assert s.built == N_VIDEOS and [f.id for f in s.failures] == ["broken"]
    assert_same_store(local_store, tmp_path / "ray")


def test_a_video_that_keeps_killing_its_worker_fails_alone(cluster, videos, spec, local_store, class_videos, tmp_path):
    """`vstore build --engine ray` where one video's decode worker dies on every attempt: Ray
    retries it (task_retries = 2: 3 attempts), then the build records it in failures.csv and
    builds the rest, exit status 3. The driver's progress bar (stderr) counts every video,
    the frames/s and both failures, the last of which arrives after the last built video."""
    from click.testing import CliRunner
    extra = tmp_path / "extra"
    extra.mkdir()
    dies = extra / f"{DIES}00.mp4"
    shutil.copy(sorted(class_videos[0].glob("*.mp4"))[N_VIDEOS], dies)  # a good video, not among the 8
    store = tmp_path / "ray"
    r = CliRunner().invoke(cli_main, _build_cmd(videos, store, spec, str(dies), "--address", cluster.address),
                           catch_exceptions=False)
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    attempts = Path(str(dies) + ".attempts").read_text().split()
    assert len(attempts) == RayConfig().task_retries + 1 == 3 and len(set(attempts)) == 3  # 3 workers died
    reasons = failures(store)
    assert sorted(reasons) == ["broken", f"{DIES}00"]
    assert reasons["broken"] == failures(local_store)["broken"]
    assert reasons[f"{DIES}00"].startswith("Ray worker died decoding it (3 attempts;"), reasons
    assert_same_store(local_store, store)  # the other 8 built, bit-identical
    assert f"built {N_VIDEOS}, skipped 0 (already in store), failed 2" in r.stdout
    bar = last_bar(r.stderr)
    assert f" {N_VIDEOS + 2}/{N_VIDEOS + 2} " in bar and "failed=2" in bar, bar
    rate = float(re.search(r"frames_s=([0-9.]+)", bar).group(1))
    assert rate > 0 and re.search(r"videos_s=[0-9.]+", bar), bar


def test_an_encoder_error_stops_the_build_with_its_message(cluster, videos, spec, class_videos, tmp_path):
    """An exception in the encoder actor is not one video's failure: the build stops with its
    message and exit status 1, as locally (Ray Data, which drops failed blocks so that a dead
    decode worker costs only its video, would otherwise list the batch's videos as failed)."""
    from click.testing import CliRunner
    extra = tmp_path / "extra"
    extra.mkdir()
    poison = extra / f"{POISON}00.mp4"
    shutil.copy(sorted(class_videos[0].glob("*.mp4"))[N_VIDEOS], poison)
    store = tmp_path / "ray"
    r = CliRunner().invoke(cli_main, ["-q", *_build_cmd(videos, store, spec, str(poison), "--address", cluster.address)])
    assert r.exit_code == 1, r.output
    assert "the encoder failed on Ray node" in r.output and "CUDA out of memory (a test's poison video)" in r.output
    assert not (store / "failures.csv").is_file() or "died" not in (store / "failures.csv").read_text()


KILLED_DRIVER = """
import sys
from encoders.build import BuildConfig, build_store
from encoders.build.ray_engine import RayConfig
from encoders.registry import load_encoder
from vstore import StoreConfig
from vstore.labels import load_labels
videos, labels, store, spec, frames, address = sys.argv[1:]
# waves of 2 videos: a wave's rows are committed, then the next wave starts a dataset and an
# encoder actor (seconds) before anything more can be committed
build_store([videos], store, load_encoder(spec, device="cpu"), labels=load_labels(labels),
            config=BuildConfig(frames=int(frames)), store_config=StoreConfig(dtype="float32", segment_videos=1),
            progress=False, engine="ray", ray_config=RayConfig(address=address, wave_videos=2))
"""


def test_driver_killed_then_rerun_resumes(cluster, videos, spec, local_store, tmp_path):
    """The driver is SIGKILLed as soon as its first video is committed, while the build is
    provably midway (asserted after the kill: some, not all, committed; its waves of 2 videos
    leave seconds between the first wave's commits and the next); the cluster drops its
    job, and a rerun through the CLI builds exactly the rest."""
    store = tmp_path / "ray"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, str(videos[0]), str(videos[1]), str(store), spec,
                             str(FRAMES), cluster.address], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if _committed(store) >= 1:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with Store.open(store) as s:
        committed = s.n_videos
    assert 1 <= committed < N_VIDEOS, committed  # killed midway: some videos committed, not all
    from click.testing import CliRunner
    r = CliRunner().invoke(cli_main, ["-q", *_build_cmd(videos, store, spec, "--address", cluster.address)],
                           catch_exceptions=False)
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    assert f"built {N_VIDEOS - committed}, skipped {committed} (already in store), failed 1" in r.output
    assert_same_store(local_store, store)


def _committed(store: Path) -> int:
    """Videos in the store's committed manifest (0 before the first commit)."""
    try:
        manifest = json.loads((store / "manifest.json").read_text())
    except (OSError, ValueError):  # not created yet, or caught mid-replace
        return 0
    return sum(seg["videos"] for seg in manifest.get("segments", []))


def test_index_on_ray_is_the_local_index(cluster, local_store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(local_store, a)
    shutil.copytree(local_store, b)
    # small blocks and groups: several tasks, lists merged from several parts
    cfg = IndexConfig(kind="IVF4,Flat", min_train_rows=16, nprobe=2, block_rows=4)
    ra = build_index(a, cfg)
    rb = build_index_ray(b, cfg, ray_config=RayIndexConfig(group_rows=8))
    assert (ra.factory, ra.frames) == (rb.factory, rb.frames) == ("IVF4,Flat", N_VIDEOS * FRAMES)
    fa, fb = (next((p / "index").glob("frames-*.faiss")).read_bytes() for p in (a, b))
    assert fa == fb  # the very same index file
    with Store.open(a) as s:
        q = s.get_embeddings(s.videos.ids[0], np.float32)
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    with Store.open(a) as sa, Store.open(b) as sb:
        ia, ib = load_index(sa)[0], load_index(sb)[0]
        ia.frames.nprobe = ib.frames.nprobe = 2
        da, xa = ia.frames.search(q, 5)
        db, xb = ib.frames.search(q, 5)
    assert (xa == xb).all() and (da == db).all()


def test_index_through_the_cli_on_ray(cluster, local_store, tmp_path):
    """`vstore index --engine ray` (IVF lists filled by a Ray task) makes the index file of
    `vstore index`, and `vstore search` answers the same on both."""
    from click.testing import CliRunner
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(local_store, a)
    shutil.copytree(local_store, b)
    kind = ["--kind", "IVF4,Flat", "--nprobe", "2"]
    runner = CliRunner()
    ra = runner.invoke(cli_main, ["-q", "index", str(a), *kind], catch_exceptions=False)
    rb = runner.invoke(cli_main, ["-q", "index", str(b), *kind, "--engine", "ray", "--address", cluster.address],
                       catch_exceptions=False)
    assert ra.exit_code == rb.exit_code == 0, ra.output + rb.output
    assert f"{N_VIDEOS * FRAMES} frames [IVF4,Flat]" in ra.output and f"{N_VIDEOS * FRAMES} frames [IVF4,Flat]" in rb.output
    fa, fb = (next((p / "index").glob("frames-*.faiss")).read_bytes() for p in (a, b))
    assert fa == fb
    with Store.open(a) as s:
        vid = s.videos.ids[3]
        frame = int(s.get_frames(vid)[0][1])
    for query in (["--video", vid, "--frame", str(frame)], ["--video", vid, "--per-video"]):
        ha, hb = (json.loads(runner.invoke(cli_main, ["-q", "search", str(p), *query, "-k", "6", "--json"],
                                           catch_exceptions=False).output)["hits"] for p in (a, b))
        assert len(ha) == 6 and ha == hb, (query, ha, hb)


def test_gpu_check_ray_step_dry_run(cluster, tmp_path):
    """benchmarks/gpu_check.py's Ray step, as its CPU dry run (--device cpu --quick) runs it
    (tests/test_gpu_check.py runs the other steps with --no-ray: Ray needs this namespace)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    spec = f"clip:{gpu_check.make_checkpoint(tmp_path, quick=True)}"
    n, length, size, frames = gpu_check.QUICK
    vids, _ = gpu_check.make_videos(tmp_path, n, length, size, processes=False)  # no fork of a Ray driver
    r = gpu_check.step_ray(gpu_check.Report(), spec, "cpu", vids, tmp_path, frames)
    assert r["ok"] is True and r["engine"] == "ray" and r["videos"] == n and r["frames_per_s"] > 0, r


def test_private_ray_through_the_cli(videos, spec, local_store, tmp_path):
    """`vstore build --engine ray` without --address: a private Ray of its own started with
    ``ray.init(num_cpus=2)`` (--ray-cpus 2); exit status and failures.csv as the local build,
    and the progress bar on stderr."""
    store = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "cli.main", "-v", *_build_cmd(videos, store, spec, "--ray-cpus", "2")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_SOME_FAILED, r.stdout + r.stderr
    assert "1 cpu encoder actor(s)" in r.stderr and "2 cluster CPUs" in r.stderr, r.stderr[-3000:]
    assert f"built {N_VIDEOS}, skipped 0 (already in store), failed 1" in r.stdout
    assert "1 video(s) failed; reasons in" in r.stderr
    bar = last_bar(r.stderr)
    assert f" {N_VIDEOS + 1}/{N_VIDEOS + 1} " in bar and "failed=1" in bar and "frames_s=" in bar, bar
    assert failures(store) == failures(local_store)
    assert_same_store(local_store, store)


PRIORITY = """
import os, ray
from vstore.raycluster import connect
assert connect(None, 2)
@ray.remote(num_cpus=1, max_retries=0)
def niceness():
    return os.nice(0)
print("driver", os.nice(0), "workers", sorted(set(ray.get([niceness.remote() for _ in range(4)]))))
ray.shutdown()
"""


def test_private_ray_workers_run_at_the_commands_priority():
    """A private Ray's workers do the command's work: they run at its niceness (5 here, as
    `nice -n 5 vstore build` sets), not at Ray's default 15, which left them a few percent of a
    busy machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    r = subprocess.run(["nice", "-n", "5", sys.executable, "-c", PRIORITY], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"driver {os.nice(0) + 5} workers [{os.nice(0) + 5}]" in r.stdout, r.stdout + r.stderr[-2000:]
