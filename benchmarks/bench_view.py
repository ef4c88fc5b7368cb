"""Issue 14, section 5: the memory-mapped training view (``vstore.train_view``) against
today's paths, timed side by side (``common.interleaved``, medians of per-round ratios):

* opening the (already written, warm) view vs ``Store.load_padded`` of every video
  (goal <= 0.05x);
* one ``transformer`` training epoch (``classifiers.train.train_steps``) with frames gathered
  from the warm view vs from the in-memory float32 tensor (goal <= 1.1x).

    python benchmarks/bench_view.py            # 1,728 videos x 100 frames x 512-d (177 MB float16)
    python benchmarks/bench_view.py --quick    # 432 videos
"""
from __future__ import annotations

import shutil

import common
import numpy as np
import torch

from classifiers.config import TrainConfig
from classifiers.data import load_split_data
from classifiers.models import ModelConfig, build_model
from classifiers.synthetic import write_sequence_store
from classifiers.train import make_optimizer, train_steps
from vstore import Store
from vstore.train_view import open_train_view


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0], repeats=5)
    p.add_argument("--videos", type=int, default=None)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--dim", type=int, default=512)
    args = p.parse_args()
    v = args.videos or (432 if args.quick else 1728)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    path = common.out_dir("view") / f"store-{v}x{args.frames}x{args.dim}"
    if not (path / "manifest.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((v, args.frames, args.dim)) * 0.45).astype(np.float32)
        write_sequence_store(path, x, rng.integers(0, 4, v), ["a", "b", "c", "d"], test_size=0.1)
    store = Store.open(path)
    ids = list(store.videos.ids)
    open_train_view(store)  # written once, outside the timing (its cost is reported below)
    opened = common.interleaved({"view": lambda: open_train_view(store),
                                 "load_padded": lambda: store.load_padded(ids)}, repeats)
    open_ratio = common.ratio(opened["wall"], "view", "load_padded")

    cfg = TrainConfig(model="transformer", device="cpu")
    mcfg = ModelConfig(model="transformer", dim=args.dim, n_classes=4, max_frames=args.frames, standardize=True)
    data = {"view": load_split_data(store, ids, "transformer", torch.device("cpu"), memmap=True),
            "in-RAM": load_split_data(store, ids, "transformer", torch.device("cpu"), memmap=False)}
    torch.manual_seed(0)
    model = build_model(mcfg)
    opt = make_optimizer(model, cfg)

    def epoch(d):
        for _ in train_steps(model, opt, d, cfg, torch.Generator().manual_seed(0), None):
            pass
    ep = common.interleaved({k: (lambda d=d: epoch(d)) for k, d in data.items()}, max(2, repeats // 2))
    epoch_ratio = common.ratio(ep["wall"], "view", "in-RAM")
    print(f"{v} videos x {args.frames} x {args.dim}: open view {common.med(opened['wall']['view']) * 1e3:.2f} ms, "
          f"load_padded {common.med(opened['wall']['load_padded']) * 1e3:.1f} ms; epoch view "
          f"{common.med(ep['wall']['view']):.2f} s, in-RAM {common.med(ep['wall']['in-RAM']):.2f} s")
    verdicts = [common.verdict("open view / load_padded", open_ratio, 0.05, higher_is_better=False),
                common.verdict("epoch from the warm view / in-RAM epoch", epoch_ratio, 1.1, higher_is_better=False)]
    common.save("bench_view" + ("_quick" if args.quick else ""), {
        "videos": v, "frames": args.frames, "dim": args.dim, "open": opened, "epoch": ep, "verdicts": verdicts})
    store.close()


if __name__ == "__main__":
    main()
