"""``thumbnail``: a weight-free frame encoder (colour histogram + tiny thumbnail).

It needs no download and runs fast on any CPU, so the whole pipeline works offline (demo,
tests, smoke runs). Embedding (256-d, L2-normalised) = a 4x4x4 RGB colour histogram (64)
and an 8x8 RGB thumbnail (192), each L2-normalised, concatenated and L2-normalised again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import FrameEncoder, resolve_device


@dataclass
class ThumbnailConfig:
    input_size: int = 64  # frames are resized/cropped to this before pooling
    bins: int = 4  # histogram bins per RGB channel (bins**3 features)
    grid: int = 8  # thumbnail side (3 * grid**2 features)
    device: str = "auto"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.input_size % self.grid:
            raise ValueError(f"input_size {self.input_size} must be a multiple of grid {self.grid}")
        if not 2 <= self.bins <= 16:
            raise ValueError(f"bins must be in 2..16, got {self.bins}")


class ThumbnailEncoder(FrameEncoder):
    supports_text = False
    normalized = True

    def __init__(self, config: ThumbnailConfig | None = None):
        self.config = config or ThumbnailConfig()
        self.device = resolve_device(self.config.device)
        self.input_size = self.config.input_size
        self.batch_size = self.config.batch_size
        self.dim = self.config.bins ** 3 + 3 * self.config.grid ** 2
        self.name = "thumbnail"

    @property
    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"name": self.name, "kind": "thumbnail", "spec": "thumbnail",
                "id": f"thumbnail:v1:s{c.input_size}:b{c.bins}:g{c.grid}", "dim": self.dim,
                "input_size": self.input_size, "normalized": True, "supports_text": False,
                "config": {k: v for k, v in asdict(c).items() if k not in ("device", "batch_size")}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, S, S) in [0, 1]
        b = self.config.bins
        q = (x * b).long().clamp_(0, b - 1)  # (B, 3, S, S) bin per channel
        code = (q[:, 0] * b + q[:, 1]) * b + q[:, 2]  # (B, S, S)
        hist = F.one_hot(code.flatten(1), b ** 3).float().mean(1)  # (B, b^3)
        thumb = F.adaptive_avg_pool2d(x, self.config.grid).flatten(1)  # (B, 3 * g * g)
        thumb = thumb - thumb.mean(1, keepdim=True)
        feats = torch.cat([F.normalize(hist, dim=1), F.normalize(thumb, dim=1)], dim=1)
        return F.normalize(feats, dim=1)  # (B, D), unit norm
