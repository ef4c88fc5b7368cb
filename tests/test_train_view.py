"""The memory-mapped training view (vstore.train_view) when it is damaged, when several
--max-frames are used, and `vstore train --memmap`. A damaged view is rebuilt from the store
(never used), and what opening cannot see is caught by verify_train_view."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from classifiers.synthetic import write_sequence_store
from cli.main import main
from vstore import Store
from vstore.errors import StoreCorruptError
from vstore.train_view import VIEW_DIR, open_train_view, verify_train_view


@pytest.fixture
def seq_store(tmp_path):
    """40 labelled videos of 6 frames x 8-d (random), with a stored split."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 8)).astype(np.float32)
    return write_sequence_store(tmp_path / "store", x, np.arange(40) % 2, ["a", "b"], test_size=0.25)


def _same_as_store(store: Store, view) -> None:
    padded = store.load_padded(list(store.videos.ids), dtype=np.float16)
    np.testing.assert_array_equal(np.asarray(view.frames), padded.embeddings)
    np.testing.assert_array_equal(np.asarray(view.valid).astype(bool), padded.valid)
    verify_train_view(view)


def _bump_mtime(path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.mark.parametrize("damage", ["view.json garbage", "view.json of other videos", "frames truncated",
                                    "valid too long", "frames rewritten", "view.json missing"])
def test_a_damaged_view_is_rebuilt(seq_store, damage, caplog):
    with Store.open(seq_store) as s:
        view = open_train_view(s)
        path = view.path
        del view
        meta = json.loads((path / "view.json").read_text())
        if damage == "view.json garbage":
            (path / "view.json").write_text('{"shape": [40, 6')
        elif damage == "view.json of other videos":
            (path / "view.json").write_text(json.dumps({**meta, "ids_sha256": "0" * 64}))
        elif damage == "frames truncated":
            os.truncate(path / "frames.f16", 40 * 6 * 8 * 2 - 16)
        elif damage == "valid too long":
            with open(path / "valid.u8", "ab") as f:
                f.write(b"\x01")
        elif damage == "frames rewritten":  # same size, other bytes: the checksum tells
            with open(path / "frames.f16", "r+b") as f:
                f.seek(1000)
                f.write(b"\x00\x7c" * 8)  # float16 inf
            _bump_mtime(path / "frames.f16")
        else:
            (path / "view.json").unlink()
        with caplog.at_level(logging.WARNING, logger="vstore.train_view"):
            again = open_train_view(s)
        assert again.path == path
        assert "rebuilding it" in caplog.text
        _same_as_store(s, again)


def test_a_touched_but_intact_view_is_checked_once_and_kept(seq_store, caplog):
    """A file whose modification time changed has its checksum recomputed; if the content is
    the one written, the view is kept (not rewritten) and its new time recorded, so the next
    open does not hash again."""
    with Store.open(seq_store) as s:
        path = open_train_view(s).path
        inode = (path / "frames.f16").stat().st_ino
        _bump_mtime(path / "frames.f16")
        with caplog.at_level(logging.INFO, logger="vstore.train_view"):
            view = open_train_view(s)
        assert "frames.f16 checked against the view's checksums" in caplog.text and "rebuilding" not in caplog.text
        assert (path / "frames.f16").stat().st_ino == inode  # the same file: not rewritten
        recorded = json.loads((path / "view.json").read_text())["files"]["frames.f16"]["mtime_ns"]
        assert recorded == (path / "frames.f16").stat().st_mtime_ns
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vstore.train_view"):
            open_train_view(s)
        assert "checked against" not in caplog.text
        _same_as_store(s, view)


def test_bit_rot_that_keeps_size_and_time_is_caught_by_verify(seq_store):
    """The documented limit: opening checks sizes and modification times, not every byte
    (that would cost a full read per open); verify_train_view recomputes the checksums."""
    with Store.open(seq_store) as s:
        path = open_train_view(s).path
        st = (path / "frames.f16").stat()
        with open(path / "frames.f16", "r+b") as f:
            f.seek(10)
            f.write(b"\xff")
        os.utime(path / "frames.f16", ns=(st.st_atime_ns, st.st_mtime_ns))
        view = open_train_view(s)
        with pytest.raises(StoreCorruptError, match="does not match its checksum"):
            verify_train_view(view)


def test_views_of_other_max_frames_are_kept_until_the_generation_changes(seq_store):
    with Store.open(seq_store) as s:
        full, capped = open_train_view(s), open_train_view(s, max_frames=3)
        assert full.frames.shape == (40, 6, 8) and capped.frames.shape == (40, 3, 8)
        assert open_train_view(s).path == full.path and full.path.is_dir() and capped.path.is_dir()
        gen = s.generation
    write_sequence_store(seq_store, np.ones((1, 6, 8), np.float32), np.array([0]), ["a", "b"], test_size=0,
                         ids=["new"])
    with Store.open(seq_store) as s:
        assert s.generation != gen
        fresh = open_train_view(s, max_frames=3)
        views = sorted(p.name for p in (seq_store / VIEW_DIR).iterdir())
        assert views == [fresh.path.name] and fresh.frames.shape == (41, 3, 8)


@pytest.mark.parametrize("choice, expect_view, memmap", [("on", True, True), ("off", False, False),
                                                          ("auto", False, None)])
def test_train_memmap_option(seq_store, runner, tmp_path, choice, expect_view, memmap):
    """--memmap on trains from the view (written by this run), off never writes one, auto
    (the default, TrainConfig.memmap = None) only above the memory budget: not this store."""
    out = tmp_path / "run"
    r = runner.invoke(main, ["train", str(seq_store), "--model", "transformer", "--epochs", "1",
                             "--memmap", choice, "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    views = list((seq_store / VIEW_DIR).glob("g*")) if (seq_store / VIEW_DIR).is_dir() else []
    assert bool(views) == expect_view
    assert json.loads((out / "metrics.json").read_text())["config"]["memmap"] is memmap
