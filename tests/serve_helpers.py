"""Helpers of the serve tests: a real uvicorn server in a thread, raw HTTP for odd paths."""
from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def build_clip_store(videos: Path, labels: Path, clip_path: Path, dst: Path, frames: int = 4) -> Path:
    """A store of ``videos`` (copied next to it, so tests may delete sources) by a tiny CLIP, indexed."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore.index_build import build_index
    from vstore.labels import load_labels
    src = dst.parent / f"{dst.name}-videos"
    shutil.copytree(videos, src)
    build_store([src], dst, load_encoder(f"clip:{clip_path}", device="cpu"), labels=load_labels(labels),
                config=BuildConfig(frames=frames, workers=0),
                progress=False)
    build_index(dst)
    return dst


def raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict]:
    """GET ``path`` sent byte for byte (no client-side normalisation of ``..`` or ``%2F``)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, {"raw": body[:200].decode("latin-1")}


def hit_keys(hits: list[dict]) -> list[tuple]:
    return [(h["video_id"], h["frame_index"]) for h in hits]


def same_hits(a: list[dict], b: list[dict]) -> bool:
    return hit_keys(a) == hit_keys(b) and np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
