"""Resize-and-crop geometry shared by the decode workers (numpy/PyAV) and the torch
preprocessing, so both produce exactly what CLIP's own transforms would."""
from __future__ import annotations


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size`` (torchvision's Resize(int) rule)."""
    if width <= height:
        return size, max(size, int(size * height / width))
    return max(size, int(size * width / height)), size


def center_crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(top, left) of a centred ``size`` x ``size`` crop (torchvision's CenterCrop rule)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
