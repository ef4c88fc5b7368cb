"""Issue 14's quality benchmark: which model, recipe and mixup setting wins, and whether the
differences are more than noise, on synthetic sequence stores whose answer is known
(``classifiers.synthetic``):

* ``content``: classes told apart by a direction present in every frame (order carries nothing);
* ``order``: two classes holding the same frames in opposite order (fade in vs fade out over
  per-video random content, CLIP-scale vectors): ``linear`` must be at chance;
* ``mixed``: two content classes and one fade-in / fade-out pair.

Every (kind, model, mixup) is trained with ``--folds`` x ``--seeds`` through
``classifiers.train.run_training`` (the code ``vstore train`` runs), on the same folds, and
the runs of each kind are compared pairwise by ``classifiers.report`` (paired bootstrap).
Convergence (issue 14, section 3): on the content store's stored split, the default-recipe
``linear`` versus converged scikit-learn logistic regression on the same (standardised)
mean-pooled features, and versus the reference recipe.

    python benchmarks/bench_quality.py            # 600 videos per kind, 3 seeds x 5 folds
    python benchmarks/bench_quality.py --quick    # a smoke run that fits a shared 2-core machine

Results: ``benchmarks/out/bench_quality.json`` and ``benchmarks/out/quality/<kind>.md``.
"""
from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
from common import out_dir, parser, save, table

from classifiers.config import TrainConfig
from classifiers.report import build_report, paired_comparisons
from classifiers.synthetic import SequenceConfig, make_sequence_store
from classifiers.train import run_training

MODELS = ("linear", "transformer", "transformer-reference")
GOALS = {"order_transformer_min": 0.95, "order_linear_max": 0.6, "content_gap_max": 0.01, "lr_gap_max": 0.005}


def logistic_regression_f1(store_path) -> float:
    """Converged sklearn logistic regression on the stored split's standardised mean-pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from vstore import Store
    from vstore.split import load_split
    split = load_split(store_path)
    with Store.open(store_path) as s:
        ids = {p: [v for v in s.videos.ids if split.assignment.get(v) == p] for p in ("train", "test")}
        x = {p: s.video_means(ids[p]) for p in ids}
        y = {p: s.label_indices(ids[p]) for p in ids}
    scaler = StandardScaler().fit(x["train"])
    lr = LogisticRegression(max_iter=20_000, tol=1e-8).fit(scaler.transform(x["train"]), y["train"])
    return float(f1_score(y["test"], lr.predict(scaler.transform(x["test"])), average="micro"))


def main() -> None:
    p = parser(__doc__.split("\n\n")[0], repeats=1)
    p.add_argument("--videos", type=int, default=600, help="videos per store (test split 0.2: 480 train)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (default: the recipe's)")
    p.add_argument("--kinds", nargs="+", default=["content", "order", "mixed"])
    p.add_argument("--no-mixup", action="store_true", help="only runs without mixup")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to run (default: all)")
    args = p.parse_args()
    if args.quick:
        args.videos, args.folds, args.seeds = min(args.videos, 300), min(args.folds, 3), 1
    root = out_dir("quality")
    result: dict[str, Any] = {"videos": args.videos, "folds": args.folds, "seeds": args.seeds, "epochs": args.epochs,
                              "kinds": {}, "goals": GOALS}
    rows = []
    for kind in args.kinds:
        store = root / f"{kind}-{args.videos}"
        shutil.rmtree(store, ignore_errors=True)
        make_sequence_store(store, SequenceConfig(kind=kind, n_videos=args.videos, dim=64, frames=24,
                                                  n_classes=4 if kind == "content" else 2), test_size=0.2)
        runs, figures = [], {}
        for model in args.models:
            for mixup in ((False,) if args.no_mixup else (False, True)):
                name = model + ("-mixup" if mixup else "")
                cfg = TrainConfig(model=model, mixup=mixup, seeds=args.seeds, folds=args.folds, epochs=args.epochs,
                                  device="cpu")
                t = time.perf_counter()
                m = run_training(store, cfg, root / "runs" / kind / name, progress=False)
                figures[name] = {"f1_micro": m["f1_micro"], "f1_micro_std": m["f1_micro_std"],
                                 "seconds": time.perf_counter() - t}
                rows.append([kind, name, m["f1_micro"], m["f1_micro_std"], round(time.perf_counter() - t, 1)])
                runs.append(root / "runs" / kind / name)
                print(f"{kind:8s} {name:28s} F1 micro {m['f1_micro']:.4f} ± {m['f1_micro_std']:.4f}", flush=True)
        text, loaded = build_report(runs)
        (root / f"{kind}.md").write_text(f"# bench_quality: {kind}\n\n{text}")
        names = [r.path.name for r in loaded]
        pairs = [{"a": names[c["a"]], "b": names[c["b"]], "mean_diff": c["mean_diff"], "p_value": c["p_value"],
                  "significant": c["significant"]} for c in paired_comparisons(loaded)]
        result["kinds"][kind] = {"runs": figures, "paired": pairs}
        if kind == "content":
            ref = run_training(store, TrainConfig(model="linear", recipe="reference", device="cpu"),
                               root / "runs" / kind / "linear-reference-recipe", progress=False)
            dflt = run_training(store, TrainConfig(model="linear", device="cpu"), root / "runs" / kind / "linear-split",
                                progress=False)
            lr = logistic_regression_f1(store)
            result["convergence"] = {"logistic_regression": lr, "default_linear": dflt["f1_micro"],
                                     "reference_recipe_linear": ref["f1_micro"], "gap": lr - dflt["f1_micro"]}
    print()
    table(rows, ["kind", "run", "F1 micro", "std", "seconds"])
    k = result["kinds"]
    checks = {}
    if "order" in k:
        checks["order: default transformer >= 0.95"] = k["order"]["runs"]["transformer"]["f1_micro"] >= 0.95
        checks["order: linear at chance (<= 0.6)"] = k["order"]["runs"]["linear"]["f1_micro"] <= 0.6
    if "content" in k:
        gap = k["content"]["runs"]["linear"]["f1_micro"] - k["content"]["runs"]["transformer"]["f1_micro"]
        checks[f"content: transformer within 0.01 of linear (gap {gap:+.4f})"] = gap <= 0.01
        c = result["convergence"]
        checks[f"convergence: default linear {c['default_linear']:.4f} within 0.005 of logistic regression "
               f"{c['logistic_regression']:.4f}"] = c["gap"] <= 0.005
        checks[f"convergence: default linear >= reference recipe {c['reference_recipe_linear']:.4f}"] = \
            c["default_linear"] >= c["reference_recipe_linear"]
    for kind, d in k.items():
        for pr in d["paired"]:
            if pr["significant"]:
                print(f"{kind}: {pr['a']} vs {pr['b']}: {pr['mean_diff']:+.4f} (p {pr['p_value']:.4f}) significant")
    for what, ok in checks.items():
        print(f"{what}: {'PASS' if ok else 'FAIL'}")
    result["checks"] = checks
    result["f1_means"] = {kind: float(np.mean([r["f1_micro"] for r in d["runs"].values()])) for kind, d in k.items()}
    save("bench_quality", result)


if __name__ == "__main__":
    main()
