"""Search queries that need the store's encoder: an image file or a text prompt.

Both are embedded by the encoder recorded in the store (``encoder_for_store``), so they live
in the store's vector space. Queries that need no encoder (a stored frame or video, a
``.npy`` vector) are in ``vstore.search``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from vstore import Store
from vstore.errors import QueryError

from .errors import TextUnsupportedError
from .registry import encoder_for_store

if TYPE_CHECKING:
    from .base import FrameEncoder

log = logging.getLogger(__name__)


def store_encoder(store: Store, device: str = "auto") -> "FrameEncoder":
    """The encoder that made ``store``'s vectors."""
    return encoder_for_store(store.encoder, device=device)


def check_text_support(store: Store) -> None:
    """``TextUnsupportedError`` unless the store's encoder has a text tower (CLIP)."""
    enc = store.encoder or {}
    if not enc.get("supports_text", False):
        raise TextUnsupportedError(
            f"{store.path} holds {enc.get('name', 'unknown')} vectors, which have no text encoder; text queries "
            f"and zero-shot classification need a store built with a CLIP encoder (--encoder clip:...)")


MAX_QUERY_PIXELS = 50_000_000  # an 8K frame is 33 Mpx; decoding more is a memory hazard, not a query


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file; ``QueryError`` when it cannot be read."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_QUERY_PIXELS:  # checked before a single pixel is decoded
                    raise QueryError(f"query image {path} is {w}x{h} pixels, more than {MAX_QUERY_PIXELS:,} "
                                     "(a decompression bomb?); use a smaller image")
                return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise QueryError(f"query image {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise QueryError(f"query image {path} is refused ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise QueryError(f"query image {path} cannot be read as an image ({e})") from None


def query_from_image(store: Store, path: str | Path, encoder: Optional["FrameEncoder"] = None) -> np.ndarray:
    """(D,) embedding of an image file by the store's encoder (resized/cropped like frames)."""
    pixels = load_image(path)
    encoder = encoder or store_encoder(store)
    return encoder.encode_images(pixels[None])[0]  # (D,)


def query_from_text(store: Store, prompt: str | Sequence[str], encoder: Optional["FrameEncoder"] = None
                    ) -> np.ndarray:
    """(D,) text embedding of ``prompt`` (or (P, D) for several) by the store's CLIP model."""
    check_text_support(store)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not p.strip() for p in prompts):
        raise QueryError("the text query is empty")
    encoder = encoder or store_encoder(store)
    if not encoder.supports_text:  # pragma: no cover - the store's identity said otherwise
        raise TextUnsupportedError(f"encoder {encoder.name} has no text tower")
    emb = encoder.encode_text(prompts)  # (P, D)
    return emb[0] if isinstance(prompt, str) else emb
