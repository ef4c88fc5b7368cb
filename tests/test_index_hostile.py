"""Hostile use of the index (issue 13 items 2, 5, 7): a stale index that looked fresh, crafted
index files, unbounded -k / --ef / --nprobe. Each case reproduces the original failure and
asserts a one-line error (exit 1) or the correct answer (exit 0), never a traceback or hang."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import faiss
import numpy as np
import pytest
from test_index import _flip_segment_byte, vector_store

from cli.main import main
from vstore import Store, compact, verify
from vstore.errors import IndexDamagedError, QueryError, StaleIndexError
from vstore.index import META_NAME, IndexConfig, index_dir, read_meta
from vstore.index_build import build_index
from vstore.index_load import invalidate_cache
from vstore.search import query_from_frame, search
from vstore.segment import file_sha256

pytestmark = pytest.mark.hostile


def _one_line_error(r, code: int = 1) -> str:
    """The CLI result failed with ``code`` and said why in one line, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


def _self_hits(s: Store, n: int = 16) -> int:
    """How many of ``n`` stored-frame queries (spread over the store) find their own row first."""
    ids = s.videos.ids
    good = 0
    for j in range(n):
        vid = ids[(j * 7) % len(ids)]
        fi = s.get_frames(vid)[0]
        hit = search(s, query_from_frame(s, vid, int(fi[j % len(fi)])), 1)[0]
        good += hit.row == s.videos.frame_start[s.row(vid)] + j % len(fi)
    return good


# -- item 2: freshness follows the stored vectors --------------------------------------------------
def test_same_ids_rebuilt_from_other_content_is_not_up_to_date(tmp_path, runner):
    """verify --repair drops the last segment; the same ids come back with other vectors. The
    (id, n_frames) fingerprint is unchanged: the index used to be "up to date" and search
    answered from the dropped vectors."""
    path = vector_store(tmp_path / "s", n_videos=40, frames=10)
    build_index(path)
    _flip_segment_byte(path, 3)
    assert len(verify(path, repair=True).dropped_videos) == 10
    vector_store(path, n_videos=10, frames=10, seed=7, first=30)  # v030..v039 again, other content
    with Store.open(path) as s:
        q = query_from_frame(s, "v035", 6)
        with pytest.raises(StaleIndexError, match="stored vectors differ"):
            search(s, q, 1)
    r = runner.invoke(main, ["search", str(path), "--video", "v035", "--frame", "6"])
    assert "stored vectors differ" in _one_line_error(r) and "--refresh" in r.output
    r = runner.invoke(main, ["index", str(path)])
    assert r.exit_code == 0 and "built (the stored vectors differ" in r.output, r.output
    with Store.open(path) as s:
        assert _self_hits(s) == 16


def test_a_store_recreated_to_the_same_generation_is_not_fresh(tmp_path):
    """A store deleted and rebuilt in place reaches the index's generation again with other
    vectors: equal generations used to mean "fresh" without a look at the rows."""
    path = vector_store(tmp_path / "s", n_videos=20, frames=10)
    build_index(path)
    kept = tmp_path / "index-kept"
    shutil.move(index_dir(path), kept)
    shutil.rmtree(path)
    vector_store(path, n_videos=20, frames=10, seed=3)
    shutil.move(kept, index_dir(path))
    with Store.open(path) as s:
        assert s.generation == read_meta(path).generation
        with pytest.raises(StaleIndexError, match="does not match the store.*stored vectors differ"):
            search(s, s.get_embeddings("v004", dtype=np.float32)[0], 1)
    assert build_index(path).action == "built"
    with Store.open(path) as s:
        assert _self_hits(s) == 16


def test_compaction_across_the_indexed_prefix_still_appends(tmp_path):
    """Content sums survive a compaction that merges indexed and new rows into one segment
    (the one chunk straddling the indexed prefix is read)."""
    path = vector_store(tmp_path / "s", n_videos=23, frames=9)  # 207 rows: ends inside a 64-row chunk
    build_index(path)
    vector_store(path, n_videos=5, frames=9, first=23)
    compact(path)
    with Store.open(path) as s:
        assert len(s.manifest.segments) == 1
    r = build_index(path)
    assert r.action == "appended" and r.frames_added == 45
    with Store.open(path) as s:
        assert _self_hits(s) == 16


# -- item 5: crafted index files -------------------------------------------------------------------
def _rewrite_part(path: Path, which: str, **fields) -> None:
    meta_path = index_dir(path) / META_NAME
    d = json.loads(meta_path.read_text())
    d[which].update(fields)
    meta_path.write_text(json.dumps(d))


def _install(path: Path, which: str, index: faiss.Index) -> None:
    """Write ``index`` as the store's ``which`` part with a matching index.json entry."""
    f = index_dir(path) / "frames-crafted0000.faiss"
    faiss.write_index(index, str(f))
    _rewrite_part(path, which, file=f.name, bytes=f.stat().st_size, sha256=file_sha256(f))


def _craft(kind: str, path: Path, tmp_path: Path) -> None:
    meta = read_meta(path)
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # SHA-256 of b""
    x = np.random.default_rng(0).normal(size=(meta.frames, 32)).astype(np.float32)
    if kind == "dev-zero":  # used to hang: /dev/zero is 0 bytes long, its SHA-256 never ends
        _rewrite_part(path, "frame_part", file="/dev/zero", bytes=0, sha256=empty)
    elif kind == "dev-zero-relative":
        _rewrite_part(path, "frame_part", file="../../../../../../../../dev/zero", bytes=0, sha256=empty)
    elif kind == "symlink":
        (index_dir(path) / "frames-link00000000.faiss").symlink_to("/dev/zero")
        _rewrite_part(path, "frame_part", file="frames-link00000000.faiss", bytes=0, sha256=empty)
    elif kind == "fifo":
        os.mkfifo(index_dir(path) / "frames-fifo00000000.faiss")
        _rewrite_part(path, "frame_part", file="frames-fifo00000000.faiss", bytes=0, sha256=empty)
    elif kind == "ids-out-of-range":  # used to raise IndexError from frame_refs
        ivf = faiss.index_factory(32, "IVF2,Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.train(x)
        ivf.add_with_ids(x, np.arange(meta.frames, dtype=np.int64) + 10**9)
        _install(path, "frame_part", ivf)
    elif kind == "dimension":  # a 16-d index for a 32-d store: an assertion inside faiss' search
        flat = faiss.IndexFlatIP(16)
        flat.add(x[:, :16])
        _install(path, "frame_part", flat)
    elif kind == "inflated-count":  # the header claims 2**40 vectors: bad_alloc
        flat = faiss.IndexFlatIP(32)
        flat.add(x)
        data = bytearray(faiss.serialize_index(flat).tobytes())
        data[8:16] = struct.pack("<q", 1 << 40)
        data[37:45] = struct.pack("<Q", (1 << 40) * 32)
        crafted = index_dir(path) / "frames-inflated0000.faiss"
        crafted.write_bytes(bytes(data))
        _rewrite_part(path, "frame_part", file=crafted.name, bytes=len(data), sha256=file_sha256(crafted))
    elif kind == "inflated-bytes":
        _rewrite_part(path, "frame_part", bytes=1 << 50)
    elif kind == "json-types":
        _rewrite_part(path, "frame_part", rows="12", bytes=True)
    elif kind == "json-nested":
        (index_dir(path) / META_NAME).write_text("[" * 100_000 + "]" * 100_000)
    else:
        raise AssertionError(kind)


CRAFTED = ["dev-zero", "dev-zero-relative", "symlink", "fifo", "ids-out-of-range", "dimension", "inflated-count",
           "inflated-bytes", "json-types", "json-nested"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_index_files_give_one_line_errors(tmp_path, runner, kind):
    path = vector_store(tmp_path / "s", n_videos=12, frames=10)
    build_index(path)
    outside = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    _craft(kind, path, tmp_path)
    invalidate_cache()
    r = runner.invoke(main, ["search", str(path), "--video", "v003", "--frame", "6", "-k", "3"])
    assert "index is damaged" in _one_line_error(r) and f"vstore index {path} --refresh" in r.output
    with Store.open(path) as s:
        with pytest.raises(IndexDamagedError):
            search(s, query_from_frame(s, "v003", 6), 3)
    r = runner.invoke(main, ["index", str(path)])  # repairs: rebuilt, the crafted entries removed
    assert r.exit_code == 0 and "built" in r.output, r.output
    assert sorted(p.name for p in index_dir(path).iterdir()) == sorted(
        [META_NAME, read_meta(path).frame_part.file, read_meta(path).video_part.file])
    r = runner.invoke(main, ["search", str(path), "--video", "v003", "--frame", "6", "-k", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["hits"][0]["video_id"] == "v003", r.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()} == outside
    assert Path("/dev/zero").exists()


# -- item 7: unbounded -k / --ef / --nprobe --------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_huge_k_returns_every_row_instead_of_allocating(tmp_path, runner, kind):
    """`search -k 1000000000` on a 120-frame store: killed at 22.7 GB before; now every row."""
    path = vector_store(tmp_path / "s", n_videos=12, frames=10)
    build_index(path, IndexConfig(kind=kind))
    r = runner.invoke(main, ["search", str(path), "--video", "v003", "-k", "1000000000", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["hits"]) == 120
    for args, n in ((["--per-video"], 12), (["--level", "video"], 12), (["--label", "cat"], 40)):
        r = runner.invoke(main, ["search", str(path), "--video", "v003", "-k", str(10**12), "--json", *args])
        assert r.exit_code == 0 and len(json.loads(r.stdout)["hits"]) == n, (args, r.output)
    with Store.open(path) as s:
        hits = search(s, np.stack([s.get_embeddings("v001", dtype=np.float32)[0]] * 3), 10**15)
        assert [len(h) for h in hits] == [120, 120, 120]


@pytest.mark.parametrize("args, message", [
    (["-k", "0"], "k must be >= 1"),
    (["-k", "-5"], "k must be >= 1"),
    (["--ef", "0"], "ef must be in 1..1048576"),
    (["--ef", "1000000000"], "ef must be in 1..1048576"),
    (["--nprobe", "-1"], "nprobe must be in 1..1048576"),
    (["--nprobe", str(10**18)], "nprobe must be in 1..1048576"),
])
def test_search_limits_are_checked(tmp_path, runner, args, message):
    path = vector_store(tmp_path / "s", n_videos=6, frames=5)
    build_index(path)
    r = runner.invoke(main, ["search", str(path), "--video", "v001", *args])
    assert message in _one_line_error(r)
    with Store.open(path) as s:
        with pytest.raises(QueryError, match=message.split(" must")[0]):
            search(s, s.get_embeddings("v001", dtype=np.float32)[0], k=int(args[1]) if args[0] == "-k" else 3,
                   **({"ef": int(args[1])} if args[0] == "--ef" else {"nprobe": int(args[1])} if args[0] == "--nprobe"
                      else {}))


@pytest.mark.parametrize("option", ["--nprobe", "--ef"])
def test_index_beam_defaults_are_checked(tmp_path, runner, option):
    path = vector_store(tmp_path / "s", n_videos=6, frames=5)
    r = runner.invoke(main, ["index", str(path), option, "2000000"])
    assert "must be <= 1048576" in _one_line_error(r)
    assert not index_dir(path).exists() or read_meta(path) is None
