"""The frame-encoder interface and the batched, on-device image preprocessing.

Every encoder takes RGB uint8 frames ``(B, H, W, 3)`` and returns ``(B, D)`` float32
embeddings. Frames are preprocessed as whole batches of tensors on the encoder's device:
resize the shorter side to the input size (bicubic, antialiased, skipped when the decoder
already did it), centre-crop, scale and normalise, matching CLIP's PIL transforms.
"""
from __future__ import annotations

import abc
import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TextUnsupportedError
from .video.geometry import center_crop_offsets, resized_size

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from vstore.errors import VStoreError
        raise VStoreError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return dev


def to_uint8_batch(frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor from an array, a tensor or a list of same-size frames."""
    if isinstance(frames, torch.Tensor):
        t = frames
    elif isinstance(frames, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(frames))
    else:
        t = torch.from_numpy(np.stack([np.asarray(f) for f in frames]))
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"expected RGB uint8 frames (B, H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t


def resize_and_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] -> (B, 3, size, size): shorter side to ``size``, centre crop."""
    h, w = x.shape[-2:]
    if min(h, w) != size:
        nw, nh = resized_size(w, h, size)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0, 255)
        h, w = nh, nw
    if h != size or w != size:
        top, left = center_crop_offsets(w, h, size)
        x = x[..., top:top + size, left:left + size]
    return x


class FrameEncoder(abc.ABC):
    """Turns RGB frames into embedding vectors."""

    #: identity recorded in stores; stores refuse vectors of another ``id``
    name: str
    dim: int
    input_size: int  # frames are resized/cropped to input_size x input_size
    device: torch.device
    batch_size: int = 64
    supports_text: bool = False
    normalized: bool = False  # True when embeddings come out L2-normalised

    @property
    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What the store records: name, id (weights fingerprint), dim, input size, config."""

    def preprocess(self, frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, S, S) model input on ``self.device``."""
        x = to_uint8_batch(frames).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        x = resize_and_crop(x, self.input_size)
        return self.normalize(x / 255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> what the model expects."""
        return x

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed -> (B, D); differentiable where the model is."""

    @torch.inference_mode()
    def encode_images(self, frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB -> (B, D) float32, in batches of ``batch_size``."""
        batch = to_uint8_batch(frames)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for a in range(0, len(batch), self.batch_size):
            x = self.preprocess(batch[a:a + self.batch_size])
            out[a:a + len(x)] = self.forward(x).float().cpu().numpy()
        return out

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        """(P,) prompts -> (P, D) float32 in the image embedding space."""
        raise TextUnsupportedError(
            f"encoder {self.name} has no text tower; text queries and zero-shot need a CLIP store")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, dim={self.dim}, device={self.device})"


def describe(identity: Optional[dict]) -> str:
    return "unknown encoder" if not identity else f"{identity.get('name')} ({identity.get('dim')}-d)"
