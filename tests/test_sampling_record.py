"""One store, one way of sampling: recorded in the manifest and in every run, and used by predict."""
from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from vstore import Store
from vstore.manifest import read_manifest

SAMPLED = {"frames": 8, "sampling": "exact"}  # how conftest's thumb_store is built


def test_the_store_records_its_sampling_and_refuses_other_settings(store_copy, class_videos, tmp_path, runner):
    videos, _ = class_videos
    assert read_manifest(store_copy).sampling == SAMPLED
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "new-00.mp4").write_bytes(sorted(videos.glob("*.mp4"))[0].read_bytes())
    for args, hint in ((["--frames", "4"], "--frames 8 --sampling exact"),
                       (["--frames", "8", "--sampling", "keyframe"], "--frames 8 --sampling exact")):
        r = runner.invoke(main, ["-q", "build", str(extra), "--store", str(store_copy), "--encoder", "thumbnail",
                                 "--workers", "0", *args])
        assert r.exit_code == 1, r.output
        assert f"holds {hint}; refusing to add" in r.output and f"rerun with {hint}" in r.output
        assert len(r.output.strip().splitlines()) == 1
    with Store.open(store_copy) as s:
        assert s.n_videos == 16
    r = runner.invoke(main, ["-q", "build", str(extra), "--store", str(store_copy), "--encoder", "thumbnail",
                             "--workers", "0", "--frames", "8"])
    assert r.exit_code == 0 and "built 1" in r.output
    info = json.loads(runner.invoke(main, ["info", str(store_copy), "--json"]).output)
    assert info["sampling"] == SAMPLED
    assert "--frames 8 --sampling exact" in runner.invoke(main, ["info", str(store_copy)]).output


def _export_json(store_path, out):
    out.mkdir()
    labels = {}
    with Store.open(store_path) as s:
        for vid, label in zip(s.videos.ids, s.videos.labels):
            (out / f"{vid}.json").write_text(json.dumps(s.get_embeddings(vid).astype(float).tolist()))
            labels[vid] = label
    (out.parent / "config.json").write_text(json.dumps(labels))
    return out.parent / "config.json"


def test_import_json_does_not_replace_the_record_and_is_not_mixed_in(store_copy, thumb_store, tmp_path, runner):
    old = _export_json(thumb_store, tmp_path / "old")
    r = runner.invoke(main, ["-q", "import-json", str(tmp_path / "old"), "--store", str(store_copy), "--encoder",
                             "thumbnail"])
    assert r.exit_code == 1 and "holds --frames 8 --sampling exact; refusing to add imported vectors" in r.output
    assert read_manifest(store_copy).sampling == SAMPLED  # untouched (it used to become {"imported_from": ...})
    legacy = tmp_path / "legacy"
    r = runner.invoke(main, ["-q", "import-json", str(tmp_path / "old"), "--store", str(legacy), "--labels", str(old),
                             "--encoder", "thumbnail"])
    assert r.exit_code == 0, r.output
    assert read_manifest(legacy).sampling == {"frames": None, "sampling": "imported"}
    videos = tmp_path / "v"
    videos.mkdir()
    r = runner.invoke(main, ["-q", "build", str(videos), "--store", str(legacy), "--encoder", "thumbnail"])
    assert r.exit_code == 1 and "holds imported vectors" in r.output


def _train(store, out, runner, model="linear"):
    r = runner.invoke(main, ["split", str(store), "--test-size", "0.25"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["-q", "train", str(store), "--model", model, "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output


def test_predict_samples_as_the_run_was_trained(store_copy, class_videos, tmp_path, runner, monkeypatch):
    _train(store_copy, tmp_path / "run", runner)
    ck = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ck["sampling"] == SAMPLED
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["sampling"] == SAMPLED
    # a later write into the store (any writer) changes nothing for this run
    m = json.loads((store_copy / "manifest.json").read_text())
    m["build"] = {"imported_from": "elsewhere"}
    (store_copy / "manifest.json").write_text(json.dumps(m))
    import classifiers.predict as predict
    calls = []
    real = predict.sample_video

    def recording(path, n, mode="exact", **kw):
        calls.append((n, mode))
        return real(path, n, mode=mode, **kw)
    monkeypatch.setattr(predict, "sample_video", recording)
    clip = sorted(class_videos[0].glob("*.mp4"))[0]
    r = runner.invoke(main, ["predict", str(tmp_path / "run"), str(clip)])
    assert r.exit_code == 0, r.output
    assert calls == [(8, "exact")]
    r = runner.invoke(main, ["predict", str(tmp_path / "run"), str(clip), "--frames", "4"])
    assert r.exit_code == 1 and "was trained on videos sampled with --frames 8 --sampling exact" in r.output


def test_a_run_on_imported_vectors_needs_to_be_told_how_they_were_sampled(thumb_store, class_videos, tmp_path,
                                                                          runner):
    labels = _export_json(thumb_store, tmp_path / "old")
    legacy = tmp_path / "legacy"
    r = runner.invoke(main, ["-q", "import-json", str(tmp_path / "old"), "--store", str(legacy), "--labels",
                             str(labels), "--encoder", "thumbnail"])
    assert r.exit_code == 0, r.output
    _train(legacy, tmp_path / "run", runner)
    clip = sorted(class_videos[0].glob("*.mp4"))[0]
    r = runner.invoke(main, ["predict", str(tmp_path / "run"), str(clip)])
    assert r.exit_code == 1 and "trained on imported vectors" in r.output and "--frames N --sampling" in r.output
    r = runner.invoke(main, ["predict", str(tmp_path / "run"), str(clip), "--frames", "8", "--sampling", "exact",
                             "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["label"]


@pytest.mark.parametrize("build", [{"frames": 5, "sampling": "keyframe", "workers": 1}, {"imported_from": "x"}])
def test_stores_written_before_the_record_read_it_from_their_last_build(store_copy, build):
    m = json.loads((store_copy / "manifest.json").read_text())
    del m["sampling"]
    m["build"] = build
    (store_copy / "manifest.json").write_text(json.dumps(m))
    want = ({"frames": None, "sampling": "imported"} if "imported_from" in build
            else {"frames": 5, "sampling": "keyframe"})
    assert read_manifest(store_copy).store_sampling == want
