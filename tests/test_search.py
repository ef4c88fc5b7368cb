"""Search: query kinds, filters before ranking, per-video collapse, video level, errors, the
`vstore search` CLI (table, --json, --sheet) and image/text queries with a tiny real CLIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_index import all_vectors, brute_force, vector_store

import vstore.search as vsearch
from cli.main import main
from encoders.errors import TextUnsupportedError
from vstore import Store, UnknownVideoError
from vstore.errors import QueryError
from vstore.index import IndexConfig
from vstore.index_build import build_index
from vstore.search import Hit, query_from_frame, query_from_npy, query_from_video, search
from vstore.split import SplitConfig, make_split, save_split


@pytest.fixture
def vstore_ivf(tmp_path):
    """60 videos x 25 frames (3 labels), IVF index."""
    path = vector_store(tmp_path / "s", n_videos=60, frames=25)
    build_index(path, IndexConfig(kind="ivf"))
    return path


@pytest.fixture(scope="module")
def clip_store(class_videos, tiny_clip_path, tmp_path_factory):
    """The class videos embedded by a tiny real CLIP (4 frames each), indexed."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore.labels import load_labels
    videos, labels = class_videos
    path = tmp_path_factory.mktemp("clip") / "store"
    build_store([videos], path, load_encoder(f"clip:{tiny_clip_path}", device="cpu"), labels=load_labels(labels),
                config=BuildConfig(frames=4, workers=0), progress=False)
    build_index(path)
    return path


def test_stored_frame_query_finds_itself(store_copy):
    build_index(store_copy)
    with Store.open(store_copy) as s:
        vid = s.videos.ids[7]
        fi, ts = s.get_frames(vid)
        hits = search(s, query_from_frame(s, vid, int(fi[5])), 4)
        assert isinstance(hits[0], Hit) and len(hits) == 4 and [h.rank for h in hits] == [1, 2, 3, 4]
        top = hits[0]
        assert (top.video_id, top.frame_index, top.timestamp) == (vid, fi[5], ts[5])
        assert top.score == pytest.approx(1, abs=1e-5) and top.label == s.videos.labels[s.row(vid)]
        assert top.row == s.videos.frame_start[s.row(vid)] + 5


@pytest.mark.parametrize("exact_max", [0, vsearch.EXACT_MAX_ROWS])  # IDSelector path / exact-over-rows path
def test_filters_apply_before_ranking(vstore_ivf, monkeypatch, exact_max):
    monkeypatch.setattr(vsearch, "EXACT_MAX_ROWS", exact_max)
    with Store.open(vstore_ivf) as s:
        x = all_vectors(s)
        labels = np.repeat([s.videos.labels[v] for v in range(s.n_videos)], s.videos.n_frames)
        q = query_from_frame(s, "v000", 0)  # a "cat" frame
        hits = search(s, q, 15, label="dog", nprobe=1000)  # the nearest 15 frames overall are cats
        assert len(hits) == 15 and all(h.label == "dog" for h in hits)
        rows = np.flatnonzero(labels == "dog")
        want, _ = brute_force(x[rows], q[None], 15, "cosine")
        assert [h.row for h in hits] == list(rows[want[0]])
        two = search(s, q, 30, label=["dog", "fish"], exclude_videos=["v001", "v002"], nprobe=1000)
        assert len(two) == 30 and {h.label for h in two} <= {"dog", "fish"}
        assert not {"v001", "v002"} & {h.video_id for h in two}
        assert search(s, q, 5, exclude_videos="v000")[0].video_id != "v000"


def test_wrapper_factory_strings_filter_by_exact_search(tmp_path, monkeypatch):
    """A PCA-wrapped index takes no IDSelector: filtered queries are answered exactly."""
    path = vector_store(tmp_path / "s", n_videos=30, frames=10)
    build_index(path, IndexConfig(kind="PCA16,IVF4,Flat"))
    monkeypatch.setattr(vsearch, "EXACT_MAX_ROWS", 0)
    with Store.open(path) as s:
        x = all_vectors(s)
        q = query_from_frame(s, "v000", 3)
        assert len(search(s, q, 5, nprobe=4)) == 5  # unfiltered: the index (nprobe via ParameterSpace)
        hits = search(s, q, 5, label="fish")
        rows = np.flatnonzero(np.repeat([s.videos.labels[v] == "fish" for v in range(s.n_videos)], 10))
        want, _ = brute_force(x[rows], q[None], 5, "cosine")
        assert [h.row for h in hits] == list(rows[want[0]])


def test_split_filter(vstore_ivf):
    with Store.open(vstore_ivf) as s:
        split = make_split(s, SplitConfig(test_size=0.2))
        save_split(vstore_ivf, split)
        test_ids = set(split.ids("test"))
        hits = search(s, query_from_video(s, "v004"), 12, split="test")
        assert len(hits) == 12 and {h.video_id for h in hits} <= test_ids
        assert search(s, query_from_video(s, "v004"), 12, split="test", label="cat", per_video=True)


def test_per_video_collapse_keeps_each_videos_best_frame(vstore_ivf, monkeypatch):
    with Store.open(vstore_ivf) as s:
        x = all_vectors(s)
        q = query_from_frame(s, "v010", 3)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = xn @ (q / np.linalg.norm(q))
        vrow = np.repeat(np.arange(s.n_videos), s.videos.n_frames)
        best = {}
        for r in np.argsort(-sims, kind="stable"):
            best.setdefault(int(vrow[r]), int(r))
        want = list(best.values())[:8]
        for exact_max in (0, 10**9):  # through the index (growing k) and by exact search over rows
            monkeypatch.setattr(vsearch, "EXACT_MAX_ROWS", exact_max)
            hits = search(s, q, 8, per_video=True, nprobe=1000, label=["cat", "dog", "fish"])
            assert [h.row for h in hits] == want
            assert len({h.video_id for h in hits}) == 8
        hits = search(s, q, 8, per_video=True, nprobe=1000)
        assert [h.row for h in hits] == want


def test_video_level_search(vstore_ivf):
    with Store.open(vstore_ivf) as s:
        hits = search(s, query_from_video(s, "v020"), 5, level="video")
        assert hits[0].video_id == "v020" and hits[0].score == pytest.approx(1, abs=1e-5)
        assert hits[0].frame_index is None and hits[0].row == s.row("v020")
        means = s.video_means(normalize=True)
        order = np.argsort(-(means @ means[s.row("v020")]), kind="stable")[:5]
        assert [h.row for h in hits] == list(order)
        only = search(s, query_from_video(s, "v020"), 4, level="video", label="fish")
        assert len(only) == 4 and all(h.label == "fish" for h in only)


def test_npy_and_batch_queries(vstore_ivf, tmp_path):
    with Store.open(vstore_ivf) as s:
        batch = np.stack([query_from_video(s, "v001"), query_from_video(s, "v002")])
        np.save(tmp_path / "q.npy", batch)
        q = query_from_npy(s, tmp_path / "q.npy")
        both = search(s, q, 3)
        assert len(both) == 2 and [len(h) for h in both] == [3, 3]
        assert [h.row for h in both[1]] == [h.row for h in search(s, batch[1], 3)]
        np.save(tmp_path / "bad.npy", np.zeros(7))
        with pytest.raises(QueryError, match=r"\(32,\)"):
            query_from_npy(s, tmp_path / "bad.npy")
        (tmp_path / "junk.npy").write_text("nope")
        with pytest.raises(QueryError, match="cannot read"):
            query_from_npy(s, tmp_path / "junk.npy")


def test_query_errors(vstore_ivf):
    with Store.open(vstore_ivf) as s:
        with pytest.raises(QueryError, match="no sampled frame 4; nearest sampled frames: .*3.*6"):
            query_from_frame(s, "v000", 4)
        with pytest.raises(UnknownVideoError, match="nope"):
            query_from_video(s, "nope")
        q = query_from_video(s, "v000")
        with pytest.raises(QueryError, match="unknown label.*bird"):
            search(s, q, 3, label="bird")
        with pytest.raises(QueryError, match="all zeros"):
            search(s, np.zeros(32), 3)
        with pytest.raises(QueryError, match="NaN"):
            search(s, np.full(32, np.nan), 3)
        with pytest.raises(QueryError, match="k must be"):
            search(s, q, 0)
        assert len(search(s, q, 10_000)) == s.n_frames  # k larger than the store: everything


# -- CLI ------------------------------------------------------------------------------------------
def test_search_cli_table_json_and_sheet(store_copy, runner, tmp_path):
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04"])
    assert r.exit_code == 1 and "no search index yet" in r.output and "vstore index" in r.output
    assert runner.invoke(main, ["index", str(store_copy)]).exit_code == 0
    with Store.open(store_copy) as s:
        frame = int(s.get_frames("red_circle-04")[0][2])
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04", "--frame", str(frame), "-k", "5"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["rank", "video", "frame", "time", "score", "label"] and len(lines) == 6
    assert lines[1].split()[:3] == ["1", "red_circle-04", str(frame)] and lines[1].split()[-1] == "red_circle"
    sheet = tmp_path / "out" / "hits.png"
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04", "-k", "6", "--per-video",
                             "--label", "green_square", "--json", "--sheet", str(sheet)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["hits"]) == 4 and {h["label"] for h in out["hits"]} == {"green_square"}  # 4 such videos
    assert len({h["video_id"] for h in out["hits"]}) == 4 and out["query"] == "video red_circle-04 (mean)"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(sheet) as im:
        assert im.width > 4 * 160 and im.height > 160
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04", "--text", "x"])
    assert r.exit_code == 2 and "exactly one query" in r.output
    r = runner.invoke(main, ["search", str(store_copy), "--frame", "3"])
    assert r.exit_code == 2
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04", "--label", "nope"])
    assert r.exit_code == 1 and "unknown label" in r.output


def test_contact_sheet_falls_back_to_key_frames(store_copy, tmp_path):
    from encoders.video.sheet import contact_sheet, hit_images
    build_index(store_copy)
    with Store.open(store_copy) as s:
        hits = search(s, query_from_video(s, "blue_stripes-02"), 3)
        images = hit_images(s, hits, 64)
        assert [src for _, src in images] == ["video"] * 3 and images[0][0].shape == (64, 64, 3)
        for i in range(len(s.videos)):
            s.videos.sources[i] = str(tmp_path / "moved.mp4")  # the source videos are gone
        images = hit_images(s, hits, 64)
        assert [src for _, src in images] == ["key frame"] * 3 and images[0][0].std() > 0
        assert contact_sheet(s, hits, tmp_path / "k.png", title="t").stat().st_size > 1000
        assert contact_sheet(s, [], tmp_path / "none.png").is_file()


def test_stale_index_cli_message_and_refresh(store_copy, class_videos, runner, tmp_path):
    from test_index import add_class_videos
    assert runner.invoke(main, ["index", str(store_copy)]).exit_code == 0
    add_class_videos(store_copy, class_videos, tmp_path, n=1)
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-04"])
    assert r.exit_code == 1
    assert "covers generation" in r.output and "rerun with --refresh" in r.output
    r = runner.invoke(main, ["search", str(store_copy), "--video", "red_circle-x0", "--refresh", "-k", "2",
                             "--level", "video"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].split()[1] == "red_circle-x0"


# -- encoder queries --------------------------------------------------------------------------------
def test_text_search_is_refused_on_a_thumbnail_store(store_copy, runner):
    from encoders.queries import query_from_text
    build_index(store_copy)
    with Store.open(store_copy) as s:
        with pytest.raises(TextUnsupportedError, match="no text encoder"):
            query_from_text(s, "a red circle")
    r = runner.invoke(main, ["search", str(store_copy), "--text", "a red circle"])
    assert r.exit_code == 1 and "no text encoder" in r.output and "CLIP" in r.output


def test_text_and_image_queries_with_tiny_clip(clip_store, runner, tmp_path):
    from PIL import Image

    from encoders.queries import query_from_image, query_from_text, store_encoder
    from encoders.video.sampling import decode_frames
    with Store.open(clip_store) as s:
        enc = store_encoder(s, "cpu")
        t = query_from_text(s, "a video about red circle", enc)
        assert t.shape == (64,)
        np.testing.assert_allclose(t, enc.encode_text(["a video about red circle"])[0], rtol=1e-5)
        hits = search(s, t, 7, label="red_circle")
        assert len(hits) == 7 and all(h.label == "red_circle" for h in hits)
        vid = s.videos.ids[3]
        frame = int(s.get_frames(vid)[0][1])
        img = decode_frames(s.videos.sources[s.row(vid)], [frame])[frame]
        Image.fromarray(img).save(tmp_path / "q.png")
        q = query_from_image(s, tmp_path / "q.png", enc)
        top = search(s, q, 1)[0]
        assert top.score > 0.9 and top.label == s.videos.labels[s.row(vid)]
        with pytest.raises(QueryError, match="cannot be read"):
            query_from_image(s, tmp_path / "q.npy" if (tmp_path / "q.npy").write_text("x") else None, enc)
        with pytest.raises(QueryError, match="does not exist"):
            query_from_image(s, tmp_path / "missing.png", enc)
    r = runner.invoke(main, ["search", str(clip_store), "--text", "a plate of pasta", "-k", "3", "--device", "cpu",
                             "--sheet", str(tmp_path / "t.png")])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 4 and (tmp_path / "t.png").is_file()
    r = runner.invoke(main, ["search", str(clip_store), "--image", str(tmp_path / "q.png"), "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["hits"][0]["label"] == s.videos.labels[s.row(vid)]
