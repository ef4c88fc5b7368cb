"""Issue 14: results a researcher can trust. Synthetic sequence stores whose answer is known
(classifiers.synthetic): order-only classes need a temporal model that sees order; the
default recipe converges; the reference study's recipe and architecture stay reproducible."""
from __future__ import annotations

from pathlib import Path

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


def test_default_transformer_learns_order_with_default_settings(order_seq_store, tmp_path):
    """What a user gets from `vstore train --model transformer` and nothing else: the default
    recipe (40 epochs, AdamW + cosine, standardised features), the linear part fitted first,
    15% of the 480 training videos held out to choose the epoch. Measured: 1.000."""
    m = run_training(order_seq_store, TrainConfig(model="transformer"), tmp_path / "t", progress=False)
    cfg = m["config"]
    assert (cfg["epochs"], cfg["holdout"], cfg["recipe"], m["n_train"]) == (40, 0.15, "default", 480)
    assert m["f1_micro"] >= 0.95, m["f1_micro"]


def test_default_transformer_keeps_linear_content_accuracy(content_seq_store, tmp_path):
    """On content-only data that a linear head does not solve (4 classes, 8 frames, weak class
    direction: linear ~0.80), the default temporal model loses nothing to mean pooling.
    5 folds x seed 0, default settings for both, the same folds.

    Tolerance: over 5 folds x 3 seeds on this store the per-fold difference (transformer minus
    linear) has a standard deviation of 0.023, so the mean of 5 folds has a standard error of
    ~0.010; 0.02 is two of them. Measured: linear 0.813, transformer 0.823 (+0.010 at seed 0;
    +0.000 over 3 seeds). The transformer without its linear part (before this design) was
    0.037 below linear at seed 0 (0.031 over 3 seeds, p 0.02) and fails this check."""
    lin = run_training(content_seq_store, TrainConfig(model="linear", folds=5), tmp_path / "lin", progress=False)
    tr = run_training(content_seq_store, TrainConfig(model="transformer", folds=5), tmp_path / "tr", progress=False)
    assert 0.7 <= lin["f1_micro"] <= 0.9, lin["f1_micro"]  # a store where the comparison means something
    assert tr["f1_micro"] >= lin["f1_micro"] - 0.02, (tr["f1_micro"], lin["f1_micro"])


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
    """The default recipe's linear head is no worse than converged logistic regression on the
    same standardised features and folds, within the issue's 0.005; the study's recipe falls
    short of it (so the check can fail).

    Why 0.005 holds here: every one of the 300 pooled videos is a test video once (5 folds), so
    one video is 0.0033 of accuracy, and both models see the same folds (no fold-to-fold noise
    between them). Measured: logistic regression 0.750, default 0.813, reference 0.727. (On the
    stored split's 100 test videos alone one video is 0.01: that split could not resolve 0.005.)"""
    from classifiers.folds import logistic_regression_folds
    target = float(np.mean(logistic_regression_folds(content_seq_store, 5)))
    default = run_training(content_seq_store, TrainConfig(model="linear", folds=5), tmp_path / "d", progress=False)
    reference = run_training(content_seq_store, TrainConfig(model="linear", recipe="reference", folds=5),
                             tmp_path / "r", progress=False)
    assert default["accuracy"] >= target - 0.005, (default["accuracy"], target)
    assert reference["accuracy"] < target - 0.005, (reference["accuracy"], target)  # the study's recipe underfits
    assert default["accuracy"] > reference["accuracy"]


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


REFERENCE_SPLIT = Path(__file__).parent / "data" / "reference_split"


def test_reference_study_split_files(runner, tmp_path):
    """The reference study's train_config.json / test_config.json as they come ([[id, label], ...],
    labels as class indices, some ids as YouTube URLs, a video the store lacks, one wrong label;
    tests/data/reference_split/README.md): URLs are their ids, indices name the store's sorted
    labels, and only the real problems are reported."""
    import json

    from classifiers.synthetic import write_sequence_store
    from cli.main import main
    from vstore.split import load_split
    labels = json.loads((REFERENCE_SPLIT / "labels.json").read_text())
    ids = sorted(labels)
    names = sorted(set(labels.values()))
    x = np.random.default_rng(0).standard_normal((len(ids), 2, 4)).astype(np.float32)
    store = write_sequence_store(tmp_path / "store", x, np.array([names.index(labels[v]) for v in ids]), names,
                                 test_size=0, ids=ids)
    r = runner.invoke(main, ["split", str(store), "--from", str(REFERENCE_SPLIT / "train_config.json"),
                             str(REFERENCE_SPLIT / "test_config.json")])
    assert r.exit_code == 0, r.output
    assert "train 24, val 0, test 8 (given by" in r.output
    assert "1 train id(s) are not in the store (ignored): dQw4w9WgXcQ" in r.output
    assert "1 label(s) disagree with the store's (the store's are used): _plE-nOA (index 3 = travel vs history)" \
        in r.output
    assert "32 label(s) given as integers were read as indices into the store's sorted label names " \
           "(0=art_music, 1=food, 2=history, 3=travel)" in r.output
    assert "probably numbers its classes differently" not in r.output
    split = load_split(store)
    assert split.assignment["EwyucgqKDuE"] == "train" and split.assignment["Lw7EixBGu60"] == "train"  # the URLs
    assert split.origin["not_in_store"] == {"train": 1, "test": 0}
    assert split.origin["label_disagreements"] == 1 and split.origin["index_labels"] == 32
    # files that number their classes in another order: most indices disagree, and the report says so
    for part in ("train", "test"):
        shifted = [[v, (lab + 1) % 4] for v, lab in json.loads((REFERENCE_SPLIT / f"{part}_config.json").read_text())]
        (tmp_path / f"{part}_shifted.json").write_text(json.dumps(shifted))
    r = runner.invoke(main, ["split", str(store), "--from", str(tmp_path / "train_shifted.json"),
                             str(tmp_path / "test_shifted.json")])
    assert r.exit_code == 0, r.output
    assert "32 of those 32 disagree with the store's labels: the file probably numbers its classes differently" \
        in r.output
    # a store whose label names are themselves integers: integers are compared as text, not as indices
    digits = write_sequence_store(tmp_path / "digits", x[:8], np.arange(8) % 2, ["1", "7"], test_size=0,
                                  ids=ids[:8])
    (tmp_path / "d_train.json").write_text(json.dumps([[v, 1 if i % 2 == 0 else 7] for i, v in enumerate(ids[:6])]))
    (tmp_path / "d_test.json").write_text(json.dumps([[v, 7] for v in ids[6:8]]))
    r = runner.invoke(main, ["split", str(digits), "--from", str(tmp_path / "d_train.json"),
                             str(tmp_path / "d_test.json")])
    assert r.exit_code == 0, r.output
    assert "read as indices" not in r.output and f"1 label(s) disagree with the store's (the store's are used): " \
        f"{ids[6]} (7 vs 1)" in r.output


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


def _report_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """(column A, column B) -> the cells of that paired-comparison row of a report."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 9 and cells[1].startswith("linear") and cells[3].isdigit():
            rows[(cells[1], cells[2])] = cells
    return rows


def test_folds_seeds_and_paired_report(content_seq_store, runner, tmp_path):
    """--folds with --repeats and --seeds: every (repeat, fold, seed) kept, mean and std over all
    of them. The paired test's unit is the test video (each counted once, whatever the repeats
    and seeds), on answers known in advance: a model given the labels against the same model
    given noise (the labels shuffled): significant; two runs that differ only in their seeds,
    of a model that converges to one solution: not significant, p large; runs on other folds:
    not paired at all."""
    import json

    from cli.main import main
    # --lr 0.01: the default recipe's 100 epochs then take the linear head close to its optimum,
    # so a seed changes few predictions (at the default 1e-3, seeds 0-1 vs 2-3 differ by 0.017,
    # p 0.21: not converged, a real seed effect); measured at 0.01: -0.0025, p 0.70
    common = ["--model", "linear", "--folds", "3", "--repeats", "2", "--seeds", "2", "--lr", "0.01", "-q"]
    for name, extra in (("a", []), ("reseeded", ["--first-seed", "2"]), ("noise", ["--shuffle-labels"]),
                        ("fivefold", ["--folds", "5", "--repeats", "1", "--seeds", "1", "--epochs", "1"])):
        r = runner.invoke(main, ["train", str(content_seq_store), *common, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        if name == "a":
            assert "3 folds x 2 repeat(s) over 300 videos" in r.output
        if name == "noise":
            assert "linear (shuffled labels): accuracy" in r.output, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert len(m["per_fold"]) == 12 and {(f["repeat"], f["fold"], f["seed"]) for f in m["per_fold"]} == \
        {(r, k, s) for r in range(2) for k in range(3) for s in range(2)}
    scores = [f["f1_micro"] for f in m["per_fold"]]
    assert m["f1_micro"] == pytest.approx(np.mean(scores)) and m["f1_micro_std"] == pytest.approx(np.std(scores))
    assert m["f1_micro_std"] > 0 and m["n_evaluations"] == 12
    seeds = {f["seed"] for f in json.loads((tmp_path / "reseeded" / "metrics.json").read_text())["per_fold"]}
    assert seeds == {2, 3}
    units = (tmp_path / "a" / "test_units.csv").read_text().splitlines()
    assert len(units) == 1 + 2 * 2 * 300  # every train video tested once per repeat and seed, the test part held out
    r = runner.invoke(main, ["report", *(str(tmp_path / n) for n in ("a", "reseeded", "noise", "fivefold"))])
    assert r.exit_code == 0, r.output
    rows = _report_rows(r.output)
    reseeded = rows[("linear [a]", "linear [reseeded]")]
    assert reseeded[3] == "300"  # videos, not 300 x 2 repeats x 2 seeds
    assert abs(float(reseeded[4])) < 0.01 and float(reseeded[6]) > 0.3 and reseeded[7] == "no", reseeded
    noise = rows[("linear [a]", "linear (shuffled labels)")]
    assert float(noise[4]) > 0.3 and noise[7] == "**yes**", noise
    assert not any("fivefold" in a + b for a, b in rows)  # other folds: not paired on the videos they share
    assert "**Not compared**" in r.output
    assert "[fivefold]: the same videos tested in different folds (3 folds x 2 repeat(s), 300 videos vs 5 folds x " \
           "1 repeat(s), 300 videos)" in r.output


def test_cv_pool_all_folds_over_every_labelled_video(content_seq_store, runner, tmp_path):
    """--cv-pool all: the stored split's test part is folded in (400 videos, not 300)."""
    import csv

    from cli.main import main
    from vstore.split import load_split
    out = tmp_path / "all"
    r = runner.invoke(main, ["train", str(content_seq_store), "--model", "linear", "--folds", "4", "--cv-pool", "all",
                             "--epochs", "5", "--out", str(out), "-q"])
    assert r.exit_code == 0 and "4 folds x 1 repeat(s) over 400 videos" in r.output, r.output
    with open(out / "test_units.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tested = {row["id"] for row in rows}
    held = set(load_split(content_seq_store).ids("test"))
    assert len(rows) == 400 and len(tested) == 400 and held <= tested
    assert {row["fold"] for row in rows} == {"0", "1", "2", "3"}


def test_paired_units_are_videos(tmp_path):
    """read_units: a video evaluated in two repeats by two seeds is one unit, its correctness
    the mean of its four evaluations; layouts differ when a video moves to another fold."""
    from classifiers.folds import comparable, read_units
    rows = ["repeat,fold,seed,id,label,predicted",
            "0,0,0,v1,a,a", "0,0,1,v1,a,b", "1,1,0,v1,a,a", "1,1,1,v1,a,a",
            "0,1,0,v2,b,a", "0,1,1,v2,b,a", "1,0,0,v2,b,b", "1,0,1,v2,b,a"]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    u = read_units(tmp_path / "a.csv")
    assert u.correct == {"v1": 0.75, "v2": 0.25} and u.evaluations == 8
    moved = [r.replace("1,1,0,v1", "1,0,0,v1").replace("1,1,1,v1", "1,0,1,v1") for r in rows]
    (tmp_path / "b.csv").write_text("\n".join(moved) + "\n")
    ok, why = comparable(u, read_units(tmp_path / "b.csv"))
    assert not ok and "different folds" in why
    assert comparable(u, read_units(tmp_path / "a.csv")) == (True, "")


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
