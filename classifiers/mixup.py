"""Mixup (Zhang et al., 2018): convex combinations of pairs of examples and their targets.

One ``lambda ~ Beta(alpha, alpha)`` per batch and a random pairing of the batch; where the
inputs are mixed depends on the model (see ``classifiers.models``); targets are mixed with
the same lambda and trained with soft-target cross-entropy.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

Mix = Optional[tuple[float, torch.Tensor]]  # (lambda, permutation of the batch)


class Mixup:
    def __init__(self, alpha: float = 0.4, seed: int = 0):
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, device: torch.device) -> tuple[float, torch.Tensor]:
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(self.rng.permutation(batch_size)).to(device)
        return lam, perm


def mix_inputs(x: torch.Tensor, mix: Mix) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` over the batch (first) dimension: (B, ...) -> (B, ...).
    The one mixup formula: pooled embeddings, frame sequences, pixels and targets."""
    if mix is None:
        return x
    lam, perm = mix
    return lam * x + (1.0 - lam) * x[perm]


def mix_targets(targets: torch.Tensor, mix: Mix) -> torch.Tensor:
    """(B, C) target distributions mixed with the same lambda and pairing as the inputs."""
    return mix_inputs(targets, mix)


def soft_targets(y: torch.Tensor, n_classes: int, mix: Mix) -> torch.Tensor:
    """(B,) class ids -> (B, C) target distributions, mixed like the inputs."""
    return mix_targets(F.one_hot(y, n_classes).float(), mix)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets * log_softmax(logits)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
