"""`vstore demo`: the newcomer's first command."""
from __future__ import annotations

import click

from .options import ConfigDefault, pass_quiet

DEMO = "classifiers.demo:DemoConfig"  # imported (with torch) only when a default is needed


@click.command("demo", epilog="""\b
Examples:
  vstore demo
  vstore demo --out /tmp/demo --encoder thumbnail      # offline and fast
  vstore demo --encoder clip:/path/to/ViT-B-32.pt
""")
@click.option("--out", type=click.Path(file_okay=False), default="vstore-demo", show_default=True,
              help="Directory for the videos, store, runs, results and contact sheet.")
@click.option("--encoder", "encoder_spec", type=str, default=ConfigDefault(DEMO, "encoder"), show_default=True,
              metavar="SPEC",
              help="As in `vstore build`; CLIP weights that cannot be had fall back to thumbnail.")
@click.option("--device", type=str, default=ConfigDefault(DEMO, "device"), show_default=True)
@click.option("--videos-per-class", type=click.IntRange(min=4), default=ConfigDefault(DEMO, "videos_per_class"),
              show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=ConfigDefault(DEMO, "epochs"),
              help="Training epochs [default: enough for 150 optimiser steps on the demo's videos].")
@pass_quiet
def demo_cmd(out, encoder_spec, device, videos_per_class, epochs, quiet):
    """Run the whole pipeline on labelled synthetic videos it generates.

    Builds a store, splits it, trains linear, transformer and random-frame with and without
    mixup and a kNN baseline, indexes and searches, and writes the results table, curves and
    a contact sheet into --out.
    """
    from classifiers.demo import DemoConfig, run_demo
    cfg = DemoConfig(videos_per_class=videos_per_class, epochs=epochs, encoder=encoder_spec, device=device)
    r = run_demo(out, cfg, progress=not quiet, say=lambda m: click.echo(m, err=False))
    click.echo("")
    click.echo((r.report.read_text() if r.report else "").replace("# Results\n\n", ""))
    click.echo(f"Look at:\n  {r.report}  (results table; chart: {r.report.with_suffix('.png') if r.report else '-'})")
    click.echo(f"  {r.out / 'runs'}/*/curves.png, confusion.png  (training curves and confusion matrices)")
    if r.sheet:
        click.echo(f"  {r.sheet}  (contact sheet of a search)")
    click.echo(f"  {r.store}  (the store: `vstore info {r.store}`)")
    if r.fell_back:
        click.echo("(ran with the thumbnail encoder: CLIP weights were not available)")


COMMANDS = [demo_cmd]
