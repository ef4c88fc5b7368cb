"""What the build engines share: the encoder's batches never change a frame's vector (so the
local engine in any decode order and the Ray engine give bit-identical stores), and the
engine choice is checked. The Ray engine itself runs in tests/test_ray.py."""
from __future__ import annotations

import numpy as np
import pytest

from encoders.build.pipeline import DecodeTask, FrameBatcher, build_store
from encoders.registry import load_encoder
from encoders.video.sampling import sample_video


def _embed(encoder, videos, batch_size):
    """{video id: (M, D) vectors} when ``videos`` go through one FrameBatcher in this order."""
    b = FrameBatcher(encoder, batch_size)
    done = []
    for vid, v in videos:
        done += list(b.add(DecodeTask(vid, "", 0, "", 0, 0), v))
    done += list(b.flush())
    return {p.task.video_id: p.embeddings for p in done}


def test_a_frames_vector_does_not_depend_on_its_batch(tiny_clip_path, class_videos):
    enc = load_encoder(f"clip:{tiny_clip_path}", device="cpu")
    paths = sorted(class_videos[0].glob("*.mp4"))[:3]
    videos = [(p.stem, sample_video(p, 7, size=enc.input_size)) for p in paths]  # 7 frames each
    alone = {vid: _embed(enc, [(vid, v)], 16)[vid] for vid, v in videos}  # each video: one padded batch
    together = _embed(enc, videos[::-1], 16)  # batches mixing videos, split across batch boundaries
    for vid in alone:
        assert together[vid].tobytes() == alone[vid].tobytes(), vid
    # unpadded, a batch of 7 differs from one of 16 in the last bits (BLAS kernels for small M)
    direct = enc.encode_images(videos[0][1].images)  # (7, D)
    assert np.allclose(direct, alone[videos[0][0]][:7], atol=1e-5)


def test_unknown_engine_is_refused_before_anything_is_written(tiny_clip_path, class_videos, tmp_path):
    enc = load_encoder(f"clip:{tiny_clip_path}", device="cpu")
    with pytest.raises(ValueError, match="engine must be one of"):
        build_store([class_videos[0]], tmp_path / "s", enc, engine="spark", progress=False)
    assert not (tmp_path / "s").exists()


def test_cli_without_ray_says_how_to_install_it(runner, class_videos, tiny_clip_path, tmp_path, monkeypatch):
    import sys

    from cli.main import main
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    r = runner.invoke(main, ["build", str(class_videos[0]), "--store", str(tmp_path / "s"), "--frames", "2",
                             "--encoder", f"clip:{tiny_clip_path}", "--engine", "ray"])
    assert r.exit_code == 1 and 'pip install "vstore[ray]"' in r.output, r.output
    r = runner.invoke(main, ["index", str(tmp_path / "s"), "--engine", "ray"])
    assert r.exit_code == 1


def test_ray_encoder_calls_hold_whole_batches():
    """Each encoder-actor call pads its last batch to full size (bit-identical vectors); the
    auto videos per call picks the count whose frames leave the least padding."""
    from encoders.build.ray_engine import RayConfig, videos_per_call

    def padding(v, f, b):
        return (-v * f) % b / (v * f)
    assert videos_per_call(33, 64) == 31  # 32 frames + key frame, CPU batches: 1,023 of 1,024
    assert videos_per_call(101, 256) == 10  # 100 + 1, GPU batches: 1.4% padding where 16 videos pad 10.9%
    for f, b in [(33, 64), (101, 256), (17, 64), (101, 64), (9, 512)]:
        v = videos_per_call(f, b)
        assert 8 <= v <= 32 and all(padding(v, f, b) <= padding(w, f, b) for w in range(8, 33))
    assert videos_per_call(64, 64) == 8  # every count fills its batches: the smallest
    assert RayConfig().videos_per_batch == 0 and RayConfig(videos_per_batch=5).videos_per_batch == 5
    with pytest.raises(ValueError, match="videos_per_batch"):
        RayConfig(videos_per_batch=-1)


def test_ray_gpu_actors_get_large_batches_unless_told():
    """Without --batch-size, GPU encoder actors run batches of RayConfig.gpu_batch_size (256:
    a GPU is far from busy at 64), CPU actors the encoder's own default; a given batch size
    always wins (the same batch size as a local build gives bit-identical vectors)."""
    from encoders.build.ray_engine import RayConfig, actor_batch_size
    gpu = RayConfig().gpu_batch_size
    assert gpu == 256
    assert actor_batch_size(None, "cuda", 64, gpu) == 256
    assert actor_batch_size(None, "cpu", 64, gpu) == 64
    assert actor_batch_size(32, "cuda", 64, gpu) == 32 and actor_batch_size(512, "cpu", 64, gpu) == 512
    assert actor_batch_size(None, "cuda", 64, 0) == 64  # 0: the encoder's default on GPUs too
    with pytest.raises(ValueError, match="gpu_batch_size"):
        RayConfig(gpu_batch_size=-1)


def test_build_help_and_ray_cpus(runner, class_videos, tmp_path):
    """`vstore build --help` says what a build without --batch-size gets on Ray GPU actors;
    --ray-cpus sizes only a private Ray (refused with --address or the local engine)."""
    from cli.main import main
    r = runner.invoke(main, ["build", "--help"])
    assert r.exit_code == 0 and "256 on the GPU encoder actors of --engine ray" in " ".join(r.output.split())
    for extra in (["--ray-cpus", "2"], ["--ray-cpus", "2", "--engine", "ray", "--address", "auto"]):
        r = runner.invoke(main, ["build", str(class_videos[0]), "--store", str(tmp_path / "s"), *extra])
        assert r.exit_code == 2 and "--ray-cpus sizes the private Ray" in r.output, r.output
    assert not (tmp_path / "s").exists()
