"""The Ray engines, run by tests/test_ray.py inside a network namespace that has only ``lo``
(Ray then binds 127.0.0.1 and talks to nothing else). Not collected by a plain pytest run
(files named netns_*.py); ``test_ray.py`` runs this module with ``-o python_files=netns_*.py``.

One two-node ``ray.cluster_utils.Cluster`` serves every test here (start-up is the slow
part); the private-Ray path (``--engine ray`` without ``--address``: ``ray.init`` of a local
Ray on this machine's 2 cores) runs once, through the CLI in a subprocess.
"""
from __future__ import annotations

import json
import os
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

ray = pytest.importorskip("ray")
if os.environ.get("VSTORE_RAY_NETNS") != "1":  # pragma: no cover - guarded by test_ray.py
    pytest.skip("runs inside the loopback-only namespace that tests/test_ray.py sets up", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
FRAMES = 4
N_VIDEOS = 8  # few: on 2 busy cores each Ray build costs tens of seconds
EXIT_SOME_FAILED = 3


@pytest.fixture(scope="session")
def cluster():
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, include_dashboard=False)
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


def test_two_node_build_is_the_local_build(cluster, videos, spec, local_store, tmp_path):
    assert len(ray.nodes()) == 2
    s = _build(videos, tmp_path / "ray", spec, "ray", ray_config=RayConfig(videos_per_batch=3))
    assert s.built == N_VIDEOS and [f.id for f in s.failures] == ["broken"] and s.exit_code == EXIT_SOME_FAILED
    assert_same_store(local_store, tmp_path / "ray")
    assert failures(tmp_path / "ray") == failures(local_store)  # same reason, word for word


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


def test_driver_killed_then_rerun_resumes(cluster, videos, spec, local_store, tmp_path):
    store = tmp_path / "ray"
    cmd = [sys.executable, "-m", "cli.main", "-q", "build", str(videos[0]), "--store", str(store), "--labels",
           str(videos[1]), "--frames", str(FRAMES), "--encoder", spec, "--dtype", "float32",
           "--segment-videos", "2", "--engine", "ray", "--address", cluster.address]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            m = store / "manifest.json"
            if m.is_file() and json.loads(m.read_text()).get("generation", 0) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with Store.open(store) as s:
        committed = s.n_videos
    # Usually killed mid-build; on a loaded machine the driver can commit the rest of its wave
    # between the check above and the kill. The rerun must resume exactly either way.
    assert 2 <= committed <= N_VIDEOS
    from click.testing import CliRunner
    r = CliRunner().invoke(cli_main, cmd[3:], catch_exceptions=False)
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    assert f"skipped {committed} (already in store)" in r.output and "failed 1" in r.output
    assert_same_store(local_store, store)


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


def test_private_ray_through_the_cli(videos, spec, local_store, tmp_path):
    """`vstore build --engine ray` without --address: a Ray of its own (all 2 cores), then
    `vstore index --engine ray` on it; exit status and failures.csv as the local build."""
    store = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base = [sys.executable, "-m", "cli.main", "-q"]
    r = subprocess.run(base + ["build", str(videos[0]), "--store", str(store), "--labels", str(videos[1]),
                               "--frames", str(FRAMES), "--encoder", spec, "--dtype", "float32", "--engine", "ray"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_SOME_FAILED, r.stdout + r.stderr
    assert f"built {N_VIDEOS}, skipped 0 (already in store), failed 1" in r.stdout
    assert "1 video(s) failed; reasons in" in r.stderr
    assert failures(store) == failures(local_store)
    assert_same_store(local_store, store)
