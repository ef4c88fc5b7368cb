"""The files of a dedup run (``vstore dedup STORE --out DIR``) and reading its groups back.

``DIR/dedup.json`` is the run's record (config, summary, and the names of the other files);
``duplicates.csv`` one row per pair, ``groups.csv`` one row per video of a group and, when the
store has a split, ``leakage.csv`` one row per group that crosses train/val/test.
``read_groups(DIR)`` is how ``vstore split --group-duplicates DIR`` gets the groups: the file
names come from dedup.json and must stay inside DIR.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .csvfile import read_rows, write_csv
from .dedup import DedupConfig, DedupResult
from .errors import DedupError, StoreCorruptError
from .fsutil import atomic_write_json, inside
from .store import Store

FORMAT = "vstore-dedup"
META_NAME = "dedup.json"
FILES = {"duplicates": "duplicates.csv", "groups": "groups.csv", "leakage": "leakage.csv",
         "report": "report.md", "pairs_png": "pairs.png"}
PARTS = ("train", "val", "test")
_MAX_META_BYTES = 16 << 20


@dataclass
class Crossing:
    """A duplicate group whose videos sit in more than one part of the split."""

    group: str
    videos: list[str]
    parts: dict[str, int]  # part -> videos of the group in it
    test_videos: list[str]

    @property
    def size(self) -> int:
        return len(self.videos)


def group_name(i: int) -> str:
    return f"g{i + 1:05d}"


def crossings(groups: list[list[str]], assignment: dict[str, str]) -> list[Crossing]:
    """Groups whose videos ``assignment`` (video id -> train | val | test) puts in more than one
    part; videos in no part (unlabelled) are left out. Most test videos touched first."""
    out = []
    for i, g in enumerate(groups):
        parts = {p: sum(1 for v in g if assignment.get(v) == p) for p in PARTS}
        if sum(1 for n in parts.values() if n) > 1:
            out.append(Crossing(group_name(i), g, parts, [v for v in g if assignment.get(v) == "test"]))
    return sorted(out, key=lambda c: (-len(c.test_videos), -c.size, c.group))


def _fmt(x: float, digits: int = 4) -> float | str:
    """A number as a number (csvsafe writes numbers as they are: a negative offset is no formula);
    NaN (no timestamps) as an empty cell."""
    return "" if x is None or math.isnan(x) else round(float(x), digits)


def write_results(out: str | Path, store: Store, result: DedupResult, config: DedupConfig,
                  assignment: Optional[dict[str, str]] = None, split_origin: Optional[dict] = None,
                  extra_files: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Write duplicates.csv, groups.csv, leakage.csv (with a split) and dedup.json into ``out``;
    returns the summary recorded in dedup.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = dict(zip(store.videos.ids, store.videos.labels))
    write_csv(out / FILES["duplicates"],
              ["video_a", "video_b", "label_a", "label_b", "share", "matched_frames", "frames_a", "frames_b",
               "offset_s", "cosine", "score", "frame_a", "frame_b"],
              [[p.a, p.b, labels.get(p.a) or "", labels.get(p.b) or "", _fmt(p.share), p.matched, p.frames_a,
                p.frames_b, _fmt(p.offset, 3), _fmt(p.cosine), _fmt(p.score), p.frame_a, p.frame_b]
               for p in result.pairs])
    write_csv(out / FILES["groups"], ["group", "size", "video_id", "label", "split"],
              [[group_name(i), len(g), v, labels.get(v) or "", (assignment or {}).get(v, "")]
               for i, g in enumerate(result.groups) for v in g])
    files = {k: FILES[k] for k in ("duplicates", "groups")}
    summary: dict[str, Any] = {"videos": store.n_videos, "frames": store.n_frames, "pairs": len(result.pairs),
                               "groups": len(result.groups),
                               "videos_in_groups": sum(len(g) for g in result.groups),
                               "redundant_videos": sum(len(g) - 1 for g in result.groups),
                               "search": result.search}
    if assignment is not None:
        cross = crossings(result.groups, assignment)
        write_csv(out / FILES["leakage"], ["group", "size", "train", "val", "test", "test_videos", "videos"],
                  [[c.group, c.size, c.parts["train"], c.parts["val"], c.parts["test"], " ".join(c.test_videos),
                    " ".join(c.videos)] for c in cross])
        files["leakage"] = FILES["leakage"]
        summary.update(crossing_groups=len(cross), test_videos_in_crossing_groups=sum(len(c.test_videos) for c in cross),
                       split=split_origin or {})
    else:
        (out / FILES["leakage"]).unlink(missing_ok=True)  # from an earlier run with a split
        summary["split"] = None
    files.update(extra_files or {})
    atomic_write_json(out / META_NAME, {"format": FORMAT, "store": str(Path(store.path).resolve()),
                                        "generation": store.generation, "config": asdict(config),
                                        "summary": summary, "stats": result.stats, "files": files})
    return summary


@dataclass
class DuplicateGroups:
    """Groups read back from a dedup folder, and where they came from (for split.json)."""

    groups: list[list[str]]
    origin: dict = field(default_factory=dict)


def read_groups(folder: str | Path) -> DuplicateGroups:
    """The groups of the dedup run in ``folder``; ``DedupError`` when it is not one."""
    folder = Path(folder)
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        raise DedupError(f"{folder} is not a dedup output folder (no {META_NAME}); run "
                         f"`vstore dedup STORE --out {folder}` first")
    try:
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise ValueError("too large")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        name = (meta.get("files") or {}).get("groups")
        if not isinstance(name, str):
            raise ValueError("it names no groups file")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError) as e:
        raise DedupError(f"{meta_path} is damaged ({e}); rerun `vstore dedup`") from None
    try:
        path = inside(folder, name, "groups file")
    except StoreCorruptError as e:
        raise DedupError(str(e)) from None
    if not path.is_file():
        raise DedupError(f"{path} (named by {meta_path}) does not exist; rerun `vstore dedup`")
    rows, torn = read_rows(path)
    if torn or (rows and not {"group", "video_id"} <= set(rows[0])):
        raise DedupError(f"{path} is damaged (expected complete rows with group and video_id columns); "
                         "rerun `vstore dedup`")
    by_group: dict[str, list[str]] = {}
    for r in rows:
        g, v = (r.get("group") or "").strip(), (r.get("video_id") or "").strip()
        if g and v:
            by_group.setdefault(g, []).append(v)
    origin = {"kind": "dedup", "folder": str(folder.resolve()), "file": name,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "groups": len(by_group),
              "videos": sum(len(g) for g in by_group.values()), "store": meta.get("store"),
              "generation": meta.get("generation"), "config": meta.get("config")}
    return DuplicateGroups([sorted(set(g)) for g in by_group.values()], origin)
