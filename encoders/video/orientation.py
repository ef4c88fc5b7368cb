"""How a decoded frame is shown: the stream's display matrix (rotation, mirroring) and its
sample aspect ratio.

Phone videos store their pixels as the sensor saw them and carry a display matrix (MP4
``tkhd``, Matroska projection, H.264/HEVC display-orientation SEI) saying how to turn them
for display; FFmpeg hands it to every decoded frame as ``DISPLAYMATRIX`` side data. A player
and ffmpeg's default decode (``-autorotate``, on by default) apply it. ``Orientation`` is the
same decision ffmpeg's CLI makes (fftools ``get_rotation`` and the transpose/hflip/vflip
filters it inserts), written as "mirror left-right first (``hflip``), then rotate clockwise by
``rotation`` degrees"; ``filters`` gives those FFmpeg filters, ``apply`` the same in numpy.

Rotations that are not a multiple of 90 degrees (ffmpeg would rotate with black corners)
are left as decoded, with a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class Orientation:
    """Turn a decoded image into the displayed one: mirror left-right if ``hflip``, then
    rotate clockwise by ``rotation`` degrees (0, 90, 180 or 270)."""

    rotation: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        assert self.rotation in ROTATIONS, self.rotation

    @property
    def identity(self) -> bool:
        return self.rotation == 0 and not self.hflip

    @property
    def transposed(self) -> bool:
        """Whether width and height swap for display."""
        return self.rotation in (90, 270)

    def displayed_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) as displayed of a (``width``, ``height``) decoded image; also the inverse."""
        return (height, width) if self.transposed else (width, height)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """(H, W, C) decoded -> displayed (a view; H and W swap when ``transposed``)."""
        if self.hflip:
            img = img[:, ::-1]
        return np.rot90(img, k=-(self.rotation // 90)) if self.rotation else img

    @property
    def filters(self) -> list[tuple[str, Optional[str]]]:
        """The same transform as FFmpeg filters (name, args): the ones ffmpeg's CLI inserts."""
        return {(0, False): [], (90, False): [("transpose", "clock")], (270, False): [("transpose", "cclock")],
                (180, False): [("hflip", None), ("vflip", None)], (0, True): [("hflip", None)],
                (90, True): [("transpose", "clock_flip")], (270, True): [("transpose", "cclock_flip")],
                (180, True): [("vflip", None)]}[(self.rotation, self.hflip)]


UPRIGHT = Orientation()


def _display_rotation_get(m: Sequence[int]) -> float:
    """libavutil's ``av_display_rotation_get``: counter-clockwise degrees (NaN if degenerate)."""
    a, b, c, d = (x / 65536.0 for x in (m[0], m[1], m[3], m[4]))
    s0, s1 = math.hypot(a, c), math.hypot(b, d)
    if s0 == 0 or s1 == 0:
        return math.nan
    return -math.degrees(math.atan2(b / s1, a / s0))


def orientation_from_matrix(m: Optional[Sequence[int]]) -> Orientation:
    """The orientation ffmpeg's CLI gives a 3x3 16.16/2.30 fixed-point display matrix
    (9 int32, row-major, as in ``AV_FRAME_DATA_DISPLAYMATRIX``); None = upright."""
    if m is None:
        return UPRIGHT
    r = _display_rotation_get(m)
    if math.isnan(r):
        log.warning("ignoring a degenerate display matrix %s", list(m))
        return UPRIGHT
    theta = -round(r)  # ffmpeg's get_rotation: clockwise degrees in [0, 360)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return Orientation(270, True) if m[3] > 0 else Orientation(90, False)
    if abs(theta - 180) < 1:  # hflip if m[0] < 0, vflip if m[4] < 0
        h, v = m[0] < 0, m[4] < 0
        return {(True, True): Orientation(180), (True, False): Orientation(0, True),
                (False, True): Orientation(180, True), (False, False): UPRIGHT}[(h, v)]
    if abs(theta - 270) < 1:  # transpose=clock_flip (anti-transpose) or transpose=cclock
        return Orientation(90, True) if m[3] < 0 else Orientation(270, False)
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return Orientation(180, True) if m[4] < 0 else UPRIGHT  # vflip
    log.warning("display matrix rotates by %.0f degrees, not a multiple of 90: frames are left as decoded", theta)
    return UPRIGHT


def frame_orientation(frame) -> Orientation:
    """The orientation of a decoded PyAV ``VideoFrame`` (from its DISPLAYMATRIX side data)."""
    sd = frame.side_data
    if not len(sd):
        return UPRIGHT
    try:
        data = sd["DISPLAYMATRIX"]
    except KeyError:
        return UPRIGHT
    raw = bytes(data)
    if len(raw) < 36:
        return UPRIGHT
    return orientation_from_matrix(np.frombuffer(raw[:36], dtype="<i4").tolist())


def display_width(width: int, sar: Optional[Fraction]) -> int:
    """Width of a ``width``-pixel row shown with sample aspect ratio ``sar`` (None/0 = square)."""
    if not sar or sar <= 0 or sar == 1:
        return width
    return max(1, int(round(width * sar)))
