"""Timeline figures of per-frame evidence (``vstore predict --timeline``). Headless (Agg).

One PNG per video: class evidence against time (seconds, from the sampled frames'
timestamps), key-frame thumbnails along the time axis (bordered in the colour of the class
their evidence favours), the predicted label and the attribution method in the title. The
evidence's config rides along in the PNG's text metadata (key ``vstore-evidence``).

Naming (``timeline_paths``): with one video the PNG is written where asked; with several,
``{stem}`` in the path is replaced by each video's file-name stem, else ``-<stem>`` goes
before the suffix (``timeline.png`` -> ``timeline-clip1.png``); an existing directory gets
``<stem>.png`` inside it. Two videos with the same stem get ``-2``, ``-3``... in order.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vstore.errors import VStoreError
from vstore.fsutil import atomic_write_bytes
from vstore.records import evenly_spaced

from .evidence import FrameEvidence
from .plots import plt

YLABEL = {
    "linear": "frame logit (mean = video logit)",
    "transformer": "logit change if frame removed",
    "transformer-reference": "logit change if frame removed",
    "random-frame": "key-frame logit",
}

LEFT, RIGHT = 0.08, 0.98  # the axes' horizontal extent, fraction of the figure


class TimelinePathError(VStoreError):
    """A --timeline path that cannot name one PNG per video."""


@dataclass
class TimelineConfig:
    thumbnails: int = 8  # key-frame thumbnails along the time axis (evenly chosen among the frames)
    thumb_px: int = 64  # thumbnail side in the figure, pixels
    max_classes: int = 6  # classes drawn (the predicted one and those with the largest evidence)
    width_in: float = 10.0  # figure width, inches
    dpi: int = 110

    def __post_init__(self) -> None:
        if self.thumbnails < 0 or self.thumb_px < 8 or self.max_classes < 1 or self.width_in <= 0 or self.dpi < 20:
            raise ValueError("timeline: thumbnails >= 0, thumb_px >= 8, max_classes >= 1, width_in > 0 and dpi >= 20")


def timeline_paths(pattern: str | Path, videos: Sequence[str | Path]) -> list[Path]:
    """One PNG path per video (see the module doc for the rule)."""
    pattern = str(pattern)
    if not pattern:
        raise TimelinePathError("--timeline needs a path")
    as_dir = Path(pattern).is_dir()
    if len(videos) == 1 and "{stem}" not in pattern and not as_dir:
        return [Path(pattern)]
    out, seen = [], {}
    for v in videos:
        stem = Path(v).stem
        n = seen[stem] = seen.get(stem, 0) + 1
        name = stem if n == 1 else f"{stem}-{n}"
        if as_dir:
            out.append(Path(pattern) / f"{name}.png")
        elif "{stem}" in pattern:
            out.append(Path(pattern.replace("{stem}", name)))
        else:
            p = Path(pattern)
            out.append(p.with_name(f"{p.stem}-{name}{p.suffix or '.png'}"))
    if len(set(out)) != len(out):
        raise TimelinePathError(f"--timeline {pattern} names the same PNG for two videos")
    return out


def _classes_shown(ev: FrameEvidence, k: int) -> list[int]:
    """The predicted class first, then those with the largest |evidence| on used frames."""
    top = int(np.argmax(ev.logits))
    strength = np.abs(ev.evidence[ev.used]).max(0) if ev.used.any() else np.zeros(len(ev.label_names))  # (C,)
    rest = [int(c) for c in np.argsort(-strength, kind="stable") if c != top]
    return [top] + rest[:k - 1]


def thumbnail_picks(ev: FrameEvidence, n: int, min_gap: float) -> list[int]:
    """Up to ``n`` frames to show as thumbnails, evenly spread, none closer than ``min_gap``
    seconds to another (so none overlap); random-frame's key frame always among them."""
    t = ev.timestamps
    first = [int(np.flatnonzero(ev.used)[0])] if ev.model == "random-frame" and ev.used.any() else []
    picks: list[int] = []
    for i in first + [int(i) for i in evenly_spaced(len(t), n)] + list(range(len(t))):
        if len(picks) < n and i not in picks and all(abs(t[i] - t[j]) >= min_gap for j in picks):
            picks.append(i)
    return sorted(picks)


def plot_timeline(ev: FrameEvidence, path: str | Path, video: str = "",
                  config: Optional[TimelineConfig] = None) -> Path:
    """Write the timeline PNG of ``ev`` to ``path`` (atomically) and return the path."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    cfg = config or TimelineConfig()
    path = Path(path)
    colours = plt.get_cmap("tab10")
    colour = lambda c: colours(c % 10)  # noqa: E731
    t = ev.timestamps  # (T,)
    show_thumbs = cfg.thumbnails > 0 and ev.images is not None and len(t) > 0
    fig = plt.figure(figsize=(cfg.width_in, 4.6 if show_thumbs else 3.6))
    grid = fig.add_gridspec(2 if show_thumbs else 1, 1, height_ratios=[3, 1.1] if show_thumbs else [1], hspace=0.05)
    ax = fig.add_subplot(grid[0])
    used = ev.used
    for c in _classes_shown(ev, cfg.max_classes):
        top = c == int(np.argmax(ev.logits))
        style = "o" if ev.model == "random-frame" else "o-"
        ax.plot(t[used], ev.evidence[used, c], style, color=colour(c), lw=2.2 if top else 1.2, ms=6 if top else 4,
                label=ev.label_names[c] + (" (predicted)" if top else ""))
    ax.axhline(0, color="grey", lw=0.8)
    for x in t[~used]:
        ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    if ev.model == "random-frame" and used.any():
        ax.axvline(t[used][0], color="black", ls="--", lw=1, label="key frame (the one the model used)")
    ax.set_ylabel(YLABEL[ev.model])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    span = max(float(t.max() - t.min()), 1e-3) if len(t) else 1.0
    lo, hi = (float(t.min()) - 0.06 * span, float(t.max()) + 0.06 * span) if len(t) else (0.0, 1.0)
    ax.set_xlim(lo, hi)
    p = float(np.exp(ev.logits - ev.logits.max())[np.argmax(ev.logits)] / np.exp(ev.logits - ev.logits.max()).sum())
    name = f"{video}: " if video else ""
    ax.set_title(f"{name}predicted {ev.label} (p = {p:.2f})\nevidence: {ev.method}", fontsize=9)
    if show_thumbs:
        axt = fig.add_subplot(grid[1], sharex=ax)
        ax.tick_params(labelbottom=False)
        axt.set_ylim(0, 1)
        axt.set_yticks([])
        axt.set_xlabel("time (s)")
        axis_px = cfg.width_in * cfg.dpi * (RIGHT - LEFT)
        picks = thumbnail_picks(ev, cfg.thumbnails, min_gap=(cfg.thumb_px + 8) * (hi - lo) / axis_px)
        labels = ev.evidence.argmax(1)  # (T,)
        for i in picks:
            img = ev.images[i]  # (S, S, 3)
            zoom = cfg.thumb_px / max(img.shape[:2]) * 72.0 / cfg.dpi
            edge = colour(int(labels[i])) if used[i] else (0.6, 0.6, 0.6)
            box = AnnotationBbox(OffsetImage(img, zoom=zoom), (float(t[i]), 0.5), xycoords="data", frameon=True,
                                 pad=0.15, bboxprops={"edgecolor": edge, "linewidth": 3 if ev.model == "random-frame"
                                                      and used[i] else 2})
            axt.add_artist(box)
        axt.plot(t, np.full(len(t), 0.03), "|", color="0.4", ms=8)  # every frame's time
    else:
        ax.set_xlabel("time (s)")
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=0.86, bottom=0.12 if show_thumbs else 0.16)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=cfg.dpi,
                metadata={"vstore-evidence": json.dumps({"model": ev.model, "method": ev.method, "units": "logit",
                                                         "evidence_config": ev.config, "timeline_config": asdict(cfg)})})
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
