"""`vstore dedup`."""
from __future__ import annotations

import click

from vstore.dedup import SEARCH_MODES, DedupConfig

from .options import default_of, pass_quiet, store_argument


@click.command("dedup", epilog="""\b
Examples:
  vstore dedup runs/store --out runs/dedup
  vstore dedup runs/store --out runs/dedup --frame-threshold 0.95 --min-share 0.8
  vstore split runs/store --test-size 0.1 --group-duplicates runs/dedup

\b
Writes DIR/duplicates.csv (one row per pair), groups.csv (connected groups of pairs),
leakage.csv (groups crossing the stored split, with the test videos they touch),
dedup.json (config + summary), report.md and pairs.png (the strongest pairs' frames side by
side). Uses the store's FAISS index when it is fresh (`vstore index STORE`), else an exact
search over the stored frames (same pairs, slower on large stores).
""")
@store_argument
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write the results to.")
@click.option("--frame-threshold", type=float, default=default_of(DedupConfig, "frame_threshold"), show_default=True,
              help="Cosine similarity at which two frames match (encoder-dependent: see the report's calibration "
                   "table).")
@click.option("--min-share", type=float, default=default_of(DedupConfig, "min_share"), show_default=True,
              help="Share of one video's sampled frames that must match, in order, in the other.")
@click.option("--min-frames", type=int, default=default_of(DedupConfig, "min_frames"), show_default=True,
              help="... and at least this many frames.")
@click.option("--offset-slack", type=float, default=default_of(DedupConfig, "offset_slack"), show_default=True,
              help="Matched frames must agree on one time offset within this many sampling intervals.")
@click.option("--neighbours", type=int, default=default_of(DedupConfig, "neighbours"), show_default=True,
              help="Other-video neighbours considered per frame.")
@click.option("--search", type=click.Choice(SEARCH_MODES), default=default_of(DedupConfig, "search"),
              show_default=True, help="auto: the FAISS index when fresh and cosine, else exact; index: require it; "
                                      "exact: never use it.")
@click.option("--nprobe", type=int, default=default_of(DedupConfig, "nprobe"), show_default=True,
              help="IVF lists probed per frame (0 = the index's default).")
@click.option("--report-pairs", type=int, default=default_of(DedupConfig, "report_pairs"), show_default=True,
              help="Strongest pairs drawn in pairs.png (0 = none).")
@pass_quiet
def dedup_cmd(store, out, frame_threshold, min_share, min_frames, offset_slack, neighbours, search, nprobe,
              report_pairs, quiet):
    """Find near-duplicate videos in STORE (re-uploads, trims, re-encodes, resized or letterboxed
    copies) and the duplicate groups that cross its train/val/test split."""
    from classifiers.dedup_report import run_dedup
    cfg = DedupConfig(frame_threshold=frame_threshold, min_share=min_share, min_frames=min_frames,
                      offset_slack=offset_slack, neighbours=neighbours, search=search, nprobe=nprobe,
                      report_pairs=report_pairs)
    s = run_dedup(store, out, cfg, progress=not quiet)
    line = (f"dedup {store}: {s['pairs']} pair(s) in {s['groups']} group(s) among {s['videos']} videos "
            f"({s['redundant_videos']} redundant; {s['search']})")
    if s.get("split") is not None:
        line += (f"; {s['crossing_groups']} group(s) cross the split, touching "
                 f"{s['test_videos_in_crossing_groups']} test video(s)")
    click.echo(line)
    click.echo(f"wrote {out}/ (duplicates.csv, groups.csv, report.md, dedup.json)")


COMMANDS = [dedup_cmd]
