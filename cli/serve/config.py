"""ServeConfig: every setting of `vstore serve`, with its default and why."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional


@dataclass
class ServeConfig:
    # Interface to bind. 127.0.0.1 keeps the service on this machine; 0.0.0.0 exposes it.
    host: str = "127.0.0.1"
    port: int = 8000
    # When set, every route needs `Authorization: Bearer <token>` (or the cookie the page gets
    # from `/?token=<token>`). Read from VSTORE_TOKEN by the CLI.
    token: Optional[str] = None
    # Device of the text/image encoder (auto = CUDA when present).
    device: str = "auto"
    # Bring a stale index up to date when a new store generation commits (as `search --refresh`);
    # False: keep serving the last indexed generation and report the index as stale.
    refresh: bool = True
    # Seconds between checks of manifest.json / index.json for a new generation (a stat each).
    poll_s: float = 0.5
    # Largest k a query may ask for.
    max_k: int = 1000
    # Largest JSON body (bytes): a 4096-d vector as JSON is ~100 KB.
    max_json_bytes: int = 1 << 20
    # Largest image upload (bytes) and image size (pixels) accepted as an image query.
    max_upload_bytes: int = 16 << 20
    max_image_pixels: int = 40_000_000
    # Micro-batching of concurrent vector queries into one FAISS search: at most this many
    # queries per search (1 = no batching), collected for at most batch_window_ms while other
    # queries are on their way (a lone query never waits).
    max_batch: int = 32
    batch_window_ms: float = 1.5
    # Threads running FAISS searches (each takes a batch).
    search_threads: int = 2
    # FAISS OpenMP threads per search, set on each search thread (0 = FAISS's default, all
    # cores). 1: parallelism comes from concurrent requests, and a single query
    # does not pay OpenMP's spin-waits on a busy machine (measured 3x less CPU per query).
    faiss_threads: int = 1
    # Frame thumbnails: width in pixels and how many JPEGs the LRU cache keeps (~15 KB each).
    thumb_width: int = 320
    thumb_cache: int = 2048
    # The page's map of the videos (GET /api/map): method and seed as `vstore map --method --seed`,
    # computed on the first request for each served generation and kept with it.
    map_method: str = "auto"
    map_seed: int = 0
    # uvicorn's log level.
    log_level: str = "warning"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if self.host != "localhost":
                raise ValueError(f"--host must be an IP address (127.0.0.1, 0.0.0.0, ::1) or localhost, "
                                 f"got {self.host!r}") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0 = any free port), got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("--token must be at least 8 characters (or unset VSTORE_TOKEN)")
        if self.faiss_threads < 0:
            raise ValueError(f"serve: faiss_threads must be >= 0, got {self.faiss_threads}")
        for name in ("max_k", "max_json_bytes", "max_upload_bytes", "max_image_pixels", "max_batch",
                     "search_threads", "thumb_cache"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        from classifiers.embedding_map import METHODS
        if self.map_method not in METHODS:
            raise ValueError(f"serve: map_method must be one of {', '.join(METHODS)}, got {self.map_method!r}")
        if self.poll_s <= 0 or self.batch_window_ms < 0 or not 16 <= self.thumb_width <= 2048:
            raise ValueError("serve: poll_s > 0, batch_window_ms >= 0 and thumb_width in 16..2048 are required")
