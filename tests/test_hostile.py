"""Hostile use (issue 13): each case reproduces one failure found by hostile use, then asserts
what the user sees now: a one-line error or correct behaviour, no traceback, nothing touched
outside the store. Run alone with ``python -m pytest -m hostile`` (with tests/test_fuzz.py)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from vstore import Store, StoreConfig, StoreWriter, VideoEntry
from vstore.fsutil import inside
from vstore.manifest import read_manifest

pytestmark = pytest.mark.hostile

ENC = {"id": "test:8", "name": "test", "dim": 8, "spec": None}


def entries(n: int, seed: int = 0, label=lambda i: ("cat", "dog")[i % 2]) -> list[VideoEntry]:
    rng = np.random.default_rng(seed)
    return [VideoEntry(id=f"v{i:02d}", embeddings=rng.normal(size=(4, 8)).astype(np.float32), frame_index=np.arange(4),
                       timestamp=np.arange(4) / 4, label=label(i), source=f"/videos/v{i:02d}.mp4") for i in range(n)]


def make_store(path: Path, n: int = 6, segment_videos: int = 2) -> Path:
    Store.create(path, StoreConfig(segment_videos=segment_videos, chunk_rows=4)).close()
    with StoreWriter(path, ENC) as w:
        for e in entries(n):
            w.add(e)
    return path


@pytest.fixture
def small_store(tmp_path) -> Path:
    """6 videos of 4 frames in 3 segments (8-d float16), built without decoding anything."""
    return make_store(tmp_path / "store")


def one_line_error(r, code: int = 1) -> str:
    """The CLI failed cleanly: exit ``code``, exactly one ``Error:`` line, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == (1 if code == 1 else len(errors)), r.output
    return r.output


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def videos_of(store: Path) -> dict[str, np.ndarray]:
    with Store.open(store) as s:
        return {v: s.get_embeddings(v) for v in s.videos.ids}


# 1. path traversal through the manifest, index.json and run directories ----------------------------
def test_inside_refuses_every_way_out(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.h5").write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "d" / "up")
    assert inside(tmp_path / "d", "ok.h5") == tmp_path / "d" / "ok.h5"
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "up/x", "~/x", "a\0b", 5):
        with pytest.raises(Exception, match="outside|refused"):
            inside(tmp_path / "d", bad)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_1_verify_repair_never_moves_a_file_outside_the_store(small_store, tmp_path, runner, where):
    """Was: a segment entry `../x` or `/abs/x` made `verify --repair` move that file into
    quarantine/. Now: the entry is refused and dropped, the outside file stays where it is."""
    victim = tmp_path / "precious.h5"
    victim.write_bytes(b"user data")
    m = json.loads((small_store / "manifest.json").read_text())
    first = m["segments"][0]
    if where == "symlink":
        (small_store / first["file"]).unlink()
        os.symlink(victim, small_store / first["file"])
    else:
        first["file"] = "../precious.h5" if where == "parent" else str(victim)
        (small_store / "manifest.json").write_text(json.dumps(m))
    out = one_line_error(runner.invoke(main, ["info", str(small_store)]))
    assert "outside" in out and "verify" in out
    r = runner.invoke(main, ["verify", str(small_store)])
    one_line_error(r)
    r = runner.invoke(main, ["verify", str(small_store), "--repair"])
    assert r.exit_code == 0 and "dropped 1 segment(s)" in r.output, r.output
    assert victim.read_bytes() == b"user data"
    assert not (small_store / "quarantine" / "precious.h5").exists()
    assert runner.invoke(main, ["verify", str(small_store)]).exit_code == 0
    with Store.open(small_store) as s:
        assert s.n_videos == 4


def test_1_compact_never_deletes_a_file_outside_the_store(small_store, tmp_path, runner):
    victim = tmp_path / "precious.h5"
    shutil.copy(small_store / read_manifest(small_store).segments[0].file, victim)
    m = json.loads((small_store / "manifest.json").read_text())
    m["segments"][0]["file"] = "segments/../../precious.h5"
    (small_store / "manifest.json").write_text(json.dumps(m))
    out = one_line_error(runner.invoke(main, ["compact", str(small_store)]))
    assert "outside" in out
    assert victim.exists()


def test_1_index_part_outside_the_index_folder_is_refused(small_store, tmp_path, runner):
    assert runner.invoke(main, ["index", str(small_store), "--kind", "flat"]).exit_code == 0
    meta_path = small_store / "index" / "index.json"
    meta = json.loads(meta_path.read_text())
    part = next(v for v in meta.values() if isinstance(v, dict) and "file" in v)
    shutil.copy(small_store / "index" / part["file"], tmp_path / "outside.faiss")
    part["file"] = "../../outside.faiss"
    meta_path.write_text(json.dumps(meta))
    r = runner.invoke(main, ["search", str(small_store), "--video", "v00", "-k", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "outside" in r.output, r.output


# 9. environment errors -----------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs (1 MiB) at tmp_path/mnt; ``remount(ro=True)`` makes it read-only. Skipped
    where mount is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def remount(ro: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(mnt)], check=True, capture_output=True)
    yield mnt, remount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_9_read_only_store(small_store, tmpfs, runner, tiny_video_dir):
    """Was: EROFS on .lock as a traceback from index, compact, verify --repair and build."""
    mnt, remount = tmpfs
    store = mnt / "store"
    shutil.copytree(small_store, store)
    (store / ".lock").unlink(missing_ok=True)
    remount(True)
    before = snapshot(store)
    for args in (["index", str(store)], ["compact", str(store)], ["verify", str(store), "--repair"],
                 ["build", str(tiny_video_dir), "--store", str(store), "--encoder", "thumbnail", "--workers", "0"],
                 ["split", str(store)]):
        out = one_line_error(runner.invoke(main, args))
        assert "read-only" in out and str(store) in out, (args, out)
    assert runner.invoke(main, ["verify", str(store)]).exit_code == 0  # reading needs no lock
    assert snapshot(store) == before


def test_9_disk_full_while_taking_the_lock(small_store, tmpfs, runner):
    mnt, _ = tmpfs
    store = mnt / "store"
    shutil.copytree(small_store, store)
    (store / ".lock").unlink(missing_ok=True)
    fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
    for size in (1 << 16, 1 << 12, 1):  # fill the filesystem to the last byte
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
    os.close(fd)
    out = one_line_error(runner.invoke(main, ["compact", str(store)]))
    assert "disk is full" in out and "free disk space" in out


def test_9_missing_paths_and_store_under_a_file(tmp_path, runner, tiny_video_dir):
    for cmd in (["compact"], ["verify"], ["verify", "--repair"], ["index"], ["info"]):
        out = one_line_error(runner.invoke(main, cmd[:1] + [str(tmp_path / "nope")] + cmd[1:]))
        assert "does not exist" in out
    assert not (tmp_path / "nope").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    out = one_line_error(runner.invoke(main, ["compact", str(plain)]))
    assert "not a vstore store" in out
    assert list(plain.iterdir()) == []  # compact on a non-store leaves nothing behind
    (tmp_path / "file").write_text("x")
    r = runner.invoke(main, ["-q", "build", str(tiny_video_dir), "--store", str(tmp_path / "file" / "store"),
                             "--encoder", "thumbnail", "--workers", "0"])
    out = one_line_error(r)
    assert "is a file" in out


# 13c. orphan segment of a killed compaction -------------------------------------------------------
def test_13_orphan_segment_removed_by_compact_and_verify_repair(small_store, runner):
    orphan = small_store / "segments" / "00000099-deadbeef.h5"
    shutil.copy(small_store / read_manifest(small_store).segments[0].file, orphan)
    r = runner.invoke(main, ["verify", str(small_store)])
    assert r.exit_code == 0 and "1 unlisted segment file" in r.output and orphan.exists()
    r = runner.invoke(main, ["verify", str(small_store), "--repair"])
    assert r.exit_code == 0 and "removed 1 unlisted" in r.output and not orphan.exists()
    shutil.copy(small_store / read_manifest(small_store).segments[0].file, orphan)
    assert runner.invoke(main, ["compact", str(small_store)]).exit_code == 0
    assert not orphan.exists()
    assert len(videos_of(small_store)) == 6


@pytest.fixture(scope="module")
def tiny_video_dir(tmp_path_factory) -> Path:
    from encoders.video.synthetic import make_class_video
    d = tmp_path_factory.mktemp("tiny_videos")
    make_class_video(d / "a.mp4", "blue_stripes", n_frames=6, seed=0)
    return d


__all__ = ["csv", "zlib"]
