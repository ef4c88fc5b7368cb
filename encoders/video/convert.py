"""Decoded frames -> RGB images as a person sees them.

The pixel format conversion is FFmpeg's own ``scale`` filter with ``flags=bicubic``, the
conversion ffmpeg's CLI inserts for ``-pix_fmt rgb24``: it takes the frame's colour matrix
(BT.601/709/2020) and range from the frame and places subsampled chroma as ffmpeg does, so
10-bit and interlaced sources convert exactly as ``ffmpeg -i f -pix_fmt rgb24`` converts them
(PyAV's ``to_ndarray`` runs swscale with other chroma siting and frame handling: up to 2.2
mean absolute difference on 10-bit HEVC, 1.6 on interlaced H.264; benchmarks/fidelity.py).
The display matrix is applied first, by the filters ffmpeg's CLI inserts for it (transpose,
hflip, vflip on the decoded YUV frame, ``orientation``), then the conversion, resized to
``size`` in the same pass. A 90-degree video costs 1.04-1.06x the CPU time of the same
packets upright, and upright videos cost what PyAV's ``to_ndarray`` did (1.00x full size,
0.91x at size 224; ``benchmarks/fidelity.py --speed``). Rotating the small converted image instead is not
identical: swscale places chroma differently along the two axes (MAD 3.2 against ffmpeg's
``transpose,scale`` on a 90-degree clip at size 112).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import av
import numpy as np

from .geometry import center_crop_offsets, resized_size
from .orientation import Orientation, display_width, frame_orientation


class _Scaler:
    """One filter graph: buffer -> [transpose/hflip/vflip] -> scale=W:H:flags=bicubic ->
    format=rgb24 -> buffersink, for frames of one size, pixel format and orientation."""

    def __init__(self, frame, o: Orientation, width: Optional[int], height: Optional[int]):
        g = av.filter.Graph()
        g.threads = 1  # decode workers run one per core already
        src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                           time_base=frame.time_base or Fraction(1, 1000))
        turn = [g.add(name, args) for name, args in o.filters]
        size = f"{width}:{height}:" if width else ""
        g.link_nodes(src, *turn, g.add("scale", f"{size}flags=bicubic"), g.add("format", "rgb24"), g.add("buffersink"))
        g.configure()
        self.graph = g

    def __call__(self, frame) -> np.ndarray:
        self.graph.vpush(frame)
        return self.graph.vpull().to_ndarray()  # (H, W, 3) uint8


class FrameConverter:
    """Frame -> RGB uint8 as displayed; with ``size``: the displayed frame's shorter side
    resized to ``size`` (its sample aspect ratio applied), then centre-cropped to ``size`` x
    ``size``. Geometry and filter graphs are kept per frame size, pixel format and
    orientation (all can change mid-stream)."""

    def __init__(self, size: Optional[int] = None, sar: Optional[Fraction] = None):
        self.size = size
        self.sar = sar
        self.orientation: Optional[Orientation] = None  # of the first frame converted
        self._plans: dict[tuple, tuple[_Scaler, int, int]] = {}

    def _plan(self, frame, o: Orientation) -> tuple[_Scaler, int, int]:
        """(scaler, crop top, crop left) for a frame of this size, format and orientation."""
        key = (frame.width, frame.height, frame.format.name, o)
        if key not in self._plans:
            if self.size is None:
                self._plans[key] = (_Scaler(frame, o, None, None), 0, 0)
            else:
                dw, dh = o.displayed_size(display_width(frame.width, self.sar), frame.height)  # as seen
                rw, rh = resized_size(dw, dh, self.size)
                top, left = center_crop_offsets(rw, rh, self.size)
                self._plans[key] = (_Scaler(frame, o, rw, rh), top, left)
        return self._plans[key]

    def __call__(self, frame) -> np.ndarray:
        o = frame_orientation(frame)
        if self.orientation is None:
            self.orientation = o
        scale, top, left = self._plan(frame, o)
        rgb = scale(frame)  # (H, W, 3) as displayed
        if self.size is None:
            return rgb
        return np.ascontiguousarray(rgb[top:top + self.size, left:left + self.size])  # (size, size, 3)


def make_converter(size: Optional[int], stream) -> FrameConverter:
    """The converter for frames of ``stream`` (its sample aspect ratio counts only with ``size``)."""
    return FrameConverter(size, stream.sample_aspect_ratio if size is not None else None)
