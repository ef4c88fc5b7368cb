"""Synthetic videos made with PyAV: for the demo, the tests and the benchmarks.

``index_frame`` draws a frame whose pixels spell its own index (a 4 x 4 grid of black/white
cells, 16 bits), so a sampler can be checked exactly after real encoding; ``read_index``
reads it back. ``make_class_video`` draws short labelled clips whose classes differ either in
content or only in the order of their frames (fade-in vs fade-out).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import av
import numpy as np

GRID = 4  # cells per side; 16 bits of frame index


def index_frame(i: int, width: int = 160, height: int = 96) -> np.ndarray:
    """(H, W, 3) uint8 frame spelling ``i`` in a 4 x 4 grid (cell k white = bit k set)."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    ch, cw = height // GRID, width // GRID
    for k in range(GRID * GRID):
        if (i >> k) & 1:
            r, c = divmod(k, GRID)
            img[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = 255
    return img


def read_index(img: np.ndarray) -> int:
    """Inverse of ``index_frame`` on a decoded (possibly lossy) full frame."""
    h, w = img.shape[:2]
    ch, cw = h // GRID, w // GRID
    value = 0
    for k in range(GRID * GRID):
        r, c = divmod(k, GRID)
        cell = img[r * ch + ch // 4:(r + 1) * ch - ch // 4, c * cw + cw // 4:(c + 1) * cw - cw // 4]
        if cell.mean() > 127:
            value |= 1 << k
    return value


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 25, codec: str = "libx264",
                options: Optional[dict] = None, pts: Optional[Sequence[int]] = None,
                time_base: Optional[Fraction] = None, pix_fmt: str = "yuv420p", rotation: int = 0,
                hflip: bool = False) -> Path:
    """Encode RGB frames into ``path``. ``pts`` (in ``time_base`` units) gives variable frame rate.
    ``rotation``/``hflip``: a display matrix telling players to mirror the frames left-right
    (``hflip``), then turn them ``rotation`` degrees clockwise (as ``orientation.Orientation``)."""
    path = Path(path)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps, options=dict(options or {}))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if rotation or hflip:
            # PyAV counts counter-clockwise and mirrors after rotating; mirror-then-rotate-clockwise
            # by r is the same matrix as its (r, hflip=True), and rotate-clockwise r is its -r.
            stream.set_display_rotation(rotation % 360 if hflip else -rotation % 360, hflip=hflip)
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        def emit(i, img):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        emit(0, first)
        for i, img in enumerate(frames, start=1):
            emit(i, img)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_index_video(path: str | Path, n_frames: int, width: int = 160, height: int = 96, fps: int = 25,
                      codec: str = "libx264", options: Optional[dict] = None,
                      pts: Optional[Sequence[int]] = None, time_base: Optional[Fraction] = None,
                      rotation: int = 0, hflip: bool = False) -> Path:
    return write_video(path, (index_frame(i, width, height) for i in range(n_frames)), fps=fps, codec=codec,
                       options=options, pts=pts, time_base=time_base, rotation=rotation, hflip=hflip)


# -- labelled clips for the demo and classifier tests ------------------------------------------------

CONTENT_CLASSES = ("red_circle", "green_square", "blue_stripes", "yellow_cross")
ORDER_CLASSES = ("fade_in", "fade_out")


def _content(kind: str, t: float, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 40, dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
    cx, cy = w * (0.3 + 0.4 * t), h * (0.5 + 0.2 * np.sin(6 * t))
    if kind == "red_circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < (h / 4) ** 2
        img[m] = (220, 40, 40)
    elif kind == "green_square":
        m = (abs(xx - cx) < h / 4) & (abs(yy - cy) < h / 4)
        img[m] = (40, 200, 60)
    elif kind == "blue_stripes":
        m = ((xx + int(30 * t * w / 10)) // 8) % 2 == 0
        img[m] = (40, 60, 220)
    elif kind == "yellow_cross":
        m = (abs(xx - cx) < h / 12) | (abs(yy - cy) < h / 12)
        img[m] = (230, 220, 40)
    else:
        raise ValueError(f"unknown content class {kind!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


def class_frames(kind: str, n_frames: int, seed: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """Frames of one clip of class ``kind`` (a content class or an order class)."""
    rng = np.random.default_rng(seed)
    if kind in ORDER_CLASSES:
        # Same content either way; only the direction of the brightness ramp differs.
        base = _content(CONTENT_CLASSES[seed % len(CONTENT_CLASSES)], 0.5, rng, width, height).astype(np.float32)
        ramp = np.linspace(0.1, 1.0, n_frames)
        if kind == "fade_out":
            ramp = ramp[::-1]
        return [np.clip(base * r + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for r in ramp]
    return [_content(kind, i / max(1, n_frames - 1), rng, width, height) for i in range(n_frames)]


def make_class_video(path: str | Path, kind: str, n_frames: int = 24, seed: int = 0, fps: int = 12,
                     width: int = 96, height: int = 64) -> Path:
    return write_video(path, class_frames(kind, n_frames, seed, width, height), fps=fps,
                       options={"preset": "ultrafast", "crf": "23"})


# -- distinct scenes for near-duplicate tests ------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int = 4) -> np.ndarray:
    """(H, W, 3) float32 in 0..255: a coloured low-frequency texture (bilinear upsampled noise)."""
    coarse = rng.uniform(0, 255, (cells + 1, cells + 1, 3)).astype(np.float32)
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c = coarse
    return ((c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx) * (1 - fy)
            + (c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx) * fy)


def scene_frames(kind: str, n_frames: int, seed: int, width: int = 96, height: int = 64,
                 title_frames: int = 0) -> list[np.ndarray]:
    """Frames of a clip whose content is its own: a seed-chosen panning texture and a moving
    object of content class ``kind`` (same shape and colour for every seed, own path and size).

    Two seeds of one class are distinct videos of that class, not copies of each other; the
    first ``title_frames`` frames are a title card shared by every clip (same for all seeds)."""
    rng = np.random.default_rng(seed)
    texture = _smooth_noise(rng, 2 * width, height, cells=6)  # panned over, so the view changes
    title = _smooth_noise(np.random.default_rng(12345), width, height, cells=3)
    colour = {"red_circle": (220, 40, 40), "green_square": (40, 200, 60), "blue_stripes": (40, 60, 220),
              "yellow_cross": (230, 220, 40)}[kind]
    x0, y0 = rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.7) * height
    vx, vy = rng.uniform(-0.3, 0.3) * width, rng.uniform(-0.2, 0.2) * height
    r = rng.uniform(0.15, 0.3) * height
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n_frames):
        if i < title_frames:
            frames.append(np.clip(title, 0, 255).astype(np.uint8))
            continue
        t = i / max(1, n_frames - 1)
        shift = int(t * width)
        img = texture[:, shift:shift + width].copy()
        cx, cy = x0 + vx * t, y0 + vy * t
        if kind == "red_circle":
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        elif kind == "green_square":
            m = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        elif kind == "blue_stripes":
            m = (abs(yy - cy) < r) & (((xx + int(20 * t)) // 6) % 2 == 0)
        else:
            m = (abs(xx - cx) < r / 3) | (abs(yy - cy) < r / 3)
        img[m] = colour
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames
