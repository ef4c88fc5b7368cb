"""The three classifiers of the reference study, each with its own place to apply mixup.

* ``linear``: masked mean of the frame embeddings -> one linear layer.
* ``transformer`` (the default temporal model): the ``linear`` model itself (its logits from
  the mean-pooled frames) plus a temporal part whose logits are added to them: LayerNorm of
  each frame embedding + learned positional embeddings on the same (unit) scale, a learned
  [CLS] token in front, ``layers`` pre-norm encoder layer(s) (GELU, feed-forward 4 x dim),
  final LayerNorm, a linear head on the [CLS] output, initialised to zero (so the untrained
  temporal part adds nothing). Training (``classifiers.train``) fits the linear part first,
  exactly as ``--model linear`` would, then freezes it and trains the temporal part on what
  is left, keeping the epoch with the lowest validation loss (epoch 0, the linear part alone,
  included). Chosen by measurement (docs/classifiers.md): on order-only sequences (the same
  frames fading in or out, CLIP-scale inputs) it reaches F1 1.0 where the study's
  architecture stays far below, and on content-only sequences, where a temporal model alone
  overfits small data, it keeps the linear model's accuracy.
* ``transformer-reference``: the reference study's architecture, kept as it was: learned
  positional embeddings (std 0.02) + frame embeddings -> ``layers`` post-norm encoder
  layer(s), 8 heads, feed-forward 2048 -> masked mean -> linear. Its positions are ~1/20 of a
  CLIP embedding's scale, so it barely sees frame order.
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

SEQUENCE_MODELS = ("transformer", "transformer-reference")  # trained from (V, T, D) frames + mask


@dataclass
class ModelConfig:
    model: str = "linear"  # linear | transformer | transformer-reference | random-frame
    dim: int = 512  # frame embedding size (the store's)
    n_classes: int = 4
    max_frames: int = 100  # positional embeddings (transformer)
    layers: int = 1  # transformer encoder layers
    heads: int = 8  # attention heads (dim must be divisible by it)
    ff_dim: Optional[int] = None  # feed-forward width; None: 4 x dim (transformer), 2048 (reference, PyTorch's)
    dropout: float = 0.1  # transformer dropout (PyTorch's default)
    finetune: bool = False  # random-frame: train the image encoder too
    standardize: bool = False  # standardise input features (statistics set from training data, saved)
    linear_path: bool = True  # transformer: contains the linear model, its logits added (False for other models
    #   and for transformer runs saved before it existed, checkpoint format_version < 3)

    def __post_init__(self) -> None:
        if self.model not in TRAINED_MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(TRAINED_MODELS)}")
        if self.n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {self.n_classes}")
        if self.ff_dim is None:
            self.ff_dim = 2048 if self.model == "transformer-reference" else 4 * self.dim
        if self.model in SEQUENCE_MODELS and self.dim % self.heads:
            raise ValueError(f"embedding dim {self.dim} is not divisible by {self.heads} heads")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.model != "transformer":
            self.linear_path = False


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool -> (B, D) mean over the real frames."""
    w = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class Standardize(nn.Module):
    """(..., D) -> (x - mean) / std with the training set's statistics (buffers: saved with
    the weights, so prediction standardises exactly as training did). Identity until set."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def feature_scaler(cfg: "ModelConfig") -> nn.Module:
    return Standardize(cfg.dim) if cfg.standardize else nn.Identity()


class LinearClassifier(nn.Module):
    """Mean-pooled linear head. Trains from pooled embeddings (``batch["pooled"]``, computed
    once per store) since pooling has no parameters; also accepts frames + mask."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.scale = feature_scaler(cfg)
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        pooled = batch["pooled"] if "pooled" in batch else masked_mean(batch["frames"], batch["valid"])  # (B, D)
        return self.head(mix_inputs(self.scale(pooled), mix))  # (B, C)


def mix_sequences(x: torch.Tensor, valid: torch.Tensor, mix: Mix) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix (B, T, D) sequences element-wise; a slot is real if it is in either sequence."""
    if mix is None:
        return x, valid
    return mix_inputs(x, mix), valid | valid[mix[1]]


class ReferenceTransformerClassifier(nn.Module):
    """The reference study's transformer (``transformer-reference``), unchanged."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.scale = feature_scaler(cfg)
        self.pos = nn.Parameter(torch.zeros(cfg.max_frames, cfg.dim))  # (T_max, D)
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True)
        # enable_nested_tensor=False: identical maths for padded and unpadded batches
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        x, valid = mix_sequences(batch["frames"], batch["valid"], mix)  # (B, T, D), (B, T) True = real
        T = x.shape[1]
        if T > self.cfg.max_frames:
            raise ValueError(f"{T} frames per video, the model has positions for {self.cfg.max_frames}")
        h = self.encoder(self.scale(x) + self.pos[:T], src_key_padding_mask=~valid)  # (B, T, D); True = padding
        return self.head(masked_mean(h, valid))  # (B, C)


class TransformerClassifier(nn.Module):
    """The default temporal model (``transformer``); see the module doc for why this design.

    ``linear`` (with ``cfg.linear_path``): a ``LinearClassifier`` over the masked mean of the
    same frames, with its own standardisation (video-mean statistics, as ``--model linear``);
    its logits plus the temporal head's are the model's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        if cfg.linear_path:
            self.linear = LinearClassifier(ModelConfig(model="linear", dim=D, n_classes=cfg.n_classes,
                                                       standardize=cfg.standardize))
        self.scale = feature_scaler(cfg)
        self.in_norm = nn.LayerNorm(D)  # frames to unit scale, whatever the encoder's norm
        self.pos = nn.Parameter(torch.randn(cfg.max_frames + 1, D))  # (1 + T_max, D), [CLS] at 0
        self.cls = nn.Parameter(torch.zeros(D))
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(D, cfg.heads, cfg.ff_dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, cfg.n_classes)
        if cfg.linear_path:  # the untrained temporal part adds nothing to the linear part's logits
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, batch: dict[str, torch.Tensor], mix: Mix = None) -> torch.Tensor:
        x, valid = mix_sequences(batch["frames"], batch["valid"], mix)  # (B, T, D), (B, T) True = real
        B, T, D = x.shape
        if T > self.cfg.max_frames:
            raise ValueError(f"{T} frames per video, the model has positions for {self.cfg.max_frames}")
        h = torch.cat([self.cls.expand(B, 1, D), self.in_norm(self.scale(x))], dim=1) + self.pos[:T + 1]  # (B, 1 + T, D)
        keep = torch.cat([valid.new_ones(B, 1), valid], dim=1)  # (B, 1 + T)
        h = self.encoder(h, src_key_padding_mask=~keep)  # (B, 1 + T, D); True = padding
        logits = self.head(self.out_norm(h[:, 0]))  # (B, C) from [CLS]
        if self.cfg.linear_path:
            logits = logits + self.linear({"frames": x, "valid": valid})  # (B, C) from the mean-pooled frames
        return logits


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
        self.scale = feature_scaler(cfg)
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
        return self.head(self.scale(feats))


def build_model(cfg: ModelConfig, encoder: Optional[Any] = None) -> nn.Module:
    if cfg.model == "linear":
        return LinearClassifier(cfg)
    if cfg.model == "transformer":
        return TransformerClassifier(cfg)
    if cfg.model == "transformer-reference":
        return ReferenceTransformerClassifier(cfg)
    return RandomFrameClassifier(cfg, encoder)


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    return asdict(cfg)
