"""Contact sheets: a PNG grid of search hits, each frame captioned "rank. video @ time score".

Each hit frame is decoded from its source video (``decode_frames``) when that file is still
where the store says; otherwise the video's stored key frame stands in (captioned "key
frame"); otherwise a grey placeholder.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vstore import Store
from vstore.fsutil import atomic_write_bytes
from vstore.search import Hit

from ..errors import VideoError

log = logging.getLogger(__name__)


@dataclass
class SheetConfig:
    columns: int = 5  # hits per row
    size: int = 160  # cell side in pixels (frames are resized and centre-cropped to it)
    caption_px: int = 30  # caption strip under each frame
    margin: int = 6  # pixels between cells

    def __post_init__(self) -> None:
        if self.columns < 1 or self.size < 16 or self.caption_px < 10 or self.margin < 0:
            raise ValueError("sheet: columns >= 1, size >= 16, caption_px >= 10 and margin >= 0 are required")


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (size, size, 3): shorter side to ``size``, centre crop."""
    from PIL import Image
    h, w = img.shape[:2]
    scale = size / min(h, w)
    im = Image.fromarray(img).resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def hit_images(store: Store, hits: Sequence[Hit], size: int) -> list[tuple[np.ndarray, str]]:
    """(image (size, size, 3), source: "video" | "key frame" | "missing") per hit."""
    table = store.videos
    out: list[Optional[tuple[np.ndarray, str]]] = [None] * len(hits)
    by_video: dict[str, list[int]] = {}
    for i, h in enumerate(hits):
        by_video.setdefault(h.video_id, []).append(i)
    need_key: list[int] = []
    for vid, positions in by_video.items():
        source = table.sources[store.row(vid)]
        frames = [hits[i].frame_index for i in positions if hits[i].frame_index is not None]
        decoded: dict[int, np.ndarray] = {}
        if source and Path(source).is_file() and frames:
            try:
                from .sampling import decode_frames
                decoded = decode_frames(source, frames, size=size)
            except (VideoError, OSError, ValueError) as e:
                log.warning("cannot decode %s for the contact sheet (%s); showing its key frame", source, e)
        for i in positions:
            img = decoded.get(hits[i].frame_index) if hits[i].frame_index is not None else None
            if img is not None:
                out[i] = (_fit(img, size), "video")
            else:
                need_key.append(i)
    if need_key:
        ids = sorted({hits[i].video_id for i in need_key})
        images, _ = store.key_frames(ids)
        for i in need_key:
            if images is not None and table.has_key_frame[store.row(hits[i].video_id)]:
                out[i] = (_fit(images[ids.index(hits[i].video_id)], size), "key frame")
            else:
                out[i] = (np.full((size, size, 3), 128, dtype=np.uint8), "missing")
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


def caption(hit: Hit) -> str:
    where = f" @ {hit.timestamp:.1f}s" if hit.timestamp is not None else ""
    return f"{hit.rank}. {hit.video_id}{where} {hit.score:.3f}"


def contact_sheet(store: Store, hits: Sequence[Hit], path: str | Path, config: Optional[SheetConfig] = None,
                  title: Optional[str] = None) -> Path:
    """Write a PNG grid of ``hits`` to ``path`` (atomically) and return the path."""
    from PIL import Image, ImageDraw, ImageFont
    cfg = config or SheetConfig()
    path = Path(path)
    n = max(1, len(hits))
    cols = min(cfg.columns, n)
    rows = -(-n // cols)
    cell_w, cell_h = cfg.size, cfg.size + cfg.caption_px
    top = 24 if title else 0
    sheet = Image.new("RGB", (cols * cell_w + (cols + 1) * cfg.margin, top + rows * cell_h + (rows + 1) * cfg.margin),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((cfg.margin, 6), title[:200], fill="black", font=font)
    if not hits:
        draw.text((cfg.margin, top + cfg.margin), "no hits", fill="black", font=font)
    for i, (hit, (img, source)) in enumerate(zip(hits, hit_images(store, hits, cfg.size))):
        r, c = divmod(i, cols)
        x = cfg.margin + c * (cell_w + cfg.margin)
        y = top + cfg.margin + r * (cell_h + cfg.margin)
        sheet.paste(Image.fromarray(img), (x, y))
        text = caption(hit)
        draw.text((x, y + cfg.size + 2), _clip(draw, text, font, cell_w), fill="black", font=font)
        sub = (hit.label or "") + ("" if source == "video" else f" ({source})")
        draw.text((x, y + cfg.size + 15), _clip(draw, sub, font, cell_w), fill=(90, 90, 90), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _clip(draw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
