"""Display matrices (phone videos): frames come out as a person sees them, everywhere.

Real H.264 files whose frames spell their own index, written with a display matrix (PyAV's
stream side data, or an iPhone-style ``tkhd`` matrix patched into the MP4), are checked for
shape, orientation and exact frame index; the store records the rotation and
``vstore info --json`` shows it.
"""
from __future__ import annotations

import json
import shutil
import struct

import h5py
import numpy as np
import pytest
from PIL import Image

from cli.main import main
from encoders.video.orientation import Orientation, orientation_from_matrix
from encoders.video.sampling import decode_frames, sample_video, target_indices
from encoders.video.sheet import hit_images
from encoders.video.synthetic import index_frame, read_index, write_index_video
from vstore import Store, StoreConfig, compact
from vstore.records import key_frame_index
from vstore.search import Hit
from vstore.segment import SegmentReader

W, H, FRAMES = 160, 96, 60
GOP = {"preset": "veryfast", "bf": "2", "g": "12", "keyint_min": "12", "sc_threshold": "0"}
ORIENTATIONS = [(r, f) for f in (False, True) for r in (0, 90, 180, 270)]


def upright(img: np.ndarray, o: Orientation) -> np.ndarray:
    """Undo ``o`` (rotate back counter-clockwise, then un-mirror): the frame as encoded."""
    img = np.rot90(img, k=o.rotation // 90)
    return img[:, ::-1] if o.hflip else img


def shown(i: int, o: Orientation) -> np.ndarray:
    """What a player shows for frame ``i``."""
    return np.ascontiguousarray(o.apply(index_frame(i, W, H)))


def fit(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), centre crop: the geometry ``size`` promises."""
    h, w = img.shape[:2]
    nw, nh = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    return im[top:top + size, left:left + size]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """{(rotation, hflip): path} for every orientation, plus an iPhone-style portrait clip."""
    d = tmp_path_factory.mktemp("rotated")
    out = {(r, f): write_index_video(d / f"rot{r}{'-flip' if f else ''}.mp4", FRAMES, options=GOP, rotation=r,
                                     hflip=f) for r, f in ORIENTATIONS}
    out["iphone"] = patch_tkhd(write_index_video(d / "iphone.mp4", FRAMES, options=GOP),
                               [0, 1, 0, -1, 0, 0, 0, 0, 1])
    return out


def patch_tkhd(path, matrix):
    """Write ``matrix`` (a, b, u, c, d, v, x, y, w as plain numbers) into the MP4's track header,
    as a phone's camera app does (16.16 fixed point, u/v/w 2.30)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    version = data[at + 4]
    start = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8  # version/flags, times/ids, reserved...
    fixed = [int(v * (1 << 30 if i in (2, 5, 8) else 1 << 16)) for i, v in enumerate(matrix)]
    data[start:start + 36] = struct.pack(">9i", *fixed)
    path.write_bytes(bytes(data))
    return path


def test_matrix_decisions_follow_ffmpeg_autorotate():
    # ffmpeg: theta 90 -> transpose=clock, 270 -> cclock, [3] > 0 at 90 / < 0 at 270 -> the flipped transposes
    assert orientation_from_matrix([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]) == Orientation(90)
    assert orientation_from_matrix([0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30]) == Orientation(270)
    assert orientation_from_matrix([-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30]) == Orientation(180)
    assert orientation_from_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]) == Orientation(0, True)
    assert orientation_from_matrix([65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30]) == Orientation(180, True)
    assert orientation_from_matrix([0, 65536, 0, 65536, 0, 0, 0, 0, 1 << 30]) == Orientation(270, True)
    assert orientation_from_matrix(None) == Orientation()
    c, s = int(65536 * np.cos(np.pi / 6)), int(65536 * np.sin(np.pi / 6))  # 30 degrees: left as decoded
    assert orientation_from_matrix([c, -s, 0, s, c, 0, 0, 0, 1 << 30]) == Orientation()


@pytest.mark.parametrize("rotation,hflip", ORIENTATIONS)
def test_exact_full_size_frames_are_displayed_and_exact(rotated, rotation, hflip):
    o = Orientation(rotation, hflip)
    r = sample_video(rotated[rotation, hflip], 10, video_id="clip")
    assert (r.rotation, r.hflip) == (rotation, hflip)
    want = target_indices(FRAMES, 10)
    assert r.images.shape[1:3] == ((W, H) if o.transposed else (H, W))
    assert (r.width, r.height) == ((H, W) if o.transposed else (W, H))
    assert r.indices.tolist() == want.tolist()
    assert [read_index(upright(img, o)) for img in r.images] == want.tolist()
    for i, img in zip(want, r.images):
        assert mad(img, shown(int(i), o)) < 6  # the right way up (a wrong turn is ~100 on these frames)
    k = key_frame_index("clip", FRAMES)
    assert r.key_frame_index == k and read_index(upright(r.key_frame_image, o)) == k


@pytest.mark.parametrize("rotation,hflip", [(90, False), (180, False), (270, False), (90, True)])
def test_keyframe_mode_frames_are_displayed(rotated, rotation, hflip):
    o = Orientation(rotation, hflip)
    r = sample_video(rotated[rotation, hflip], 5, mode="keyframe")
    assert len(r.indices) and all(int(i) % 12 == 0 for i in r.indices)  # keyframes every 12 frames
    assert [read_index(upright(img, o)) for img in r.images] == r.indices.tolist()
    assert all(mad(img, shown(int(i), o)) < 6 for i, img in zip(r.indices, r.images))


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
@pytest.mark.parametrize("rotation,hflip", [(90, False), (180, False), (270, True)])
def test_size_resizes_and_crops_the_displayed_frame(rotated, rotation, hflip, mode):
    o = Orientation(rotation, hflip)
    r = sample_video(rotated[rotation, hflip], 6, mode=mode, size=48, video_id="clip")
    assert r.images.shape[1:] == (48, 48, 3) and r.key_frame_image.shape == (48, 48, 3)
    for i, img in zip(r.indices, r.images):
        right = mad(img, fit(shown(int(i), o), 48))
        assert right < 12, right
        wrong = mad(img, fit(index_frame(int(i), W, H), 48))  # the old, sideways geometry
        assert int(i) == 0 or o.rotation == 0 or wrong > right


def test_iphone_tkhd_matrix_is_portrait(rotated):
    r = sample_video(rotated["iphone"], 8)
    assert (r.rotation, r.hflip) == (90, False)  # ffprobe: "rotation of -90.00 degrees"
    assert r.images.shape[1:3] == (W, H)  # portrait
    assert [read_index(np.rot90(img, 1)) for img in r.images] == target_indices(FRAMES, 8).tolist()


def test_decode_frames_and_contact_sheet_images_are_displayed(rotated, tmp_path):
    o = Orientation(90)
    frames = decode_frames(rotated[90, False], [7, 33])
    assert sorted(frames) == [7, 33]
    assert all(img.shape == (W, H, 3) and read_index(upright(img, o)) == i for i, img in frames.items())
    small = decode_frames(rotated[90, False], [33], size=40)[33]
    assert small.shape == (40, 40, 3) and mad(small, fit(shown(33, o), 40)) < 12


@pytest.fixture(scope="module")
def rotated_store(rotated, tmp_path_factory):
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    videos = tmp_path_factory.mktemp("rot_videos")
    for key in [(0, False), (90, False), (180, False), (270, True)]:
        shutil.copy(rotated[key], videos / rotated[key].name)
    path = tmp_path_factory.mktemp("rot_store") / "store"
    summary = build_store([videos], path, load_encoder("thumbnail", device="cpu"),
                          config=BuildConfig(frames=6, workers=0, compact=False),
                          store_config=StoreConfig(segment_videos=1), progress=False)
    assert summary.built == 4 and not summary.failures
    return path


def test_store_records_rotation_and_info_json_lists_it(rotated_store, runner):
    with Store.open(rotated_store) as s:
        t = s.videos
        got = {vid: (int(t.rotation[i]), bool(t.hflip[i])) for i, vid in enumerate(t.ids)}
        assert got == {"rot0": (0, False), "rot90": (90, False), "rot180": (180, False), "rot270-flip": (270, True)}
        images, _ = s.key_frames(["rot90"])
        k = key_frame_index("rot90", FRAMES)
        assert mad(images[0], fit(shown(k, Orientation(90)), images.shape[1])) < 12  # stored key frame upright
        hits = [Hit(1, "rot90", 33, 33 / 25, 1.0, None, int(t.frame_start[t.row("rot90")]))]
        (img, source), = hit_images(s, hits, 40)
        assert source == "video" and mad(img, fit(shown(33, Orientation(90)), 40)) < 12
    res = runner.invoke(main, ["info", str(rotated_store), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rotated"] == {"rot90": {"rotation": 90, "hflip": False},
                                                 "rot180": {"rotation": 180, "hflip": False},
                                                 "rot270-flip": {"rotation": 270, "hflip": True}}
    res = runner.invoke(main, ["info", str(rotated_store)])
    assert res.exit_code == 0 and "rotated    3 video(s)" in res.output


def test_compaction_keeps_rotation(rotated_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(rotated_store, path)
    r = compact(path)
    assert r.segments_before == 4 and r.segments_after == 1
    with Store.open(path) as s:
        t = s.videos
        got = {vid: (int(t.rotation[i]), bool(t.hflip[i])) for i, vid in enumerate(t.ids)}
    assert got == {"rot0": (0, False), "rot90": (90, False), "rot180": (180, False), "rot270-flip": (270, True)}


def test_segments_without_rotation_read_as_upright(rotated_store, tmp_path):
    """Segments written before the field existed have no /videos/rotation: 0, not an error."""
    with Store.open(rotated_store) as s:
        seg = s.manifest.segments[int(s.videos.segment[s.row("rot90")])].file
    old = tmp_path / "old.h5"
    shutil.copy(rotated_store / seg, old)
    with h5py.File(old, "a") as f:
        assert f["videos/rotation"][()].tolist() == [90]
        del f["videos/rotation"], f["videos/hflip"]
    r = SegmentReader(old)
    try:
        assert r.numeric["rotation"].tolist() == [0] and r.numeric["hflip"].tolist() == [False]
    finally:
        r.close()
