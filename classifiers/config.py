"""``vstore train`` configuration (one dataclass, saved in every run's metrics and model.pt)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

TRAINED_MODELS = ("linear", "transformer", "random-frame")
BASELINES = ("knn", "zero-shot")
ALL_MODELS = TRAINED_MODELS + BASELINES


@dataclass
class TrainConfig:
    model: str = "linear"  # linear | transformer | random-frame | knn | zero-shot
    mixup: bool = False  # mixup augmentation (trained models)
    alpha: float = 0.4  # mixup lambda ~ Beta(alpha, alpha); the reference study used 0.4
    epochs: int = 10  # the reference study: 10 epochs...
    batch_size: int = 16  # ...batches of 16...
    lr: float = 1e-3  # ...Adam at 1e-3
    weight_decay: float = 0.0
    seeds: int = 1  # repeat with seeds 0..seeds-1; metrics are mean +/- std over them
    eval_every: int = 0  # evaluate every this many steps (0 = at the end of every epoch)
    device: str = "auto"  # auto = CUDA when present
    amp: bool = True  # mixed precision on CUDA (no effect on CPU)
    layers: int = 1  # transformer encoder layers
    max_frames: Optional[int] = None  # cap frames per video (evenly subsampled); None = all stored
    finetune: bool = False  # random-frame: train the CLIP image encoder too...
    encoder_lr: float = 1e-5  # ...at this learning rate
    memory_budget_mb: Optional[int] = None  # frames above this are streamed (default: half of free RAM)
    k: int = 10  # knn: neighbours
    level: str = "video"  # knn: video (mean embeddings) | frame (frame votes summed per video)
    prompt: str = "a video about {label}"  # zero-shot: text prompt per label

    def __post_init__(self) -> None:
        if self.model not in ALL_MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(ALL_MODELS)}")
        for name in ("epochs", "batch_size", "seeds", "layers", "k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.level not in ("video", "frame"):
            raise ValueError(f"level must be video or frame, got {self.level!r}")
        if "{label}" not in self.prompt:
            raise ValueError(f"prompt must contain {{label}}, got {self.prompt!r}")
        if self.mixup and self.model in BASELINES:
            raise ValueError(f"--mixup applies to trained models, not {self.model}")
        if self.finetune and self.model != "random-frame":
            raise ValueError("--finetune applies to random-frame only")

    @property
    def run_name(self) -> str:
        return self.model + (" + mixup" if self.mixup else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
