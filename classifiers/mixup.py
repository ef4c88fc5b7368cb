"""Mixup (Zhang et al., 2018): convex combinations of pairs of examples and their targets.

One ``lambda ~ Beta(alpha, alpha)`` per batch and a random pairing of the batch; where the
inputs are mixed depends on the model (see ``classifiers.models``); targets are mixed with
the same lambda and trained with soft-target cross-entropy.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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


def mix_targets(targets: torch.Tensor, mix: tuple[float, torch.Tensor] | None) -> torch.Tensor:
    """(B, C) target distributions mixed with the same lambda and pairing as the inputs."""
    if mix is None:
        return targets
    lam, perm = mix
    return lam * targets + (1.0 - lam) * targets[perm]


def soft_targets(y: torch.Tensor, n_classes: int, mix: tuple[float, torch.Tensor] | None) -> torch.Tensor:
    """(B,) class ids -> (B, C) target distributions, mixed like the inputs."""
    return mix_targets(F.one_hot(y, n_classes).float(), mix)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets * log_softmax(logits)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
