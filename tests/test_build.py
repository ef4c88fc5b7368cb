"""`vstore build`, `info`, `import-json` end to end, including crashes and bad input."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cli.main import main
from encoders.video.synthetic import make_class_video
from vstore import Store
from vstore.labels import load_labels
from vstore.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def test_build_info_and_resume(class_videos, tmp_path, runner):
    videos, labels = class_videos
    store = tmp_path / "store"
    args = ["build", str(videos), "--store", str(store), "--labels", str(labels), "--frames", "6",
            "--encoder", "thumbnail", "--workers", "1"]
    r = runner.invoke(main, ["-q"] + args)
    assert r.exit_code == 0, r.output
    assert "built 16, skipped 0 (already in store), failed 0" in r.output
    r = runner.invoke(main, ["info", str(store), "--json"])
    info = json.loads(r.output)
    assert info["videos"] == 16 and info["frames"] == 96 and info["dim"] == 256
    assert info["encoder"] == "thumbnail" and info["label_counts"] == {
        "blue_stripes": 4, "green_square": 4, "red_circle": 4, "yellow_cross": 4}
    r = runner.invoke(main, ["info", str(store)])
    assert "videos     16  (16 labelled)" in r.output and "blue_stripes 4" in r.output
    r = runner.invoke(main, ["-q"] + args)
    assert r.exit_code == 0 and "built 0, skipped 16" in r.output
    with Store.open(store) as s:
        v = s.videos
        assert v.total_frames.tolist() == [20] * 16 and np.allclose(v.duration, 20 / 12)
        assert s.videos.has_key_frame.all()
        images, emb = s.key_frames()
        assert images.shape == (16, 64, 64, 3)
        fi, ts = s.get_frames(v.ids[0])
        assert fi.tolist() == [1, 5, 8, 11, 15, 18] and np.allclose(ts, fi / 12)
        assert s.manifest.build["frames"] == 6 and s.manifest.build["encoder"] == "thumbnail"


def test_bad_videos_are_listed_and_the_rest_built(class_videos, tmp_path, runner):
    videos, _ = class_videos
    inputs = tmp_path / "in"
    shutil.copytree(videos, inputs)
    (inputs / "zero.mp4").write_bytes(b"")
    (inputs / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    good = (inputs / "red_circle-00.mp4").read_bytes()
    (inputs / "sub").mkdir()
    (inputs / "sub" / "cut.mp4").write_bytes(good[: len(good) // 3])
    (inputs / "sub" / "red_circle-00.webm").write_bytes(good)  # same id as another file
    store = tmp_path / "store"
    r = runner.invoke(main, ["-q", "build", str(inputs), "--store", str(store), "--encoder", "thumbnail",
                             "--frames", "4"])
    assert r.exit_code == 3, r.output
    assert "built 16" in r.output and "failed 4" in r.output
    with open(store / "failures.csv", newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"zero", "noise", "cut", "red_circle-00"}
    assert "empty file" in rows["zero"]["reason"]
    assert "duplicate video id" in rows["red_circle-00"]["reason"]
    with Store.open(store) as s:
        assert s.n_videos == 16
    r = runner.invoke(main, ["info", str(store)])
    assert "failures   4" in r.output
    for name in ("zero.mp4", "noise.mp4", "sub"):
        p = inputs / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    r = runner.invoke(main, ["-q", "build", str(inputs), "--store", str(store), "--encoder", "thumbnail",
                             "--frames", "4"])  # the store's sampling: other settings are refused
    assert r.exit_code == 0 and not (store / "failures.csv").exists()


def test_build_with_tiny_clip_and_encoder_mismatch(class_videos, tiny_clip_path, tmp_path, runner):
    videos, labels = class_videos
    store = tmp_path / "store"
    vids = sorted(videos.glob("*.mp4"))[:5]
    r = runner.invoke(main, ["-q", "build", *map(str, vids), "--store", str(store), "--encoder",
                             f"clip:{tiny_clip_path}", "--frames", "5", "--batch-size", "7", "--workers", "2"])
    assert r.exit_code == 0, r.output
    with Store.open(store) as s:
        assert s.dim == 64 and s.encoder["spec"] == f"clip:{tiny_clip_path}"
        assert s.key_frames()[0].shape == (5, 32, 32, 3)
    r = runner.invoke(main, ["build", str(videos), "--store", str(store), "--encoder", "thumbnail"])
    assert r.exit_code == 1
    assert "holds vectors of clip:" in r.output and "refusing to add vectors of thumbnail" in r.output


def test_unavailable_weights_are_a_clear_error(tmp_path, runner, class_videos, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # empty ~/.cache/clip: must download, cannot
    r = runner.invoke(main, ["build", str(class_videos[0]), "--store", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert "Error: could not get the CLIP ViT-B/32 weights" in r.output
    assert "--encoder clip:/path/to/ViT-B-32.pt" in r.output and "Traceback" not in r.output


def test_labels_from_the_dataset_csv(tmp_path, runner):
    slice_csv = REPO / "tests" / "data" / "youtube_slice.csv"
    labels = load_labels(slice_csv)
    rows = list(csv.DictReader(open(slice_csv, newline="", encoding="utf-8")))
    some = list({r["link"]: r for r in rows if r["link"] in ("JLZlCZ0", "i9E_Blai8vk")}.values())
    assert len(some) == 2 and "\n" in some[0]["description"]
    videos = tmp_path / "v"
    videos.mkdir()
    for i, r in enumerate(some):
        make_class_video(videos / f"{r['link']}.mp4", "red_circle", n_frames=6, seed=i)
    make_class_video(videos / "kMwMTKh5jfM.mp4", "red_circle", n_frames=6)  # listed as travel and food
    store = tmp_path / "store"
    r = runner.invoke(main, ["-q", "build", str(videos), "--store", str(store), "--labels", str(slice_csv),
                             "--encoder", "thumbnail", "--frames", "3"])
    assert r.exit_code == 0, r.output
    with Store.open(store) as s:
        got = dict(zip(s.videos.ids, s.videos.labels))
    assert got == {"JLZlCZ0": "travel", "i9E_Blai8vk": "travel", "kMwMTKh5jfM": None}
    assert labels.conflicts["kMwMTKh5jfM"] == {"travel", "food"}


def test_import_json(tmp_path, runner):
    src = tmp_path / "old"
    src.mkdir()
    rng = np.random.default_rng(0)
    vectors = {f"vid{i}": rng.normal(size=(4 + i, 16)).round(4) for i in range(5)}
    for vid, v in vectors.items():
        data = v.tolist() if vid != "vid2" else [[row] for row in v.tolist()]  # (T, 1, D) as saved from CLIP
        (src / f"{vid}.json").write_text(json.dumps(data))
    (src / "broken.json").write_text("[[1, 2], [3]]")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"vid0": "food", "vid1": "travel", "vid3": "food"}))
    store = tmp_path / "legacy"
    r = runner.invoke(main, ["-q", "import-json", str(src), "--store", str(store), "--labels", str(config),
                             "--dtype", "float32"])
    assert r.exit_code == 3 and "imported 5" in r.output and "broken.json" in r.output
    with Store.open(store) as s:
        assert s.label_names == ["food", "travel"] and s.encoder["name"] == "imported"
        for vid, v in vectors.items():
            np.testing.assert_allclose(s.get_embeddings(vid), v, rtol=1e-6)
    r = runner.invoke(main, ["-q", "import-json", str(src), "--store", str(tmp_path / "named"),
                             "--encoder", "clip:ViT-B/32"])
    assert r.exit_code == 1 and "16-d vectors, but encoder clip:ViT-B/32 makes 512-d" in r.output


def test_cli_errors_are_one_line(tmp_path, runner):
    r = runner.invoke(main, ["info", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output
    bad = tmp_path / "labels.csv"
    bad.write_text("a,b\n1,2\n")
    (tmp_path / "v").mkdir()
    r = runner.invoke(main, ["build", str(tmp_path / "v"), "--store", str(tmp_path / "s"), "--labels", str(bad)])
    assert r.exit_code == 1 and "needs an id column" in r.output


# -- crash safety -------------------------------------------------------------------------------------

def _build_cmd(videos: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "cli.main", "-q", "build", str(videos), "--store", str(store), "--encoder",
            "thumbnail", "--frames", "6", "--workers", "0", "--segment-videos", "1"]


def _check_store(store: Path, reference: dict[str, np.ndarray]) -> int:
    with Store.open(store) as s:
        ids = s.videos.ids
        assert len(ids) == len(set(ids)), "duplicate ids"
        assert set(ids) <= set(reference)
        for vid in ids:
            np.testing.assert_array_equal(s.get_embeddings(vid), reference[vid])
        return len(ids)


def kill_build_repeatedly(videos: Path, store: Path, reference: dict[str, np.ndarray], kills: int, seed: int) -> None:
    """Kill -9 a build at random commit counts and random delays; after each kill (and while
    it runs) the store must open and hold exactly committed, correct videos. A store that
    fills up is finished by a rerun and the next kills hit a fresh one, so every kill lands
    in a build that still has videos to commit. Builds are forked from one warm process
    (``fork_runner``): a kill costs the build's work, not an interpreter start-up."""
    from fork_runner import ForkRunner
    rng = np.random.default_rng(seed)
    runner = ForkRunner()
    stores, killed_mid_build = [store], 0
    try:
        for _ in range(kills):
            have = _check_store(stores[-1], reference) if (stores[-1] / "manifest.json").exists() else 0
            if have >= len(reference) - 1:  # (nearly) full: the reruns below finish it; kill a fresh one
                stores.append(store.with_name(f"{store.name}-{len(stores)}"))
                have = 0
            # at most all but one video: a kill waiting for the last commit would find the build done
            # on a fast machine (it no longer interrupts anything)
            target = min(have + int(rng.integers(1, 4)), len(reference) - 1)
            pid = runner.start(_build_cmd(videos, stores[-1])[3:])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if (stores[-1] / "manifest.json").exists():
                    n = _check_store(stores[-1], reference)  # a reader during the build sees a commit
                    if n >= target:
                        time.sleep(float(rng.uniform(0, 0.05)))
                        break
                time.sleep(0.005)
            status = runner.kill(pid)
            killed_mid_build += status == -signal.SIGKILL and _check_store(stores[-1], reference) < len(reference)
        for s in stores:
            assert runner.wait(runner.start(_build_cmd(videos, s)[3:])) == 0
            assert _check_store(s, reference) == len(reference)
            assert read_manifest(s).n_videos == len(reference)
    finally:
        runner.close()
    assert killed_mid_build >= kills // 2, f"only {killed_mid_build} of {kills} kills hit a build with videos left"


def test_kill_during_build_keeps_exactly_the_committed_videos(class_videos, thumb_store, tmp_path):
    videos, _ = class_videos
    ref_store = tmp_path / "ref"
    subprocess.run(_build_cmd(videos, ref_store), cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    with Store.open(ref_store) as s:
        reference = {v: s.get_embeddings(v) for v in s.videos.ids}
    kill_build_repeatedly(videos, tmp_path / "store", reference, kills=3, seed=0)  # 30 in test_faults


def test_info_counts_failure_records_not_lines(store_copy, runner):
    import warnings

    from cli.store_cmds import store_summary
    with open(store_copy / "failures.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "path", "reason"], ["bad1", "/v/bad1.mp4", "decoder said:\nline two"],
                                 ["bad2", "/v/bad2.mp4", "no video stream"]])
    r = runner.invoke(main, ["info", str(store_copy), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["failures"] == 2  # 4 physical lines after the header
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # the file is closed, not left to the GC
        with Store.open(store_copy) as s:
            assert store_summary(s)["failures"] == 2
