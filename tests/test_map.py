"""`vstore map` on a tiny real store (16 real videos, thumbnail encoder, a stored split) and a
real run (`vstore train`, deliberately weak so it gets some test videos wrong)."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from classifiers.embedding_map import MapConfig, MapError, choose_method, compute_map, umap_available
from cli.main import main
from vstore import Store, StoreWriter, VideoEntry
from vstore.split import load_split


@pytest.fixture(scope="module")
def map_store(thumb_store, tmp_path_factory):
    from click.testing import CliRunner
    dst = tmp_path_factory.mktemp("map") / "store"
    shutil.copytree(thumb_store, dst)
    r = CliRunner().invoke(main, ["split", str(dst), "--test-size", "0.25"])
    assert r.exit_code == 0, r.output
    return dst


@pytest.fixture(scope="module")
def weak_run(map_store):
    """A linear head trained one epoch at a negligible learning rate: near its random start."""
    from click.testing import CliRunner
    out = map_store.parent / "weak"
    r = CliRunner().invoke(main, ["train", str(map_store), "--model", "linear", "--recipe", "reference", "--epochs", "1",
                                  "--lr", "1e-6", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_map(runner, store, out, *args):
    r = runner.invoke(main, ["map", str(store), "--out", str(out), "-q", *args])
    assert r.exit_code == 0, r.output
    return r.output, read_csv(out.with_suffix(".csv")), json.loads(out.with_suffix(".json").read_text())


def test_pca_map_rows_labels_splits_and_method(map_store, runner, tmp_path):
    out = tmp_path / "map.png"
    text, rows, meta = run_map(runner, map_store, out, "--method", "pca")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PCA" in text and meta["method"] == "pca" and meta["method_reason"] == "asked for"
    assert meta["title"] == "16 videos, PCA" and meta["config"] == {**meta["config"], "method": "pca", "seed": 0}
    assert len(meta["explained_variance_ratio"]) == 2 and 0 < sum(meta["explained_variance_ratio"]) <= 1
    assert list(rows[0]) == ["video_id", "x", "y", "label", "split", "misclassified", "predicted"]
    split = load_split(map_store).assignment
    with Store.open(map_store) as s:
        assert [r["video_id"] for r in rows] == s.videos.ids  # one row per video, store order
        assert [r["label"] for r in rows] == s.videos.labels
    assert [r["split"] for r in rows] == [split[r["video_id"]] for r in rows]
    assert sum(r["split"] == "test" for r in rows) == 4
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.isfinite(xy).all() and xy.min() == 0 and xy.max() == 1
    assert all(r["misclassified"] == "" and r["predicted"] == "" for r in rows)


def test_pca_is_deterministic_and_is_the_pca_of_the_mean_embeddings(map_store, runner, tmp_path):
    from sklearn.decomposition import PCA
    run_map(runner, map_store, tmp_path / "a.png", "--method", "pca", "--seed", "1")
    run_map(runner, map_store, tmp_path / "b.png", "--method", "pca", "--seed", "2")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    with Store.open(map_store) as s:
        ours = compute_map(s, MapConfig(method="pca", block_rows=1)).xy  # a block per chunk: videos cut
        want = PCA(2, svd_solver="full").fit_transform(s.video_means(normalize=True).astype(np.float64))
    # the same up to each axis's sign, the shift and the one scale of unit_square
    ours_c = (ours - ours.mean(0)) * np.sign(((ours - ours.mean(0)) * want).sum(0))
    scale = np.linalg.norm(want) / np.linalg.norm(ours_c)
    np.testing.assert_allclose(ours_c * scale, want, atol=1e-4 * np.abs(want).max())

def test_auto_says_which_method_and_why(map_store, runner, tmp_path):
    text, rows, meta = run_map(runner, map_store, tmp_path / "auto.png")
    if umap_available():
        assert meta["method"] == "umap" and "UMAP" in text
    else:
        assert meta["method"] == "tsne" and meta["method_reason"] == "auto: umap-learn is not installed"
        assert "t-SNE (auto: umap-learn is not installed)" in text and meta["title"] in text
    assert len(rows) == 16 and all(np.isfinite(float(r["x"])) and np.isfinite(float(r["y"])) for r in rows)
    # many videos: PCA; very few: PCA even when t-SNE is asked for
    big = MapConfig(tsne_max_videos=10)
    if not umap_available():
        assert choose_method(big, 11) == ("pca", "auto: umap-learn is not installed and 11 videos are more than "
                                                 "tsne_max_videos (10)")
    assert choose_method(MapConfig(method="tsne"), 4)[0] == "pca"
    assert choose_method(MapConfig(method="tsne"), 5) == ("tsne", "asked for")


def test_run_marks_exactly_the_test_videos_it_misclassified(map_store, weak_run, runner, tmp_path):
    text, rows, meta = run_map(runner, map_store, tmp_path / "run.png", "--run", str(weak_run), "--method", "pca")
    with open(weak_run / "predictions.csv", newline="", encoding="utf-8") as f:
        preds = {r["id"]: r for r in csv.DictReader(f)}
    wrong = {v for v, r in preds.items() if r["label"] != r["predicted"]}
    assert 0 < len(wrong) < len(preds) == 4  # the weak run got some right and some wrong
    assert {r["video_id"] for r in rows if r["misclassified"] == "1"} == wrong
    assert {r["video_id"] for r in rows if r["misclassified"] == "0"} == set(preds) - wrong
    assert {r["video_id"] for r in rows if r["misclassified"] == ""} == {r["video_id"] for r in rows} - set(preds)
    assert {r["video_id"]: r["predicted"] for r in rows if r["predicted"]} == {v: p["predicted"] for v, p in preds.items()}
    assert all(r["split"] == "test" for r in rows if r["misclassified"])
    assert meta["run"]["misclassified"] == len(wrong) and meta["run"]["evaluated"] == 4
    assert f"{len(wrong)} of 4 test videos" in text


def test_failure_paths(map_store, weak_run, runner, tmp_path):
    def fails(args, *words, code=1):
        r = runner.invoke(main, ["map", *map(str, args)])
        assert r.exit_code == code, r.output
        assert "Traceback" not in r.output
        for w in words:
            assert w in r.output, r.output
    Store.create(tmp_path / "empty").close()
    fails([tmp_path / "empty", "--out", tmp_path / "e.png"], "holds no videos")
    fails([map_store, "--out", tmp_path / "m.png", "--method", "spectral"], "Invalid value for '--method'", code=2)
    fails([map_store, "--out", tmp_path / "m.jpg"], "must be a .png")
    # a run of another store: none of its predicted videos are here
    other = tmp_path / "other"
    Store.create(other).close()
    with StoreWriter(other, {"id": "test:1", "name": "test", "dim": 8, "spec": None}) as w:
        rng = np.random.default_rng(0)
        for i in range(6):
            w.add(VideoEntry(id=f"x{i}", embeddings=rng.normal(size=(3, 8)).astype(np.float32),
                             frame_index=np.arange(3), timestamp=np.arange(3) * 0.5, label="a"))
    fails([other, "--out", tmp_path / "o.png", "--run", weak_run], f"run {weak_run} is not of {other}",
          "none of its 4 predicted videos")
    # a run from before per-video predictions were kept (no run record, no predictions.csv)
    old = tmp_path / "old-run"
    shutil.copytree(weak_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    metrics.pop("run")
    (old / "metrics.json").write_text(json.dumps(metrics))
    (old / "predictions.csv").unlink()
    fails([map_store, "--out", tmp_path / "p.png", "--run", old], "keeps no per-video predictions", "retrain")
    fails([map_store, "--out", tmp_path / "q.png", "--run", tmp_path], "not a vstore run directory")


def test_config_validation():
    for bad in ({"method": "mds"}, {"pca_dims": 1}, {"perplexity": 0}, {"n_neighbors": 1}, {"block_rows": 0}):
        with pytest.raises(ValueError):
            MapConfig(**bad)
    with pytest.raises(MapError, match="umap-learn") if not umap_available() else _nothing():
        choose_method(MapConfig(method="umap"), 50)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
