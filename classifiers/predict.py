"""``vstore predict``: classify new video files with a trained run.

Frames are sampled as the run's training videos were (count and mode, recorded in the run
from its store's manifest), embedded with the encoder recorded in the run (the same weights
are checked), and fed to the run's model. A run trained on imported vectors records no
sampling: the caller must say how they were sampled (``frames``/``sampling``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from encoders.errors import VideoError
from encoders.registry import encoder_for_store
from encoders.video.sampling import SAMPLING_MODES, sample_video
from vstore.errors import VStoreError
from vstore.fsutil import path_text
from vstore.manifest import IMPORTED, describe_sampling, sampling_record
from vstore.records import evenly_spaced

from .config import TRAINED_MODELS
from .models import ModelConfig, build_model, masked_mean
from .runs import RunError, load_run
from .train import resolve_device

log = logging.getLogger(__name__)


def run_sampling(checkpoint: dict, run_dir: str | Path, frames: Optional[int] = None,
                 sampling: Optional[str] = None) -> dict:
    """``{"frames", "sampling"}`` to sample new videos with: what the run recorded of its training
    videos. ``frames``/``sampling`` are only for runs that recorded none (imported vectors, or a
    run older than the record); they must agree with a recorded one."""
    have = dict(checkpoint.get("sampling") or {})
    build = checkpoint.get("build") or {}
    if not have and "frames" in build and "sampling" in build:  # runs written before "sampling"
        have = sampling_record(build["frames"], build["sampling"])
    if have.get("sampling") in SAMPLING_MODES:
        asked = {"frames": frames or have["frames"], "sampling": sampling or have["sampling"]}
        if asked != have:
            raise RunError(f"{run_dir} was trained on videos sampled with {describe_sampling(have)}; predict "
                           f"samples new videos the same way: drop --frames/--sampling")
        return have
    if frames is None or sampling is None:
        what = describe_sampling(have) if have.get("sampling") == IMPORTED else "videos whose sampling it does not record"
        raise RunError(f"{run_dir} was trained on {what}; pass --frames N --sampling exact|keyframe as its "
                       f"vectors were made (e.g. --frames 100 --sampling exact)")
    return sampling_record(frames, sampling)


@dataclass
class Prediction:
    video: str
    label: Optional[str] = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None


class Predictor:
    """A trained run, ready to classify video files."""

    def __init__(self, run_dir: str | Path, device: str = "auto", frames: Optional[int] = None,
                 sampling: Optional[str] = None):
        self.device = resolve_device(device)
        run = load_run(run_dir, with_checkpoint=True, device=self.device)
        ck = run.checkpoint
        self.model_name = run.metrics["model"]
        if self.model_name not in TRAINED_MODELS or not ck.get("model_config"):
            raise RunError(f"{run_dir} is a {self.model_name} baseline; predict needs a trained model "
                           f"({', '.join(TRAINED_MODELS)})")
        self.label_names = list(ck["label_names"])
        self.cfg = ModelConfig(**ck["model_config"])
        self.sampling = run_sampling(ck, run_dir, frames, sampling)
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
        key_frame = self.model_name == "random-frame"
        sampled = sample_video(path, self.sampling["frames"], mode=self.sampling["sampling"],
                               size=self.encoder.input_size, video_id=path.stem if key_frame else None)
        if key_frame:
            if sampled.key_frame_image is None:
                raise VideoError(f"{path}: its key frame (frame sha256(id) % {sampled.total_frames}) could not be "
                                 f"decoded; the random-frame model classifies that frame only")
            batch = {"key_image": torch.from_numpy(sampled.key_frame_image[None]).to(self.device)}  # (1, S, S, 3)
            logits = self.model(batch)
        else:
            emb = torch.from_numpy(self.encoder.encode_images(sampled.images)).to(self.device)  # (T, D)
            keep = evenly_spaced(len(emb), self.cfg.max_frames)  # as training capped the stored frames
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
