"""vstore dedup: near-duplicate pairs in a store built from real videos (trimmed, re-encoded with
other codecs and bitrates, resized, pillarboxed and letterboxed copies), the order rule, the
split leakage report and ``split --group-duplicates``.

The store uses the thumbnail encoder, not the tiny CLIP: the tiny CLIP's random weights map
every frame into a narrow cone (distinct videos reach cosine 0.97-0.99 and a letterboxed copy
0.976, measured on these clips), so no threshold can tell a copy from another clip. With the
thumbnail encoder copies reach >= 0.99 (the 4-pixel letterbox 0.85) and distinct clips of one
class <= 0.6, so the test checks the method, not the encoder."""
from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from encoders.video.synthetic import CONTENT_CLASSES, scene_frames, write_video
from vstore import Store, StoreConfig, StoreWriter, VideoEntry
from vstore.dedup import DedupConfig, align, find_duplicates, groups_of
from vstore.dedup_files import read_groups
from vstore.errors import DedupError
from vstore.split import SplitConfig, _rank, load_split, make_split  # _rank: the plain rule, checked below

N_FRAMES, FPS, SAMPLED = 48, 12, 12
THRESHOLD = 0.8  # between the letterboxed copy (0.85) and the nearest distinct clip (<= 0.6)
H264 = {"preset": "ultrafast", "crf": "23"}


def _pad(frames: list[np.ndarray], top: int, side: int) -> list[np.ndarray]:
    out = []
    for f in frames:
        h, w = f.shape[:2]
        g = np.zeros((h + 2 * top, w + 2 * side, 3), np.uint8)
        g[top:top + h, side:side + w] = f
        out.append(g)
    return out


def _resize(frames: list[np.ndarray], w: int, h: int) -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]


# video id -> (original it copies or None, how it was made)
COPIES = {
    "o0_trim": ("o0", "first 12 and last 6 frames cut"),
    "o0_vp8": ("o0", "VP8 200 kbit/s WebM"),
    "o0_mpeg4": ("o0", "MPEG-4 part 2, 150 kbit/s"),
    "o0_small": ("o0", "resized to 64x42, crf 30"),
    "o1_pillar": ("o1", "pillarboxed: 16-px black bars left and right"),
    "o1_lbox": ("o1", "letterboxed: 4-px black bars top and bottom"),
    "o2_trim_mpeg4": ("o2", "first 16 frames cut, MPEG-4 300 kbit/s"),
}
TRUE_PAIRS = {frozenset(p) for group in (["o0"] + [c for c, (o, _) in COPIES.items() if o == "o0"],
                                         ["o1", "o1_pillar", "o1_lbox"], ["o2", "o2_trim_mpeg4"])
              for p in itertools.combinations(group, 2)}


@pytest.fixture(scope="module")
def dedup_store(tmp_path_factory) -> Path:
    """17 videos: 8 distinct clips (2 per class), 7 copies of three of them, and two clips that
    share a 12-frame title card (a quarter of each)."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    root = tmp_path_factory.mktemp("dedup")
    videos = root / "videos"
    videos.mkdir()
    labels = {}
    frames = {}
    for i in range(8):
        vid, kind = f"o{i}", CONTENT_CLASSES[i % 4]
        frames[vid] = scene_frames(kind, N_FRAMES, seed=i)
        write_video(videos / f"{vid}.mp4", frames[vid], fps=FPS, options=H264)
        labels[vid] = kind
    f0, f1, f2 = frames["o0"], frames["o1"], frames["o2"]
    write_video(videos / "o0_trim.mp4", f0[12:42], fps=FPS, options=H264)
    write_video(videos / "o0_vp8.webm", f0, fps=FPS, codec="libvpx", options={"b": "200k"})
    write_video(videos / "o0_mpeg4.avi", f0, fps=FPS, codec="mpeg4", options={"b": "150k"})
    write_video(videos / "o0_small.mp4", _resize(f0, 64, 42), fps=FPS, options={"preset": "ultrafast", "crf": "30"})
    write_video(videos / "o1_pillar.mp4", _pad(f1, 0, 16), fps=FPS, options=H264)
    write_video(videos / "o1_lbox.mp4", _pad(f1, 4, 0), fps=FPS, options=H264)
    write_video(videos / "o2_trim_mpeg4.mp4", f2[16:], fps=FPS, codec="mpeg4", options={"b": "300k"})
    for c, (o, _) in COPIES.items():
        labels[c] = labels[o]
    for vid, seed in (("t0", 20), ("t1", 21)):
        write_video(videos / f"{vid}.mp4", scene_frames("red_circle", N_FRAMES, seed=seed, title_frames=12), fps=FPS,
                    options=H264)
        labels[vid] = "red_circle"
    (root / "labels.json").write_text(json.dumps(labels))
    from vstore.labels import load_labels
    path = root / "store"
    summary = build_store([videos], path, load_encoder("thumbnail", device="cpu"), labels=load_labels(root / "labels.json"),
                          config=BuildConfig(frames=SAMPLED, workers=0, compact=False),
                          store_config=StoreConfig(segment_videos=6, chunk_rows=16), progress=False)
    assert summary.built == 17 and not summary.failures
    return path


@pytest.fixture
def store_rw(dedup_store, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(dedup_store, dst)
    return dst


def _pairs(result) -> set[frozenset]:
    return {frozenset((p.a, p.b)) for p in result.pairs}


def test_finds_every_copy_and_nothing_else(dedup_store):
    with Store.open(dedup_store) as s:
        result = find_duplicates(s, DedupConfig(frame_threshold=THRESHOLD))
    found = _pairs(result)
    precision = len(found & TRUE_PAIRS) / max(1, len(found))
    recall = len(found & TRUE_PAIRS) / len(TRUE_PAIRS)
    assert (precision, recall) == (1.0, 1.0), (sorted(map(sorted, found - TRUE_PAIRS)),
                                               sorted(map(sorted, TRUE_PAIRS - found)))
    assert result.search == "exact"
    assert result.groups[:3] == [["o0", "o0_mpeg4", "o0_small", "o0_trim", "o0_vp8"], ["o1", "o1_lbox", "o1_pillar"],
                                 ["o2", "o2_trim_mpeg4"]]
    by = {frozenset((p.a, p.b)): p for p in result.pairs}
    trim = by[frozenset(("o0", "o0_trim"))]
    assert (trim.a, trim.share) == ("o0_trim", 1.0)  # all of the trimmed copy is in the original...
    assert trim.offset == pytest.approx(12 / FPS, abs=0.5 * N_FRAMES / SAMPLED / FPS)  # ... 1 s in
    assert by[frozenset(("o2", "o2_trim_mpeg4"))].offset == pytest.approx(16 / FPS, abs=0.34)
    assert by[frozenset(("o0", "o0_vp8"))].offset == pytest.approx(0, abs=1e-6)


def test_distinct_clips_of_a_class_and_a_shared_title_card_do_not_pair(dedup_store):
    with Store.open(dedup_store) as s:
        strict = _pairs(find_duplicates(s, DedupConfig(frame_threshold=THRESHOLD)))
        loose = find_duplicates(s, DedupConfig(frame_threshold=THRESHOLD, min_share=0.2))
    same_class = {frozenset((f"o{i}", f"o{i + 4}")) for i in range(4)}
    assert not strict & (same_class | {frozenset(("t0", "t1"))})
    # the title card does match, in order: only the share rule (3 of 12 frames < 50%) keeps it out
    title = next(p for p in loose.pairs if {p.a, p.b} == {"t0", "t1"})
    assert title.matched == 3 and title.share == 0.25 and abs(title.offset) < 0.01
    assert not _pairs(loose) & same_class


def test_the_index_finds_the_same_pairs(store_rw):
    from vstore.index_build import build_index
    build_index(store_rw, progress=False)
    with Store.open(store_rw) as s:
        by_index = find_duplicates(s, DedupConfig(frame_threshold=THRESHOLD))
        exact = find_duplicates(s, DedupConfig(frame_threshold=THRESHOLD, search="exact"))
    assert by_index.search.startswith("index (") and exact.search == "exact"
    assert _pairs(by_index) == _pairs(exact) == TRUE_PAIRS


def _vector_store(path: Path, videos: dict[str, np.ndarray]) -> Path:
    enc = {"id": "vec:dedup", "name": "vectors", "dim": 16, "spec": None}
    Store.create(path, StoreConfig(dtype="float32")).close()
    with StoreWriter(path, enc) as w:
        for vid, emb in videos.items():
            n = len(emb)
            w.add(VideoEntry(id=vid, embeddings=emb.astype(np.float32), frame_index=np.arange(n) * 10,
                             timestamp=np.arange(n) * 0.5 + 0.25, duration=n * 0.5, label="x"))
    return path


def test_frames_must_match_in_order_at_one_offset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 16))
    noisy = lambda e: e + 0.05 * rng.normal(size=e.shape)  # noqa: E731
    scrambled = np.ravel(np.c_[np.arange(6, 12), np.arange(6)])  # 6 0 7 1 ...: every frame, no two in order
    path = _vector_store(tmp_path / "s", {"x": x, "trim": noisy(x[4:]), "reversed": noisy(x[::-1]),
                                          "scrambled": noisy(x[scrambled]), "other": rng.normal(size=(12, 16))})
    with Store.open(path) as s:
        result = find_duplicates(s, DedupConfig())
        # every frame of x has its copy in each of trim (8), reversed (12) and scrambled (12)...
        assert result.stats["frame_matches"] >= 2 * (8 + 12 + 12)
    # ... but only the trimmed copy holds them in order at one offset
    assert _pairs(result) == {frozenset(("x", "trim"))}
    (p,) = result.pairs
    assert (p.a, p.b, p.matched, p.share, p.offset) == ("trim", "x", 8, 1.0, 2.0)


def test_align_keeps_one_offset_and_one_order():
    t = np.arange(8.0)
    assert len(align(t, t + 3, np.ones(8), 0.5)) == 8
    assert len(align(t, t[::-1].copy(), np.ones(8), 0.5)) <= 2  # reversed: offsets all differ
    jitter = t + 3 + np.array([0, .4, -.4, .3, 0, -.2, .1, 0])
    assert len(align(t, jitter, np.ones(8), 0.5)) == 8
    assert groups_of([]) == []


@pytest.mark.parametrize("field,value,message", [
    ("frame_threshold", 1.5, "frame_threshold"), ("min_share", 0, "min_share"), ("min_frames", 0, "min_frames"),
    ("offset_slack", -1, "offset_slack"), ("neighbours", 0, "neighbours"), ("search", "fast", "search must be"),
    ("nprobe", -1, "nprobe")])
def test_config_is_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        DedupConfig(**{field: value})


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_reports_leakage_and_split_keeps_groups_whole(store_rw, tmp_path, runner):
    out = tmp_path / "dedup"
    r = runner.invoke(main, ["split", str(store_rw), "--test-size", "0.3", "--seed", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["dedup", str(store_rw), "--out", str(out), "--frame-threshold", str(THRESHOLD), "-q"])
    assert r.exit_code == 0, r.output
    assert "14 pair(s) in 3 group(s)" in r.output
    assert {p.name for p in out.iterdir()} >= {"duplicates.csv", "groups.csv", "leakage.csv", "dedup.json", "report.md",
                                                "pairs.png"}
    assert {frozenset((d["video_a"], d["video_b"])) for d in _read_csv(out / "duplicates.csv")} == TRUE_PAIRS
    split = load_split(store_rw)
    leak = _read_csv(out / "leakage.csv")
    assert leak, "seed 1 puts copies of one video on both sides; pick a seed that does"
    for row in leak:
        members = row["videos"].split()
        assert len({split.assignment[v] for v in members}) > 1
        assert row["test_videos"].split() == [v for v in members if split.assignment[v] == "test"]
    meta = json.loads((out / "dedup.json").read_text())
    assert meta["config"]["frame_threshold"] == THRESHOLD and meta["summary"]["crossing_groups"] == len(leak)
    assert f"{len(leak)} group(s) cross train/val/test" in (out / "report.md").read_text()
    png = Image.open(out / "pairs.png")
    assert png.width > 300 and png.height > 8 * 160

    r = runner.invoke(main, ["split", str(store_rw), "--test-size", "0.3", "--seed", "1", "--group-duplicates", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 duplicate group(s) of 10 videos kept whole" in r.output
    split = load_split(store_rw)
    for g in read_groups(out).groups:
        assert len({split.assignment[v] for v in g}) == 1, g
    assert split.counts()["test"] >= 3
    origin = split.origin["duplicate_groups"]
    assert origin["folder"] == str(out.resolve()) and len(origin["sha256"]) == 64 and origin["not_in_store"] == 0
    r = runner.invoke(main, ["dedup", str(store_rw), "--out", str(out), "--frame-threshold", str(THRESHOLD), "-q"])
    assert "0 group(s) cross the split" in r.output
    assert _read_csv(out / "leakage.csv") == []


def test_split_without_groups_is_the_plain_stratified_split(dedup_store):
    with Store.open(dedup_store) as s:
        cfg = SplitConfig(test_size=0.3, seed=3)
        plain, grouped = make_split(s, cfg), make_split(s, cfg, groups=[])
        by_label: dict[str, list[str]] = {}
        for v, lab in zip(s.videos.ids, s.videos.labels):
            by_label.setdefault(lab, []).append(v)
    want = {}
    for ids in by_label.values():
        ranked = sorted(ids, key=lambda v: _rank(3, v))
        n_test = min(len(ids) - 1, max(1, round(0.3 * len(ids))))
        want.update((v, "test" if i < n_test else "train") for i, v in enumerate(ranked))
    assert plain.assignment == grouped.assignment == want
    assert "duplicate_groups" not in plain.origin and grouped.origin["duplicate_groups"]["groups_used"] == 0


def test_group_ids_not_in_the_store_are_reported(store_rw, tmp_path, runner):
    out = tmp_path / "dedup"
    assert runner.invoke(main, ["dedup", str(store_rw), "--out", str(out), "--frame-threshold", str(THRESHOLD),
                                "-q"]).exit_code == 0
    with open(out / "groups.csv", "a") as f:
        f.write("g00001,6,gone-video,,\n")
    r = runner.invoke(main, ["split", str(store_rw), "--group-duplicates", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 id(s) of" in r.output and "gone-video" in r.output
    assert load_split(store_rw).origin["duplicate_groups"]["not_in_store"] == 1


def test_cli_failures(store_rw, tmp_path, runner):
    def fails(args, code, message):
        r = runner.invoke(main, args)
        assert r.exit_code == code and message in r.output, r.output
        assert "Traceback" not in r.output
    out = str(tmp_path / "o")
    fails(["dedup", str(tmp_path / "nowhere"), "--out", out], 1, "does not exist")
    fails(["dedup", str(store_rw), "--out", out, "--frame-threshold", "1.5"], 1, "frame_threshold is a cosine")
    fails(["dedup", str(store_rw), "--out", out, "--min-share", "0"], 1, "min_share must be in (0, 1]")
    fails(["dedup", str(store_rw), "--out", out, "--search", "index"], 1, "has no search index yet")
    fails(["split", str(store_rw), "--group-duplicates", str(tmp_path)], 1, "not a dedup output folder")
    fails(["split", str(store_rw), "--from", "--group-duplicates", out, __file__, __file__], 2, "cannot be combined")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dedup.json").write_text(json.dumps({"format": "vstore-dedup", "files": {"groups": "../../etc/passwd"}}))
    fails(["split", str(store_rw), "--group-duplicates", str(bad)], 1, "points outside its folder")
    (bad / "dedup.json").write_text("{not json")
    fails(["split", str(store_rw), "--group-duplicates", str(bad)], 1, "is damaged")
    with pytest.raises(DedupError, match="no dedup.json"):
        read_groups(tmp_path)
