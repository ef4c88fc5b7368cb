"""`vstore index` and `vstore search`."""
from __future__ import annotations

import inspect
import json
from dataclasses import replace
from typing import Optional

import click

from vstore import Store
from vstore.errors import IndexDamagedError, QueryError
from vstore.index import MAX_BEAM, METRICS, IndexConfig, read_meta
from vstore.index_build import build_index
from vstore.index_load import load_index
from vstore.search import LEVELS, Hit, query_from_frame, query_from_npy, query_from_video, search
from vstore.split import SPLIT_NAMES

from .options import ConfigDefault, DefaultsInHelp, default_of, engine_options, json_option, pass_quiet, store_argument

CLIP = "encoders.clip_encoder:ClipConfig"  # imported (with torch) only for image/text queries
_SEARCH = inspect.signature(search).parameters  # search's own defaults (k, level)


@click.command("index", epilog="""\b
Examples:
  vstore index runs/store                          # auto: Flat, or IVF where it measures faster at recall >= 0.95
  vstore index runs/store --kind hnsw --metric l2  # change settings: rebuilds
  vstore index runs/store --kind "IVF1024,SQ8"     # any FAISS factory string
  vstore index runs/store                          # after a build: adds only the new frames
  vstore index runs/store --rebuild
  vstore index runs/store --engine ray             # IVF lists filled by Ray tasks, same index

\b
The index lives in STORE/index/ and records the store generation it covers; `vstore search`
refuses a stale index (or updates it with --refresh). Frame ids stay valid after
`vstore compact`; after `vstore verify --repair` the index is rebuilt.
""")
@store_argument
@click.option("--kind", default=None, metavar="KIND",
              help=f"auto, flat, ivf, hnsw, or a FAISS index_factory string [default: {default_of(IndexConfig, 'kind')}, "
                   "or the existing index's].")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="cosine (vectors normalised; the store is untouched), ip (inner product) or l2 "
                   f"[default: {default_of(IndexConfig, 'metric')}].")
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: 4*sqrt(frames)].")
@click.option("--hnsw-m", type=click.IntRange(min=2), default=None,
              help=f"HNSW graph degree [default: {default_of(IndexConfig, 'hnsw_m')}].")
@click.option("--ef-construction", type=click.IntRange(min=1), default=None,
              help=f"HNSW build beam [default: {default_of(IndexConfig, 'ef_construction')}].")
@click.option("--nprobe", type=int, default=None,
              help=f"Default IVF lists probed per search, 1..{MAX_BEAM} [default: {default_of(IndexConfig, 'nprobe')}].")
@click.option("--ef", "ef_search", type=int, default=None,
              help=f"Default HNSW search beam, 1..{MAX_BEAM} [default: {default_of(IndexConfig, 'ef_search')}].")
@click.option("--memory-budget", "memory_budget_mb", type=click.IntRange(min=0), default=None, metavar="MB",
              help="auto: the frame index must fit in MB MiB; beyond it, PQ codes (0 = half the machine's "
                   f"memory) [default: {default_of(IndexConfig, 'memory_budget_mb')}].")
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch instead of adding new frames.")
@click.option("--refresh", is_flag=True,
              help="Bring the index up to date (what a plain run does; rebuilds a damaged one).")
@engine_options
@json_option
@pass_quiet
def index_cmd(store, kind, metric, nlist, hnsw_m, ef_construction, nprobe, ef_search, memory_budget_mb, rebuild, refresh,
              engine, address, as_json, quiet):
    """Build or update the FAISS indexes of STORE (every frame, and per-video means)."""
    given = {k: v for k, v in dict(kind=kind, metric=metric, nlist=nlist, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                   nprobe=nprobe, ef_search=ef_search, memory_budget_mb=memory_budget_mb).items()
             if v is not None}
    config: Optional[IndexConfig] = None
    if given:
        try:
            meta = read_meta(store)
        except IndexDamagedError:
            meta = None
        config = replace(meta.config if meta else IndexConfig(), **given)
    if engine == "ray":
        from vstore.index_ray import RayIndexConfig, build_index_ray
        r = build_index_ray(store, config, rebuild=rebuild, progress=not quiet,
                            ray_config=RayIndexConfig(address=address))
    else:
        r = build_index(store, config, rebuild=rebuild, progress=not quiet)
    if as_json:
        click.echo(json.dumps(vars(r), indent=2))
        return
    what = {"built": f"built ({r.reason})", "appended": f"added {r.frames_added} frame(s) of {r.videos_added} "
                                                          f"new video(s)",
            "relabelled": f"up to date ({r.reason})", "unchanged": "up to date"}[r.action]
    click.echo(f"index {store}: {what} - {r.frames} frames [{r.factory}], {r.videos} videos [{r.video_factory}], "
               f"{r.metric}, generation {r.generation}, {r.seconds:.1f} s")


def hits_table(hits: list[Hit]) -> str:
    rows = [("rank", "video", "frame", "time", "score", "label")]
    for h in hits:
        rows.append((str(h.rank), h.video_id, "-" if h.frame_index is None else str(h.frame_index),
                     "-" if h.timestamp is None else f"{h.timestamp:.2f}s", f"{h.score:.4f}", h.label or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {0, 2, 3, 4}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in rows)


@click.command("search", epilog="""\b
Examples:
  vstore search runs/store --video abc123 --frame 10 -k 10     # a stored frame (its frame number)
  vstore search runs/store --video abc123 --per-video          # a whole video (mean embedding)
  vstore search runs/store --image query.jpg -k 20 --per-video
  vstore search runs/store --text "a plate of pasta" -k 10 --label food --sheet hits.png
  vstore search runs/store --vector q.npy --split test --exclude-video abc123 --json
  vstore search runs/store --text "a cat" --level video         # nearest videos (mean embeddings)

\b
Filters (--label, --split, --exclude-video) restrict the candidates before ranking, so -k
hits come back whenever k frames pass them. --text needs a CLIP store. Scores: cosine
similarity (or inner product, or squared L2 distance: lower is closer).
""")
@store_argument
@click.option("--video", "video_id", default=None, metavar="ID", help="Query with a stored video (its mean) ...")
@click.option("--frame", type=click.IntRange(min=0), default=None,
              help="... or one of its sampled frames (frame number).")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Query with an image file.")
@click.option("--text", default=None, help="Query with a text prompt (CLIP stores).")
@click.option("--vector", type=click.Path(dir_okay=False), default=None,
              help="Query with a (D,) vector in a .npy file.")
@click.option("-k", "k", type=int, default=_SEARCH["k"].default, show_default=True,
              help="Hits to return (>= 1; more than the frames that can match returns them all).")
@click.option("--label", multiple=True, help="Only videos with this label (repeat for several).")
@click.option("--split", type=click.Choice(SPLIT_NAMES), default=None, help="Only videos of this stored split.")
@click.option("--exclude-video", multiple=True, metavar="ID", help="Leave this video out (repeatable).")
@click.option("--per-video", is_flag=True, help="At most one hit (the best frame) per video.")
@click.option("--level", type=click.Choice(LEVELS), default=_SEARCH["level"].default, show_default=True,
              help="frame: nearest frames; video: nearest videos by mean embedding.")
@click.option("--nprobe", type=int, default=None,
              help=f"IVF lists to probe, 1..{MAX_BEAM} (recall vs speed) [default: the index's].")
@click.option("--ef", type=int, default=None,
              help=f"HNSW search beam, 1..{MAX_BEAM} (recall vs speed) [default: the index's].")
@click.option("--refresh", is_flag=True, help="Update a stale (or missing) index first, then search.")
@click.option("--sheet", type=click.Path(dir_okay=False), default=None, help="Write a contact sheet PNG of the hits.")
@click.option("--device", default=None, cls=DefaultsInHelp, help_defaults={"device": ConfigDefault(CLIP, "device")},
              help="Device for the image/text encoder [default: {device}].")
@json_option
@pass_quiet
def search_cmd(store, video_id, frame, image, text, vector, k, label, split, exclude_video, per_video, level, nprobe,
               ef, refresh, sheet, device, as_json, quiet):
    """Find the stored frames (or videos) nearest to a query."""
    sources = [name for name, v in (("--video", video_id), ("--image", image), ("--text", text),
                                    ("--vector", vector)) if v is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one query: --video ID [--frame N], --image FILE, --text PROMPT "
                               f"or --vector FILE.npy (got {', '.join(sources) or 'none'})")
    if frame is not None and video_id is None:
        raise click.UsageError("--frame needs --video ID")
    if refresh:  # update a stale, missing or damaged index first, then search a snapshot it covers
        with Store.open(store) as s:
            _, snapshot = load_index(s, refresh=True, progress=not quiet)
            if snapshot is not s:
                snapshot.close()
    with Store.open(store) as s:
        if video_id is not None:
            q = query_from_video(s, video_id) if frame is None else query_from_frame(s, video_id, frame)
            what = f"video {video_id}" + (f" frame {frame}" if frame is not None else " (mean)")
        elif vector is not None:
            q = query_from_npy(s, vector)
            if q.ndim == 2 and len(q) != 1:
                raise QueryError(f"{vector} holds {len(q)} vectors; the CLI searches one "
                                 "(use vstore.search.search for batches)")
            q = q.reshape(-1)
            what = f"vector {vector}"
        elif image is not None:
            from encoders.queries import query_from_image, store_encoder
            q = query_from_image(s, image, store_encoder(s, device or default_of(CLIP, "device")))
            what = f"image {image}"
        else:
            from encoders.queries import check_text_support, query_from_text, store_encoder
            check_text_support(s)
            q = query_from_text(s, text, store_encoder(s, device or default_of(CLIP, "device")))
            what = f"text {text!r}"
        hits = search(s, q, k, label=list(label) or None, split=split, exclude_videos=exclude_video,
                      per_video=per_video, nprobe=nprobe, ef=ef, level=level)
        if sheet:
            from encoders.video.sheet import contact_sheet
            contact_sheet(s, hits, sheet, title=f"{store}: {what}")
    if as_json:
        click.echo(json.dumps({"query": what, "k": k, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        click.echo(hits_table(hits) if hits else "no hits (no frame passes the filters)")
    if sheet:
        click.echo(f"contact sheet written to {sheet}", err=True)


COMMANDS = [index_cmd, search_cmd]
