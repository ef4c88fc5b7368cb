"""kNN (video and frame level) and zero-shot baselines: exact reference votes, index vs exact
search, refusals."""
from __future__ import annotations

import numpy as np
import pytest
from test_index import vector_store

from classifiers.knn import knn_predict, vote_weights
from classifiers.zeroshot import label_prompts, zero_shot_predict
from encoders.errors import TextUnsupportedError
from vstore import Store, VStoreError
from vstore.errors import QueryError
from vstore.index import IndexConfig
from vstore.index_build import build_index
from vstore.split import SplitConfig, make_split


def _split(s: Store, seed: int = 0) -> tuple[list[str], list[str]]:
    split = make_split(s, SplitConfig(test_size=0.25, seed=seed))
    return split.ids("train"), split.ids("test")


def _reference_video_knn(s: Store, train: list[str], test: list[str], k: int) -> np.ndarray:
    means = s.video_means(normalize=True)
    y = s.label_indices(train)
    out = np.zeros((len(test), len(s.label_names)))
    for i, v in enumerate(test):
        sim = means[s.rows(train)] @ means[s.row(v)]
        for j in np.argsort(-sim)[:k]:
            out[i, y[j]] += 1 / max(1 - sim[j], 1e-6)
    return out / out.sum(1, keepdims=True)


def test_video_level_knn_matches_reference_and_classifies(thumb_store):
    with Store.open(thumb_store) as s:
        train, test = _split(s)
        p = knn_predict(s, train, test, k=3)
        assert p.shape == (len(test), 4) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
        np.testing.assert_allclose(p, _reference_video_knn(s, train, test, 3), rtol=1e-4, atol=1e-6)
        assert (p.argmax(1) == s.label_indices(test)).all()  # the four classes look nothing alike
        assert knn_predict(s, train, test, k=100).shape == (len(test), 4)  # k > training videos
        assert knn_predict(s, train, [], k=3).shape == (0, 4)


def test_frame_level_knn_index_and_exact_agree(tmp_path):
    path = vector_store(tmp_path / "s", n_videos=30, frames=12)
    with Store.open(path) as s:
        train, test = _split(s)
        exact = knn_predict(s, train, test, k=5, level="frame", use_index=False)
        # reference: each test frame votes through its 5 nearest training frames
        rows = np.concatenate([np.arange(s.videos.frame_start[r], s.videos.frame_start[r] + s.videos.n_frames[r])
                               for r in s.rows(train)])
        x = np.concatenate([b.embeddings for b in s.iter_blocks(dtype=np.float32)])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        owner_label = np.repeat(s.label_indices(), s.videos.n_frames)
        want = np.zeros_like(exact, dtype=np.float64)
        for i, v in enumerate(test):
            r = s.row(v)
            for f in range(s.videos.frame_start[r], s.videos.frame_start[r] + s.videos.n_frames[r]):
                sim = x[rows] @ x[f]
                for j in np.argsort(-sim)[:5]:
                    want[i, owner_label[rows[j]]] += vote_weights(sim[j:j + 1])[0]
        np.testing.assert_allclose(exact, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
        assert (exact.argmax(1) == s.label_indices(test)).mean() >= 0.8
    build_index(path, IndexConfig(kind="flat"))
    with Store.open(path) as s:
        np.testing.assert_allclose(knn_predict(s, train, test, k=5, level="frame"), exact, rtol=1e-4, atol=1e-6)
    build_index(path, IndexConfig(kind="hnsw", metric="cosine"))  # approximate index: close to exact
    with Store.open(path) as s:
        approx = knn_predict(s, train, test, k=5, level="frame")
        assert (approx.argmax(1) == exact.argmax(1)).mean() >= 0.9


def test_knn_refusals(thumb_store):
    with Store.open(thumb_store) as s:
        train, test = _split(s)
        with pytest.raises(ValueError, match="level"):
            knn_predict(s, train, test, level="pixel")
        with pytest.raises(ValueError, match="k must"):
            knn_predict(s, train, test, k=0)
    with pytest.raises(VStoreError, match="labelled training videos"):
        with Store.open(thumb_store) as s:
            s.videos.labels[:] = [None] * len(s.videos.labels)  # an unlabeled training set
            knn_predict(s, s.videos.ids[:8], s.videos.ids[8:])


@pytest.fixture(scope="module")
def tiny_clip_store(class_videos, tiny_clip_path, tmp_path_factory):
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore.labels import load_labels
    videos, labels = class_videos
    path = tmp_path_factory.mktemp("zs") / "store"
    build_store([videos], path, load_encoder(f"clip:{tiny_clip_path}", device="cpu"), labels=load_labels(labels),
                config=BuildConfig(frames=3, workers=0), progress=False)
    return path


def test_zero_shot_matches_reference(tiny_clip_store):
    from encoders.queries import store_encoder
    with Store.open(tiny_clip_store) as s:
        train, test = _split(s)
        enc = store_encoder(s, "cpu")
        p = zero_shot_predict(s, test, prompt="a photo of {label}", encoder=enc)
        assert p.shape == (len(test), 4)
        np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
        prompts = label_prompts(s.label_names, "a photo of {label}")
        assert prompts[0] == "a photo of blue stripes"
        t = enc.encode_text(prompts)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        logits = 100 * s.video_means(test, normalize=True) @ t.T
        want = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(p, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
        assert zero_shot_predict(s, test).shape == (len(test), 4)  # loads the store's encoder itself
        with pytest.raises(QueryError, match="must contain"):
            zero_shot_predict(s, test, prompt="a video", encoder=enc)
        with pytest.raises(QueryError, match="only the"):
            zero_shot_predict(s, test, prompt="{label} {other}", encoder=enc)


def test_zero_shot_is_refused_for_thumbnail_stores(thumb_store):
    with Store.open(thumb_store) as s:
        with pytest.raises(TextUnsupportedError, match="thumbnail.*no text encoder"):
            zero_shot_predict(s, s.videos.ids[:4])
