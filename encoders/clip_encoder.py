"""OpenAI CLIP image (and text) encoder through the ``clip`` package.

``clip:ViT-B/32`` (any ``clip.available_models()`` name; weights download once to
``~/.cache/clip``) or ``clip:/path/to/checkpoint.pt`` (a JIT archive as OpenAI ships it, or a
state dict). On CUDA the model runs in fp16, on CPU in fp32.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .base import FrameEncoder, resolve_device
from .errors import EncoderSpecError, EncoderUnavailableError

log = logging.getLogger(__name__)



def _clip():
    """OpenAI's ``clip`` package, imported on first use: it pulls in torchvision (seconds of
    start-up), which a build with another encoder, or ``--help``, never needs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip  # (OpenAI's package imports pkg_resources)
    return clip


# (embedding dim, input resolution) of OpenAI's released models, to describe them without weights.
KNOWN_MODELS = {
    "RN50": (1024, 224), "RN101": (512, 224), "RN50x4": (640, 288), "RN50x16": (768, 384),
    "RN50x64": (1024, 448), "ViT-B/32": (512, 224), "ViT-B/16": (512, 224), "ViT-L/14": (768, 224),
    "ViT-L/14@336px": (768, 336),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipConfig:
    model: str = "ViT-B/32"  # a clip.available_models() name or a checkpoint path
    device: str = "auto"  # auto = CUDA when present, else CPU
    batch_size: int = 64  # frames per forward pass
    precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU; or "fp32"/"fp16"
    download_root: Optional[str] = None  # where named weights are cached (default ~/.cache/clip)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, fp16 or fp32, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.model not in _clip().available_models() and not Path(self.model).expanduser().is_file():
            raise EncoderSpecError(
                f"CLIP model {self.model!r} is neither a known name ({', '.join(_clip().available_models())}) "
                f"nor an existing checkpoint file")


def _weights_fingerprint(model: str) -> str:
    """SHA-256 of the weights file: from OpenAI's URL for named models (the URL holds it), else
    hashed from the file, so `clip:ViT-B/32` and `clip:/path/ViT-B-32.pt` are the same encoder."""
    if model in _clip().clip._MODELS:
        return _clip().clip._MODELS[model].split("/")[-2]
    h = hashlib.sha256()
    with open(Path(model).expanduser(), "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _cached_path(model: str, root: Optional[str]) -> Path:
    return Path(root or os.path.expanduser("~/.cache/clip")) / os.path.basename(_clip().clip._MODELS[model])


def clip_identity(model: str, fingerprint: str, dim: int, input_size: int) -> dict[str, Any]:
    """What a store records about a CLIP encoder (shared by the encoder and ``describe_spec``)."""
    return {"name": f"clip:{model}", "kind": "clip", "spec": f"clip:{model}", "id": f"clip:{fingerprint[:16]}",
            "dim": dim, "input_size": input_size, "normalized": False, "supports_text": True,
            "config": {"model": model}}


def describe_named_model(model: str) -> dict[str, Any]:
    """Identity of a released CLIP model without downloading its weights."""
    dim, size = KNOWN_MODELS[model]
    return clip_identity(model, _weights_fingerprint(model), dim, size)


class ClipEncoder(FrameEncoder):
    supports_text = True
    normalized = False

    def __init__(self, config: ClipConfig | None = None):
        self.config = config or ClipConfig()
        c = self.config
        self.device = resolve_device(c.device)
        self.batch_size = c.batch_size
        model_ref = c.model if c.model in _clip().available_models() else str(Path(c.model).expanduser())
        if model_ref in _clip().available_models() and not _cached_path(model_ref, c.download_root).is_file():
            log.info("downloading CLIP %s weights (once) to %s", model_ref, c.download_root or "~/.cache/clip")
        try:
            with warnings.catch_warnings():  # clip tries torch.jit.load first, which warns
                warnings.simplefilter("ignore", FutureWarning)
                model, _ = _clip().load(model_ref, device=self.device, jit=False, download_root=c.download_root)
        except (OSError, RuntimeError, ValueError) as e:
            if model_ref in _clip().available_models():
                raise EncoderUnavailableError(
                    f"could not get the CLIP {model_ref} weights ({type(e).__name__}: {e}). Without internet, "
                    f"copy {os.path.basename(_clip().clip._MODELS[model_ref])} from a networked machine "
                    f"(~/.cache/clip) and use --encoder clip:/path/to/{os.path.basename(_clip().clip._MODELS[model_ref])}, "
                    f"or use --encoder thumbnail to run offline") from None
            raise EncoderUnavailableError(f"could not load CLIP checkpoint {model_ref}: {e}") from None
        fp16 = c.precision == "fp16" or (c.precision == "auto" and self.device.type == "cuda")
        self.model = (model.half() if fp16 else model.float()).eval()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.input_size = int(self.model.visual.input_resolution)
        self.dim = int(self.model.text_projection.shape[1])
        self.name = f"clip:{c.model}"
        self._fingerprint = _weights_fingerprint(model_ref)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def identity(self) -> dict[str, Any]:
        return clip_identity(self.config.model, self._fingerprint, self.dim, self.input_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self._mean) / self._std).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x.to(self.dtype))  # (B, D)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        tokens = _clip().tokenize(list(prompts), truncate=True).to(self.device)  # (P, 77)
        return self.model.encode_text(tokens).float().cpu().numpy()  # (P, D)
