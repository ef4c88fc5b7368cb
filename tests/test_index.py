"""The FAISS index of a store: kinds and metrics vs brute force, incremental updates,
staleness, ids after compact / verify --repair, damaged files, kill -9, the `vstore index` CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from vstore import Store, StoreConfig, StoreLockedError, StoreWriter, VideoEntry, compact, verify
from vstore.errors import IndexBuildError, IndexDamagedError, IndexNotFoundError, StaleIndexError
from vstore.fsutil import WriteLock
from vstore.index import INDEX_DIR, IndexConfig, factory_for, index_dir, read_meta
from vstore.index_build import build_index
from vstore.index_load import invalidate_cache, load_index
from vstore.manifest import read_manifest
from vstore.search import query_from_frame, search

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
DIM = 32
ENC = {"id": "vec:test", "name": "vectors", "dim": DIM, "spec": None}


# -- helpers shared with test_search.py / test_knn.py ---------------------------------------------
def vector_store(path: Path, n_videos: int = 40, frames: int = 25, seed: int = 0, first: int = 0,
                 labels: tuple = ("cat", "dog", "fish")) -> Path:
    """A float32 store of clustered random vectors: video i has label labels[i % 3]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(len(labels), DIM))
    Store.open_or_create(path, StoreConfig(dtype="float32", segment_videos=10, chunk_rows=64)).close()
    with StoreWriter(path, ENC) as w:
        for i in range(first, first + n_videos):
            emb = centres[i % len(labels)] + rng.normal(size=(frames, DIM))
            w.add(VideoEntry(id=f"v{i:03d}", embeddings=emb.astype(np.float32), frame_index=np.arange(frames) * 3,
                             timestamp=np.arange(frames) * 0.12, label=labels[i % len(labels)]))
    return path


def all_vectors(store: Store) -> np.ndarray:
    return np.concatenate([b.embeddings for b in store.iter_blocks(dtype=np.float32)])  # (N, D)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference: (rows (Q, k), scores (Q, k))."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        s = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    else:
        s = q @ x.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def add_class_videos(store: Path, class_videos, tmp_path: Path, n: int = 2) -> int:
    """Build ``n`` more labelled clips into ``store`` (thumbnail, 8 frames); returns new frames."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from encoders.video.synthetic import CONTENT_CLASSES, make_class_video
    from vstore.labels import load_labels
    extra = tmp_path / "extra"
    extra.mkdir()
    labels = {}
    for i in range(n):
        kind = CONTENT_CLASSES[i % len(CONTENT_CLASSES)]
        make_class_video(extra / f"{kind}-x{i}.mp4", kind, n_frames=20, seed=100 + i)
        labels[f"{kind}-x{i}"] = kind
    (tmp_path / "extra.json").write_text(json.dumps(labels))
    before = Store.open(store)
    summary = build_store([extra], store, load_encoder("thumbnail", device="cpu"),
                          labels=load_labels(tmp_path / "extra.json"), config=BuildConfig(frames=8, workers=0),
                          progress=False)
    assert summary.built == n
    with Store.open(store) as after:
        return after.n_frames - before.n_frames


# -- config and kinds ------------------------------------------------------------------------------
def test_config_validation_and_auto_choice():
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="manhattan")
    with pytest.raises(ValueError, match="nprobe"):
        IndexConfig(nprobe=0)
    assert IndexConfig(kind="HNSW").kind == "hnsw"
    cfg = IndexConfig(memory_budget_mb=1 << 20)  # the count rules, whatever this machine's RAM (budget: test_index_auto)
    assert factory_for(cfg, 1000, 512) == "Flat"
    assert factory_for(cfg, 500_000, 512) == "Flat"
    assert factory_for(cfg, 1_000_000, 512) == "IVF4000,Flat"
    assert factory_for(cfg, 9_000_000, 512) == "IVF12000,Flat"
    assert factory_for(cfg, 20_000_000, 512) == "IVF17889_HNSW32,PQ64"
    assert factory_for(IndexConfig(kind="ivf"), 1000, 8) == "IVF25,Flat"  # >= 39 vectors per list
    assert factory_for(IndexConfig(kind="ivf", hnsw_quantizer_min=16), 1000, 8) == "IVF25_HNSW32,Flat"
    assert factory_for(IndexConfig(kind="IVF64,SQ8"), 10, 8) == "IVF64,SQ8"
    assert factory_for(IndexConfig(kind="IVF64,SQ8"), 10, 8, for_videos=True) == "Flat"


KINDS = ["flat", "ivf", "hnsw", "IVF8_HNSW16,Flat"]  # the last: a factory string, HNSW coarse quantizer


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", KINDS)
def test_kinds_and_metrics_match_brute_force(tmp_path, kind, metric):
    path = vector_store(tmp_path / "s", n_videos=24, frames=25)
    r = build_index(path, IndexConfig(kind=kind, metric=metric, ef_construction=80))
    assert r.action == "built" and r.frames == 600 and r.videos == 24
    with Store.open(path) as s:
        x = all_vectors(s)
        q = np.random.default_rng(1).normal(size=(4, DIM)).astype(np.float32)
        want_rows, want_scores = brute_force(x, q, 10, metric)
        # probing every list / a wide beam makes the approximate kinds exact on 600 vectors
        got = search(s, q, 10, nprobe=1000, ef=600)
        for hits, rows, scores in zip(got, want_rows, want_scores):
            assert [h.row for h in hits] == list(rows)
            np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-4)
            ids, fidx, ts = s.frame_refs(rows)
            assert [(h.video_id, h.frame_index, h.timestamp) for h in hits] == list(zip(ids, fidx, ts))
        if metric == "l2":
            assert all(h.score <= g.score for hits in got for h, g in zip(hits, hits[1:]))


def test_default_nprobe_is_approximate_but_good(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=60, frames=50)
    build_index(path, IndexConfig(kind="ivf", nprobe=2))
    with Store.open(path) as s:
        assert read_meta(path).frame_part.factory == "IVF76,Flat"  # min(4 sqrt(3000), 3000 // 39)
        x = all_vectors(s)
        q = x[::97] + 0.01
        want, _ = brute_force(x, q, 10, "cosine")
        got = search(s, q, 10)
        recall = np.mean([len({h.row for h in hs} & set(w)) / 10 for hs, w in zip(got, want)])
        assert 0.3 < recall < 1.0  # 2 of 76 lists: approximate...
        got = search(s, q, 10, nprobe=76)
        assert [[h.row for h in hs] for hs in got] == want.tolist()  # ...and exact with every list


def test_frame_refs_maps_rows_to_video_frame_and_time(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=30, frames=25)  # 3 segments of 250 rows, 64-row chunks
    with Store.open(path) as s:
        want = []
        for v in s.videos.ids:
            fi, ts = s.get_frames(v)
            want += [(v, int(f), float(t)) for f, t in zip(fi, ts)]
        rows = np.random.default_rng(0).permutation(s.n_frames)[:200]
        rows = np.concatenate([rows, [0, 63, 64, 249, 250, 749, 5, 5]])  # chunk/segment edges, repeats
        ids, fidx, ts = s.frame_refs(rows)
        assert list(zip(ids, fidx.tolist(), ts.tolist())) == [want[r] for r in rows]
        assert [len(c) for c in s.frame_refs(np.zeros(0, np.int64))] == [0, 0, 0]
        with pytest.raises(IndexError):
            s.frame_refs([s.n_frames])


def test_stored_embeddings_are_not_modified(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=6, frames=5)
    with Store.open(path) as s:
        before = all_vectors(s)
    build_index(path)
    with Store.open(path) as s:
        np.testing.assert_array_equal(all_vectors(s), before)
        assert not np.allclose(np.linalg.norm(before, axis=1), 1)


def test_bad_factory_string_and_empty_store(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=3, frames=5)
    with pytest.raises(IndexBuildError, match="NoSuchIndex"):
        build_index(path, IndexConfig(kind="NoSuchIndex"))
    with pytest.raises(IndexBuildError):
        build_index(path, IndexConfig(kind="IVF4096,Flat"))  # more lists than vectors
    Store.create(tmp_path / "empty").close()
    with pytest.raises(IndexBuildError, match="no frames"):
        build_index(tmp_path / "empty")


# -- incremental updates and staleness ----------------------------------------------------------
def test_incremental_add_after_a_build(store_copy, class_videos, tmp_path):
    build_index(store_copy)
    old = read_meta(store_copy)
    new_frames = add_class_videos(store_copy, class_videos, tmp_path)
    with Store.open(store_copy) as s:
        q = query_from_frame(s, "red_circle-x0", int(s.get_frames("red_circle-x0")[0][3]))
        with pytest.raises(StaleIndexError, match=rf"covers generation {old.generation} but the store is at "
                                                  rf"generation {s.generation} \({new_frames} frame.*--refresh"):
            search(s, q, 5)
    r = build_index(store_copy)
    assert r.action == "appended" and r.frames_added == new_frames and r.videos_added == 2
    meta = read_meta(store_copy)
    assert meta.frames == old.frames + new_frames and meta.trained_rows == old.trained_rows
    with Store.open(store_copy) as s:
        appended = search(s, q, 8)
        assert appended[0].video_id == "red_circle-x0" and appended[0].score == pytest.approx(1, abs=1e-5)
    build_index(store_copy, rebuild=True)
    with Store.open(store_copy) as s:
        rebuilt = search(s, q, 8)
        means = s.video_means(normalize=True)
        loaded, _ = load_index(s)
        np.testing.assert_allclose(loaded.videos.reconstruct_n(0, s.n_videos), means, atol=1e-6)
    assert [(h.row, h.video_id) for h in appended] == [(h.row, h.video_id) for h in rebuilt]
    assert sorted(p.name for p in index_dir(store_copy).iterdir()) == sorted(
        ["index.json", read_meta(store_copy).frame_part.file, read_meta(store_copy).video_part.file])


def test_search_refresh_updates_then_answers(store_copy, class_videos, tmp_path):
    with Store.open(store_copy) as s:
        q = query_from_frame(s, s.videos.ids[0], int(s.get_frames(s.videos.ids[0])[0][0]))
        with pytest.raises(IndexNotFoundError, match="vstore index"):
            search(s, q, 3)
        assert search(s, q, 3, refresh=True)[0].score == pytest.approx(1, abs=1e-5)
    add_class_videos(store_copy, class_videos, tmp_path, n=1)
    with Store.open(store_copy) as s:
        hits = search(s, q, 200, refresh=True)  # answered by a snapshot that includes the new video
        assert len(hits) == s.n_frames and read_meta(store_copy).generation == s.generation


def test_compact_keeps_ids_valid_without_reindexing(store_copy):
    build_index(store_copy)
    before_meta = read_meta(store_copy)
    with Store.open(store_copy) as s:
        assert len(s.manifest.segments) == 4
        queries = np.stack([query_from_frame(s, v, int(s.get_frames(v)[0][2])) for v in s.videos.ids[::3]])
        before = search(s, queries, 6)
    compact(store_copy)
    with Store.open(store_copy) as s:
        assert len(s.manifest.segments) == 1 and s.generation > before_meta.generation
        after = search(s, queries, 6)  # same rows: answered without --refresh
        assert [[h.to_dict() for h in hs] for hs in after] == [[h.to_dict() for h in hs] for hs in before]
        for hs in after:
            for h in hs:  # the stored vector at (video, frame) is the one the index id points to
                fi, ts = s.get_frames(h.video_id)
                assert ts[list(fi).index(h.frame_index)] == h.timestamp
    r = build_index(store_copy)
    assert r.action == "relabelled" and r.frames_added == 0
    meta = read_meta(store_copy)
    assert meta.generation > before_meta.generation and meta.frame_part == before_meta.frame_part


def _flip_segment_byte(store: Path, position: int) -> str:
    entry = read_manifest(store).segments[position]
    seg = store / entry.file
    with open(seg, "r+b") as f:
        f.seek(seg.stat().st_size // 2)
        b = f.read(1)
        f.seek(seg.stat().st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    return entry.file


def test_verify_repair_shifts_rows_and_forces_a_rebuild(store_copy):
    build_index(store_copy)
    _flip_segment_byte(store_copy, 1)
    report = verify(store_copy, repair=True)
    assert report.repaired and len(report.dropped_videos) == 5
    with Store.open(store_copy) as s:
        last = s.videos.ids[-1]
        q = query_from_frame(s, last, int(s.get_frames(last)[0][4]))
        with pytest.raises(StaleIndexError, match="rows changed"):
            search(s, q, 3)
    r = build_index(store_copy)
    assert r.action == "built" and r.frames == 88
    with Store.open(store_copy) as s:
        hit = search(s, q, 1)[0]
        fi, ts = s.get_frames(last)
        assert (hit.video_id, hit.frame_index, hit.timestamp) == (last, fi[4], ts[4])
        assert hit.row == s.videos.frame_start[s.row(last)] + 4 and hit.score == pytest.approx(1, abs=1e-5)


# -- damage, crashes, locking ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "json"])
def test_damaged_index_is_reported_and_refresh_repairs_it(store_copy, runner, damage):
    build_index(store_copy)
    meta = read_meta(store_copy)
    f = index_dir(store_copy) / meta.frame_part.file
    if damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 3)
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x55
        f.write_bytes(bytes(data))
    elif damage == "delete":
        f.unlink()
    else:
        (index_dir(store_copy) / "index.json").write_text("{not json")
    invalidate_cache()
    vid = "blue_stripes-02"
    r = runner.invoke(main, ["search", str(store_copy), "--video", vid])
    assert r.exit_code == 1
    assert "index is damaged" in r.output and f"vstore index {store_copy} --refresh" in r.output
    with Store.open(store_copy) as s:
        with pytest.raises(IndexDamagedError):
            search(s, query_from_frame(s, vid, 0) if 0 in s.get_frames(vid)[0] else s.get_embeddings(vid)[0], 3)
    r = runner.invoke(main, ["index", str(store_copy), "--refresh"])
    assert r.exit_code == 0, r.output
    assert "built" in r.output
    r = runner.invoke(main, ["search", str(store_copy), "--video", vid, "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["hits"][0]["video_id"] == vid


def test_kill_9_during_index_keeps_the_old_index(store_copy, tmp_path):
    """Fault: SIGKILL while `vstore index --rebuild` has written its new FAISS files but not yet
    index.json. Sees: the old index still loads and answers; the next run removes the leftovers."""
    build_index(store_copy)
    old = read_meta(store_copy)
    marker = tmp_path / "written"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import time, pathlib
        import vstore.index_build as ib
        original = ib._write_part
        calls = []
        def slow_write(*args, **kwargs):
            part = original(*args, **kwargs)
            calls.append(part)
            if len(calls) == 2:
                pathlib.Path({str(marker)!r}).write_text("x")
                time.sleep(60)
            return part
        ib._write_part = slow_write
        ib.build_index({str(store_copy)!r}, rebuild=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "child ended before the kill point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert read_meta(store_copy) == old
    assert len(list(index_dir(store_copy).glob("*.faiss"))) == 4  # the new files are orphans
    invalidate_cache()
    with Store.open(store_copy) as s:
        v = s.videos.ids[5]
        assert search(s, s.get_embeddings(v, dtype=np.float32)[1], 1)[0].video_id == v
    assert build_index(store_copy).action == "unchanged"
    assert sorted(p.name for p in index_dir(store_copy).iterdir()) == sorted(
        ["index.json", old.frame_part.file, old.video_part.file])


def test_index_takes_the_store_write_lock(store_copy):
    with WriteLock(store_copy / ".lock", "test"):
        with pytest.raises(StoreLockedError, match="being written"):
            build_index(store_copy)


# -- CLI --------------------------------------------------------------------------------------------
def test_index_cli(store_copy, runner):
    r = runner.invoke(main, ["index", str(store_copy)])
    assert r.exit_code == 0, r.output
    assert "128 frames [Flat]" in r.output and "16 videos [Flat]" in r.output and "cosine" in r.output
    r = runner.invoke(main, ["index", str(store_copy)])
    assert r.exit_code == 0 and "up to date" in r.output
    r = runner.invoke(main, ["index", str(store_copy), "--kind", "hnsw", "--metric", "l2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "built" and out["factory"] == "HNSW32" and out["metric"] == "l2"
    assert read_meta(store_copy).config.kind == "hnsw"
    r = runner.invoke(main, ["index", str(store_copy), "--nprobe", "8"])  # search setting only: no rebuild
    assert r.exit_code == 0 and "up to date" in r.output and read_meta(store_copy).config.nprobe == 8
    assert read_meta(store_copy).config.metric == "l2"
    r = runner.invoke(main, ["index", str(store_copy), "--kind", "Bogus42"])
    assert r.exit_code == 1 and "Bogus42" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["index", str(store_copy / "nope")])
    assert r.exit_code == 1 and "does not exist" in r.output
    assert (store_copy / INDEX_DIR / "index.json").is_file()
