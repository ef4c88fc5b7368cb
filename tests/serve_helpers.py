"""Helpers of the serve tests: a real uvicorn server in a thread, raw HTTP for odd paths."""
from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
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


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned), failing with ``what``
    after ``timeout`` seconds: a wait on a condition with a deadline of its own."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def concurrent_rounds(url: str, bodies: list[dict], rounds: int, timeout: float = 60,
                      headers: dict | None = None) -> list[list[tuple[int, dict]]]:
    """POST ``bodies[i]`` to /api/search from client thread i, ``rounds`` times; a barrier
    releases each round's queries together, so they reach the server at the same moment.
    Returns (status, JSON answer) per client per round."""
    import httpx
    barrier = threading.Barrier(len(bodies))
    out: list[list[tuple[int, dict]]] = [[] for _ in bodies]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=timeout, headers=headers) as http:
                http.get("/healthz")  # connect before the first round
                for _ in range(rounds):
                    barrier.wait(timeout)
                    r = http.post("/api/search", json=bodies[i])
                    out[i].append((r.status_code, r.json()))
        except BaseException as e:  # noqa: BLE001 - reported below, with the others' barrier broken
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * (rounds + 1))
    assert not any(t.is_alive() for t in threads), f"a client is still running after {timeout * (rounds + 1):g} s"
    assert not errors, repr(errors[0])
    return out
