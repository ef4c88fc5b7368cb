"""Benchmark (issue 3): one training epoch of ``linear`` and ``transformer``, vstore vs the reference loop.

Three ways to run one epoch over the training split of a 1,728-video x 100-frame x 512-d store
(batch 16, Adam 1e-3, CPU):

* reference: the reference study's loop, re-implemented: a ``torch.utils.data.Dataset`` whose
  ``__getitem__`` opens and ``json.load``s one video's ``<id>.json`` (100 lists of 512 floats),
  ``DataLoader(batch_size=16, shuffle=True, num_workers=0)``. linear = mean over frames ->
  Linear(512, 4); transformer = vstore's own ``TransformerClassifier`` (same size) fed an
  all-True mask. Plain cross-entropy.
* vstore: ``load_split_data`` once (timed separately: the one-off load), then
  ``classifiers.train.train_steps`` consumed for one epoch with ``TrainConfig(model, batch_size=16)``.
* floor: forward + loss + backward + optimizer step only, over batches sliced before timing
  (the exact dicts the model consumes in vstore's path: pooled (16, 512) for linear, frames
  (16, 100, 512) + mask for the transformer; targets precomputed). Also the floor of the
  "naive" linear that pools (16, 100, 512) frames every step (the reference loop's model).

Goals: linear reference/vstore >= 100x; vstore/floor <= 1.1x for both models. The transformer's
floor is its arithmetic, so its gain over the reference loop is bounded by the JSON share of the
reference epoch, which is reported (the model is not shrunk to move it).

Timing (a shared, noisy machine): the transformer's three cases run in lockstep, one training
step of each in turn (rotating order), each step timed on its own; an epoch's time is the sum of
its steps, so load that comes and goes hits every case alike. The linear's vstore and floor
epochs take milliseconds: they run in lockstep with each other (``--linear-epochs`` epochs in
all), in blocks alternating with whole reference epochs (see ``linear_rounds`` for why the JSON
steps are not interleaved with them). Ratios are medians over rounds (over epochs for the linear's
vstore/floor) of ratios of epochs run side by side.

    python benchmarks/bench_train.py              # writes the data (~1.5 GB) under benchmarks/out/train once
    python benchmarks/bench_train.py --quick      # 432 videos, 2 rounds
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import common
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from classifiers.config import TrainConfig
from classifiers.data import SplitData, load_split_data
from classifiers.mixup import soft_cross_entropy
from classifiers.models import ModelConfig, build_model
from classifiers.train import make_optimizer, seed_everything, train_steps
from vstore import Store, StoreWriter
from vstore.records import VideoEntry
from vstore.split import SplitConfig, load_split, make_split, save_split

T, D, C, BATCH = 100, 512, 4, 16
IDENTITY = {"id": "bench", "name": "bench", "dim": D}
LABELS = [f"class{i}" for i in range(C)]


# -- data -----------------------------------------------------------------------------------------
def ids_of(v: int) -> list[str]:
    return [f"video{i:05d}" for i in range(v)]


def video_vectors(rng: np.random.Generator, centers: np.ndarray, label: int) -> np.ndarray:
    """(T, D) float16: class centre + a per-video offset + per-frame noise (CLIP-like scale)."""
    x = centers[label] + 0.5 * rng.standard_normal(D) + 0.5 * rng.standard_normal((T, D))
    return x.astype(np.float16)


def make_inputs(v: int) -> dict[str, Path]:
    """The store (+ split, test_size 0.1) and the same vectors as reference-study JSON files; made once."""
    root = common.out_dir("train", f"v{v}")
    paths = {"store": root / "store", "json": root / "json"}
    done = root / "complete"
    if done.is_file():
        return paths
    print(f"writing the {v}-video inputs to {root} (once; the JSON files take a few minutes)...", flush=True)
    for p in paths.values():
        if p.exists():
            shutil.rmtree(p)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    centers = 0.3 * rng.standard_normal((C, D))
    paths["json"].mkdir(parents=True)
    labels: dict[str, str] = {}
    Store.create(paths["store"]).close()
    with StoreWriter(paths["store"], IDENTITY) as w:
        for _i, vid in enumerate(ids_of(v)):
            lab = int(rng.integers(C))
            emb = video_vectors(rng, centers, lab)
            w.add(VideoEntry(id=vid, embeddings=emb, frame_index=np.arange(T), timestamp=np.arange(T) / 30.0,
                             label=LABELS[lab], total_frames=T, duration=T / 30.0))
            labels[vid] = LABELS[lab]
            with open(paths["json"] / f"{vid}.json", "w") as f:
                json.dump(emb.astype(np.float32).tolist(), f)  # the same (float16-exact) values, as floats
    (paths["json"] / "config.json").write_text(json.dumps(labels))
    with Store.open(paths["store"]) as s:
        save_split(paths["store"], make_split(s, SplitConfig(test_size=0.1)))
    done.write_text("ok\n")
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def warm(path: Path) -> int:
    """Read every byte once (page cache warm, as for a second epoch); returns the bytes read."""
    n = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                n += len(chunk)
    return n


# -- the reference loop (baseline) -----------------------------------------------------------------
class JsonVideos(torch.utils.data.Dataset):
    """The reference study's dataset: one ``json.load`` per video per epoch."""

    def __init__(self, directory: Path, ids: list[str]):
        self.directory = directory
        self.ids = ids
        config = json.loads((directory / "config.json").read_text())  # {id: label}
        self.labels = [LABELS.index(config[v]) for v in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        with open(self.directory / f"{self.ids[i]}.json") as f:
            frames = json.load(f)
        # np.asarray + from_numpy: the faster of the usual conversions (torch.tensor(list) costs
        # ~3x more per file), so the baseline is, if anything, flattered.
        return torch.from_numpy(np.asarray(frames, dtype=np.float32)), self.labels[i]  # (T, D), int


class MeanLinear(nn.Module):
    """The reference linear model: mean over frames -> Linear(512, 4)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(1))


class ReferenceLoop:
    def __init__(self, model_name: str, directory: Path, ids: list[str], seed: int = 0):
        torch.manual_seed(seed)
        self.model_name = model_name
        self.loader = torch.utils.data.DataLoader(JsonVideos(directory, ids), batch_size=BATCH, shuffle=True,
                                                  num_workers=0)
        if model_name == "linear":
            self.model = MeanLinear()
        else:
            self.model = build_model(ModelConfig(model="transformer", dim=D, n_classes=C, max_frames=T))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data_seconds: list[float] = []  # per epoch: time spent waiting for the DataLoader (JSON)
        self.step_seconds: list[float] = []  # per epoch: forward + loss + backward + step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model_name == "linear":
            return self.model(x)
        return self.model({"frames": x, "valid": torch.ones(x.shape[:2], dtype=torch.bool)})

    def steps(self) -> Iterator[torch.Tensor]:
        """One epoch; each ``next`` runs one step (fetch a batch + train on it)."""
        self.model.train()
        it = iter(self.loader)
        data_s = step_s = 0.0
        while True:
            t = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                data_s += time.perf_counter() - t
                break
            t2 = time.perf_counter()
            data_s += t2 - t
            loss = F.cross_entropy(self.forward(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            step_s += time.perf_counter() - t2
            yield loss.detach()
        self.data_seconds.append(data_s)  # only complete epochs are recorded
        self.step_seconds.append(step_s)


# -- vstore's path and the floor -------------------------------------------------------------------
class VstoreLoop:
    def __init__(self, model_name: str, data: SplitData, seed: int = 0):
        self.cfg = TrainConfig(model=model_name, batch_size=BATCH)
        self.gen = seed_everything(seed)
        self.data = data
        self.model = build_model(ModelConfig(model=model_name, dim=D, n_classes=C, max_frames=T))
        self.opt = make_optimizer(self.model, self.cfg)

    def steps(self) -> Iterator[Any]:
        """One epoch of the library's ``train_steps``."""
        return train_steps(self.model, self.opt, self.data, self.cfg, self.gen, None)


class FloorLoop:
    """forward + loss + zero_grad + backward + Adam step over pre-sliced batches: soft
    cross-entropy on one-hot targets as in ``train_steps``."""

    def __init__(self, model: nn.Module, batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
                 seed: int = 0):
        torch.manual_seed(seed)
        self.model = model
        self.batches = batches  # (inputs, one-hot targets)
        self.opt = make_optimizer(model, TrainConfig(batch_size=BATCH))

    def steps(self) -> Iterator[torch.Tensor]:
        self.model.train()
        model, opt = self.model, self.opt
        for batch, targets in self.batches:
            logits = model(batch)
            loss = soft_cross_entropy(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield loss.detach()


def presliced(data: SplitData, keys: list[str], frames: Optional[torch.Tensor] = None, seed: int = 1
              ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """One shuffled epoch of batches, sliced now (contiguous copies, as index_select makes them)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    out = []
    for a in range(0, len(order), BATCH):
        idx = order[a:a + BATCH]
        batch = {k: data.tensors[k].index_select(0, idx) for k in keys}
        if frames is not None:  # the naive linear: the frames it pools every step
            batch = {"frames": frames.index_select(0, idx)}
        out.append((batch, F.one_hot(data.y.index_select(0, idx), C).float()))
    return out


def naive_floor_model() -> nn.Module:
    m = MeanLinear()
    forward = m.forward
    m.forward = lambda batch: forward(batch["frames"])  # type: ignore[method-assign]
    return m


# -- timing ----------------------------------------------------------------------------------------
Case = Callable[[], Iterator[Any]]  # returns a fresh epoch; each next() is one training step


def warm_up(cases: dict[str, Case], steps: int = 3) -> None:
    """A few steps of each (allocations, Adam state, thread pools); the epochs are abandoned."""
    for f in cases.values():
        it = iter(f())
        for _ in itertools.islice(it, steps):
            pass
        getattr(it, "close", lambda: None)()


def lockstep(cases: dict[str, Case]) -> tuple[dict[str, float], dict[str, float]]:
    """One epoch of every case, step by step in turn (rotating order); wall and CPU seconds each."""
    its = {k: iter(f()) for k, f in cases.items()}
    wall = dict.fromkeys(cases, 0.0)
    cpu = dict.fromkeys(cases, 0.0)
    live, s = list(cases), 0
    while live:
        done = []
        for k in live[s % len(live):] + live[:s % len(live)]:
            c, t = time.process_time(), time.perf_counter()
            try:
                next(its[k])
            except StopIteration:
                done.append(k)
            wall[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
        live = [k for k in live if k not in done]
        s += 1
    return wall, cpu


def rounds(cases: dict[str, Case], n: int, label: str = "") -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(n):
        w, c = lockstep(cases)
        for k in cases:
            wall[k].append(w[k])
            cpu[k].append(c[k])
        if label:
            print(f"  {label} {r + 1}/{n}: " + ", ".join(f"{k} {w[k]:.3g} s" for k in cases), flush=True)
    return wall, cpu


def linear_rounds(reference: Case, fast: dict[str, Case], n: int, per_round: int):
    """The linear: each round runs one reference epoch on its own and a block of ``per_round``
    lockstep epochs of the millisecond cases, in alternating order. (Interleaving the reference's
    JSON steps between the linear's ~1 ms steps would let torch's idle OpenMP worker fall asleep
    before every step, which a real epoch never sees; on a loaded machine waking it costs ms.)
    Returns per-round wall and CPU seconds (fast cases: the block's median epoch), then every
    fast epoch's wall and CPU seconds (the reference's single epochs included, unchanged)."""
    wall: dict[str, list[float]] = {k: [] for k in ["reference", *fast]}
    cpu: dict[str, list[float]] = {k: [] for k in ["reference", *fast]}
    every: dict[str, list[float]] = {k: [] for k in ["reference", *fast]}
    every_cpu: dict[str, list[float]] = {k: [] for k in ["reference", *fast]}
    for r in range(n):
        for part in (("ref", "fast") if r % 2 == 0 else ("fast", "ref")):
            if part == "ref":
                c, t = time.process_time(), time.perf_counter()
                for _ in reference():
                    pass
                t, c = time.perf_counter() - t, time.process_time() - c
                for d, x in ((wall, t), (cpu, c), (every, t), (every_cpu, c)):
                    d["reference"].append(x)
            else:
                w, c = rounds(fast, per_round)
                for k in fast:
                    wall[k].append(statistics.median(w[k]))
                    cpu[k].append(statistics.median(c[k]))
                    every[k] += w[k]
                    every_cpu[k] += c[k]
        print(f"  round {r + 1}/{n}: " + ", ".join(f"{k} {wall[k][-1]:.3g} s" for k in wall), flush=True)
    return wall, cpu, every, every_cpu


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--videos", type=int, default=None, help="videos in the store (default 1728; --quick 432)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--models", default="linear,transformer", help="comma-separated subset of linear,transformer")
    p.add_argument("--linear-epochs", type=int, default=30,
                   help="lockstep epochs of the linear's vstore and floor cases, spread over the rounds")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    v = args.videos or (432 if args.quick else 1728)
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    paths = make_inputs(v)
    with Store.open(paths["store"]) as s:
        split = load_split(paths["store"])
        train_ids = [x for x in s.videos.ids if split.assignment.get(x) == "train"]
    sizes = {k: warm(p) for k, p in paths.items()}
    print(f"{v} videos x {T} frames x {D}-d float16 store ({sizes['store'] / 1e6:.0f} MB), JSON files "
          f"({sizes['json'] / 1e6:.0f} MB), all read once before timing (warm page cache); "
          f"{len(train_ids)} training videos = {math.ceil(len(train_ids) / BATCH)} steps of {BATCH}; "
          f"torch threads {torch.get_num_threads()}; {repeats} rounds in lockstep; "
          f"load average {common.load_average()}", flush=True)

    result: dict[str, Any] = {"videos": v, "train_videos": len(train_ids), "batch_size": BATCH,
                              "threads": torch.get_num_threads(), "repeats": repeats,
                              "torch": torch.__version__, "models": {}}
    verdicts = []
    device = torch.device("cpu")
    for model_name in models:
        print(f"\n== {model_name} ==", flush=True)
        # The one-off load (vstore), timed separately; the store is reopened each time.
        load_times, train = [], None
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            with Store.open(paths["store"]) as s:
                train = load_split_data(s, train_ids, model_name, device)
            load_times.append(time.perf_counter() - t)
        print(f"  vstore one-off load_split_data: {common.med(load_times):.3f} s", flush=True)

        ref = ReferenceLoop(model_name, paths["json"], train_ids)
        vst = VstoreLoop(model_name, train)
        cases: dict[str, Case] = {"reference": ref.steps, "vstore": vst.steps}
        fast: dict[str, Case] = {}
        if model_name == "linear":
            cases["floor"] = FloorLoop(build_model(ModelConfig(model="linear", dim=D, n_classes=C)),
                                       presliced(train, ["pooled"])).steps
            with Store.open(paths["store"]) as s:
                frames = torch.from_numpy(s.load_padded(train_ids).embeddings).float()
            cases["floor_naive"] = FloorLoop(naive_floor_model(), presliced(train, [], frames=frames)).steps
            del frames
            fast = {k: f for k, f in cases.items() if k != "reference"}
        else:
            cases["floor"] = FloorLoop(build_model(ModelConfig(model="transformer", dim=D, n_classes=C, max_frames=T)),
                                       presliced(train, ["frames", "valid"])).steps
        warm_up(cases)
        if fast:
            wall, cpu, every, every_cpu = linear_rounds(cases["reference"], fast, repeats,
                                                        max(1, args.linear_epochs // repeats))
        else:
            wall, cpu = rounds(cases, repeats, label="round")
            every, every_cpu = wall, cpu

        med = {k: common.med(x) for k, x in every.items()}
        ratios = {"reference_over_vstore": common.ratio(wall, "reference", "vstore"),
                  "vstore_over_floor": common.ratio(every, "vstore", "floor"),
                  "reference_over_floor": common.ratio(wall, "reference", "floor"),
                  "cpu_vstore_over_floor": common.ratio(every_cpu, "vstore", "floor")}
        json_share = statistics.median(d / r for d, r in zip(ref.data_seconds, wall["reference"]))
        rows = [["reference (JSON Dataset + DataLoader)", med["reference"], common.med(every_cpu["reference"])],
                ["vstore train_steps", med["vstore"], common.med(every_cpu["vstore"])],
                ["floor (pre-sliced, compute only)", med["floor"], common.med(every_cpu["floor"])]]
        if model_name == "linear":
            rows.append(["floor of the naive linear (pools frames per step)", med["floor_naive"],
                         common.med(every_cpu["floor_naive"])])
            ratios["floor_naive_over_floor"] = common.ratio(every, "floor_naive", "floor")
        print()
        common.table(rows, ["epoch", "wall s", "CPU s"])
        print(f"  one-off load_split_data: {common.med(load_times):.3f} s;  JSON (DataLoader wait) share of "
              f"the reference epoch: {json_share:.1%} ({common.med(ref.data_seconds):.2f} s JSON + "
              f"{common.med(ref.step_seconds):.2f} s steps)")
        if model_name == "linear":
            print(f"  naive floor / floor: {ratios['floor_naive_over_floor']:.2f}x;  CPU-time vstore/floor: "
                  f"{ratios['cpu_vstore_over_floor']:.3f}x")
            verdicts.append(common.verdict("linear reference/vstore", ratios["reference_over_vstore"], 100, True))
        else:
            bound = 1 / (1 - json_share)
            print(f"  bound on reference/vstore from the JSON share: 1 / (1 - {json_share:.3f}) = {bound:.2f}x; "
                  f"CPU-time vstore/floor: {ratios['cpu_vstore_over_floor']:.3f}x")
            print(f"transformer reference/vstore: {ratios['reference_over_vstore']:.2f}x  (reported; bounded by "
                  f"the JSON share)")
        verdicts.append(common.verdict(f"{model_name} vstore/floor", ratios["vstore_over_floor"], 1.1, False))
        entry = {"load_split_data_s": common.med(load_times), "load_split_data_all_s": load_times,
                 "median_wall_s": med, "median_cpu_s": {k: common.med(x) for k, x in every_cpu.items()},
                 "ratios": ratios, "json_share_of_reference": json_share,
                 "reference_data_s": ref.data_seconds, "reference_step_s": ref.step_seconds,
                 "epochs_wall_s": every, "epochs_cpu_s": every_cpu}
        result["models"][model_name] = entry
        del ref, vst, train, cases, fast
    result["verdicts"] = verdicts
    result["load_average_at_end"] = common.load_average()
    common.save("bench_train", result)


if __name__ == "__main__":
    main()
