"""`vstore build` and `vstore import-json`."""
from __future__ import annotations

import click

from encoders.build import EXIT_SOME_FAILED, FAILURES_NAME, BuildConfig, build_store
from encoders.build.ray_engine import RayConfig
from encoders.video.sampling import SAMPLING_MODES
from vstore import StoreConfig
from vstore.config import EMBEDDING_DTYPES
from vstore.importer import import_json
from vstore.labels import load_labels

from .options import default_of, encoder_options, engine_options, labels_option, pass_quiet, store_option


@click.command("build", epilog=f"""\b
Examples:
  vstore build videos/ --store runs/store --labels youtube.csv --frames 100
  vstore build a.mp4 b.webm --store runs/store --encoder thumbnail --workers 4
  vstore build videos/ --store runs/store --sampling keyframe   # fast preview
  vstore build videos/ --store runs/store --engine ray          # Ray on this machine
  vstore build /shared/videos --store runs/store --engine ray --address auto   # a Ray cluster

\b
Exit status: 0 when every video was built (or already there), {EXIT_SOME_FAILED} when some
failed (listed in STORE/{FAILURES_NAME}), 1 on an error that stopped the build.
""")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@store_option
@labels_option
@click.option("--frames", type=click.IntRange(min=1), default=default_of(BuildConfig, "frames"), show_default=True,
              help="Frames sampled per video, evenly spaced: frame floor((i+0.5)*total/N).")
@click.option("--sampling", type=click.Choice(SAMPLING_MODES), default=default_of(BuildConfig, "sampling"),
              show_default=True,
              help="exact: precisely those frames (decodes from the keyframe before each). "
                   "keyframe: the keyframes nearest to them (approximate, much faster).")
@encoder_options
@click.option("--workers", type=click.IntRange(min=0), default=default_of(BuildConfig, "workers"),
              help="Decode processes running beside the encoder (0 = decode in-process) "
                   "[default: up to 8 with a GPU encoder, a quarter of the CPU cores without].")
@click.option("--timeout", "video_timeout", type=click.FloatRange(min=1), default=default_of(BuildConfig, "video_timeout"),
              show_default=True,
              help="Seconds before a stuck decode is killed and its video marked failed.")
@click.option("--dtype", type=click.Choice(EMBEDDING_DTYPES), default=default_of(StoreConfig, "dtype"), show_default=True,
              help="Embedding storage type of a new store.")
@click.option("--segment-videos", type=click.IntRange(min=1), default=default_of(StoreConfig, "segment_videos"),
              show_default=True,
              help="Videos per committed segment of a new store (a crash loses at most one).")
@click.option("--no-compact", is_flag=True,
              help="Keep the small segments of this build (default: merge them at the end for fast reads).")
@engine_options
@click.option("--ray-encoders", type=click.IntRange(min=0), default=default_of(RayConfig, "encoders"), show_default=True,
              help="With --engine ray: encoder actors (0 = one per GPU of the cluster, or 1 CPU actor).")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=default_of(RayConfig, "num_cpus"),
              help="With --engine ray and no --address: CPUs of the private Ray started here "
                   "[default: all the cores].")
@pass_quiet
def build_cmd(inputs, store, labels, frames, sampling, encoder_spec, device, batch_size, workers, video_timeout,
              dtype, segment_videos, no_compact, engine, address, ray_encoders, ray_cpus, quiet):
    """Sample frames of videos, embed them and add them to a store.

    INPUTS are video files or directories (searched recursively); a video's id is its file
    stem. Videos already in the store are skipped, so rerunning resumes an interrupted build.
    With --engine ray, Ray workers decode and encode; this process writes the store, so only
    the videos (and a checkpoint path) must be readable on the workers.
    """
    label_map = load_labels(labels) if labels else None
    config = BuildConfig(frames=frames, sampling=sampling, workers=workers, video_timeout=video_timeout,
                         compact=not no_compact)
    from encoders.registry import load_encoder
    ray_config = None
    if ray_cpus is not None and (engine != "ray" or address):
        raise click.UsageError("--ray-cpus sizes the private Ray of --engine ray without --address")
    if engine == "ray":  # the workers encode; here the encoder only names itself and its input size
        ray_config = RayConfig(address=address, num_cpus=ray_cpus, encoders=ray_encoders,
                               device="auto" if device == "auto" else device.split(":")[0])
        device = "cpu"
    encoder = load_encoder(encoder_spec, device=device, batch_size=batch_size)
    summary = build_store(inputs, store, encoder, labels=label_map, config=config,
                          store_config=StoreConfig(dtype=dtype, segment_videos=segment_videos),
                          batch_size=batch_size, progress=not quiet, engine=engine, ray_config=ray_config)
    rate = summary.frames / summary.seconds if summary.seconds else 0.0
    click.echo(f"built {summary.built}, skipped {summary.skipped} (already in store), failed {summary.failed}"
               f" - {summary.frames} frames in {summary.seconds:.1f} s ({rate:.1f} frames/s)")
    if labels and summary.unlabeled:
        click.echo(f"{summary.unlabeled} built video(s) have no label in {labels}", err=True)
    if summary.relabelled:
        click.echo(f"{len(summary.relabelled)} video(s) already in {store} kept their stored label although {labels} "
                   "gives another; build into a new --store to relabel them", err=True)
    if summary.compact_error:
        click.echo(f"the build succeeded ({summary.built} video(s) committed) but merging its segments failed: "
                   f"{summary.compact_error}; run `vstore compact {store}` later (reads work meanwhile)", err=True)
    if summary.failed:
        click.echo(f"{summary.failed} video(s) failed; reasons in {store}/{FAILURES_NAME}", err=True)
        raise SystemExit(summary.exit_code)


@click.command("import-json", epilog="""\b
Examples:
  vstore import-json old_embeddings/ --store runs/legacy --labels config.json
  vstore import-json old_embeddings/ --store runs/legacy --encoder clip:ViT-B/32
""")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@store_option
@labels_option
@click.option("--encoder", "encoder_spec", default=None, metavar="SPEC",
              help="The encoder that made the vectors (e.g. clip:ViT-B/32), recorded so text "
                   "search works later. Not loaded.")
@click.option("--dtype", type=click.Choice(EMBEDDING_DTYPES), default=default_of(StoreConfig, "dtype"), show_default=True,
              help="Embedding storage type of a new store.")
@pass_quiet
def import_json_cmd(src, store, labels, encoder_spec, dtype, quiet):
    """Import the reference study's embeddings (SRC/<id>.json = list of frame vectors)."""
    from encoders.registry import describe_spec
    label_map = load_labels(labels) if labels else None
    identity = describe_spec(encoder_spec) if encoder_spec else None
    summary = import_json(src, store, labels=label_map, encoder=identity, config=StoreConfig(dtype=dtype),
                          progress=not quiet)
    click.echo(f"imported {summary.imported}, skipped {summary.skipped} (already in store), "
               f"failed {len(summary.failures)}")
    for _path, reason in summary.failures[:10]:
        click.echo(f"  {reason}", err=True)
    if summary.compact_error:
        click.echo(f"the import succeeded ({summary.imported} video(s) committed) but merging its segments failed: "
                   f"{summary.compact_error}; run `vstore compact {store}` later", err=True)
    if summary.failures:
        raise SystemExit(EXIT_SOME_FAILED)


COMMANDS = [build_cmd, import_json_cmd]
