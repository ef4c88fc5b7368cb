"""`vstore dedup`'s API: find the near-duplicates of a store, check them against its split and
write the folder (CSV + JSON from ``vstore.dedup_files``, a Markdown report and a PNG of the
strongest pairs' best-matching frames side by side, drawn by ``encoders.video.sheet``)."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from encoders.video.sheet import SheetConfig, contact_sheet
from vstore import Store
from vstore.dedup import DedupConfig, DedupResult, Pair, find_duplicates
from vstore.dedup_files import FILES, crossings, group_name, write_results
from vstore.errors import SplitError
from vstore.fsutil import atomic_write_bytes
from vstore.search import Hit
from vstore.split import Split, load_split

log = logging.getLogger(__name__)

TABLE_ROWS = 25  # rows of each table in report.md (the CSVs hold all)


def run_dedup(store_path: str | Path, out: str | Path, config: Optional[DedupConfig] = None,
              progress: bool = True) -> dict[str, Any]:
    """Find near-duplicates in ``store_path`` and write ``out``; returns dedup.json's summary."""
    cfg = config or DedupConfig()
    out = Path(out)
    with Store.open(store_path) as store:
        result = find_duplicates(store, cfg, progress=progress)
        try:
            split: Optional[Split] = load_split(store_path)
        except SplitError:
            split = None
        out.mkdir(parents=True, exist_ok=True)
        extra = {}
        if result.pairs and cfg.report_pairs:
            pairs_png(store, result.pairs[:cfg.report_pairs], out / FILES["pairs_png"])
            extra["pairs_png"] = FILES["pairs_png"]
        else:
            (out / FILES["pairs_png"]).unlink(missing_ok=True)
        split_origin = None if split is None else {"generation": split.generation, "counts": split.counts(),
                                                   "origin": split.origin}
        summary = write_results(out, store, result, cfg, split.assignment if split else None, split_origin,
                                extra_files={**extra, "report": FILES["report"]})
        text = report_markdown(store, result, cfg, split, summary, has_png=bool(extra))
    atomic_write_bytes(out / FILES["report"], text.encode("utf-8"))
    return summary


def _hits(store: Store, pairs: list[Pair]) -> list[Hit]:
    """Two hits per pair (a's frame, then b's), rank = the pair's position."""
    labels = dict(zip(store.videos.ids, store.videos.labels))
    hits = []
    for i, p in enumerate(pairs, start=1):
        for vid, frame, t in ((p.a, p.frame_a, p.time_a), (p.b, p.frame_b, p.time_b)):
            hits.append(Hit(rank=i, video_id=vid, frame_index=frame, timestamp=None if math.isnan(t) else t,
                            score=p.best_cosine, label=labels.get(vid), row=-1))
    return hits


def pairs_png(store: Store, pairs: list[Pair], path: Path) -> Path:
    """Each pair's most similar aligned frames side by side (decoded from the source videos when
    they are still there, else the stored key frames)."""
    return contact_sheet(store, _hits(store, pairs), path, SheetConfig(columns=2, size=160),
                         title="near-duplicate pairs: video a (left), its best match in video b (right)")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in cells]


def report_markdown(store: Store, result: DedupResult, cfg: DedupConfig, split: Optional[Split],
                    summary: dict[str, Any], has_png: bool) -> str:
    lines = [f"# Near-duplicates in `{store.path}`", "",
             f"{summary['videos']} videos, {summary['frames']} frames (generation {store.generation}); "
             f"frame neighbours by {result.search}. **{summary['pairs']} pair(s)** in **{summary['groups']} "
             f"group(s)** holding {summary['videos_in_groups']} videos: {summary['redundant_videos']} video(s) "
             "beyond one per group are copies.", "",
             f"A pair: at least {cfg.min_share:.0%} of one video's sampled frames (and >= {cfg.min_frames}) match "
             f"frames of the other at cosine >= {cfg.frame_threshold}, in order and at one time offset "
             f"(within {cfg.offset_slack} sampling intervals). Thresholds: see `config` in dedup.json.", ""]
    lines += ["## Split", ""]
    if split is None:
        lines += [f"The store has no split. Make one that keeps each group on one side with "
                  f"`vstore split {store.path} --group-duplicates DIR` (DIR = this folder).", ""]
    else:
        cross = crossings(result.groups, split.assignment)
        touched = sum(len(c.test_videos) for c in cross)
        grouped = (split.origin or {}).get("duplicate_groups")
        how = (f" (made with --group-duplicates {grouped.get('folder', '?')})" if grouped else "")
        if not cross:
            lines += [f"No group crosses train/val/test of the stored split{how}.", ""]
        else:
            lines += [f"**{len(cross)} group(s) cross train/val/test** of the stored split{how}, touching "
                      f"**{touched} test video(s)** (their copies are trained on: test scores are inflated). "
                      f"All in `{FILES['leakage']}`; fix with `vstore split {store.path} --group-duplicates DIR`.", ""]
            lines += _table(["group", "size", "train", "val", "test", "test videos"],
                            [[c.group, c.size, c.parts["train"], c.parts["val"], c.parts["test"],
                              ", ".join(c.test_videos[:6]) + (" ..." if len(c.test_videos) > 6 else "")]
                             for c in cross[:TABLE_ROWS]]) + [""]
    lines += ["## Strongest pairs", ""]
    if not result.pairs:
        lines += ["None found.", ""]
    else:
        lines += _table(["#", "video a", "video b", "share of a", "frames", "offset (s)", "cosine", "score"],
                        [[i, p.a, p.b, f"{p.share:.2f}", f"{p.matched}/{p.frames_a}",
                          "-" if math.isnan(p.offset) else f"{p.offset:+.2f}", f"{p.cosine:.3f}", f"{p.score:.3f}"]
                         for i, p in enumerate(result.pairs[:TABLE_ROWS], start=1)])
        lines += ["", f"All {len(result.pairs)} in `{FILES['duplicates']}`. Offset: a's frame at time t shows in b "
                      "at t + offset.", ""]
        if has_png:
            lines += [f"![the strongest pairs' best-matching frames]({FILES['pairs_png']})", ""]
        lines += ["## Largest groups", ""]
        lines += _table(["group", "size", "videos"], [[group_name(i), len(g), ", ".join(g[:8]) + (" ..." if len(g) > 8 else "")]
                                                       for i, g in enumerate(result.groups[:TABLE_ROWS])])
        lines += ["", f"All in `{FILES['groups']}`.", ""]
    hist = result.stats.get("best_other_cosine_histogram") or []
    if hist:
        lines += ["## Calibration", "", "Each frame's best match in another video (frames, by cosine bin): a copy "
                  "shows up near 1, the rest of the store lower; put `--frame-threshold` in the gap.", ""]
        lines += _table(["cosine >=", "frames"], [[f"{lo:.2f}", n] for lo, n in hist]) + [""]
    lines += ["## Config", "", "```", *(f"{k} = {v}" for k, v in asdict(cfg).items()), "```", ""]
    return "\n".join(lines)
