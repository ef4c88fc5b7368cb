"""The three classifiers of the reference study, each with its own place to apply mixup.

* ``linear``: masked mean of the frame embeddings -> one linear layer.
* ``transformer``: learned positional embeddings + frame embeddings -> ``layers`` transformer
  encoder layer(s), 8 heads, PyTorch padding mask (True = padding) -> masked mean -> linear.
* ``random-frame``: the stored key frame of each video through the store's image encoder
  (frozen unless ``finetune``) -> linear layer.

``forward(batch, mix)``: ``batch`` is a dict of tensors for B videos; ``mix`` is ``None`` or
``(lam, perm)`` and each model mixes at the stage the study prescribes (pooled embeddings,
frame sequences with OR-ed masks, or pixels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from .config import TRAINED_MODELS
from .mixup import Mix, mix_inputs


@dataclass
class ModelConfig:
    model: str = "linear"  # linear | transformer | random-frame
    dim: int = 512  # frame embedding size (the store's)
    n_classes: int = 4
    max_frames: int = 100  # positional embeddings (transformer)
    layers: int = 1  # transformer encoder layers
    heads: int = 8  # attention heads (dim must be divisible by it)
    ff_dim: int = 2048  # transformer feed-forward width (PyTorch's default)
    dropout: float = 0.1  # transformer dropout (PyTorch's default)
    finetune: bool = False  # random-frame: train the image encoder too

    def __post_init__(self) -> None:
        if self.model not in TRAINED_MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(TRAINED_MODELS)}")
        if self.n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {self.n_classes}")
        if self.model == "transformer" and self.dim % self.heads:
            raise ValueError(f"embedding dim {self.dim} is not divisible by {self.heads} heads")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool -> (B, D) mean over the real frames."""
    w = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class LinearClassifier(nn.Module):
    """Mean-pooled linear head. Trains from pooled embeddings (``batch["pooled"]``, computed
    once per store) since pooling has no parameters; also accepts frames + mask."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        pooled = batch["pooled"] if "pooled" in batch else masked_mean(batch["frames"], batch["valid"])  # (B, D)
        return self.head(mix_inputs(pooled, mix))  # (B, C)


class TransformerClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pos = nn.Parameter(torch.zeros(cfg.max_frames, cfg.dim))  # (T_max, D)
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True)
        # enable_nested_tensor=False: identical maths for padded and unpadded batches
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        x, valid = batch["frames"], batch["valid"]  # (B, T, D), (B, T) True = real frame
        if mix is not None:  # mix the sequences element-wise; a slot is real if either is
            x = mix_inputs(x, mix)
            valid = valid | valid[mix[1]]
        T = x.shape[1]
        if T > self.cfg.max_frames:
            raise ValueError(f"{T} frames per video, the model has positions for {self.cfg.max_frames}")
        h = self.encoder(x + self.pos[:T], src_key_padding_mask=~valid)  # (B, T, D); True = padding
        return self.head(masked_mean(h, valid))  # (B, C)


class RandomFrameClassifier(nn.Module):
    """Key frame -> image encoder -> linear. Without mixup (and frozen) it reads the stored
    key-frame embedding (``batch["key_embedding"]``) instead of running the encoder."""

    def __init__(self, cfg: ModelConfig, encoder: Optional[Any] = None):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = encoder  # a FrameEncoder, or None when only embeddings are used
        if cfg.finetune:
            visual = getattr(getattr(encoder, "model", None), "visual", None)
            if visual is None:
                raise ValueError(f"encoder {getattr(encoder, 'name', None)} has no weights to fine-tune; "
                                 "drop --finetune")
            self.visual = visual.float()  # registered: its weights train and are saved
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def embed_images(self, images: torch.Tensor, mix: Mix = None) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, D): preprocess, mix pixels, encode."""
        enc = self.image_encoder
        assert enc is not None, "random-frame with mixup or fine-tuning needs the image encoder"
        x = enc.preprocess(images)  # (B, 3, S, S) normalised; mixing is the same before or after
        x = mix_inputs(x.float(), mix)
        if self.cfg.finetune:
            return self.visual(x.to(next(self.visual.parameters()).dtype)).float()
        with torch.no_grad():
            return enc.forward(x).float()

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        if mix is None and not self.cfg.finetune and "key_embedding" in batch:
            feats = batch["key_embedding"]  # (B, D)
        else:
            feats = self.embed_images(batch["key_image"], mix)  # (B, D)
        return self.head(feats)


def build_model(cfg: ModelConfig, encoder: Optional[Any] = None) -> nn.Module:
    if cfg.model == "linear":
        return LinearClassifier(cfg)
    if cfg.model == "transformer":
        return TransformerClassifier(cfg)
    return RandomFrameClassifier(cfg, encoder)


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    return asdict(cfg)
