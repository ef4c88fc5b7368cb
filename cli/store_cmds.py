"""`vstore info`, `vstore compact`, `vstore verify`."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from encoders.build import FAILURES_NAME, read_failures
from vstore import Store, compact, verify
from vstore.maintenance import DEFAULT_MAX_FRAMES, QUARANTINE_DIR
from vstore.manifest import describe_sampling

from .options import human_bytes, json_option, store_argument


def store_summary(store: Store) -> dict:
    table = store.videos
    counts = Counter(label or None for label in table.labels)
    enc = store.encoder or {}
    return {
        "path": str(store.path),
        "generation": store.generation,
        "videos": store.n_videos,
        "labelled_videos": sum(v for k, v in counts.items() if k),
        "frames": store.n_frames,
        "dim": store.dim,
        "dtype": store.config.dtype,
        "encoder": enc.get("name"),
        "encoder_id": enc.get("id"),
        "input_size": enc.get("input_size"),
        "label_names": store.label_names,
        "label_counts": {k: counts.get(k, 0) for k in store.label_names},
        "unlabeled": counts.get(None, 0),
        "segments": len(store.manifest.segments),
        "bytes": sum(s.bytes for s in store.manifest.segments),
        "failures": len(read_failures(store.path)),
        "sampling": store.manifest.store_sampling,
        "build": store.manifest.build,
        # videos whose display matrix turned their frames (clockwise degrees, mirrored first)
        "rotated": {table.ids[i]: {"rotation": int(table.rotation[i]), "hflip": bool(table.hflip[i])}
                    for i in ((table.rotation != 0) | table.hflip).nonzero()[0].tolist()},
    }


@click.command("info", epilog="""\b
Examples:
  vstore info runs/store
  vstore info runs/store --json | jq .label_counts
""")
@store_argument
@json_option
def info_cmd(store, as_json):
    """Videos, frames, labels (with counts), encoder, dimensions and size of a store."""
    with Store.open(store) as s:
        info = store_summary(s)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    frames_per = info["frames"] / info["videos"] if info["videos"] else 0
    click.echo(f"store      {info['path']}  (generation {info['generation']}, {info['segments']} segment(s), "
               f"{human_bytes(info['bytes'])})")
    click.echo(f"encoder    {info['encoder'] or '-'}  ({info['dim'] or '-'}-d {info['dtype']}, "
               f"input {info['input_size'] or '-'} px)")
    click.echo(f"videos     {info['videos']}  ({info['labelled_videos']} labelled)")
    click.echo(f"frames     {info['frames']}  ({frames_per:.1f} per video; "
               f"{describe_sampling(info['sampling']) if info['sampling'] else 'no videos yet'})")
    if info["label_names"]:
        counts = ", ".join(f"{k} {v}" for k, v in info["label_counts"].items())
        none = f", (none) {info['unlabeled']}" if info["unlabeled"] else ""
        click.echo(f"labels     {len(info['label_names'])}: {counts}{none}")
    else:
        click.echo("labels     none")
    if info["rotated"]:
        click.echo(f"rotated    {len(info['rotated'])} video(s) turned upright for display (listed by --json)")
    if info["failures"]:
        click.echo(f"failures   {info['failures']} (see {Path(store) / FAILURES_NAME})")


@click.command("compact", epilog="""\b
Example:
  vstore compact runs/store
""")
@store_argument
@click.option("--max-frames", type=click.IntRange(min=1), default=DEFAULT_MAX_FRAMES, show_default=True,
              help="At most this many frames per merged segment (memory use while merging is one such segment).")
def compact_cmd(store, max_frames):
    """Merge runs of small consecutive segments into large ones (order and ids are kept).

    `vstore build` does this by itself at the end of a build unless --no-compact.
    """
    r = compact(store, max_frames_per_segment=max_frames)
    click.echo(f"{r.segments_before} segment(s) -> {r.segments_after}, {r.videos} videos")


@click.command("verify", epilog=f"""\b
Examples:
  vstore verify runs/store
  vstore verify runs/store --repair   # drop damaged segments into STORE/{QUARANTINE_DIR}/, rebuild to re-add
                                      # (and delete segment files an interrupted write left unlisted)
""")
@store_argument
@click.option("--repair", is_flag=True, help="Drop damaged segments (moved to STORE/quarantine/) and delete "
                                            "unlisted segment files of interrupted writes.")
def verify_cmd(store, repair):
    """Check every segment byte against the manifest's SHA-256 and every chunk checksum."""
    report = verify(store, repair=repair)
    for f, reason in report.bad.items():
        click.echo(f"BAD {f}: {reason}", err=True)
    if report.orphans:
        click.echo(f"{'removed' if repair else 'found'} {len(report.orphans)} unlisted segment file(s) left by an "
                   f"interrupted write ({', '.join(report.orphans[:3])})"
                   + ("" if repair else f"; `vstore verify {store} --repair` or `vstore compact {store}` removes them"),
                   err=True)
    if report.ok:
        click.echo(f"ok: {report.segments} segment(s) verified")
        return
    if report.repaired:
        click.echo(f"dropped {len(report.bad)} segment(s) holding {len(report.dropped_videos)} video(s); "
                   f"rerun `vstore build` on the same videos to re-add them")
        return
    raise click.ClickException(f"{len(report.bad)} damaged segment(s); run `vstore verify {store} --repair`")


COMMANDS = [info_cmd, compact_cmd, verify_cmd]
