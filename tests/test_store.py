"""The store: segments, manifest commits, read API, compaction and damage detection."""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from vstore import (
    IncompatibleEncoderError,
    Store,
    StoreConfig,
    StoreCorruptError,
    StoreLockedError,
    StoreNotFoundError,
    StoreWriteError,
    StoreWriter,
    UnknownVideoError,
    VideoEntry,
    VStoreError,
    compact,
    verify,
)
from vstore.fsutil import WriteLock
from vstore.manifest import read_manifest

ENC = {"id": "test:1", "name": "test", "dim": 8, "spec": None}


def entry(i: int, rng, n: int | None = None, key: bool = True) -> VideoEntry:
    n = n or int(rng.integers(2, 12))
    return VideoEntry(
        id=f"v{i:03d}", embeddings=rng.normal(size=(n, 8)).astype(np.float32), frame_index=np.arange(n) * 7,
        timestamp=np.arange(n) * 0.25, label=("cat", "dog", None)[i % 3], source=f"/videos/v{i:03d}.mp4",
        total_frames=n * 7, duration=n * 0.25, key_frame_index=3, key_frame_time=0.12,
        key_frame_image=np.full((6, 6, 3), i, np.uint8) if key else None,
        key_frame_embedding=np.full(8, i, np.float32) if key else None)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    entries = [entry(i, rng, key=i % 4 != 0) for i in range(23)]
    Store.create(tmp_path / "s", StoreConfig(segment_videos=5, chunk_rows=16, dtype="float32")).close()
    with StoreWriter(tmp_path / "s", ENC) as w:
        for e in entries:
            w.add(e)
    return tmp_path / "s", entries


def test_roundtrip_metadata_and_vectors(store):
    path, entries = store
    with Store.open(path) as s:
        assert s.n_videos == 23 and s.n_frames == sum(e.n_frames for e in entries)
        assert len(s.segments) == 5 and s.label_names == ["cat", "dog"]
        assert s.videos.ids == [e.id for e in entries]
        assert s.videos.labels[:3] == ["cat", "dog", None]
        for e in entries:
            np.testing.assert_array_equal(s.get_embeddings(e.id), e.embeddings)
            fi, ts = s.get_frames(e.id)
            np.testing.assert_array_equal(fi, e.frame_index)
            np.testing.assert_array_equal(ts, e.timestamp)
        assert s.label_indices(["v000", "v001", "v002"]).tolist() == [0, 1, -1]
        with pytest.raises(UnknownVideoError, match="'nope' is not in"):
            s.get_embeddings("nope")


def test_load_padded_matches_per_video_reads(store):
    path, entries = store
    with Store.open(path) as s:
        p = s.load_padded()
        T = max(e.n_frames for e in entries)
        assert p.embeddings.shape == (23, T, 8) and p.ids == [e.id for e in entries]
        for i, e in enumerate(entries):
            np.testing.assert_array_equal(p.embeddings[i, :e.n_frames], e.embeddings)
            assert not p.embeddings[i, e.n_frames:].any()
            assert p.valid[i].sum() == e.n_frames == p.lengths[i]
        subset = ["v020", "v003", "v011", "v012"]  # out of order, across segments
        q = s.load_padded(subset, max_frames=4)
        for i, vid in enumerate(subset):
            e = entries[int(vid[1:])]
            keep = np.floor((np.arange(min(4, e.n_frames)) + 0.5) * e.n_frames / min(4, e.n_frames)).astype(int) \
                if e.n_frames > 4 else np.arange(e.n_frames)
            np.testing.assert_array_equal(q.embeddings[i, :len(keep)], e.embeddings[keep])


def test_fast_path_for_equal_lengths(tmp_path):
    rng = np.random.default_rng(1)
    Store.create(tmp_path / "s", StoreConfig(chunk_rows=8)).close()
    with StoreWriter(tmp_path / "s", ENC) as w:
        for i in range(10):
            w.add(entry(i, rng, n=5))
    with Store.open(tmp_path / "s") as s:
        p = s.load_padded()
        assert p.embeddings.dtype == np.float16 and p.valid.all()
        for i in range(10):
            np.testing.assert_array_equal(p.embeddings[i], s.get_embeddings(f"v{i:03d}"))


def test_iter_blocks_is_chunk_aligned_and_complete(store):
    path, entries = store
    with Store.open(path) as s:
        rows, blocks = [], list(s.iter_blocks(block_rows=20, with_frames=True))
        for b in blocks:
            assert len(b.embeddings) <= 32  # 20 rounded up to whole 16-row chunks
            rows.append(b.video_rows)
        allrows = np.concatenate(rows)
        assert len(allrows) == s.n_frames
        assert (np.bincount(allrows) == [e.n_frames for e in entries]).all()
        means = s.video_means()
        for i, e in enumerate(entries):
            np.testing.assert_allclose(means[i], e.embeddings.mean(0), rtol=1e-5, atol=1e-6)
        vids, fidx, ts = s.frame_refs([0, s.n_frames - 1])
        assert vids == ["v000", "v022"] and fidx[1] == entries[-1].frame_index[-1]


def test_key_frames(store):
    path, entries = store
    with Store.open(path) as s:
        images, emb = s.key_frames(["v005", "v000", "v013"])
        assert images.shape == (3, 6, 6, 3)
        assert images[0, 0, 0, 0] == 5 and images[2, 0, 0, 0] == 13
        assert not images[1].any()  # v000 has no key frame
        assert s.videos.has_key_frame[:5].tolist() == [False, True, True, True, False]


def test_compact_keeps_order_and_rows(store):
    path, entries = store
    before = Store.open(path)
    padded = before.load_padded().embeddings
    before.close()
    r = compact(path)
    assert (r.segments_before, r.segments_after) == (5, 1)
    with Store.open(path) as s:
        assert s.videos.ids == [e.id for e in entries]
        np.testing.assert_array_equal(s.load_padded().embeddings, padded)
        assert len(list((path / "segments").glob("*.h5"))) == 1
        assert s.key_frames(["v005"])[0][0, 0, 0, 0] == 5


def test_duplicate_and_mismatched_vectors_are_refused(store):
    path, _ = store
    rng = np.random.default_rng(5)
    with pytest.raises(VStoreError, match="already in"):
        with StoreWriter(path, ENC) as w:
            w.add(entry(3, rng))
    with pytest.raises(IncompatibleEncoderError, match="holds vectors of test"):
        StoreWriter(path, {"id": "other", "name": "other", "dim": 8})
    with pytest.raises(IncompatibleEncoderError, match="16-d"):
        StoreWriter(path, {"id": "test:1", "name": "test", "dim": 16})


def test_one_writer_at_a_time(store):
    path, _ = store
    with StoreWriter(path, ENC):
        with pytest.raises(StoreLockedError, match="is being written by pid"):
            StoreWriter(path, ENC)
    StoreWriter(path, ENC).close()  # released


def test_readers_see_the_last_commit(store):
    path, entries = store
    reader = Store.open(path)
    rng = np.random.default_rng(9)
    with StoreWriter(path, ENC) as w:
        w.add(entry(100, rng))
        w.commit()
        w.add(entry(101, rng))  # buffered, not committed yet
        assert Store.open(path).n_videos == 24
    assert reader.n_videos == 23  # a snapshot
    assert reader.reopen().n_videos == 25


def test_missing_store_and_manifest(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        Store.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError, match="not a vstore store"):
        Store.open(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{broken")
    with pytest.raises(StoreCorruptError, match="not valid JSON"):
        Store.open(tmp_path / "empty")


def test_truncated_segment_is_named(store):
    path, _ = store
    seg = path / read_manifest(path).segments[2].file
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size // 2)
    with pytest.raises(StoreCorruptError, match=rf"{seg.name}.*vstore verify .* --repair"):
        Store.open(path)


def test_flipped_bytes_in_vectors_are_detected_not_returned(store):
    path, entries = store
    seg_entry = read_manifest(path).segments[1]
    seg = path / seg_entry.file
    with h5py.File(seg, "r") as f:
        offset = f["frames/embedding"].id.get_chunk_info(0).byte_offset
    with open(seg, "r+b") as f:
        f.seek(offset + 10)
        b = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([b[0] ^ 0xFF]))
    with Store.open(path) as s:  # metadata intact: opens, but the damaged chunk cannot be read
        with pytest.raises(StoreCorruptError, match=seg.name):
            s.get_embeddings("v005")
        np.testing.assert_array_equal(s.get_embeddings("v000"), entries[0].embeddings)
    report = verify(path)
    assert not report.ok and seg_entry.file in report.bad
    report = verify(path, repair=True)
    assert report.repaired and set(report.dropped_videos) == {f"v{i:03d}" for i in range(5, 10)}
    with Store.open(path) as s:
        assert s.n_videos == 18 and "v005" not in s.videos
    assert (path / "quarantine" / seg.name).exists()
    assert verify(path).ok


def test_external_links_are_refused(store, tmp_path):
    path, _ = store
    seg = path / read_manifest(path).segments[0].file
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["x"] = np.zeros(3)
    with h5py.File(seg, "r+") as f:
        f["videos/evil"] = h5py.ExternalLink(str(outside), "/x")
    m = json.loads((path / "manifest.json").read_text())
    m["segments"][0]["bytes"] = seg.stat().st_size  # even with a matching size
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreCorruptError, match="ExternalLink"):
        Store.open(path)


def test_leftovers_of_a_crashed_commit_are_cleaned(store):
    path, _ = store
    (path / "segments" / ".tmp-abc.h5").write_bytes(b"partial")
    orphan = path / "segments" / "99999999-deadbeef.h5"
    shutil.copy(path / read_manifest(path).segments[0].file, orphan)
    with Store.open(path) as s:
        assert s.n_videos == 23  # orphans are not part of the store
    StoreWriter(path, ENC).close()
    assert not orphan.exists() and not (path / "segments" / ".tmp-abc.h5").exists()


def test_disk_full_during_commit_leaves_manifest_and_no_temp(store, monkeypatch):
    path, _ = store
    before = (path / "manifest.json").read_bytes()
    import errno

    import vstore.segment as segment

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StoreWriteError, match="No space left on device.*videos committed so far are intact"):
        with StoreWriter(path, ENC) as w:
            w.add(entry(200, np.random.default_rng(0)))
            monkeypatch.setattr(segment.os, "fsync", full)
            w.commit()
    monkeypatch.undo()
    StoreWriter(path, ENC).close()  # the lock was released
    assert (path / "manifest.json").read_bytes() == before
    assert not [p for p in (path / "segments").iterdir() if p.name.startswith(".tmp-")]


def test_store_config_validation():
    with pytest.raises(ValueError, match="dtype"):
        StoreConfig(dtype="int8")
    with pytest.raises(ValueError, match="segment_videos"):
        StoreConfig(segment_videos=0)


def test_lock_file_names_the_holder(tmp_path):
    lock = WriteLock(tmp_path / ".lock", "vstore build x").acquire()
    assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
    lock.release()


def test_one_rule_for_evenly_spaced_rows_and_frame_owners(thumb_store):
    from encoders.video.sampling import target_indices
    from vstore.records import evenly_spaced
    assert target_indices is evenly_spaced  # the build's frame choice and the max_frames cap are one rule
    assert evenly_spaced(10, None).tolist() == list(range(10)) and evenly_spaced(10, 4).tolist() == [1, 3, 6, 8]
    with Store.open(thumb_store) as s:
        t = s.videos
        rows = np.array([0, 7, 8, s.n_frames - 1])
        assert t.video_rows_of(rows).tolist() == [0, 0, 1, len(t) - 1]  # 8 frames a video
        ids, _, _ = s.frame_refs(rows)
        assert ids == [t.ids[0], t.ids[0], t.ids[1], t.ids[-1]]


@pytest.mark.parametrize("block_rows", [1, 16, 40, None])
def test_iter_video_means_yields_every_video_once_whole(store, block_rows):
    """Videos cut by block boundaries (chunks of 16 rows, videos of 2..11 frames) come out whole."""
    path, entries = store
    with Store.open(path) as s:
        rows, means = zip(*s.iter_video_means(block_rows=block_rows))
        rows = np.concatenate(rows)
        assert rows.tolist() == list(range(len(entries)))
        for i, m in enumerate(np.concatenate(means)):
            np.testing.assert_allclose(m, entries[i].embeddings.mean(0), rtol=1e-5, atol=1e-6)
        unit = np.concatenate([m for _, m in s.iter_video_means(block_rows=block_rows, normalize=True)])
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
        np.testing.assert_array_equal(s.video_means(normalize=True), unit)
