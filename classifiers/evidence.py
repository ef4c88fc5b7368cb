"""Per-frame class evidence: which sampled frames of a video pushed the model to its label.

One home for the attribution methods (``vstore predict --evidence / --timeline``). Every
method gives a ``(T, C)`` array in logit units over the T frames the model saw:

* ``linear`` -- **exact contributions**. The model is ``head(scale(mean_t x_t))`` and both
  ``scale`` (standardisation, an affine map per dimension) and ``head`` are affine, so the
  video's logits are exactly the mean of the per-frame logits ``head(scale(x_t))``. Frame t's
  evidence is its own logits; ``evidence.mean(0)`` reproduces the video's logits (to float
  rounding).
* ``transformer``, ``transformer-reference`` -- **leave-one-frame-out**. Frame t's evidence
  is ``logits(all frames) - logits(all frames but t)``, where frame t is dropped through the
  padding mask (the other frames keep their positions), so it measures the model's own
  behaviour, not an approximation of it. Positive: the frame raised that class. It is not
  additive (frames that say the same thing share credit: removing one of several redundant
  frames changes little). The change in probability is kept beside it.
* ``random-frame`` -- the model looks at one key frame only (``sha256(id) % total_frames``).
  That frame is marked ``used`` and its evidence is the video's logits; every other frame has
  evidence 0 (the model did not see it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from .models import ReferenceTransformerClassifier

METHODS = {
    "linear": "exact per-frame logits (their mean is the video's logits)",
    "transformer": "leave-one-frame-out (logit change when the frame is masked out)",
    "transformer-reference": "leave-one-frame-out (logit change when the frame is masked out)",
    "random-frame": "the one key frame the model classifies (its logits; other frames unused)",
}


@dataclass
class EvidenceConfig:
    chunk: int = 32  # leave-one-frame-out: masked copies of the video per forward pass (bounds memory)

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")


@dataclass
class FrameEvidence:
    """Evidence per frame for one video (arrays over the T frames shown, in time order)."""

    model: str  # linear | transformer | transformer-reference | random-frame
    label_names: list[str]
    frame_index: np.ndarray  # (T,) int64 frame numbers in the video
    timestamps: np.ndarray  # (T,) float64 seconds since the first frame
    evidence: np.ndarray  # (T, C) float32, logit units (see the module doc)
    used: np.ndarray  # (T,) bool: the frames the model's input held (random-frame: one)
    logits: np.ndarray  # (C,) float32, the video's logits from the model's real forward pass
    probability_change: Optional[np.ndarray] = None  # (T, C) leave-one-frame-out: p(all) - p(all but t)
    images: Optional[np.ndarray] = field(default=None, repr=False)  # (T, S, S, 3) uint8 frames, for thumbnails
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return METHODS[self.model]

    @property
    def label(self) -> str:
        return self.label_names[int(np.argmax(self.logits))]

    def frame_labels(self) -> list[Optional[str]]:
        """Per frame: the class its evidence favours most (None for a frame the model did not use)."""
        return [self.label_names[int(np.argmax(e))] if u else None for e, u in zip(self.evidence, self.used)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: method, units and one record per frame."""
        frames = []
        for t in range(len(self.frame_index)):
            rec: dict[str, Any] = {"frame_index": int(self.frame_index[t]), "timestamp": float(self.timestamps[t]),
                                   "used": bool(self.used[t]),
                                   "evidence": {n: float(v) for n, v in zip(self.label_names, self.evidence[t])}}
            if self.probability_change is not None:
                rec["probability_change"] = {n: float(v) for n, v in zip(self.label_names, self.probability_change[t])}
            frames.append(rec)
        return {"method": METHODS[self.model], "model": self.model, "units": "logit",
                "config": self.config, "frames": frames}


def linear_evidence(model: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(T, D) frame embeddings -> (T, C) per-frame logits ``head(scale(x_t))``, whose mean is the
    video's logits ``head(scale(mean_t x_t))`` exactly (both maps are affine)."""
    return model.head(model.scale(frames))  # (T, C)


def drop_masks(T: int, device: torch.device) -> torch.Tensor:
    """(T, T) bool: row t is every frame but t (True = real)."""
    return ~torch.eye(T, dtype=torch.bool, device=device)


@torch.no_grad()
def masked_logits(model: nn.Module, frames: torch.Tensor, masks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """(T, D) frames of one video, (M, T) bool masks (True = keep) -> (M, C): the model's logits
    with only each mask's frames, M copies run ``chunk`` at a time (memory ~ chunk x T x D)."""
    out = []
    for start in range(0, len(masks), chunk):
        m = masks[start:start + chunk]  # (b, T)
        logits = model({"frames": frames[None].expand(len(m), -1, -1), "valid": m})  # (b, C)
        if isinstance(model, ReferenceTransformerClassifier):
            # no frame left: the masked mean is 0, so the head's bias (a fully padded encoder row is NaN)
            logits = torch.where(m.any(1, keepdim=True), logits, model.head.bias[None])
        out.append(logits)
    return torch.cat(out)


@torch.no_grad()
def leave_one_out(model: nn.Module, frames: torch.Tensor,
                  config: Optional[EvidenceConfig] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, D) frames of one video -> (full logits (C,), logit change (T, C), probability change (T, C)).

    Row t of the changes is ``f(all) - f(all but t)``, frame t dropped through the padding mask.
    """
    cfg = config or EvidenceConfig()
    T = frames.shape[0]
    full = model({"frames": frames[None], "valid": torch.ones(1, T, dtype=torch.bool, device=frames.device)})[0]  # (C,)
    without = masked_logits(model, frames, drop_masks(T, frames.device), cfg.chunk)  # (T, C)
    p_full, p_without = torch.softmax(full.float(), -1), torch.softmax(without.float(), -1)
    return full, full[None] - without, p_full[None] - p_without
