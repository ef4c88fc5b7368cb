"""``--encoder`` specs -> encoders, and store identities -> the encoder that made them.

Specs: ``clip:ViT-B/32`` (default), ``clip:<any clip.available_models() name>``,
``clip:/path/to/checkpoint.pt``, ``thumbnail``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .errors import EncoderSpecError

if TYPE_CHECKING:
    from .base import FrameEncoder

DEFAULT_ENCODER = "clip:ViT-B/32"


def load_encoder(spec: str = DEFAULT_ENCODER, device: str = "auto", batch_size: Optional[int] = None) -> "FrameEncoder":
    """Build the encoder named by ``spec``; raises ``EncoderUnavailableError`` with a way out
    when weights cannot be had, ``EncoderSpecError`` for an unknown spec."""
    spec = (spec or DEFAULT_ENCODER).strip()
    if spec == "thumbnail" or spec.startswith("thumbnail:"):
        from .thumbnail import ThumbnailConfig, ThumbnailEncoder
        cfg = ThumbnailConfig(device=device, **({"batch_size": batch_size} if batch_size else {}))
        return ThumbnailEncoder(cfg)
    if spec.startswith("clip:"):
        from .clip_encoder import ClipConfig, ClipEncoder
        cfg = ClipConfig(model=spec[len("clip:"):], device=device, **({"batch_size": batch_size} if batch_size else {}))
        return ClipEncoder(cfg)
    raise EncoderSpecError(f"unknown encoder {spec!r}; use clip:<model name or checkpoint path> or thumbnail")


def encoder_for_store(identity: Optional[dict], device: str = "auto", batch_size: Optional[int] = None) -> "FrameEncoder":
    """The encoder recorded in a store (to embed queries or new videos the same way)."""
    if not identity or not identity.get("spec"):
        raise EncoderSpecError(
            "this store does not record a loadable encoder (imported vectors?); re-import it with "
            "`vstore import-json ... --encoder SPEC` to name the encoder that made them")
    enc = load_encoder(identity["spec"], device=device, batch_size=batch_size)
    if enc.identity["id"] != identity.get("id") or enc.dim != identity.get("dim"):
        raise EncoderSpecError(
            f"{identity['spec']} now loads different weights than the ones this store was built with "
            f"({enc.identity['id']} vs {identity.get('id')})")
    return enc


def describe_spec(spec: str) -> dict:
    """The identity a store would record for ``spec``, without downloading weights where
    avoidable (released CLIP models are described from a table)."""
    spec = spec.strip()
    if spec.startswith("clip:"):
        from .clip_encoder import KNOWN_MODELS, describe_named_model
        if spec[len("clip:"):] in KNOWN_MODELS:
            return describe_named_model(spec[len("clip:"):])
    return load_encoder(spec, device="cpu").identity
