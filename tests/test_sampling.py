"""Exact frame sampling, checked on real encoded videos whose frames spell their own index."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from encoders.errors import VideoError
from encoders.video.sampling import decode_frames, find_videos, sample_video, target_indices
from encoders.video.synthetic import index_frame, read_index, write_index_video, write_video
from vstore.records import key_frame_index

H264_LONG_GOP = {"preset": "veryfast", "bf": "3", "g": "300", "keyint_min": "300", "sc_threshold": "0"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("index_videos")
    rng = np.random.default_rng(0)
    vfr_pts = np.concatenate([[0], np.cumsum(rng.integers(1, 6, size=299))])  # irregular gaps, 1/100 s
    return {
        "h264": (write_index_video(d / "h264.mp4", 900, options=H264_LONG_GOP), 900, Fraction(1, 25), None),
        "vp9": (write_index_video(d / "vp9.webm", 240, codec="libvpx-vp9",
                                  options={"g": "100", "deadline": "realtime", "cpu-used": "8"}), 240,
                Fraction(1, 25), None),
        "vfr": (write_index_video(d / "vfr.mp4", 300, options={"preset": "veryfast", "bf": "2"},
                                  pts=vfr_pts, time_base=Fraction(1, 100)), 300, Fraction(1, 100), vfr_pts),
        "ts": (write_index_video(d / "clip.ts", 250, options={"preset": "veryfast", "bf": "2", "g": "50"}), 250,
               Fraction(1, 25), None),
        "short": (write_index_video(d / "short.mp4", 37, options={"preset": "veryfast", "bf": "2"}), 37,
                  Fraction(1, 25), None),
    }


def expected_times(total, tb, pts, indices):
    if pts is None:
        return np.asarray(indices) * float(tb)
    return np.asarray(pts)[indices] * float(tb)


def test_target_indices_formula():
    assert target_indices(1000, 4).tolist() == [125, 375, 625, 875]
    assert target_indices(10, 10).tolist() == list(range(10))
    assert target_indices(3, 100).tolist() == [0, 1, 2]  # fewer frames than asked: each once
    i = np.arange(100)
    assert (target_indices(12345, 100) == np.floor((i + 0.5) * 12345 / 100)).all()


@pytest.mark.parametrize("name", ["h264", "vp9", "vfr", "ts", "short"])
def test_exact_sampling_returns_exact_frames_and_times(videos, name):
    path, total, tb, pts = videos[name]
    r = sample_video(path, 100, video_id="some-id")
    assert r.total_frames == total  # counted from packets: WebM/TS metadata says 0
    want = target_indices(total, 100)
    assert r.indices.tolist() == want.tolist()
    assert [read_index(img) for img in r.images] == want.tolist()
    np.testing.assert_allclose(r.timestamps, expected_times(total, tb, pts, want), atol=1e-6)
    k = key_frame_index("some-id", total)
    assert r.key_frame_index == k and read_index(r.key_frame_image) == k
    np.testing.assert_allclose(r.key_frame_time, expected_times(total, tb, pts, [k])[0], atol=1e-6)


def test_container_metadata_is_not_trusted(videos):
    with av.open(str(videos["vp9"][0])) as c:
        assert c.streams.video[0].frames == 0  # what metadata says for WebM
    assert sample_video(videos["vp9"][0], 10).total_frames == 240


def test_short_video_gives_every_frame_once(videos):
    r = sample_video(videos["short"][0], 100)
    assert r.indices.tolist() == list(range(37))
    assert len(r.images) == 37


def test_keyframe_mode_returns_nearest_keyframes(videos):
    path, total, _, _ = videos["h264"]
    r = sample_video(path, 100, mode="keyframe")
    got = [read_index(img) for img in r.images]
    assert got == r.indices.tolist()
    assert r.indices.tolist() == [0, 300, 600]  # g=300: the only keyframes
    exact = sample_video(path, 100)
    assert len(r.indices) < len(exact.indices)


def test_resize_and_centre_crop_to_encoder_size(videos):
    r = sample_video(videos["h264"][0], 5, size=48)
    assert r.images.shape == (5, 48, 48, 3) and r.images.dtype == np.uint8
    full = sample_video(videos["h264"][0], 5)
    assert full.images.shape == (5, 96, 160, 3)


CODES = [0x5A5A, 0xA5A5, 0x9696, 0x6969, 0x5959]  # every row: an outer cell differs from its inner neighbour


def test_anamorphic_size_mode_uses_the_displayed_aspect(tmp_path):
    """96 x 96 coded pixels of sample aspect ratio 2:1 are shown 192 x 96: full-size frames keep
    the coded grid (like ffmpeg's default decode), ``size`` resizes and crops the shown frame."""
    p = tmp_path / "anamorphic.mp4"
    with av.open(str(p), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 96, 96, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in CODES:
            for pkt in s.encode(av.VideoFrame.from_ndarray(index_frame(i, 96, 96), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    full = sample_video(p, 5)
    assert full.images.shape == (5, 96, 96, 3) and [read_index(i) for i in full.images] == CODES
    small = sample_video(p, 5, size=48).images  # shown 192 x 96 -> 96 x 48 -> middle 48 columns
    stretched = [np.repeat(f, 2, axis=1)[::2, ::2][:, 24:72] for f in full.images]  # (48, 48, 3)
    squeezed = [f[::2, ::2] for f in full.images]  # what square-pixel geometry would give
    right = [np.abs(a.astype(int) - b).mean() for a, b in zip(small, stretched)]
    wrong = [np.abs(a.astype(int) - b).mean() for a, b in zip(small, squeezed)]
    assert max(right) < 12 and min(wrong) > 40, (right, wrong)


def test_ten_bit_frames_convert(tmp_path):
    p = write_video(tmp_path / "ten.mp4", (index_frame(i) for i in range(20)), pix_fmt="yuv420p10le",
                    options={"preset": "veryfast"})
    r = sample_video(p, 5, size=32)
    assert r.images.shape == (5, 32, 32, 3)
    full = sample_video(p, 5)
    assert [read_index(img) for img in full.images] == r.indices.tolist() == [2, 6, 10, 14, 18]


def test_resolution_change_mid_stream(tmp_path):
    """Two MPEG-TS clips of different sizes back to back: each frame converted at its own size."""
    a = write_index_video(tmp_path / "a.ts", 30, options={"preset": "veryfast", "g": "10"})
    b = write_index_video(tmp_path / "b.ts", 30, width=96, height=128, options={"preset": "veryfast", "g": "10"},
                          pts=[i + 40 for i in range(30)], time_base=Fraction(1, 25))
    p = tmp_path / "ab.ts"
    p.write_bytes(a.read_bytes() + b.read_bytes())
    r = sample_video(p, 6, size=32)
    assert r.total_frames == 60 and r.images.shape == (6, 32, 32, 3)
    frames = decode_frames(p, [5, 45])
    assert frames[5].shape == (96, 160, 3) and frames[45].shape == (128, 96, 3)
    assert read_index(frames[5]) == 5 and read_index(frames[45]) == 15


def test_decode_frames_by_number(videos):
    frames = decode_frames(videos["vfr"][0], [299, 7, 150, 10_000])
    assert sorted(frames) == [7, 150, 299]
    assert all(read_index(img) == i for i, img in frames.items())


def test_portrait_and_odd_sizes(tmp_path):
    path = write_video(tmp_path / "portrait.mp4", (index_frame(i, 64, 128) for i in range(10)),
                       options={"preset": "veryfast"})
    r = sample_video(path, 3, size=32)
    assert r.images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable video"),
])
def test_unreadable_files_raise_video_error(tmp_path, make, reason):
    p = tmp_path / "bad.mp4"
    make(p)
    with pytest.raises(VideoError, match=reason):
        sample_video(p, 10)


def test_audio_only_file_is_refused(tmp_path):
    p = tmp_path / "audio.m4a"
    with av.open(str(p), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            f.pts = i * 1024
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    with pytest.raises(VideoError, match="no video stream"):
        sample_video(p, 10)


def test_truncated_file_gives_frames_that_exist(videos, tmp_path):
    data = videos["h264"][0].read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])  # moov atom at the end is lost: nothing decodable
    with pytest.raises(VideoError):
        sample_video(p, 10)
    ts = videos["ts"][0].read_bytes()  # a stream format keeps what was written
    q = tmp_path / "cut.ts"
    q.write_bytes(ts[: len(ts) // 2])
    r = sample_video(q, 10)
    assert 0 < r.total_frames < 250
    assert [read_index(img) for img in r.images] == r.indices.tolist()


def test_find_videos_recurses_and_filters(tmp_path, videos):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.mp4").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / "y.WEBM").write_bytes(b"1")
    found = find_videos([tmp_path])
    assert [p.name for p in found] == ["x.mp4", "y.WEBM"]
    with pytest.raises(VideoError, match="no such file"):
        find_videos([tmp_path / "missing"])
