"""`vstore split / train / report / predict` through the CLI, outputs and error paths."""
from __future__ import annotations

import hashlib
import json
import pickle
from collections import Counter

import pytest
import torch

from cli.main import main
from vstore import Store
from vstore.split import load_split

REQUIRED_METRICS = {"model", "mixup", "seeds", "accuracy", "f1_micro", "f1_macro", "accuracy_std", "f1_micro_std",
                    "f1_macro_std", "per_seed", "per_class", "confusion_matrix", "label_names"}


@pytest.fixture
def split_store(store_copy, runner):
    r = runner.invoke(main, ["split", str(store_copy), "--test-size", "0.25", "--seed", "0"])
    assert r.exit_code == 0, r.output
    return store_copy


def test_split_is_stratified_deterministic_and_stored(store_copy, runner):
    r = runner.invoke(main, ["split", str(store_copy), "--test-size", "0.25", "--val-size", "0.25"])
    assert r.exit_code == 0 and "train 8, val 4, test 4" in r.output
    first = load_split(store_copy)
    with Store.open(store_copy) as s:
        by_label = dict(zip(s.videos.ids, s.videos.labels))
    for part in ("train", "val", "test"):
        counts = Counter(by_label[v] for v in first.ids(part))
        assert len(counts) == 4 and len(set(counts.values())) == 1  # every label equally
    runner.invoke(main, ["split", str(store_copy), "--test-size", "0.25", "--val-size", "0.25"])
    assert load_split(store_copy).assignment == first.assignment
    runner.invoke(main, ["split", str(store_copy), "--test-size", "0.25", "--val-size", "0.25", "--seed", "1"])
    assert load_split(store_copy).assignment != first.assignment


def test_train_writes_a_complete_run(split_store, runner, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(main, ["train", str(split_store), "--model", "transformer", "--mixup", "--seeds", "2",
                             "--epochs", "3", "--eval-every", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "transformer + mixup: accuracy" in r.output and "±" in r.output
    for name in ("metrics.json", "history.json", "curves.png", "confusion.png", "model.pt", "predictions.csv"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_METRICS <= set(m) and m["seeds"] == 2 and m["mixup"] is True
    assert len(m["per_seed"]) == 2 and sum(map(sum, m["confusion_matrix"])) == 2 * m["n_test"]
    history = json.loads((out / "history.json").read_text())
    assert {h["seed"] for h in history} == {0, 1} and len(history) == 2 * 3 * 1  # 8 train videos, batch 16
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["train_config"]["model"] == "transformer" and ck["model_config"]["layers"] == 1
    assert "pos" in ck["state_dict"]


def test_report_and_predict(split_store, runner, tmp_path, class_videos):
    runs = []
    for model in ("linear", "random-frame"):
        out = tmp_path / model
        r = runner.invoke(main, ["train", str(split_store), "--model", model, "--epochs", "2", "--out", str(out), "-q"])
        assert r.exit_code == 0, r.output
        runs.append(str(out))
    r = runner.invoke(main, ["report", *runs, "--out", str(tmp_path / "results.md")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "results.md").read_text()
    assert "| Metric | linear | random-frame |" in md and "| F1 micro |" in md
    assert (tmp_path / "results.png").stat().st_size > 1000
    videos, _ = class_videos
    clip = sorted(videos.glob("*.mp4"))[0]
    r = runner.invoke(main, ["predict", runs[0], str(clip), "--json"])
    assert r.exit_code == 0, r.output
    pred = json.loads(r.output)[0]
    assert pred["label"] in pred["probabilities"] and abs(sum(pred["probabilities"].values()) - 1) < 1e-5
    r = runner.invoke(main, ["predict", runs[1], str(clip)])
    assert r.exit_code == 0 and clip.name in r.output
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    r = runner.invoke(main, ["predict", runs[0], str(clip), str(bad)])
    assert r.exit_code == 3 and "ERROR" in r.output


def test_errors(store_copy, runner, tmp_path):
    r = runner.invoke(main, ["train", str(store_copy), "--model", "svm", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "Invalid value for '--model'" in r.output
    r = runner.invoke(main, ["train", str(store_copy), "--model", "linear", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "has no split yet; run `vstore split" in r.output
    r = runner.invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "is not a vstore run directory" in r.output
    r = runner.invoke(main, ["predict", str(tmp_path), __file__])
    assert r.exit_code == 1 and "is not a vstore run directory" in r.output
    r = runner.invoke(main, ["train", str(store_copy), "--model", "knn", "--mixup", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--mixup applies to trained models" in r.output


def test_split_refuses_a_store_without_labels(class_videos, tmp_path, runner):
    videos, _ = class_videos
    store = tmp_path / "s"
    r = runner.invoke(main, ["-q", "build", str(videos), "--store", str(store), "--encoder", "thumbnail",
                             "--frames", "2"])
    assert r.exit_code == 0
    r = runner.invoke(main, ["split", str(store)])
    assert r.exit_code == 1 and "has no labelled videos; build it with --labels" in r.output


def test_pickle_payload_in_model_pt_is_refused(split_store, runner, tmp_path):
    out = tmp_path / "run"
    runner.invoke(main, ["train", str(split_store), "--model", "linear", "--epochs", "1", "--out", str(out), "-q"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(out / "model.pt", "wb") as f:
        pickle.dump({"format": "vstore-run", "x": Evil()}, f)
    r = runner.invoke(main, ["predict", str(out), __file__])
    assert r.exit_code == 1 and "model.pt is not the one this run wrote" in r.output and "pwned" not in r.output
    # one who rewrites metrics.json's record too still meets weights_only loading
    m = json.loads((out / "metrics.json").read_text())
    m["run"]["files"]["model.pt"] = hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    (out / "metrics.json").write_text(json.dumps(m))
    r = runner.invoke(main, ["predict", str(out), __file__])
    assert r.exit_code == 1 and "refused by weights_only loading" in r.output and "pwned" not in r.output


def test_predict_without_a_key_frame_is_a_per_file_error(split_store, runner, tmp_path, class_videos, monkeypatch):
    out = tmp_path / "rf"
    r = runner.invoke(main, ["train", str(split_store), "--model", "random-frame", "--epochs", "1", "--out", str(out),
                             "-q"])
    assert r.exit_code == 0, r.output
    import classifiers.predict as predict
    real = predict.sample_video
    clips = sorted(class_videos[0].glob("*.mp4"))[:2]

    def keyless_first(path, *args, **kwargs):  # a file whose key frame the decoder did not give back
        sampled = real(path, *args, **kwargs)
        if str(path) == str(clips[0]):
            sampled.key_frame_image = None
        return sampled
    monkeypatch.setattr(predict, "sample_video", keyless_first)
    r = runner.invoke(main, ["predict", str(out), *map(str, clips)])
    assert r.exit_code == 3, r.output
    assert f"{clips[0]}: ERROR" in r.output and "key frame" in r.output
    assert f"{clips[1]}: " in r.output.replace(f"{clips[1]}: ERROR", "")  # the batch went on


def _open_store_files(store):
    import os
    fds = os.listdir("/proc/self/fd")
    paths = []
    for fd in fds:
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [p for p in paths if p.startswith(str(store))]


def test_training_and_split_ids_close_the_store(split_store, tmp_path):
    from classifiers.config import TrainConfig
    from classifiers.train import run_training
    from vstore.split import split_ids
    assert not _open_store_files(split_store)
    run_training(split_store, TrainConfig(model="knn", k=3), tmp_path / "knn", progress=False)
    assert not _open_store_files(split_store)
    assert len(split_ids(split_store, "test")) == 4
    assert not _open_store_files(split_store)
