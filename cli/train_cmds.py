"""`vstore split`, `vstore train`, `vstore report`, `vstore predict`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from classifiers.config import ALL_MODELS, MEMMAP_CHOICES, RECIPES, TrainConfig, memmap_choice
from encoders.errors import EXIT_SOME_FAILED
from encoders.video.sampling import SAMPLING_MODES
from vstore import Store
from vstore.split import SplitConfig, make_split, save_split

from .options import default_of, json_option, pass_quiet, store_argument


@click.command("split", epilog="""\b
Examples:
  vstore split runs/store --test-size 0.1 --seed 0
  vstore split runs/store --test-size 0.1 --val-size 0.1
  vstore split runs/store --from train_config.json test_config.json
  vstore split runs/store --from train.csv test.csv val.csv
  vstore split runs/store --test-size 0.1 --group-duplicates runs/dedup
""")
@store_argument
@click.option("--test-size", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=default_of(SplitConfig, "test_size"), show_default=True,
              help="Fraction of each label's videos for testing.")
@click.option("--val-size", type=click.FloatRange(0, 1, max_open=True), default=default_of(SplitConfig, "val_size"),
              show_default=True,
              help="Fraction for validation (training curves then use it instead of test).")
@click.option("--seed", type=int, default=default_of(SplitConfig, "seed"), show_default=True,
              help="Different seeds give independent splits.")
@click.option("--from", "given", is_flag=True,
              help="Use the split given by the list files that follow: TRAIN TEST [VAL].")
@click.option("--group-duplicates", "dedup_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Keep each duplicate group found by `vstore dedup STORE --out DIR` on one side of the split.")
@click.argument("lists", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def split_cmd(store, test_size, val_size, seed, given, dedup_dir, lists):
    """Make a stratified train/val/test split and store it in STORE, or use a given one.

    Every later command (train, search --split) uses this split. The same arguments on the
    same store give the same split; unlabeled videos are in none.

    --from TRAIN TEST [VAL]: use the split in these lists (JSON [[id, label], ...] as the
    reference study's train_config.json, [id, ...] or {id: label}; CSV with an id column; or
    one id per line). Ids not in the store and labels that disagree with the store's are
    reported; the files and their checksums are recorded in split.json.

    --group-duplicates DIR: the groups of `vstore dedup` each go to one part whole, so no copy
    of a test video is trained on; ids of DIR that the store lacks are reported, and DIR (with
    its groups file's checksum) is recorded in split.json.
    """
    from vstore.dedup_files import read_groups
    from vstore.given_split import split_from_lists
    with Store.open(store) as s:
        if given or lists:
            if not given or len(lists) not in (2, 3):
                raise click.UsageError("--from takes a train list, a test list and optionally a val list")
            if dedup_dir:
                raise click.UsageError("--group-duplicates makes its own split; it cannot be combined with --from")
            split, report = split_from_lists(s, dict(zip(("train", "test", "val"), lists)))
            for line in report.lines():
                click.echo(f"warning: {line}", err=True)
        else:
            found = read_groups(dedup_dir) if dedup_dir else None
            split = make_split(s, SplitConfig(test_size=test_size, val_size=val_size, seed=seed),
                               groups=found.groups if found else None, groups_origin=found.origin if found else None)
            grouping = split.origin.get("duplicate_groups")
            if grouping and grouping["not_in_store"]:
                click.echo(f"warning: {grouping['not_in_store']} id(s) of {dedup_dir}'s groups are not in the store "
                           f"(ignored): {', '.join(grouping['not_in_store_examples'])}"
                           + (" ..." if grouping["not_in_store"] > 5 else ""), err=True)
    save_split(store, split)
    if lists:
        counts = split.counts()
        click.echo(f"split {store}: train {counts['train']}, val {counts['val']}, test {counts['test']} "
                   f"(given by {', '.join(lists)})")
        return
    counts = split.counts()
    grouping = split.origin.get("duplicate_groups")
    kept = (f"; {grouping['groups_used']} duplicate group(s) of {grouping['videos_grouped']} videos kept whole"
            if grouping else "")
    click.echo(f"split {store}: train {counts['train']}, val {counts['val']}, test {counts['test']} "
               f"(seed {seed}, stratified over {len(set(split.assignment))} labelled videos{kept})")


@click.command("train", epilog="""\b
Examples:
  vstore train runs/store --model linear --mixup --out runs/linear-mixup
  vstore train runs/store --model transformer --seeds 5 --out runs/transformer
  vstore train runs/store --model transformer-reference --recipe reference --out runs/study
  vstore train runs/store --model linear --mixup --folds 5 --repeats 2 --seeds 3 --out runs/lin-mixup-cv
  vstore train runs/store --model linear --folds 5 --shuffle-labels --out runs/lin-noise
  vstore train runs/store --model transformer --memmap on --out runs/t-view
  vstore train runs/store --model random-frame --mixup --out runs/rf-mixup
  vstore train runs/store --model knn --k 10 --out runs/knn
  vstore train runs/store --model zero-shot --prompt "a video about {label}" --out runs/zs
""")
@store_argument
@click.option("--model", type=click.Choice(ALL_MODELS), required=True,
              help="linear: mean-pooled linear head; transformer: the linear model plus a temporal part "
                   "(normalised frames + positions + [CLS] + pre-norm encoder layer(s): sees frame order), kept "
                   "where it beats the linear part on held-out videos; transformer-reference: the reference "
                   "study's positions + encoder layer(s) + mean; "
                   "random-frame: one hash-chosen key frame through the image encoder + linear; "
                   "knn / zero-shot: baselines without training.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--mixup", is_flag=True, help="Mixup augmentation (see --alpha).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=default_of(TrainConfig, "alpha"),
              show_default=True,
              help="Mixup lambda ~ Beta(alpha, alpha).")
@click.option("--recipe", type=click.Choice(RECIPES), default=default_of(TrainConfig, "recipe"), show_default=True,
              help="default: standardised features, AdamW + cosine schedule, more epochs, best validation "
                   "epoch kept (converges); reference: the reference study's Adam 1e-3, 10 epochs, batch 16.")
@click.option("--epochs", type=click.IntRange(min=1), default=default_of(TrainConfig, "epochs"),
              help="[default: the recipe's; default: 100 linear / random-frame, 40 transformer; reference: 10]")
@click.option("--batch-size", type=click.IntRange(min=1), default=default_of(TrainConfig, "batch_size"),
              help="[default: the recipe's; 32, reference 16]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=default_of(TrainConfig, "lr"),
              help="Learning rate [default: the recipe's, 1e-3].")
@click.option("--seeds", type=click.IntRange(min=1), default=default_of(TrainConfig, "seeds"), show_default=True,
              help="Train with N seeds (from --first-seed); metrics are mean and std over them.")
@click.option("--first-seed", type=click.IntRange(min=0), default=default_of(TrainConfig, "first_seed"),
              show_default=True, help="The first seed: runs with different first seeds are independent repeats.")
@click.option("--folds", type=click.IntRange(min=1), default=default_of(TrainConfig, "folds"), show_default=True,
              help="K >= 2: stratified K-fold cross-validation instead of the stored split; metrics are mean "
                   "and std over folds x seeds, every fold's kept; runs on the same folds can be compared "
                   "pairwise by `vstore report`.")
@click.option("--repeats", type=click.IntRange(min=1), default=default_of(TrainConfig, "repeats"), show_default=True,
              help="Repeat the K folds with R different fold assignments.")
@click.option("--cv-pool", type=click.Choice(["train", "all"]), default=default_of(TrainConfig, "cv_pool"),
              show_default=True, help="Folds over the split's train (+ val) videos, its test part held out; or over "
                                      "all labelled videos.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=default_of(TrainConfig, "holdout"),
              help="Without a val split: hold out this fraction of each label's training videos to pick the best "
                   "epoch [default: the recipe's; default: 0.15 for transformer, 0 for the others].")
@click.option("--shuffle-labels", is_flag=True,
              help="A noise control: train on the training labels permuted, test on the real labels (chance "
                   "level for this model; compare with `vstore report`).")
@click.option("--memmap", type=click.Choice(list(MEMMAP_CHOICES)),
              default=memmap_choice(default_of(TrainConfig, "memmap")), show_default=True,
              help="Sequence models: frames from the store's memory-mapped training view (on), never (off), or "
                   "only when they exceed the memory budget (auto).")
@click.option("--eval-every", type=click.IntRange(min=0), default=default_of(TrainConfig, "eval_every"), show_default=True,
              help="Evaluate every N steps (0 = every epoch).")
@click.option("--device", default=default_of(TrainConfig, "device"), show_default=True,
              help="auto (CUDA when present), cpu, cuda[:N].")
@click.option("--layers", type=click.IntRange(min=1), default=default_of(TrainConfig, "layers"), show_default=True,
              help="Transformer layers.")
@click.option("--max-frames", type=click.IntRange(min=1), default=default_of(TrainConfig, "max_frames"),
              help="Use at most N frames per video [default: all stored].")
@click.option("--finetune", is_flag=True, help="random-frame: also train the CLIP image encoder.")
@click.option("--k", type=click.IntRange(min=1), default=default_of(TrainConfig, "k"), show_default=True,
              help="knn: neighbours.")
@click.option("--level", type=click.Choice(["video", "frame"]), default=default_of(TrainConfig, "level"), show_default=True,
              help="knn: vote with video mean embeddings or with every frame.")
@click.option("--prompt", default=default_of(TrainConfig, "prompt"), show_default=True, help="zero-shot prompt.")
@pass_quiet
def train_cmd(store, model, out, mixup, alpha, recipe, epochs, batch_size, lr, seeds, first_seed, folds, repeats,
              cv_pool, holdout, shuffle_labels, memmap, eval_every, device, layers,
              max_frames, finetune, k, level, prompt, quiet):
    """Train a classifier (or run a baseline) on STORE's split; write metrics, curves and model to --out."""
    from classifiers.train import run_training
    cfg = TrainConfig(model=model, mixup=mixup, alpha=alpha, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                      seeds=seeds, first_seed=first_seed, folds=folds, repeats=repeats, cv_pool=cv_pool,
                      holdout=holdout, shuffle_labels=shuffle_labels, memmap=MEMMAP_CHOICES[memmap],
                      eval_every=eval_every, device=device, layers=layers, max_frames=max_frames,
                      finetune=finetune, k=k, level=level, prompt=prompt)
    m = run_training(store, cfg, out, progress=not quiet)
    std = lambda key: f" ± {m[key + '_std']:.3f}" if m["seeds"] > 1 or folds > 1 else ""  # noqa: E731
    where = (f"{folds} folds x {repeats} repeat(s) over {m['n_test']} videos" if folds > 1
             else f"{m['n_test']} test videos")
    click.echo(f"{m['name']}: accuracy {m['accuracy']:.3f}{std('accuracy')}, F1 micro {m['f1_micro']:.3f}"
               f"{std('f1_micro')}, F1 macro {m['f1_macro']:.3f}{std('f1_macro')} on {where}")
    curves = ", curves.png" if Path(out, "curves.png").exists() else ""
    click.echo(f"wrote {out}/ (metrics.json, history.json, confusion.png{curves}, model.pt)")


@click.command("report", epilog="""\b
Example:
  vstore report runs/linear-mixup runs/transformer runs/rf-mixup --out runs/results.md
""")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write Markdown here and a bar chart beside it (.png); else print the table.")
def report_cmd(runs, out):
    """Compare runs in one results table (rows: metrics; columns: model x mixup).

    Runs evaluated the same way (the same split, or the same --folds/--repeats on the same
    store) are also compared pairwise over the test videos (one unit per video, its
    correctness averaged over seeds and repeats): mean accuracy difference, 95%
    paired-bootstrap interval and p-value, so a gain can be told from noise. Runs of one store
    on different folds or splits are listed as not compared.
    """
    from classifiers.report import build_report, write_report
    if out:
        md, png = write_report(runs, out)
        click.echo(f"wrote {md} and {png}")
    else:
        click.echo(build_report(runs)[0])


@click.command("predict", epilog="""\b
Examples:
  vstore predict runs/linear-mixup some_new_video.mp4
  vstore predict runs/transformer clips/*.mp4 --json
  vstore predict runs/linear clip.mp4 --timeline timeline.png
  vstore predict runs/transformer clips/*.mp4 --timeline 'timelines/{stem}.png' --json
  vstore predict runs/linear clip.mp4 --evidence
""")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default=default_of(TrainConfig, "device"), show_default=True,
              help="auto (CUDA when present), cpu, cuda[:N].")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Only for a run trained on imported vectors: frames per video they were made from.")
@click.option("--sampling", type=click.Choice(SAMPLING_MODES), default=None,
              help="Only for a run trained on imported vectors: how their frames were sampled.")
@click.option("--evidence", is_flag=True,
              help="Also give each sampled frame's class evidence (printed per frame; with --json, in the JSON).")
@click.option("--timeline", type=click.Path(dir_okay=True), default=None,
              help="Write a PNG of the evidence over time with key-frame thumbnails (implies --evidence). "
                   "Several videos: {stem} in the path is each video's name, else -STEM goes before the "
                   "suffix (timeline-clip1.png); an existing directory gets STEM.png.")
@json_option
def predict_cmd(run, videos, device, frames, sampling, evidence, timeline, as_json):
    """Classify video files with a trained RUN.

    Frames are sampled as the run's training videos were (frame count and mode, recorded in
    the run) and embedded with the run's encoder. Exit status: 0 when every file was
    classified, 3 when some could not be (each gets an ERROR line), 1 on an error that
    stopped it.

    Evidence per frame (docs/classifiers.md): linear, each frame's own logits (their mean is
    the video's logits, exactly); transformer / transformer-reference, the change in each
    class's logit when the frame is masked out (leave-one-frame-out); random-frame, the one
    key frame it classifies.
    """
    from classifiers.predict import Predictor
    preds = Predictor(run, device=device, frames=frames, sampling=sampling).predict(
        videos, evidence=evidence, timeline=timeline)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            if p.error:
                click.echo(f"{p.video}: ERROR {p.error}")
                continue
            probs = "  ".join(f"{n} {v:.3f}" for n, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]))
            click.echo(f"{p.video}: {p.label}  ({probs})")
            if evidence and p.evidence is not None:
                ev = p.evidence
                click.echo(f"  evidence: {ev.method}")
                for t, i, lab, e in zip(ev.timestamps, ev.frame_index, ev.frame_labels(), ev.evidence):
                    click.echo(f"  {t:8.2f}s  frame {int(i):6d}  " + (f"{lab} {e.max():+.3f}" if lab else "(not used)"))
            if p.timeline:
                click.echo(f"  wrote {p.timeline}")
    if any(p.error for p in preds):
        raise SystemExit(EXIT_SOME_FAILED)


COMMANDS = [split_cmd, train_cmd, report_cmd, predict_cmd]
