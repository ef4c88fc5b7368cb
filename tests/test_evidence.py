"""Per-frame evidence (`vstore predict --evidence / --timeline`) on a real store and real runs.

The store: 16 real H.264 clips of two visually distinct classes (red circle, blue stripes),
built with the weight-free ``thumbnail`` encoder (a colour histogram + 8x8 thumbnail: red and
blue land far apart by construction, where the tiny random CLIP of conftest gives no such
promise), split and trained with the real `vstore split` / `vstore train`. The spliced
video: 12 frames of red circle, then 12 of blue stripes, so the evidence must switch at the
cut.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifiers.evidence import drop_masks, leave_one_out, masked_logits
from classifiers.predict import Predictor
from classifiers.timeline import TimelinePathError, thumbnail_picks, timeline_paths
from cli.main import main
from encoders.errors import EXIT_SOME_FAILED
from encoders.video.synthetic import class_frames, make_class_video, write_video
from vstore.records import key_frame_index

A, B = "red_circle", "blue_stripes"
CUT = 12  # the spliced video's first frame of class B
FRAMES = 8  # sampled per video (positions 1, 4, 7, 10 | 13, 16, 19, 22 of 24)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore.labels import load_labels
    root = tmp_path_factory.mktemp("evidence")
    videos = root / "videos"
    videos.mkdir()
    labels = {}
    for i in range(16):
        kind = (A, B)[i % 2]
        make_class_video(videos / f"{kind}-{i:02d}.mp4", kind, n_frames=16, seed=i)
        labels[f"{kind}-{i:02d}"] = kind
    (root / "labels.json").write_text(json.dumps(labels))
    path = root / "store"
    summary = build_store([videos], path, load_encoder("thumbnail", device="cpu"), labels=load_labels(root / "labels.json"),
                          config=BuildConfig(frames=FRAMES, workers=0, compact=False), progress=False)
    assert summary.built == 16 and not summary.failures
    from click.testing import CliRunner
    r = CliRunner().invoke(main, ["split", str(path), "--test-size", "0.25", "--seed", "0"])
    assert r.exit_code == 0, r.output
    return path


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    from click.testing import CliRunner
    root = tmp_path_factory.mktemp("evidence-runs")
    out = {}
    for model, epochs in (("linear", 30), ("transformer", 15), ("transformer-reference", 15), ("random-frame", 2)):
        out[model] = root / model
        r = CliRunner().invoke(main, ["train", str(store), "--model", model, "--epochs", str(epochs), "--seeds", "1",
                                      "--device", "cpu", "--out", str(out[model]), "-q"])
        assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> Path:
    """24 frames: 12 of class A (red circle), then 12 of class B (blue stripes)."""
    frames = class_frames(A, CUT, seed=101) + class_frames(B, 24 - CUT, seed=102)
    return write_video(tmp_path_factory.mktemp("spliced") / "spliced.mp4", frames, fps=12,
                       options={"preset": "ultrafast", "crf": "23"})


@pytest.fixture(scope="module")
def predictors(runs) -> dict[str, Predictor]:
    return {m: Predictor(r, device="cpu") for m, r in runs.items()}


def assert_switches_at_the_cut(ev):
    labels = ev.frame_labels()
    for i, lab in zip(ev.frame_index, labels):
        if abs(int(i) - CUT) <= 1:
            continue  # the frame straddling the cut may go either way
        assert lab == (A if i < CUT else B), (ev.model, list(zip(ev.frame_index.tolist(), labels)))


@pytest.mark.parametrize("model", ["linear", "transformer", "transformer-reference"])
def test_evidence_switches_at_the_cut(predictors, spliced, model):
    pred = predictors[model].predict_file(spliced, evidence=True)
    ev = pred.evidence
    assert len(ev.frame_index) == FRAMES and ev.used.all()
    assert (ev.frame_index < CUT).sum() == FRAMES // 2  # both halves are sampled
    assert np.all(np.diff(ev.timestamps) > 0) and ev.timestamps[0] >= 0
    assert_switches_at_the_cut(ev)


def test_linear_contributions_reproduce_the_model_logits(predictors, spliced):
    p = predictors["linear"]
    assert p.cfg.standardize and not torch.allclose(p.model.scale.mean, torch.zeros_like(p.model.scale.mean))
    pred = p.predict_file(spliced, evidence=True)
    ev = pred.evidence
    np.testing.assert_allclose(ev.evidence.mean(0), ev.logits, atol=1e-5)  # exact, to float rounding
    plain = p.predict_file(spliced)  # the model's real output, through the unchanged predict path
    probs = torch.softmax(torch.from_numpy(ev.evidence.mean(0)), -1).numpy()
    np.testing.assert_allclose(probs, [plain.probabilities[n] for n in p.label_names], atol=1e-6)
    assert pred.probabilities == plain.probabilities and pred.label == plain.label


@pytest.mark.parametrize("model", ["transformer", "transformer-reference"])
def test_leave_one_out_is_consistent(predictors, store, model):
    from vstore import Store
    p = predictors[model]
    with Store.open(store) as s:
        frames = torch.from_numpy(s.get_embeddings(s.videos.ids[0], dtype=np.float32))  # (T, D)
    T = len(frames)
    full, change, pchange = leave_one_out(p.model, frames)
    keep_all = torch.ones(3, T, dtype=torch.bool)
    # removing no frame changes nothing: the masked, batched path gives the full logits
    torch.testing.assert_close(masked_logits(p.model, frames, keep_all), full[None].expand(3, -1), atol=1e-5, rtol=0)
    # row t is the model with frame t masked out, however the copies are chunked
    for t in (0, T - 1):
        single = p.model({"frames": frames[None], "valid": drop_masks(T, frames.device)[t:t + 1]})[0]
        torch.testing.assert_close(change[t], full - single, atol=1e-5, rtol=0)
    _, change1, _ = leave_one_out(p.model, frames, type(p.evidence_config)(chunk=1))
    torch.testing.assert_close(change1, change, atol=1e-5, rtol=0)
    assert torch.allclose(pchange.sum(1), torch.zeros(T), atol=1e-5)  # probability moves between classes
    # a one-frame video: dropping its frame is defined (no NaN)
    _, one, _ = leave_one_out(p.model, frames[:1])
    assert torch.isfinite(one).all()


def test_random_frame_marks_the_one_frame_it_uses(predictors, spliced):
    p = predictors["random-frame"]
    pred = p.predict_file(spliced, evidence=True)
    ev = pred.evidence
    assert ev.used.sum() == 1
    key = key_frame_index(spliced.stem, 24)
    assert int(ev.frame_index[ev.used][0]) == key
    np.testing.assert_allclose(ev.evidence[ev.used][0], ev.logits)
    assert not ev.evidence[~ev.used].any()
    probs = torch.softmax(torch.from_numpy(ev.logits), -1).numpy()
    np.testing.assert_allclose(probs, [pred.probabilities[n] for n in p.label_names], atol=1e-6)
    assert ev.frame_labels().count(None) == len(ev.used) - 1
    # the timeline's thumbnails: the key frame always among them, none overlapping another
    for gap in (0.0, 0.2, 0.6):
        picks = thumbnail_picks(ev, 8, min_gap=gap)
        assert int(np.flatnonzero(ev.used)[0]) in picks and len(picks) == len(set(picks)) <= 8
        assert np.all(np.diff(ev.timestamps[picks]) >= gap)


def test_timeline_paths():
    assert timeline_paths("t.png", ["a/clip.mp4"]) == [Path("t.png")]
    assert timeline_paths("out/t.png", ["a/x.mp4", "b/y.mkv"]) == [Path("out/t-x.png"), Path("out/t-y.png")]
    assert timeline_paths("out/{stem}.png", ["a/x.mp4", "b/x.mp4"]) == [Path("out/x.png"), Path("out/x-2.png")]
    with pytest.raises(TimelinePathError, match="same PNG"):
        timeline_paths("out/{stem}.png", ["a/x.mp4", "b/x.mp4", "c/x-2.mp4"])


def _png_meta(path: Path) -> dict:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 300
        return json.loads(im.text["vstore-evidence"])


def test_timeline_cli_writes_one_png_per_video_and_survives_a_bad_one(runs, spliced, tmp_path, runner):
    clip = make_class_video(tmp_path / "blue.mp4", B, n_frames=16, seed=7)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "timelines"
    r = runner.invoke(main, ["predict", str(runs["transformer"]), str(spliced), str(bad), str(clip),
                             "--timeline", str(out / "{stem}.png"), "--json", "--device", "cpu"])
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    preds = json.loads(r.stdout)
    assert [Path(p["video"]).name for p in preds] == ["spliced.mp4", "bad.mp4", "blue.mp4"]
    assert preds[1]["error"] and "timeline" not in preds[1] and "evidence" not in preds[1]
    assert sorted(x.name for x in out.iterdir()) == ["blue.png", "spliced.png"]
    for p in (preds[0], preds[2]):
        assert Path(p["timeline"]).is_file()
        assert _png_meta(Path(p["timeline"]))["model"] == "transformer"
        ev = p["evidence"]
        assert ev["units"] == "logit" and "leave-one-frame-out" in ev["method"] and len(ev["frames"]) == FRAMES
        f = ev["frames"][0]
        assert set(f) == {"frame_index", "timestamp", "used", "evidence", "probability_change"}
        assert set(f["evidence"]) == {A, B}
    assert preds[2]["label"] == B


def test_timeline_single_video_text_output(runs, spliced, tmp_path, runner):
    for model in ("linear", "random-frame"):
        png = tmp_path / f"{model}.png"
        r = runner.invoke(main, ["predict", str(runs[model]), str(spliced), "--timeline", str(png), "--evidence",
                                 "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert f"wrote {png}" in r.output and "evidence: " in r.output
        assert [x.name for x in tmp_path.glob(f"{model}*")] == [png.name]  # one video: the path as given
        meta = _png_meta(png)
        assert meta["model"] == model and meta["timeline_config"]["thumbnails"] == 8
    assert r.output.count("(not used)") == FRAMES  # random-frame: 8 sampled frames + its key frame
    r = runner.invoke(main, ["predict", str(runs["linear"]), str(spliced), "--evidence", "--json", "--device", "cpu"])
    assert r.exit_code == 0 and "exact per-frame logits" in r.output and "timeline" not in json.loads(r.output)[0]


def test_a_timeline_that_cannot_be_written_is_a_per_file_error(runs, spliced, tmp_path, runner):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the PNG's folder should be")
    r = runner.invoke(main, ["predict", str(runs["linear"]), str(spliced), "--timeline", str(blocker / "t.png"),
                             "--device", "cpu"])
    assert r.exit_code == EXIT_SOME_FAILED and f"{spliced}: ERROR" in r.output, r.output
