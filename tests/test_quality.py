"""Issue 14: results a researcher can trust. Synthetic sequence stores whose answer is known
(classifiers.synthetic): order-only classes need a temporal model that sees order; the
default recipe converges; the reference study's recipe and architecture stay reproducible."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from classifiers.config import TrainConfig
from classifiers.synthetic import SequenceConfig, make_sequence_store, make_sequences
from classifiers.train import run_training


@pytest.fixture(scope="module")
def order_seq_store(tmp_path_factory):
    """The issue's failing case: 600 videos (480 train, 120 test), 64-d, 24 frames; a fixed
    direction fading in vs fading out over per-video random content, CLIP-scale vectors."""
    return make_sequence_store(tmp_path_factory.mktemp("order") / "store",
                               SequenceConfig(kind="order", n_videos=600, dim=64, frames=24), test_size=0.2)


@pytest.fixture(scope="module")
def content_seq_store(tmp_path_factory):
    """Four content classes, weak enough that a linear head is not trivially perfect."""
    cfg = SequenceConfig(kind="content", n_videos=400, dim=64, frames=8, n_classes=4, content_strength=0.3, seed=1)
    return make_sequence_store(tmp_path_factory.mktemp("content") / "store", cfg, test_size=0.25)


def test_order_sequences_differ_only_in_order():
    """Without noise, a fade-out video reversed is a fade-in video over other content: the
    fading parts are equal, so the classes' frame sets (and mean-pooled vectors) match."""
    x, y, names = make_sequences(SequenceConfig(kind="order", n_videos=40, dim=16, frames=6, noise=0.0))
    assert names == ["fade-in", "fade-out"] and x.shape == (40, 6, 16) and list(np.bincount(y)) == [20, 20]
    fade_in = x[y == 0] - x[y == 0][:, :1]  # (20, T, D): content removed
    fade_out_reversed = x[y == 1][:, ::-1] - x[y == 1][:, -1:]
    np.testing.assert_allclose(fade_in, np.broadcast_to(fade_in[:1], fade_in.shape), atol=1e-4)
    np.testing.assert_allclose(fade_out_reversed, np.broadcast_to(fade_in[:1], fade_in.shape), atol=1e-4)


def test_order_only_sequences_need_the_default_transformer(order_seq_store, tmp_path):
    """The study's transformer under its recipe stays near chance; the default one learns order."""
    ref = run_training(order_seq_store, TrainConfig(model="transformer-reference", recipe="reference", epochs=15),
                       tmp_path / "ref", progress=False)
    # the same optimisation for both architectures (the study's recipe, 15 epochs), so the test
    # isolates the architecture; measured: reference 0.458, default transformer 1.000
    new = run_training(order_seq_store, TrainConfig(model="transformer", recipe="reference", epochs=15),
                       tmp_path / "new", progress=False)
    lin = run_training(order_seq_store, TrainConfig(model="linear", epochs=20), tmp_path / "lin", progress=False)
    assert new["n_test"] == 120 and new["n_train"] == 480
    assert ref["f1_micro"] <= 0.75, ref["f1_micro"]
    assert new["f1_micro"] >= 0.95, new["f1_micro"]
    assert lin["f1_micro"] <= 0.65, lin["f1_micro"]  # chance: the frame sets are the same


def test_recipes_resolve_and_are_saved():
    ref = TrainConfig(model="linear", recipe="reference")
    assert (ref.epochs, ref.batch_size, ref.lr, ref.weight_decay, ref.schedule, ref.standardize) == \
        (10, 16, 1e-3, 0.0, "constant", False)
    d = TrainConfig(model="linear")
    assert d.recipe == "default" and d.schedule == "cosine" and d.standardize and d.epochs == 100
    assert TrainConfig(model="transformer", epochs=3).epochs == 3
    assert TrainConfig.from_dict({"model": "linear", "epochs": 10}).recipe == "reference"  # runs saved before recipes
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig(recipe="fast")


def test_default_linear_converges_to_logistic_regression(content_seq_store, tmp_path):
    """The default recipe reaches converged (sklearn) logistic regression on the same features
    and split; the reference recipe may stop short, never above it by more than noise."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from vstore import Store
    from vstore.split import load_split
    with Store.open(content_seq_store) as s:
        split = load_split(content_seq_store)
        ids = {p: [v for v in s.videos.ids if split.assignment.get(v) == p] for p in ("train", "test")}
        xs = {p: s.video_means(ids[p]) for p in ids}
        ys = {p: s.label_indices(ids[p]) for p in ids}
    scaler = StandardScaler().fit(xs["train"])
    lr = LogisticRegression(max_iter=10_000).fit(scaler.transform(xs["train"]), ys["train"])
    target = f1_score(ys["test"], lr.predict(scaler.transform(xs["test"])), average="micro")
    default = run_training(content_seq_store, TrainConfig(model="linear"), tmp_path / "d", progress=False)
    reference = run_training(content_seq_store, TrainConfig(model="linear", recipe="reference"), tmp_path / "r",
                             progress=False)
    assert default["f1_micro"] >= target - 0.02, (default["f1_micro"], target)
    assert default["f1_micro"] >= reference["f1_micro"] - 0.02, (default["f1_micro"], reference["f1_micro"])


def test_standardisation_is_saved_with_the_model(content_seq_store, tmp_path):
    from classifiers.runs import load_run
    run_training(content_seq_store, TrainConfig(model="linear", epochs=1), tmp_path / "run", progress=False)
    ck = load_run(tmp_path / "run", with_checkpoint=True).checkpoint
    sd = ck["state_dict"]
    assert ck["model_config"]["standardize"] and ck["train_config"]["recipe"] == "default"
    assert not torch.allclose(sd["scale.std"], torch.ones_like(sd["scale.std"]))


def test_split_from_given_lists(store_copy, runner, tmp_path):
    """The reference study's [[id, label], ...] lists, a CSV and a plain id list; ids the store
    lacks and labels that disagree are reported; the origin is in split.json."""
    import json

    from cli.main import main
    from vstore import Store
    from vstore.split import load_split
    with Store.open(store_copy) as s:
        pairs = list(zip(s.videos.ids, s.videos.labels))
    train, test = pairs[:12], pairs[12:]
    (tmp_path / "train_config.json").write_text(json.dumps([[v, lab] for v, lab in train] + [["not-here", "x"]]))
    wrong = [[v, lab] for v, lab in test]
    wrong[0][1] = "some-other-label"
    (tmp_path / "test_config.json").write_text(json.dumps(wrong))
    r = runner.invoke(main, ["split", str(store_copy), "--from", str(tmp_path / "train_config.json"),
                             str(tmp_path / "test_config.json")])
    assert r.exit_code == 0, r.output
    assert "train 12, val 0, test 4 (given by" in r.output
    assert "1 train id(s) are not in the store (ignored): not-here" in r.output
    assert f"1 label(s) disagree with the store's (the store's are used): {test[0][0]} (some-other-label vs" in r.output
    split = load_split(store_copy)
    assert split.ids("test") == [v for v, _ in sorted(test)] or sorted(split.ids("test")) == sorted(v for v, _ in test)
    assert split.origin["kind"] == "given" and split.origin["not_in_store"]["train"] == 1
    assert split.origin["files"]["test"]["sha256"] and split.origin["label_disagreements"] == 1
    # CSV with a header, a plain id list (and a val list)
    (tmp_path / "train.csv").write_text("video_id,label\n" + "".join(f"{v},{lab}\n" for v, lab in train[:8]))
    (tmp_path / "val.txt").write_text("# validation\n" + "".join(f"{v}\n" for v, _ in train[8:]))
    (tmp_path / "test.txt").write_text("".join(f"{v}\n" for v, _ in test))
    r = runner.invoke(main, ["split", str(store_copy), "--from", str(tmp_path / "train.csv"), str(tmp_path / "test.txt"),
                             str(tmp_path / "val.txt")])
    assert r.exit_code == 0 and "train 8, val 4, test 4" in r.output, r.output
    # an id in two parts is refused; --from needs two or three files
    (tmp_path / "leak.txt").write_text(train[0][0] + "\n")
    r = runner.invoke(main, ["split", str(store_copy), "--from", str(tmp_path / "train.csv"), str(tmp_path / "leak.txt")])
    assert r.exit_code == 1 and "is listed in both the train list and the test list" in r.output
    r = runner.invoke(main, ["split", str(store_copy), "--from", str(tmp_path / "train.csv")])
    assert r.exit_code == 2 and "--from takes a train list" in r.output
    # a list nested past the JSON parser's depth is a one-line error, as a labels file's is
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    r = runner.invoke(main, ["split", str(store_copy), "--from", str(tmp_path / "deep.json"), str(tmp_path / "test.txt")])
    assert r.exit_code == 1 and "JSON nested too deeply to be a split list" in r.output, r.output


def test_stratified_folds_partition_and_repeat():
    from classifiers.folds import stratified_folds
    ids = [f"v{i}" for i in range(30)]
    labels = ["a"] * 12 + ["b"] * 9 + ["c"] * 9
    folds = stratified_folds(ids, labels, 3)
    assert sorted(sum(folds, [])) == sorted(ids) and [len(f) for f in folds] == [10, 10, 10]
    for f in folds:
        assert sorted(labels[int(v[1:])] for v in f).count("a") == 4
    assert folds == stratified_folds(ids, labels, 3) and folds != stratified_folds(ids, labels, 3, repeat=1)


def test_paired_bootstrap_known_answers():
    from classifiers.folds import paired_bootstrap
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.8).astype(float)
    same = paired_bootstrap(a, a)
    assert same.mean_diff == 0 and same.p_value == 1.0 and not same.significant
    better = paired_bootstrap(np.ones(400), a)  # always right vs right 80% of the time
    assert better.significant and better.ci_low > 0.1 and better.mean_diff == pytest.approx(1 - a.mean())
    noise = paired_bootstrap((rng.random(400) < 0.5).astype(float), (rng.random(400) < 0.5).astype(float))
    assert noise.ci_low < 0 < noise.ci_high


def test_folds_and_paired_report(content_seq_store, runner, tmp_path):
    """Identical runs: no significant difference; a trained model vs one left at its random
    initialisation (learning rate ~0): significant. Same folds in every run."""
    import json

    from cli.main import main
    common = ["--model", "linear", "--folds", "3", "--repeats", "2", "--epochs", "5", "-q"]
    for name, extra in (("a", []), ("a2", []), ("untrained", ["--lr", "1e-12"])):
        r = runner.invoke(main, ["train", str(content_seq_store), *common, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    assert "3 folds x 2 repeat(s) over 300 videos" in r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert len(m["per_fold"]) == 6 and {(f["repeat"], f["fold"]) for f in m["per_fold"]} == \
        {(r, k) for r in range(2) for k in range(3)}
    assert m["f1_micro"] == pytest.approx(np.mean([f["f1_micro"] for f in m["per_fold"]]))
    units = (tmp_path / "a" / "test_units.csv").read_text().splitlines()
    assert len(units) == 1 + 2 * 300  # every train video tested once per repeat, the split's test part held out
    r = runner.invoke(main, ["report", str(tmp_path / "a"), str(tmp_path / "a2"), str(tmp_path / "untrained")])
    assert r.exit_code == 0, r.output
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
            for line in r.output.splitlines() if line.startswith("| linear")}
    same = next(v for k, v in rows.items() if "[a]" in k and "[a2]" in k)
    assert "+0.0000" in same and same.rstrip().endswith("| no |")
    vs_untrained = next(v for k, v in rows.items() if "[a]" in k and "[untrained]" in k)
    assert vs_untrained.rstrip().endswith("| **yes** |") and "| 600 |" in vs_untrained


def test_memory_mapped_training_view(order_seq_store, tmp_path):
    """Written once per generation with verified checksums, mapped without copying, the same
    frames as the store, invalidated by a new generation; training from it matches in-memory."""
    import shutil

    from classifiers.data import load_split_data
    from classifiers.synthetic import write_sequence_store
    from vstore import Store
    from vstore.train_view import open_train_view, verify_train_view
    store_path = tmp_path / "store"
    shutil.copytree(order_seq_store, store_path)
    with Store.open(store_path) as s:
        view = open_train_view(s)
        verify_train_view(view)
        assert isinstance(view.frames, np.memmap) and view.frames.shape == (600, 24, 64)
        view.advise_random()  # a view larger than memory: no readahead; reads are unchanged
        ids = list(s.videos.ids)[:50]
        padded = s.load_padded(ids, dtype=np.float16)
        np.testing.assert_array_equal(np.asarray(view.frames[view.rows(ids)]), padded.embeddings)
        again = open_train_view(s)
        assert again.path == view.path
        mapped = load_split_data(s, ids, "transformer", torch.device("cpu"), memmap=True)
        full = load_split_data(s, ids, "transformer", torch.device("cpu"), memmap=False)
        assert mapped.stream is not None and not mapped.tensors
        got = list(mapped.batches(8, shuffle=torch.Generator().manual_seed(0)))
        assert sorted(torch.cat([i for i, _ in got]).tolist()) == list(range(50))
        for idx, batch in got:
            torch.testing.assert_close(batch["frames"], full.tensors["frames"][idx])
            assert torch.equal(batch["valid"], full.tensors["valid"][idx])
        # over the budget: each block read in file order, then put back in the epoch's order
        cold = load_split_data(s, ids, "transformer", torch.device("cpu"), memmap=True, memory_budget=0)
        assert cold.stream.file_order and not mapped.stream.file_order
        cold.stream.block_bytes = 24 * 64 * 4 * 8 * 2  # blocks of 2 batches: several blocks
        got_cold = list(cold.batches(8, shuffle=torch.Generator().manual_seed(0)))
        assert [i.tolist() for i, _ in got_cold] == [i.tolist() for i, _ in got]
        for (_, a), (_, b) in zip(got_cold, got):
            assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["valid"], b["valid"])
    x = np.ones((2, 24, 64), dtype=np.float32)
    write_sequence_store(store_path, x, np.array([0, 1]), ["fade-in", "fade-out"], test_size=0, ids=["new-a", "new-b"])
    with Store.open(store_path) as s:
        fresh = open_train_view(s)
        assert fresh.path != view.path and not view.path.exists() and fresh.frames.shape[0] == 602
