"""Fault injection: each case states the fault, then what the user sees. Nothing committed
may be lost in any. Run alone with ``python -m pytest -m faults``."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from test_build import _check_store, kill_build_repeatedly

from cli.main import main
from encoders.video.synthetic import index_frame, write_index_video, write_video
from vstore import Store, StoreConfig, StoreCorruptError, StoreWriter, VideoEntry
from vstore.fsutil import WriteLock
from vstore.manifest import read_manifest

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# 1. kill -9 of `vstore build` at >= 30 random moments ------------------------------------------------
def test_1_build_killed_30_times_keeps_exactly_the_committed_videos(class_videos, tmp_path):
    """Fault: SIGKILL at 30 seeded random points of a build. Sees: a store that always opens
    with exactly the committed videos, no duplicates; a rerun completes it."""
    from test_build import _build_cmd
    videos, _ = class_videos
    subprocess.run(_build_cmd(videos, tmp_path / "ref"), cwd=REPO, env=ENV, check=True, capture_output=True)
    with Store.open(tmp_path / "ref") as s:
        reference = {v: s.get_embeddings(v) for v in s.videos.ids}
    kill_build_repeatedly(videos, tmp_path / "store", reference, kills=30, seed=1)


# 2. kill -9 during `vstore compact` (the index case lives with the index tests) ---------------------
def test_2_compact_killed_leaves_a_usable_store(tmp_path):
    """Fault: SIGKILL at random moments of `vstore compact`. Sees: the store opens with all its
    videos, before or after the merge; a rerun of compact finishes it."""
    store = tmp_path / "s"
    rng = np.random.default_rng(0)
    Store.create(store, StoreConfig(segment_videos=4)).close()
    with StoreWriter(store, {"id": "t", "name": "t", "dim": 64}) as w:
        for i in range(200):
            w.add(VideoEntry(id=f"v{i:03d}", embeddings=rng.normal(size=(50, 64)), frame_index=np.arange(50),
                             timestamp=np.arange(50) / 10.0))
    with Store.open(store) as s:
        reference = s.load_padded().embeddings
    delays = np.random.default_rng(2).uniform(0.5, 4.0, size=5)
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "compact", str(store), "--max-frames", "2000"],
                                cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store.open(store) as s:
            assert s.n_videos == 200
            np.testing.assert_array_equal(s.load_padded().embeddings, reference)
    subprocess.run([sys.executable, "-m", "cli.main", "compact", str(store), "--max-frames", "2000"], cwd=REPO,
                   env=ENV, check=True, capture_output=True)
    with Store.open(store) as s:
        assert len(s.segments) == 5
        np.testing.assert_array_equal(s.load_padded().embeddings, reference)
    listed = {Path(e.file).name for e in read_manifest(store).segments}
    StoreWriter(store, {"id": "t", "name": "t", "dim": 64}).close()  # next writer removes leftovers
    assert {p.name for p in (store / "segments").iterdir()} == listed


# 3. damaged segments --------------------------------------------------------------------------------
FUZZ = textwrap.dedent("""
    import shutil, sys, numpy as np
    from pathlib import Path
    from vstore import Store, StoreCorruptError
    src, work, seed, n, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rng = np.random.default_rng(seed)
    with Store.open(src) as s:
        ref = s.load_padded(); ref_img = s.key_frames()[0]
    seg = sorted((src / "segments").glob("*.h5"))[1]
    data = seg.read_bytes()
    counts = {"detected": 0, "same": 0}
    for _ in range(n):
        shutil.rmtree(work, ignore_errors=True); shutil.copytree(src, work)
        b = bytearray(data)
        if mode == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        else:
            off = int(rng.integers(0, len(b))); b[off] ^= 1 << int(rng.integers(0, 8))
        (work / "segments" / seg.name).write_bytes(bytes(b))
        try:
            with Store.open(work) as s:
                p = s.load_padded(); img = s.key_frames()[0]
                same = (np.array_equal(p.embeddings, ref.embeddings) and p.ids == ref.ids
                        and p.labels == ref.labels and np.array_equal(img, ref_img))
                if not same:
                    print("WRONG ANSWER"); sys.exit(1)
                counts["same"] += 1
        except StoreCorruptError as e:
            assert seg.name in str(e), str(e)
            assert "vstore verify" in str(e), str(e)
            counts["detected"] += 1
    print(counts)
""")


@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_3_damaged_segment_is_named_never_wrong_never_a_crash(thumb_store, tmp_path, mode):
    """Fault: a segment truncated at random offsets / with random flipped bits. Sees: the store
    names the bad segment and how to recover, or (bits in unused bytes) answers exactly as
    before; never a segfault (checked in a child process), never a wrong answer."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    r = subprocess.run([sys.executable, str(script), str(thumb_store), str(tmp_path / "work"), "0", "40", mode],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])  # negative = killed by a signal
    counts = eval(r.stdout.strip().splitlines()[-1])
    assert counts["detected"] >= (40 if mode == "truncate" else 20)


def test_3_verify_repair_then_rebuild_restores(class_videos, store_copy, runner):
    """Fault: a flipped byte in frame data. Sees: `vstore verify` names the segment (exit 1);
    `--repair` drops it; the next build re-adds its videos."""
    seg = store_copy / read_manifest(store_copy).segments[0].file
    with h5py.File(seg, "r") as f:
        off = f["frames/embedding"].id.get_chunk_info(0).byte_offset
    with open(seg, "r+b") as f:
        f.seek(off + 3)
        f.write(b"\x99")
    r = runner.invoke(main, ["verify", str(store_copy)])
    assert r.exit_code == 1 and seg.name in r.output and "--repair" in r.output
    r = runner.invoke(main, ["verify", str(store_copy), "--repair"])
    assert r.exit_code == 0 and "dropped 1 segment(s) holding 5 video(s)" in r.output
    videos, labels = class_videos
    r = runner.invoke(main, ["-q", "build", str(videos), "--store", str(store_copy), "--encoder", "thumbnail",
                             "--frames", "8", "--labels", str(labels)])
    assert r.exit_code == 0 and "built 5, skipped 11" in r.output
    assert runner.invoke(main, ["verify", str(store_copy)]).exit_code == 0


# 5. disk full ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path, request):
    """A real tmpfs of ``request.param`` bytes (default 160 KiB); skipped where mount is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    size = getattr(request, "param", "160k")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tiny tmpfs here (needs root); the injected-ENOSPC test covers this")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_5_disk_full_during_a_build(class_videos, tiny_fs, runner):
    """Fault: the store's filesystem fills up mid-build (a real 160 KiB tmpfs). Sees: a
    one-line error saying to free space; the manifest still lists only complete segments;
    no temporary files left; the store opens with what was committed."""
    videos, _ = class_videos
    store = tiny_fs / "store"
    r = runner.invoke(main, ["-q", "build", str(videos), "--store", str(store), "--encoder", "thumbnail",
                             "--frames", "20", "--segment-videos", "1", "--workers", "0"])
    assert r.exit_code == 1, r.output
    assert "free disk space" in r.output and "Traceback" not in r.output
    with Store.open(store) as s:
        assert 0 < s.n_videos < 16
        committed = s.n_videos
    leftovers = [p for p in store.rglob(".tmp-*")]
    assert not leftovers
    assert json.loads((store / "manifest.json").read_text())["segments"]
    assert _check_store.__name__  # same invariants as the kill test
    assert committed == read_manifest(store).n_videos


@pytest.mark.parametrize("tiny_fs", ["1m"], indirect=True)
def test_5_disk_full_during_an_index_write(thumb_store, tiny_fs, runner):
    """Fault: the filesystem fills up while `vstore index --rebuild` writes its FAISS files.
    Sees: a one-line error saying to free space; no temporary files; the previous index still
    loads and answers searches."""
    store = tiny_fs / "store"
    shutil.copytree(thumb_store, store)
    assert runner.invoke(main, ["index", str(store), "-q"]).exit_code == 0
    before = runner.invoke(main, ["search", str(store), "--video", "red_circle-00", "-k", "3", "--json"]).output
    free = shutil.disk_usage(tiny_fs).free
    (tiny_fs / "filler").write_bytes(b"\0" * max(0, free - 8192))
    r = runner.invoke(main, ["index", str(store), "--rebuild", "-q"])
    assert r.exit_code == 1, r.output
    assert "free disk space" in r.output and "Traceback" not in r.output
    assert not [p for p in store.rglob(".tmp-*")]
    (tiny_fs / "filler").unlink()
    after = runner.invoke(main, ["search", str(store), "--video", "red_circle-00", "-k", "3", "--json"])
    assert after.exit_code == 0 and after.output == before


# 6. bad videos corpus -------------------------------------------------------------------------------
def make_bad_corpus(d: Path, good: Path) -> dict[str, str]:
    """Files and what must happen to them: 'built' or a substring of the failure reason."""
    d.mkdir()
    expect = {}
    (d / "zero.mp4").write_bytes(b"")
    expect["zero"] = "empty file"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    expect["random"] = "not a readable video"
    data = good.read_bytes()
    moov = data.find(b"moov")
    (d / "no_moov.mp4").write_bytes(data[:moov - 4] + b"\0" * 8 + data[moov + 4:])
    expect["no_moov"] = "video"
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    expect["truncated"] = "video"
    with av.open(str(d / "audio_only.mp4"), "w") as out:
        s = out.add_stream("aac", rate=8000)
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 8000, i * 1024
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    expect["audio_only"] = "no video stream"
    write_video(d / "single.mp4", [index_frame(7)], options={"preset": "veryfast"})
    expect["single"] = "built"
    pts = np.concatenate([[0], np.cumsum(np.random.default_rng(1).integers(1, 9, 59))])
    write_index_video(d / "vfr.mp4", 60, pts=pts, time_base=Fraction(1, 100), options={"preset": "veryfast"})
    expect["vfr"] = "built"
    write_video(d / "huge.mp4", (np.full((2160, 3840, 3), i * 40, np.uint8) for i in range(3)),
                options={"preset": "ultrafast"})
    expect["huge"] = "built"
    from PIL import Image
    Image.fromarray(index_frame(3, 64, 48)).save(d / "image.png", format="PNG")
    (d / "image.png").rename(d / "image.mp4")
    expect["image"] = "built"
    shutil.copy(good, d / "good.mp4")
    expect["good"] = "built"
    return expect


def test_6_bad_videos_are_built_or_listed(class_videos, tmp_path, runner):
    """Fault: a corpus of broken and odd files. Sees: each built correctly or listed in
    failures.csv with a readable reason; the rest of the batch is built; exit status 3."""
    videos, _ = class_videos
    expect = make_bad_corpus(tmp_path / "bad", sorted(videos.glob("*.mp4"))[0])
    store = tmp_path / "store"
    r = runner.invoke(main, ["-q", "build", str(tmp_path / "bad"), "--store", str(store), "--encoder", "thumbnail",
                             "--frames", "5", "--workers", "2"])
    assert r.exit_code == 3, r.output
    failures = {row["id"]: row["reason"] for row in csv.DictReader(open(store / "failures.csv"))}
    with Store.open(store) as s:
        built = set(s.videos.ids)
        assert s.videos.total_frames[s.row("single")] == 1
    for vid, what in expect.items():
        if what == "built":
            assert vid in built, (vid, failures.get(vid))
        else:
            assert vid in failures and what in failures[vid], (vid, failures.get(vid))
            assert "Traceback" not in failures[vid] and len(failures[vid]) < 400


# 7. two builds at once ------------------------------------------------------------------------------
def test_7_second_concurrent_build_is_refused(class_videos, store_copy, runner):
    """Fault: a second `vstore build` on a store being written. Sees: exit 1, a message naming
    the process that holds the store; the manifest is never corrupt."""
    videos, _ = class_videos
    with WriteLock(store_copy / ".lock", "vstore build (the first one)"):
        r = runner.invoke(main, ["build", str(videos), "--store", str(store_copy), "--encoder", "thumbnail"])
    assert r.exit_code == 1 and f"is being written by pid {os.getpid()}" in r.output
    assert "the first one" in r.output
    with Store.open(store_copy) as s:
        assert s.n_videos == 16
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "-q", "build", str(videos), "--store",
                               str(store_copy.parent / "both"), "--encoder", "thumbnail", "--frames", "3"],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 1]), outs  # both commit safely (one found nothing left) or one is refused
    with Store.open(store_copy.parent / "both") as s:
        assert s.n_videos == 16 and len(set(s.videos.ids)) == 16


# 8. HDF5 pointing outside the store -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["external_link", "external_dataset", "virtual_dataset", "soft_link"])
def test_8_segment_pointing_outside_is_refused(store_copy, tmp_path, kind):
    """Fault: a segment holding an external link / external raw storage / a virtual dataset
    pointing at /etc/passwd or another file. Sees: the store refuses to open, naming it."""
    seg = store_copy / read_manifest(store_copy).segments[0].file
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(10)
    with h5py.File(seg, "r+") as f:
        if kind == "external_link":
            f["videos/extra"] = h5py.ExternalLink(str(other), "/x")
        elif kind == "external_dataset":
            f.create_dataset("frames/passwd", shape=(16,), dtype="u1", external=[("/etc/passwd", 0, 16)])
        elif kind == "virtual_dataset":
            layout = h5py.VirtualLayout(shape=(10,), dtype="i8")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(10,))
            f.create_virtual_dataset("frames/virtual", layout)
        else:
            f["videos/alias"] = h5py.SoftLink("/videos/id")
    m = json.loads((store_copy / "manifest.json").read_text())
    m["segments"][0]["bytes"] = seg.stat().st_size
    (store_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreCorruptError, match=rf"{seg.name}.*(Link|outside)"):
        Store.open(store_copy)


# 9. pickle payload in model.pt: see test_train_cli.test_pickle_payload_in_model_pt_is_refused ------
def test_9_pickle_payload_is_refused(tmp_path, runner):
    """Fault: a run's model.pt replaced by a pickle that would run code. Sees: refused by
    weights_only loading, with a one-line error; the payload never runs."""
    import pickle
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": "linear", "mixup": False, "accuracy": 1, "f1_micro": 1,
                                                  "f1_macro": 1, "label_names": ["a", "b"]}))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (run / "model.pt").write_bytes(pickle.dumps({"format": "vstore-run", "x": Evil()}))
    r = runner.invoke(main, ["predict", str(run), __file__])
    assert r.exit_code == 1 and "refused by weights_only loading" in r.output
    assert not marker.exists()


# 10. bad labels files -------------------------------------------------------------------------------
def test_10_labels_files(class_videos, tmp_path, runner):
    """Fault: labels with unknown columns, missing ids, ids without videos, empty labels.
    Sees: a clear error for unusable files; otherwise a build that labels what it can and
    says how many videos have no label."""
    videos, _ = class_videos
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("video_name,genre\nx,y\n")
    r = runner.invoke(main, ["build", str(videos), "--store", str(tmp_path / "a"), "--labels", str(unknown),
                             "--encoder", "thumbnail"])
    assert r.exit_code == 1 and "needs an id column" in r.output and "unknown.csv" in r.output
    partial = tmp_path / "partial.csv"
    rows = ["id,category,notes", "red_circle-00,red,extra column is ignored", "green_square-01,,empty label",
            "not-a-video,blue,no such file", ",red,missing id"]
    partial.write_text("\n".join(rows) + "\n")
    r = runner.invoke(main, ["build", str(videos), "--store", str(tmp_path / "b"), "--labels", str(partial),
                             "--encoder", "thumbnail", "--frames", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "15 built video(s) have no label" in r.output
    with Store.open(tmp_path / "b") as s:
        assert dict(zip(s.videos.ids, s.videos.labels))["red_circle-00"] == "red" and s.label_names == ["red"]
