"""Zero-shot baseline: CLIP text embeddings of one prompt per label vs video mean embeddings.

No training: the score of label ``c`` for a video is ``softmax_c(100 * cos(text(prompt(c)),
mean frame embedding))``, 100 being CLIP's logit scale. Label names are written with spaces
for underscores (``food_and_drink`` -> "food and drink").
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from encoders.queries import check_text_support, store_encoder
from vstore import Store, VStoreError
from vstore.errors import QueryError

if TYPE_CHECKING:
    from encoders.base import FrameEncoder

log = logging.getLogger(__name__)

LOGIT_SCALE = 100.0


def label_prompts(label_names: Sequence[str], prompt: str) -> list[str]:
    """``prompt`` formatted for each label (``{label}`` placeholder, underscores as spaces)."""
    if "{label}" not in prompt:
        raise QueryError(f"the zero-shot prompt must contain {{label}}, got {prompt!r}")
    try:
        return [prompt.format(label=name.replace("_", " ")) for name in label_names]
    except (KeyError, IndexError, ValueError) as e:
        raise QueryError(f"bad zero-shot prompt {prompt!r}: only the {{label}} placeholder is allowed ({e})") from None


def zero_shot_predict(store: Store, test_ids: Sequence[str], prompt: str = "a video about {label}",
                      encoder: Optional["FrameEncoder"] = None) -> np.ndarray:
    """(n_test, n_labels) probabilities over ``store.label_names`` (rows sum to 1).

    Raises ``TextUnsupportedError`` for stores whose encoder has no text tower (thumbnail)."""
    check_text_support(store)
    names = store.label_names
    if not names:
        raise VStoreError(f"{store.path} has no labels to classify into")
    texts = label_prompts(names, prompt)
    encoder = encoder or store_encoder(store)
    text = encoder.encode_text(texts).astype(np.float32)  # (L, D)
    text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    means = store.video_means(list(test_ids), normalize=True)  # (n_test, D)
    logits = LOGIT_SCALE * (means @ text.T)  # (n_test, L)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
