"""`vstore map`: a thin click command over ``classifiers.embedding_map``."""
from __future__ import annotations

from pathlib import Path

import click

from classifiers.embedding_map import METHODS, MapConfig

from .options import default_of, pass_quiet, store_argument


@click.command("map", epilog="""\b
Examples:
  vstore map runs/store --out runs/map.png
  vstore map runs/store --out runs/map.png --run runs/transformer
  vstore map runs/store --out runs/map-pca.png --method pca

\b
Writes map.png, map.csv (video_id, x, y, label, split, misclassified, predicted) and
map.json (the settings and the method used). `vstore serve` shows the same map on its page,
with thumbnails on hover.
""")
@store_argument
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="PNG to write; the coordinates (.csv) and settings (.json) go beside it.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A run of this store (`vstore train --out RUN`): cross out the videos it misclassified.")
@click.option("--method", type=click.Choice(METHODS), default=default_of(MapConfig, "method"),
              show_default=True,
              help="auto: UMAP when umap-learn is installed, else t-SNE (PCA beyond tsne_max_videos videos); "
                   "pca is exact, streamed and deterministic.")
@click.option("--seed", type=int, default=default_of(MapConfig, "seed"), show_default=True,
              help="Random state of t-SNE / UMAP.")
@pass_quiet
def map_cmd(store, out, run_dir, method, seed, quiet):
    """A 2-D map of STORE's videos (mean frame embeddings), coloured by label, test videos ringed."""
    from classifiers.embedding_map import compute_map, write_map
    from vstore import Store
    cfg = MapConfig(method=method, seed=seed)
    with Store.open(store) as s:
        emap = compute_map(s, cfg, run_dir=run_dir, progress=not quiet)
    paths = write_map(emap, cfg, out, Path(store).name)
    click.echo(f"map of {emap.title}")
    if emap.run is not None:
        click.echo(f"{emap.run['misclassified']} of {emap.run['evaluated']} {emap.run['predictions']} of "
                   f"{run_dir} misclassified (crossed out)")
    click.echo(f"wrote {paths['png']}, {paths['csv'].name} and {paths['json'].name}")


COMMANDS = [map_cmd]
