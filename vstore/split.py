"""Train/validation/test splits, stored in the store so every later command uses the same one.

Stratified by label and deterministic: within each label, videos are ranked by
``sha256(f"{seed}:{id}")`` and the first ``round(test_size * n)`` go to test, the next
``round(val_size * n)`` to validation, the rest to train. The same arguments on the same
store give the same split, and videos added later barely move the others. Unlabeled videos
are in no split.

With duplicate groups (``vstore split --group-duplicates DIR``, groups from ``vstore dedup``)
each group is one unit: it is ranked by its first id and goes to test, validation or train
whole, under its most common label, only while that part's quota of the label still has room
for all of it; single videos are units of one, so without groups the split is the one above.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .errors import SplitError, StoreCorruptError
from .fsutil import WriteLock, atomic_write_json, command_line
from .store import LOCK_NAME, Store

SPLIT_NAME = "split.json"
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SplitConfig:
    test_size: float = 0.1  # fraction of each label's videos held out for testing
    val_size: float = 0.0  # fraction for validation (0 = no validation split)
    seed: int = 0  # different seeds give independent splits

    def __post_init__(self) -> None:
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size}")
        if not 0 <= self.val_size < 1 or self.test_size + self.val_size >= 1:
            raise ValueError(f"val_size must be in [0, 1) with test_size + val_size < 1, got {self.val_size}")


@dataclass
class Split:
    config: SplitConfig
    generation: int  # store generation the split was made at
    assignment: dict[str, str] = field(default_factory=dict)  # video id -> train | val | test
    origin: dict = field(default_factory=lambda: {"kind": "stratified"})  # or "given" (vstore.given_split)

    def ids(self, name: str) -> list[str]:
        if name not in SPLIT_NAMES:
            raise SplitError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
        return [v for v, s in self.assignment.items() if s == name]

    def counts(self) -> dict[str, int]:
        return {n: sum(1 for s in self.assignment.values() if s == n) for n in SPLIT_NAMES}


def _rank(seed: int, video_id: str) -> str:
    return hashlib.sha256(f"{seed}:{video_id}".encode("utf-8")).hexdigest()


def make_split(store: Store, config: SplitConfig, groups: Optional[Sequence[Sequence[str]]] = None,
               groups_origin: Optional[dict] = None) -> Split:
    """Assign every labelled video of ``store`` to train/val/test (see module doc); the videos of
    each of ``groups`` land in one part. Group ids the store lacks are counted in the origin."""
    labels = {vid: label for vid, label in zip(store.videos.ids, store.videos.labels) if label}
    if not labels:
        raise SplitError(f"{store.path} has no labelled videos; build it with --labels FILE")
    units: list[list[str]] = []
    grouped: set[str] = set()
    unknown: list[str] = []
    known = set(store.videos.ids)
    for g in groups or ():
        unknown += [v for v in g if v not in known]
        members = sorted({v for v in g if v in labels and v not in grouped})
        if members:
            units.append(members)
            grouped.update(members)
    units += [[v] for v in labels if v not in grouped]
    by_label: dict[str, list[list[str]]] = {}
    for unit in units:
        names = sorted(labels[v] for v in unit)
        by_label.setdefault(max(names, key=names.count), []).append(unit)  # its most common label
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        ranked = sorted(by_label[label], key=lambda u: _rank(config.seed, u[0]))
        n = sum(len(u) for u in ranked)
        n_test = min(n - 1, max(1, round(config.test_size * n))) if n >= 2 else 0
        n_val = min(n - 1 - n_test, round(config.val_size * n)) if config.val_size else 0
        room = {"test": n_test, "val": n_val}
        for unit in ranked:
            part = next((p for p in ("test", "val") if len(unit) <= room[p]), "train")
            if part != "train":
                room[part] -= len(unit)
            assignment.update((v, part) for v in unit)
    origin: dict = {"kind": "stratified"}
    if groups is not None:
        multi = [u for u in units if len(u) > 1]
        origin["duplicate_groups"] = {**(groups_origin or {}), "groups_used": len(multi),
                                      "videos_grouped": sum(len(u) for u in multi), "not_in_store": len(unknown),
                                      "not_in_store_examples": unknown[:5]}
    return Split(config, store.generation, dict(sorted(assignment.items())), origin=origin)


def save_split(store_path: str | Path, split: Split) -> None:
    path = Path(store_path)
    with WriteLock(path / LOCK_NAME, command_line()):
        atomic_write_json(path / SPLIT_NAME, {"config": asdict(split.config), "generation": split.generation,
                                              "origin": split.origin, "assignment": split.assignment})


def load_split(store_path: str | Path) -> Split:
    path = Path(store_path) / SPLIT_NAME
    if not path.is_file():
        raise SplitError(f"{Path(store_path)} has no split yet; run `vstore split {store_path}` first")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Split(SplitConfig(**d["config"]), int(d["generation"]), dict(d["assignment"]),
                     origin=dict(d.get("origin") or {"kind": "stratified"}))
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorruptError(f"{path} is damaged ({e}); rerun `vstore split {store_path}`", str(path)) from e


def split_ids(store_path: str | Path, name: str, store: Optional[Store] = None) -> list[str]:
    """Ids of split ``name`` that the store holds, in store order."""
    split = load_split(store_path)
    wanted = set(split.ids(name))
    if store is None:
        with Store.open(store_path) as opened:
            return [v for v in opened.videos.ids if v in wanted]
    return [v for v in store.videos.ids if v in wanted]
