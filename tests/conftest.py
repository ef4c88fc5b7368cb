"""Shared fixtures: real tiny data made on the spot (videos with PyAV, a tiny real CLIP,
real HDF5 stores). Session-scoped fixtures are read-only; copy them before changing."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

# One OpenMP/torch thread per process (inherited by the servers and CLI runs tests start). The
# models here are tiny: on an idle 2-core machine two threads train them no faster, and on a
# busy one their spin-waits made the training tests ~10x slower (373 s against 37 s measured).
# A test that needs more threads sets OMP_NUM_THREADS for its own subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from click.testing import CliRunner

from encoders.video.synthetic import CONTENT_CLASSES, make_class_video

REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = REPO.parent / "shared" / "data" / "youtube_videos_dataset.csv"


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> Path:
    """A real (tiny, randomly initialised) OpenAI CLIP saved as a state dict, loaded by the
    real ``clip.load(path, jit=False)`` path: 32 px input, 64-d embeddings."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP
    torch.manual_seed(0)
    model = CLIP(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=1)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def class_videos(tmp_path_factory) -> tuple[Path, Path]:
    """(directory of 16 short labelled H.264 clips, 4 content classes; labels.json)."""
    root = tmp_path_factory.mktemp("class_videos")
    videos = root / "videos"
    videos.mkdir()
    labels = {}
    for i in range(16):
        kind = CONTENT_CLASSES[i % len(CONTENT_CLASSES)]
        vid = f"{kind}-{i:02d}"
        make_class_video(videos / f"{vid}.mp4", kind, n_frames=20, seed=i)
        labels[vid] = kind
    labels_path = root / "labels.json"
    labels_path.write_text(json.dumps(labels))
    return videos, labels_path


@pytest.fixture(scope="session")
def thumb_store(class_videos, tmp_path_factory) -> Path:
    """A store built from ``class_videos`` with the thumbnail encoder, 8 frames per video."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore import StoreConfig
    from vstore.labels import load_labels
    videos, labels = class_videos
    path = tmp_path_factory.mktemp("stores") / "thumb"
    summary = build_store([videos], path, load_encoder("thumbnail", device="cpu"), labels=load_labels(labels),
                          config=BuildConfig(frames=8, workers=0, compact=False),
                          store_config=StoreConfig(segment_videos=5),
                          progress=False)
    assert summary.built == 16 and not summary.failures
    return path


@pytest.fixture
def store_copy(thumb_store, tmp_path) -> Path:
    """A private, writable copy of ``thumb_store``."""
    dst = tmp_path / "store"
    shutil.copytree(thumb_store, dst)
    return dst


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def shared_csv() -> Path:
    if not SHARED_CSV.is_file():
        pytest.skip("../shared/data/youtube_videos_dataset.csv is not present in this checkout")
    return SHARED_CSV
