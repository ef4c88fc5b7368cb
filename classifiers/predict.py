"""``vstore predict``: classify new video files with a trained run.

Frames are sampled as the run's training videos were (count and mode, recorded in the run
from its store's manifest), embedded with the encoder recorded in the run (the same weights
are checked), and fed to the run's model. A run trained on imported vectors records no
sampling: the caller must say how they were sampled (``frames``/``sampling``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from encoders.errors import VideoError
from encoders.registry import encoder_for_store
from encoders.video.sampling import SAMPLING_MODES, SampledVideo, sample_video
from vstore.errors import VStoreError
from vstore.fsutil import path_text
from vstore.manifest import IMPORTED, describe_sampling, sampling_record
from vstore.records import evenly_spaced

from .config import TRAINED_MODELS
from .evidence import EvidenceConfig, FrameEvidence, leave_one_out, linear_evidence
from .models import ModelConfig, build_model, masked_mean
from .runs import RunError, load_run
from .timeline import TimelineConfig, plot_timeline, timeline_paths
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
    evidence: Optional[FrameEvidence] = None  # per-frame evidence, when asked for
    timeline: Optional[str] = None  # the timeline PNG written, when asked for

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``evidence``/``timeline`` only when they were asked for."""
        d: dict[str, Any] = {"video": self.video, "label": self.label, "probabilities": self.probabilities,
                             "error": self.error}
        if self.evidence is not None:
            d["evidence"] = self.evidence.to_dict()
        if self.timeline is not None:
            d["timeline"] = self.timeline
        return d


class Predictor:
    """A trained run, ready to classify video files."""

    def __init__(self, run_dir: str | Path, device: str = "auto", frames: Optional[int] = None,
                 sampling: Optional[str] = None, evidence_config: Optional[EvidenceConfig] = None):
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
        self.evidence_config = evidence_config or EvidenceConfig()
        self.encoder = encoder_for_store(ck["encoder"], device=str(self.device))
        self.model = build_model(self.cfg, self.encoder).to(self.device)
        missing, unexpected = self.model.load_state_dict(ck["state_dict"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("visual.")]:
            raise RunError(f"{run_dir}/model.pt does not match its model config "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model.eval()

    @torch.no_grad()
    def predict_file(self, path: str | Path, evidence: bool = False) -> Prediction:
        """Classify one file; with ``evidence``, also say how much each sampled frame counted
        (``classifiers.evidence``)."""
        path = Path(path)
        key_frame = self.model_name == "random-frame"
        sampled = sample_video(path, self.sampling["frames"], mode=self.sampling["sampling"],
                               size=self.encoder.input_size, video_id=path.stem if key_frame else None)
        ev = None
        if key_frame:
            if sampled.key_frame_image is None:
                raise VideoError(f"{path}: its key frame (frame sha256(id) % {sampled.total_frames}) could not be "
                                 f"decoded; the random-frame model classifies that frame only")
            batch = {"key_image": torch.from_numpy(sampled.key_frame_image[None]).to(self.device)}  # (1, S, S, 3)
            logits = self.model(batch)
            if evidence:
                ev = self._key_frame_evidence(sampled, logits[0])
        else:
            emb = torch.from_numpy(self.encoder.encode_images(sampled.images)).to(self.device)  # (T, D)
            keep = evenly_spaced(len(emb), self.cfg.max_frames)  # as training capped the stored frames
            emb = emb[torch.from_numpy(keep).to(self.device)]
            x, valid = emb[None], torch.ones(1, len(emb), dtype=torch.bool, device=self.device)  # (1, T, D)
            batch = {"pooled": masked_mean(x, valid)} if self.model_name == "linear" else {"frames": x, "valid": valid}
            logits = self.model(batch)
            if evidence:
                ev = self._frame_evidence(sampled, keep, emb, logits[0])
        probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
        return Prediction(path_text(path), self.label_names[int(probs.argmax())],
                          {n: float(p) for n, p in zip(self.label_names, probs)}, evidence=ev)

    def _frame_evidence(self, sampled: SampledVideo, keep: np.ndarray, emb: torch.Tensor,
                        logits: torch.Tensor) -> FrameEvidence:
        """Evidence over the T frames the model saw: ``emb`` (T, D), ``logits`` (C,)."""
        change = None
        if self.model_name == "linear":
            ev = linear_evidence(self.model, emb)  # (T, C)
        else:
            _, ev, change = leave_one_out(self.model, emb, self.evidence_config)  # (T, C) each
        return FrameEvidence(self.model_name, self.label_names, sampled.indices[keep], sampled.timestamps[keep],
                             _np(ev), np.ones(len(keep), dtype=bool), _np(logits),
                             None if change is None else _np(change), images=sampled.images[keep],
                             config=asdict(self.evidence_config))

    def _key_frame_evidence(self, sampled: SampledVideo, logits: torch.Tensor) -> FrameEvidence:
        """The sampled frames plus the key frame (marked ``used``, evidence = the logits), in time order."""
        key = sampled.key_frame_index
        others = sampled.indices != key
        index = np.concatenate([sampled.indices[others], [key]])  # (T,)
        order = np.argsort(index, kind="stable")
        C = len(self.label_names)
        ev = np.zeros((len(index), C), dtype=np.float32)
        ev[-1] = _np(logits)
        used = np.zeros(len(index), dtype=bool)
        used[-1] = True
        times = np.concatenate([sampled.timestamps[others], [sampled.key_frame_time]])
        images = np.concatenate([sampled.images[others], sampled.key_frame_image[None]])  # (T, S, S, 3)
        return FrameEvidence(self.model_name, self.label_names, index[order].astype(np.int64), times[order],
                             ev[order], used[order], _np(logits), images=images[order],
                             config=asdict(self.evidence_config))

    def predict(self, paths: Sequence[str | Path], evidence: bool = False, timeline: Optional[str | Path] = None,
                timeline_config: Optional[TimelineConfig] = None) -> list[Prediction]:
        """One prediction per file; a file that cannot be decoded (or whose timeline cannot be
        written) gets ``error`` set and the batch goes on. ``timeline``: write a timeline PNG
        per file (``timeline_paths`` names them); it implies ``evidence``."""
        out = []
        pngs = timeline_paths(timeline, paths) if timeline is not None else [None] * len(paths)
        for p, png in zip(paths, pngs):
            try:
                pred = self.predict_file(p, evidence=evidence or png is not None)
                if png is not None:
                    plot_timeline(pred.evidence, png, video=path_text(Path(p).name), config=timeline_config)
                    pred.timeline = path_text(png)
                out.append(pred)
            except (VideoError, VStoreError, OSError) as e:
                log.warning("%s: %s", p, e)
                out.append(Prediction(path_text(p), error=path_text(str(e))))
        return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
