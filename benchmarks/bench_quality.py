"""Issue 14's quality benchmark: which model, recipe and mixup setting wins, and whether the
differences are more than noise, on synthetic sequence stores whose answer is known
(``classifiers.synthetic``; 64-d, 24 frames, CLIP-scale vectors):

* ``content``: 4 classes told apart by a direction present in every frame (order carries
  nothing), weak enough (``--content-strength`` 0.3 against per-video content of norm 1) that a
  linear head is well below 1.0 (~0.85), so "the temporal model keeps linear's accuracy" means
  something;
* ``order``: two classes holding the same frames in opposite order (fade in vs fade out over
  per-video random content): ``linear`` must be at chance;
* ``mixed``: two content classes (same strength) and one fade-in / fade-out pair.

Every (kind, model, mixup) is trained with ``--folds`` x ``--seeds`` through
``classifiers.train.run_training`` (the code ``vstore train`` runs), on the same folds, default
recipe; the default models (``linear``, ``transformer``, ``random-frame``) also with
``--recipe reference``. The runs of each kind are compared pairwise by ``classifiers.report``
(paired bootstrap over test videos). ``random-frame`` runs without mixup only: its mixup mixes
key-frame pixels, which synthetic stores do not have. Convergence: on the content store's
folds, the default ``linear`` against converged scikit-learn logistic regression on the same
standardised mean-pooled features and folds (``classifiers.folds.logistic_regression_folds``).

    python benchmarks/bench_quality.py            # the reported run: 750 videos per kind (600 folded,
                                                  # 480 training videos per fold), 5 folds x 3 seeds
    python benchmarks/bench_quality.py --kinds content   # one kind (the grid is three such runs)
    python benchmarks/bench_quality.py --compare  # the model-choice tables of docs/classifiers.md
    python benchmarks/bench_quality.py --quick    # a smoke run

Results: ``benchmarks/out/bench_quality[_<kinds>].json``, ``benchmarks/out/quality/<kind>.md``;
``--compare``: ``benchmarks/out/bench_quality_compare.json``.
"""
from __future__ import annotations

import shutil
import time
from typing import Any, Optional

import numpy as np
from common import load_average, out_dir, parser, save, table

from classifiers.config import TrainConfig
from classifiers.folds import logistic_regression_folds
from classifiers.report import build_report, paired_comparisons
from classifiers.synthetic import SequenceConfig, make_sequence_store
from classifiers.train import run_training

MODELS = ("linear", "transformer", "transformer-reference", "random-frame")
NO_MIXUP = ("random-frame",)  # mixup mixes its key-frame pixels: synthetic stores hold embeddings only
REFERENCE_RECIPE = ("linear", "transformer", "random-frame")  # the default models, also run with --recipe reference
GOALS = {"order_transformer_min": 0.95, "order_linear_max": 0.6, "content_gap_max": 0.01, "lr_gap_max": 0.005}


def store_config(kind: str, videos: int, strength: float, seed: int = 0, frames: int = 24,
                 fade: float = 0.5, scale: float = 10.0) -> SequenceConfig:
    return SequenceConfig(kind=kind, n_videos=videos, dim=64, frames=frames, n_classes=4 if kind == "content" else 2,
                          content_strength=strength, fade=fade, scale=scale, seed=seed)


def run_grid(args) -> dict[str, Any]:
    root = out_dir("quality")
    result: dict[str, Any] = {"videos": args.videos, "folds": args.folds, "seeds": args.seeds, "epochs": args.epochs,
                              "models": args.models, "mixup_models": args.mixup_models, "no_mixup": args.no_mixup,
                              "content_strength": args.content_strength, "kinds": {}, "goals": GOALS,
                              "load_average_start": load_average()}
    rows = []
    for kind in args.kinds:
        store = root / f"{kind}-{args.videos}"
        shutil.rmtree(store, ignore_errors=True)
        make_sequence_store(store, store_config(kind, args.videos, args.content_strength), test_size=0.2)
        runs, figures = [], {}
        mixup_models = [m for m in (args.mixup_models or args.models) if m not in NO_MIXUP and not args.no_mixup]
        grid = [(m, mix, "default") for m in args.models for mix in ((False, True) if m in mixup_models else (False,))]
        grid += [(m, False, "reference") for m in args.models if m in REFERENCE_RECIPE and not args.no_reference]
        for model, mixup, recipe in grid:
            name = model + ("-mixup" if mixup else "") + ("-reference-recipe" if recipe == "reference" else "")
            cfg = TrainConfig(model=model, mixup=mixup, recipe=recipe, seeds=args.seeds, folds=args.folds,
                              epochs=args.epochs, device="cpu")
            t = time.perf_counter()
            m = run_training(store, cfg, root / "runs" / kind / name, progress=False)
            seconds = time.perf_counter() - t
            figures[name] = {"f1_micro": m["f1_micro"], "f1_micro_std": m["f1_micro_std"], "seconds": seconds,
                             "n_evaluations": m["n_evaluations"]}
            rows.append([kind, name, m["f1_micro"], m["f1_micro_std"], round(seconds, 1)])
            runs.append(root / "runs" / kind / name)
            print(f"{kind:8s} {name:34s} F1 micro {m['f1_micro']:.4f} ± {m['f1_micro_std']:.4f}  ({seconds:.0f} s, "
                  f"load {load_average()})", flush=True)
        text, loaded = build_report(runs)
        (root / f"{kind}.md").write_text(f"# bench_quality: {kind}\n\n{text}")
        names = [r.path.name for r in loaded]
        pairs = [{"a": names[c["a"]], "b": names[c["b"]], "mean_diff": c["mean_diff"], "ci": c["ci"],
                  "p_value": c["p_value"], "significant": c["significant"]} for c in paired_comparisons(loaded)]
        result["kinds"][kind] = {"runs": figures, "paired": pairs}
        if kind == "content" and "linear" in figures:
            lr = logistic_regression_folds(store, args.folds)
            result["convergence"] = {"logistic_regression_folds": lr, "logistic_regression": float(np.mean(lr)),
                                     "default_linear": figures["linear"]["f1_micro"],
                                     "gap": float(np.mean(lr)) - figures["linear"]["f1_micro"]}
    result["load_average_end"] = load_average()
    print()
    table(rows, ["kind", "run", "F1 micro", "std", "seconds"])
    result["checks"] = checks(result)
    return result


def _pair(kind: dict, a: str, b: str) -> Optional[dict]:
    """The paired comparison of runs ``a`` and ``b`` as ``a`` minus ``b``."""
    for p in kind["paired"]:
        if (p["a"], p["b"]) == (a, b):
            return p
        if (p["a"], p["b"]) == (b, a):
            return {**p, "a": a, "b": b, "mean_diff": -p["mean_diff"], "ci": [-p["ci"][1], -p["ci"][0]]}
    return None


def checks(result: dict[str, Any]) -> dict[str, bool]:
    k = result["kinds"]
    out: dict[str, bool] = {}
    f1 = lambda kind, run: k[kind]["runs"][run]["f1_micro"]  # noqa: E731
    if "order" in k and {"transformer", "linear"} <= set(k["order"]["runs"]):
        out[f"order: default transformer {f1('order', 'transformer'):.4f} >= 0.95"] = f1("order", "transformer") >= 0.95
        out[f"order: linear at chance ({f1('order', 'linear'):.4f} <= 0.6)"] = f1("order", "linear") <= 0.6
    for kind in ("content", "mixed"):
        if kind in k and {"transformer", "linear"} <= set(k[kind]["runs"]):
            gap = f1(kind, "linear") - f1(kind, "transformer")
            p = _pair(k[kind], "transformer", "linear")
            out[f"{kind}: transformer {f1(kind, 'transformer'):.4f} within 0.01 of linear {f1(kind, 'linear'):.4f} "
                f"or better (gap {gap:+.4f}, p {p['p_value']:.4f})"] = gap <= 0.01
    if "convergence" in result:
        c = result["convergence"]
        out[f"convergence: default linear {c['default_linear']:.4f} within 0.005 of logistic regression "
            f"{c['logistic_regression']:.4f} or better (same folds)"] = c["gap"] <= 0.005
    for kind, d in k.items():  # no default model below the reference recipe
        for model in REFERENCE_RECIPE:
            ref = f"{model}-reference-recipe"
            if model in d["runs"] and ref in d["runs"]:
                p = _pair(d, model, ref)
                diff = d["runs"][model]["f1_micro"] - d["runs"][ref]["f1_micro"]
                worse = p is not None and p["significant"] and p["mean_diff"] < 0
                out[f"{kind}: default {model} {d['runs'][model]['f1_micro']:.4f} not below the reference recipe "
                    f"{d['runs'][ref]['f1_micro']:.4f} ({diff:+.4f}, p {p['p_value'] if p else float('nan'):.4f})"] = \
                    diff >= 0 or not worse
    return out


def run_compare(args) -> dict[str, Any]:
    """The model-choice tables of docs/classifiers.md, from the code as it is.

    1. Architecture (the study's recipe, Adam 1e-3, batch 16, 15 epochs, for every model: the
       optimisation is held fixed), stored split of 600 videos (480 train, 120 test), seed 0,
       on four stores: order-only at CLIP scale with fade 0.5 (the default data) and 1.0,
       order-only at unit scale with fade 1.0, content-only.
    2. The linear part (default recipe, 5 folds x 1 seed of the test suite's content store,
       400 videos, 8 frames, strength 0.3, and of the order store): the temporal part alone
       (as before it had one), with the linear part but no held-out part, and the default."""
    root = out_dir("quality-compare")
    result: dict[str, Any] = {"architecture": [], "linear_part": [], "load_average_start": load_average()}
    stores = [("order-only, CLIP-scale, fade 0.5 (the default data)", store_config("order", 600, 0.5)),
              ("order-only, CLIP-scale, fade 1.0", store_config("order", 600, 0.5, fade=1.0)),
              ("order-only, unit scale, fade 1.0", store_config("order", 600, 0.5, fade=1.0, scale=1.0)),
              ("content-only, 4 classes (strength 0.5)", store_config("content", 600, 0.5))]
    for i, (what, scfg) in enumerate(stores):
        store = root / f"arch-{i}"
        shutil.rmtree(store, ignore_errors=True)
        make_sequence_store(store, scfg, test_size=0.2)
        row: dict[str, Any] = {"data": what}
        for model in ("transformer-reference", "transformer", "linear"):
            m = run_training(store, TrainConfig(model=model, recipe="reference", epochs=15, device="cpu"),
                             root / "runs" / f"arch-{i}-{model}", progress=False)
            row[model] = m["f1_micro"]
        print(f"architecture | {what} | " + " | ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "data"),
              flush=True)
        result["architecture"].append(row)
    variants = [("temporal part alone", {"linear_part": False, "holdout": 0.0}),
                ("+ linear part, no held-out part", {"holdout": 0.0}),
                ("+ linear part, 15% held out (default)", {}),
                ("linear", {"model": "linear"})]
    content = store_config("content", 400, 0.3, seed=1, frames=8)
    for kind, scfg, test_size in (("content (test suite's store)", content, 0.25),
                                  ("order (test suite's store)", store_config("order", 600, 0.5), 0.2)):
        store = root / f"part-{kind.split()[0]}"
        shutil.rmtree(store, ignore_errors=True)
        make_sequence_store(store, scfg, test_size=test_size)
        row = {"data": kind}
        runs = []
        for what, extra in variants:
            extra = {"model": "transformer", **extra}
            out = root / "runs" / f"part-{kind.split()[0]}-{len(runs)}"
            m = run_training(store, TrainConfig(folds=5, device="cpu", **extra), out, progress=False)
            row[what] = {"f1_micro": m["f1_micro"], "f1_micro_std": m["f1_micro_std"]}
            runs.append(out)
        _, loaded = build_report(runs)
        row["paired_vs_linear"] = {variants[c["a"]][0]: {"mean_diff": c["mean_diff"], "p_value": c["p_value"]}
                                   for c in paired_comparisons(loaded) if c["b"] == len(variants) - 1}
        print(f"linear part | {kind} | " + " | ".join(
            f"{w} {row[w]['f1_micro']:.3f} ± {row[w]['f1_micro_std']:.3f}" for w, _ in variants), flush=True)
        result["linear_part"].append(row)
    result["load_average_end"] = load_average()
    return result


def main() -> None:
    p = parser(__doc__.split("\n\n")[0], repeats=1)
    p.add_argument("--videos", type=int, default=750, help="videos per store; test split 0.2: 600 folded, "
                                                           "480 training videos per fold at 5 folds")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (default: the recipe's)")
    p.add_argument("--content-strength", type=float, default=0.3,
                   help="norm of a content class's direction (per-video content: norm 1)")
    p.add_argument("--kinds", nargs="+", default=["content", "order", "mixed"])
    p.add_argument("--no-mixup", action="store_true", help="only runs without mixup")
    p.add_argument("--mixup-models", nargs="+", default=None, choices=MODELS,
                   help="models also run with mixup (default: every model that can, not random-frame)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference-recipe runs")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to run (default: all)")
    p.add_argument("--compare", action="store_true", help="the model-choice tables of docs/classifiers.md instead")
    args = p.parse_args()
    if args.compare:
        save("bench_quality_compare", run_compare(args))
        return
    if args.quick:
        args.videos, args.folds, args.seeds = min(args.videos, 300), min(args.folds, 3), 1
    result = run_grid(args)
    for kind, d in result["kinds"].items():
        for pr in d["paired"]:
            if pr["significant"]:
                print(f"{kind}: {pr['a']} vs {pr['b']}: {pr['mean_diff']:+.4f} (p {pr['p_value']:.4f}) significant")
    for what, ok in result["checks"].items():
        print(f"{what}: {'PASS' if ok else 'FAIL'}")
    full = sorted(args.kinds) == ["content", "mixed", "order"]
    save("bench_quality" + ("_quick" if args.quick else "") + ("" if full else "_" + "_".join(args.kinds)), result)


if __name__ == "__main__":
    main()
