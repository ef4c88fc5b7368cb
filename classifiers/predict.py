"""``vstore predict``: classify new video files with a trained run.

Frames are sampled as the store was built (same count and mode), embedded with the encoder
recorded in the store (the same weights are checked), and fed to the run's model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from encoders.errors import VideoError
from encoders.registry import encoder_for_store
from encoders.video.sampling import sample_video
from vstore.errors import VStoreError
from vstore.fsutil import path_text

from .config import TRAINED_MODELS
from .models import ModelConfig, build_model, masked_mean
from .runs import RunError, load_run
from .train import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    video: str
    label: Optional[str] = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None


class Predictor:
    """A trained run, ready to classify video files."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        self.device = resolve_device(device)
        run = load_run(run_dir, with_checkpoint=True, device=self.device)
        ck = run.checkpoint
        self.model_name = run.metrics["model"]
        if self.model_name not in TRAINED_MODELS or not ck.get("model_config"):
            raise RunError(f"{run_dir} is a {self.model_name} baseline; predict needs a trained model "
                           f"({', '.join(TRAINED_MODELS)})")
        self.label_names = list(ck["label_names"])
        self.cfg = ModelConfig(**ck["model_config"])
        self.build = ck.get("build") or {}
        self.encoder = encoder_for_store(ck["encoder"], device=str(self.device))
        self.model = build_model(self.cfg, self.encoder).to(self.device)
        missing, unexpected = self.model.load_state_dict(ck["state_dict"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("visual.")]:
            raise RunError(f"{run_dir}/model.pt does not match its model config "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model.eval()

    @torch.no_grad()
    def predict_file(self, path: str | Path) -> Prediction:
        path = Path(path)
        frames = int(self.build.get("frames", 100))
        sampled = sample_video(path, frames, mode=self.build.get("sampling", "exact"), size=self.encoder.input_size,
                               video_id=path.stem)
        if self.model_name == "random-frame":
            batch = {"key_image": torch.from_numpy(sampled.key_frame_image[None]).to(self.device)}
            logits = self.model(batch)
        else:
            emb = torch.from_numpy(self.encoder.encode_images(sampled.images)).to(self.device)  # (T, D)
            if len(emb) > self.cfg.max_frames:
                keep = np.floor((np.arange(self.cfg.max_frames) + 0.5) * len(emb) / self.cfg.max_frames).astype(int)
                emb = emb[torch.from_numpy(keep).to(self.device)]
            x, valid = emb[None], torch.ones(1, len(emb), dtype=torch.bool, device=self.device)  # (1, T, D)
            batch = {"pooled": masked_mean(x, valid)} if self.model_name == "linear" else {"frames": x, "valid": valid}
            logits = self.model(batch)
        probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
        return Prediction(path_text(path), self.label_names[int(probs.argmax())],
                          {n: float(p) for n, p in zip(self.label_names, probs)})

    def predict(self, paths: Sequence[str | Path]) -> list[Prediction]:
        """One prediction per file; a file that cannot be decoded gets ``error`` set."""
        out = []
        for p in paths:
            try:
                out.append(self.predict_file(p))
            except (VideoError, VStoreError) as e:
                log.warning("%s: %s", p, e)
                out.append(Prediction(path_text(p), error=path_text(str(e))))
        return out
