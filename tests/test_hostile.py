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
    for bad in ("../x", "/etc/passwd", "a/../../x", "", ".", "./", "up/x", "~/x", "a\0b", 5, "x" * 300):
        with pytest.raises(Exception, match="outside|refused"):
            inside(tmp_path / "d", bad)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "folder"])
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
    elif where == "folder":  # was: `verify --repair` moved the whole segments/ folder into quarantine/
        first["file"] = "segments"
        (small_store / "manifest.json").write_text(json.dumps(m))
    else:
        first["file"] = "../precious.h5" if where == "parent" else str(victim)
        (small_store / "manifest.json").write_text(json.dumps(m))
    out = one_line_error(runner.invoke(main, ["info", str(small_store)]))
    assert ("outside" in out or where == "folder") and "verify" in out
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
    older = small_store / "segments" / "00000001-cafebabe.h5"  # not from a later commit: not ours to delete
    shutil.copy(orphan, older)
    assert runner.invoke(main, ["compact", str(small_store)]).exit_code == 0
    assert not orphan.exists() and older.exists()
    assert len(videos_of(small_store)) == 6


@pytest.fixture(scope="module")
def thumb_one(tiny_video_dir, tmp_path_factory) -> Path:
    """A store of the one tiny video (thumbnail encoder), indexed."""
    from click.testing import CliRunner
    store = tmp_path_factory.mktemp("thumb_one") / "store"
    for args in (["-q", "build", str(tiny_video_dir), "--store", str(store), "--encoder", "thumbnail", "--workers", "0",
                  "--frames", "2"], ["index", str(store), "--kind", "flat"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    return store


@pytest.fixture(scope="module")
def tiny_video_dir(tmp_path_factory) -> Path:
    from encoders.video.synthetic import make_class_video
    d = tmp_path_factory.mktemp("tiny_videos")
    make_class_video(d / "a.mp4", "blue_stripes", n_frames=6, seed=0)
    return d



# 3. a killed train must not leave a mixed run -------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory) -> Path:
    """16 labelled videos (labels that start like spreadsheet formulas), split 12/4."""
    from click.testing import CliRunner
    path = tmp_path_factory.mktemp("labelled") / "store"
    Store.create(path, StoreConfig(chunk_rows=8)).close()
    with StoreWriter(path, ENC) as w:
        for e in entries(16, label=lambda i: ("=HYPERLINK(1)", "+cat", "-dog", "@cmd")[i % 4]):
            w.add(e)
    assert CliRunner().invoke(main, ["split", str(path), "--test-size", "0.25"]).exit_code == 0
    return path


def train(runner, store: Path, out: Path, *extra: str):
    r = runner.invoke(main, ["train", str(store), "--model", "linear", "--epochs", "1", "--out", str(out), "-q",
                             *extra])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def trained_run(labelled_store, tmp_path_factory) -> Path:
    """A linear run on ``labelled_store`` (read-only: copy it before changing it)."""
    from click.testing import CliRunner
    run = tmp_path_factory.mktemp("trained") / "run"
    train(CliRunner(), labelled_store, run)
    return run


def test_3_a_run_is_whole_or_refused(labelled_store, trained_run, tmp_path, runner, monkeypatch):
    """Was: killed while saving into an existing --out, the run held the new metrics.json beside
    the old model.pt; predict used one, report the other. Now: the run directory is swapped in
    whole, and a run whose files disagree is refused by predict and report."""
    a, old = tmp_path / "a", tmp_path / "old"
    shutil.copytree(trained_run, a)
    shutil.copytree(trained_run, old)
    train(runner, labelled_store, a, "--lr", "0.2")  # a normal save replaces the run whole
    assert json.loads((a / "metrics.json").read_text())["config"]["lr"] == 0.2
    assert json.loads((a / "metrics.json").read_text())["run"]["id"] != \
        json.loads((old / "metrics.json").read_text())["run"]["id"]
    mixed = tmp_path / "mixed"
    shutil.copytree(old, mixed)
    shutil.copy(a / "metrics.json", mixed / "metrics.json")  # what the killed train left
    for args in (["report", str(mixed)], ["predict", str(mixed), __file__]):
        out = one_line_error(runner.invoke(main, args))
        assert "not the one this run wrote" in out, out
    # a save killed half way (here: while drawing a plot) leaves the earlier run as it was
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    import classifiers.runs as runs

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs, "plot_confusion", killed)
    r = runner.invoke(main, ["train", str(labelled_store), "--model", "linear", "--epochs", "1", "--out", str(a), "-q"])
    assert r.exit_code == 130
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert runner.invoke(main, ["report", str(a), str(old)]).exit_code == 0
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    out = one_line_error(runner.invoke(main, ["train", str(labelled_store), "--model", "linear", "--epochs", "1",
                                              "--out", str(keep), "-q"]))
    assert "not a vstore run" in out and (keep / "notes.txt").read_text() == "mine"


def test_3_symlinked_run_file_leading_out_is_refused(trained_run, tmp_path, runner):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (tmp_path / "elsewhere.pt").write_bytes((run / "model.pt").read_bytes())
    (run / "model.pt").unlink()
    os.symlink(tmp_path / "elsewhere.pt", run / "model.pt")
    out = one_line_error(runner.invoke(main, ["predict", str(run), __file__]))
    assert "outside" in out


# 4. CSV formula injection ---------------------------------------------------------------------------
def test_4_predictions_csv_neutralises_formulas_and_reads_back(trained_run):
    from vstore.csvsafe import plain_row
    run = trained_run
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    cells = [c for row in rows[1:] for c in row[1:3]] + rows[0]
    assert cells and not [c for c in cells if c[:1] in "=+-@"]
    assert {plain_row(r)[1] for r in rows[1:]} <= {"=HYPERLINK(1)", "+cat", "-dog", "@cmd"}
    assert "p_=HYPERLINK(1)" in plain_row(rows[0])


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "'=1", "'", "''", "'plain",
                                   "plain", "", "-", "=", "caf\xe9"])
def test_4_safe_cell_round_trip(value):
    from vstore.csvsafe import plain_cell, safe_cell
    cell = safe_cell(value)
    assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")
    assert plain_cell(cell) == value


def test_4_numbers_stay_numbers():
    """A number is never a formula: negative scores and offsets stay numeric for pandas and
    spreadsheets; a string that looks like one is still neutralised."""
    import numpy as np

    from vstore.csvsafe import plain_cell, safe_cell
    assert [safe_cell(v) for v in (-0.5, -3, np.float32(-1.5), np.int64(-2))] == ["-0.5", "-3", "-1.5", "-2"]
    assert safe_cell("-0.5") == "'-0.5" and plain_cell(safe_cell("-0.5")) == "-0.5"
    assert safe_cell(True) == "True" and plain_cell("-0.5") == "-0.5"


def test_4_failures_and_downloaded_csv(tmp_path, runner):
    from encoders.build.failures import Failure, FailureLog
    from encoders.download.ledger import DownloadedLog, DownloadedRow
    from vstore.labels import load_labels
    log = FailureLog(tmp_path)
    log.add(Failure("=cmd|' /C calc'!A0", "/v/=cmd.mp4", "-bad"))
    log.finish(set(), set())
    text = (tmp_path / "failures.csv").read_text()
    assert "\n=" not in text and ",=" not in text and ",-" not in text
    assert FailureLog(tmp_path).old["=cmd|' /C calc'!A0"].reason == "-bad"
    out = tmp_path / "dl"
    out.mkdir()
    (out / "-abcdefghij.mp4").write_bytes(b"x")
    d = DownloadedLog(out)
    d.add(DownloadedRow("-abcdefghij", "=SUM(1)", "-abcdefghij.mp4", 1.0, "@title"))
    d.rewrite()
    text = (out / "downloaded.csv").read_text()
    assert "\n-" not in text and ",=" not in text and ",@" not in text and ",-" not in text
    again = DownloadedLog(out).rows["-abcdefghij"]
    assert (again.category, again.title) == ("=SUM(1)", "@title")
    assert load_labels(out / "downloaded.csv").mapping == {"-abcdefghij": "=SUM(1)"}


# 6. non-UTF-8 file names ----------------------------------------------------------------------------
def test_6_a_latin1_file_name_is_built_and_recorded(tmp_path, runner, tiny_video_dir):
    """Was: one video named with a Latin-1 byte made failures.csv raise UnicodeEncodeError;
    the build committed nothing, every rerun did the same."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(tiny_video_dir / "a.mp4", Path(os.fsdecode(bytes(videos) + b"/caf\xe9.mp4")))
    Path(os.fsdecode(bytes(videos) + b"/bad\xff.mp4")).write_bytes(b"not a video")
    shutil.copy(tiny_video_dir / "a.mp4", videos / "plain.mp4")
    store = tmp_path / "store"
    args = ["-q", "build", str(videos), "--store", str(store), "--encoder", "thumbnail", "--frames", "2",
            "--workers", "0"]
    r = runner.invoke(main, args)
    assert r.exit_code == 3 and "built 2" in r.output and "failed 1" in r.output, r.output
    text = (store / "failures.csv").read_text(encoding="utf-8")
    assert "bad\\xff.mp4" in text
    with Store.open(store) as s:
        assert sorted(s.videos.ids) == ["caf\\xe9", "plain"]
    r = runner.invoke(main, args)
    assert r.exit_code == 3 and "skipped 2" in r.output, r.output
    assert runner.invoke(main, ["info", str(store)]).exit_code == 0


# 8. import-json values float16 cannot hold ---------------------------------------------------------
def test_8_import_refuses_what_float16_cannot_hold(tmp_path, runner):
    src = tmp_path / "json"
    src.mkdir()
    good = [[0.1] * 8, [0.2] * 8]
    (src / "good.json").write_text(json.dumps(good))
    (src / "big.json").write_text(json.dumps([[0.1] * 8, [0.1] * 7 + [1e5]]))
    (src / "tiny.json").write_text(json.dumps([[1e-9] + [0.1] * 7]))
    (src / "bool.json").write_text(json.dumps([[0.1] * 8, [True] + [0.1] * 7]))
    (src / "text.json").write_text(json.dumps([["0.5"] * 8]))
    (src / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # 10. nested brackets: this file only
    r = runner.invoke(main, ["-q", "import-json", str(src), "--store", str(tmp_path / "s16")])
    assert r.exit_code == 3 and "imported 1" in r.output and "failed 5" in r.output, r.output
    assert "Traceback" not in r.output
    assert "big.json: row 1, value 7 is 100000, which float16 cannot hold" in r.output
    assert "tiny.json: row 0, value 0 is 1e-09" in r.output
    assert "bool.json: row 1 holds True (bool)" in r.output and "text.json: row 0 holds '0.5' (str)" in r.output
    assert "deep.json: JSON nested too deeply" in r.output
    r = runner.invoke(main, ["-q", "import-json", str(src), "--store", str(tmp_path / "s32"), "--dtype", "float32"])
    assert r.exit_code == 3 and "imported 3" in r.output, r.output
    with Store.open(tmp_path / "s32") as s:
        assert s.get_embeddings("big")[1, 7] == 1e5 and s.get_embeddings("tiny")[0, 0] == np.float32(1e-9)


# 10. hostile inputs ---------------------------------------------------------------------------------
def test_10_deeply_nested_labels_json(small_store, tmp_path, runner, tiny_video_dir):
    labels = tmp_path / "labels.json"
    labels.write_text("{\"labels\": " + "[" * 200_000 + "]" * 200_000 + "}")
    out = one_line_error(runner.invoke(main, ["build", str(tiny_video_dir), "--store", str(tmp_path / "s"),
                                              "--labels", str(labels), "--encoder", "thumbnail"]))
    assert "nested too deeply" in out


def _png_bomb(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height pixels, with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [8_000, 12_000, 60_000])  # 64 Mpx, 144 Mpx (PIL only warns), 3.6 Gpx
def test_10_decompression_bomb_png_as_image_query(thumb_one, tmp_path, runner, side):
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb, side, side)
    out = one_line_error(runner.invoke(main, ["search", str(thumb_one), "--image", str(bomb)]))
    assert "bomb" in out or "pixels" in out


def test_10_failures_csv_with_invalid_utf8(thumb_one, tmp_path, runner, tiny_video_dir):
    """Was: a failures.csv with invalid UTF-8 crashed build and info."""
    store = tmp_path / "store"
    shutil.copytree(thumb_one, store)
    (store / "failures.csv").write_bytes(b"id,path,reason\nx\xff\xfe,/nowhere/x.mp4,\xc3(\n\0\0\n=1,\"\n")
    r = runner.invoke(main, ["info", str(store)])
    assert r.exit_code == 0 and "failures" in r.output, r.output
    r = runner.invoke(main, ["-q", "build", str(tiny_video_dir), "--store", str(store), "--encoder", "thumbnail",
                             "--workers", "0", "--frames", "2"])
    assert r.exit_code == 0 and "skipped 1" in r.output, r.output
    (store / "failures.csv").read_text(encoding="utf-8")  # rewritten (or removed) as valid UTF-8


# 11. a failed end-of-build compaction --------------------------------------------------------------
def test_11_failed_compaction_after_a_build_is_a_success(tmp_path, runner, tiny_video_dir, monkeypatch):
    import encoders.build.pipeline as pipeline
    from vstore import StoreWriteError

    def disk_full(path, *a, **k):
        raise StoreWriteError(f"compaction of {path} failed (No space left on device); the store is unchanged")
    monkeypatch.setattr(pipeline, "compact", disk_full)
    store = tmp_path / "s"
    r = runner.invoke(main, ["-q", "build", str(tiny_video_dir), "--store", str(store), "--encoder", "thumbnail",
                             "--workers", "0", "--frames", "2"])
    assert r.exit_code == 0 and "built 1" in r.output and "the build succeeded (1 video(s) committed)" in r.output
    assert "vstore compact" in r.output
    assert len(videos_of(store)) == 1


# 12. string widths and control characters ----------------------------------------------------------
def test_12_labels_with_control_characters_or_huge_are_skipped(tmp_path, runner, tiny_video_dir):
    from vstore.labels import load_labels
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a": "x" * 1_000_000, "b": "cat\0", "c": "li\nne", "d\te": "dog", "f": "ok"}))
    got = load_labels(labels)
    assert got.mapping == {"f": "ok"} and len(got.skipped_rows) == 4
    labels.write_text(json.dumps({"a": "x" * 1_000_000}))
    out = one_line_error(runner.invoke(main, ["build", str(tiny_video_dir), "--store", str(tmp_path / "s"),
                                              "--labels", str(labels), "--encoder", "thumbnail"]))
    assert "no usable" in out


def test_12_writer_refuses_control_characters_and_long_values(tmp_path):
    from vstore import VStoreError
    Store.create(tmp_path / "s").close()
    e = entries(1)[0]
    with StoreWriter(tmp_path / "s", ENC) as w:
        for bad in ({"id": "v\0"}, {"id": "a\nb"}, {"label": "x\0"}, {"label": "y" * 5000}, {"id": "z" * 300},
                    {"id": "\udce9"}):
            with pytest.raises(VStoreError, match="not stored"):
                w.add(VideoEntry(**{**e.__dict__, **bad}))
    assert Store.open(tmp_path / "s").n_videos == 0


# 13. smaller ----------------------------------------------------------------------------------------
def test_13_rebuild_with_other_labels_warns(tmp_path, runner, tiny_video_dir):
    store = tmp_path / "s"
    args = ["-q", "build", str(tiny_video_dir), "--store", str(store), "--encoder", "thumbnail", "--workers", "0",
            "--frames", "2", "--labels"]
    (tmp_path / "l1.json").write_text(json.dumps({"a": "cats"}))
    (tmp_path / "l2.json").write_text(json.dumps({"a": "dogs"}))
    assert runner.invoke(main, args + [str(tmp_path / "l1.json")]).exit_code == 0
    r = runner.invoke(main, args + [str(tmp_path / "l2.json")])
    assert r.exit_code == 0 and "1 video(s) already in" in r.output and "kept their stored label" in r.output


def test_13_symlinked_folder_among_inputs_is_followed(tmp_path, runner, tiny_video_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(tiny_video_dir, inputs / "linked")
    os.symlink(inputs, inputs / "linked-loop")  # a loop ends
    r = runner.invoke(main, ["-q", "build", str(inputs), "--store", str(tmp_path / "s"), "--encoder", "thumbnail",
                             "--workers", "0", "--frames", "2"])
    assert r.exit_code == 0 and "built 1" in r.output, r.output


def test_13_report_suffixes_every_same_named_run(trained_run, tmp_path, runner):
    for name in ("x", "y", "z"):
        shutil.copytree(trained_run, tmp_path / name)
    r = runner.invoke(main, ["report", *(str(tmp_path / n) for n in ("x", "y", "z"))])
    assert r.exit_code == 0
    header = r.output.splitlines()[0]
    assert "linear [x]" in header and "linear [y]" in header and "linear [z]" in header, header


def test_13_refused_pickle_message_does_not_advise_unsafe_loading(tmp_path, runner):
    import pickle
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": "linear", "mixup": False, "accuracy": 1, "f1_micro": 1,
                                                  "f1_macro": 1, "label_names": ["a", "b"]}))
    (run / "model.pt").write_bytes(pickle.dumps({"format": "vstore-run", "x": os.system}))
    out = one_line_error(runner.invoke(main, ["predict", str(run), __file__]))
    assert "refused" in out and "weights_only=False" not in out and "two options" not in out and "trust" not in out


# 14. a safe torch minimum ---------------------------------------------------------------------------
def test_14_torch_minimum_loads_weights_only_by_default():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    pins = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip().startswith("torch>")]
    assert pins == ["torch>=2.6"]
