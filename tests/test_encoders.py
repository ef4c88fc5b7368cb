"""Frame encoders: the real CLIP code path with tiny weights, and the thumbnail encoder."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.errors import EncoderSpecError, EncoderUnavailableError, TextUnsupportedError
from encoders.registry import describe_spec, encoder_for_store, load_encoder
from encoders.video.sampling import sample_video


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_path):
    return load_encoder(f"clip:{tiny_clip_path}", device="cpu", batch_size=7)


def test_batched_tensor_preprocess_matches_clip_pil_preprocess(tiny_clip, tiny_clip_path, class_videos):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
        _, pil_preprocess = clip.load(str(tiny_clip_path), device="cpu", jit=False)
    videos, _ = class_videos
    frames = np.concatenate([sample_video(p, 6).images for p in sorted(videos.glob("*.mp4"))[:4]])  # real decoded
    with torch.no_grad():
        ref = tiny_clip.model.encode_image(torch.stack([pil_preprocess(Image.fromarray(f)) for f in frames])).numpy()
    ours = tiny_clip.encode_images(frames)  # full frames, resized on the device
    assert cosine(ref, ours).min() > 0.99
    # the build path: swscale resizes and crops in the decoder, the encoder only normalises
    small = np.concatenate([sample_video(p, 6, size=tiny_clip.input_size).images
                            for p in sorted(videos.glob("*.mp4"))[:4]])
    assert cosine(ref, tiny_clip.encode_images(small)).min() > 0.99


def test_clip_identity_and_text(tiny_clip, tiny_clip_path):
    ident = tiny_clip.identity
    assert ident["dim"] == 64 and ident["input_size"] == 32 and ident["spec"] == f"clip:{tiny_clip_path}"
    assert ident["id"].startswith("clip:") and ident["supports_text"]
    text = tiny_clip.encode_text(["a plate of pasta", "a museum"])
    assert text.shape == (2, 64) and np.isfinite(text).all()
    assert encoder_for_store(ident, device="cpu").identity == ident


def test_batches_are_split_by_batch_size(tiny_clip):
    frames = np.random.default_rng(0).integers(0, 255, (17, 40, 50, 3), dtype=np.uint8)
    whole = tiny_clip.encode_images(frames)
    parts = np.concatenate([tiny_clip.encode_images(frames[:5]), tiny_clip.encode_images(frames[5:])])
    np.testing.assert_allclose(whole, parts, rtol=1e-4, atol=1e-5)


def test_named_model_without_network_gives_a_way_out(tmp_path):
    with pytest.raises(EncoderUnavailableError, match=r"--encoder clip:/path/to/ViT-B-32\.pt"):
        from encoders.clip_encoder import ClipConfig, ClipEncoder
        ClipEncoder(ClipConfig(model="ViT-B/32", device="cpu", download_root=str(tmp_path)))


def test_named_model_can_be_described_without_weights():
    ident = describe_spec("clip:ViT-B/32")
    assert ident["dim"] == 512 and ident["input_size"] == 224
    assert ident["id"] == "clip:40d365715913c9da"  # sha256 prefix of OpenAI's ViT-B-32.pt


def test_unknown_specs():
    with pytest.raises(EncoderSpecError, match="unknown encoder"):
        load_encoder("resnet:50")
    with pytest.raises(EncoderSpecError, match="neither a known name"):
        load_encoder("clip:/nonexistent/weights.pt")


def test_thumbnail_encoder():
    enc = load_encoder("thumbnail", device="cpu")
    frames = np.random.default_rng(1).integers(0, 255, (5, 90, 120, 3), dtype=np.uint8)
    emb = enc.encode_images(frames)
    assert emb.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    dark, bright = np.full((1, 64, 64, 3), 30, np.uint8), np.full((1, 64, 64, 3), 220, np.uint8)
    assert cosine(enc.encode_images(dark), enc.encode_images(bright))[0] < 0.5
    with pytest.raises(TextUnsupportedError):
        enc.encode_text(["anything"])


def test_bad_frame_arrays_are_refused():
    enc = load_encoder("thumbnail", device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        enc.encode_images(np.zeros((2, 8, 8, 3), dtype=np.float32))
