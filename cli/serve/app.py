"""The FastAPI application: JSON API, the page, error mapping, token and body-size guard."""
from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, quote

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from vstore.errors import (
    IndexDamagedError,
    IndexNotFoundError,
    QueryError,
    StaleIndexError,
    UnknownVideoError,
    VStoreError,
)
from vstore.search import Hit

from .backend import Backend, EncoderMissing, Generation, index_summary
from .config import ServeConfig
from .media import MediaNotFound, Thumbnails, source_file, video_media_type
from .queries import embed, parse_json_body, parse_search

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
# The page's files: a fixed table, so no request path is ever joined to a directory.
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
COOKIE = "vstore_token"


def _status(e: Exception) -> int:
    if isinstance(e, (UnknownVideoError, MediaNotFound)):
        return 404
    if isinstance(e, (EncoderMissing, IndexNotFoundError, StaleIndexError, IndexDamagedError)):
        return 503
    return 400  # QueryError, TextUnsupportedError, SplitError, LabelsError, ...


def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def middle_frames(store, rows: np.ndarray) -> np.ndarray:
    """(R,) int64 frame number of each video row's middle sampled frame (-1: no frames), the
    frame a video stands for on the page; through the store's cached frame columns."""
    t = store.videos
    n = t.n_frames[rows]
    out = np.full(len(rows), -1, dtype=np.int64)
    has = n > 0
    if has.any():
        _, fi, _ = store.frame_refs(t.frame_start[rows][has] + n[has] // 2)
        out[has] = fi
    return out


def json_response(content: dict[str, Any]) -> Response:
    """``content`` (plain JSON types only) rendered by orjson, skipping FastAPI's
    ``jsonable_encoder`` walk: 1.5 ms of a served vector search's 9 ms went to the two."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


class Guard:
    """ASGI middleware: bearer token (or the page's cookie) on every route, and body limits."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config

    def _authorised(self, scope) -> bool:
        token = self.config.token
        if token is None:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if given is None:
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    given = value
        return given is not None and secrets.compare_digest(given.encode(), token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            if scope["path"] == "/" and self.config.token is not None:  # the page: /?token=... sets a cookie
                given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
                if given and secrets.compare_digest(given.encode(), self.config.token.encode()):
                    r = RedirectResponse("/", status_code=303)
                    r.set_cookie(COOKIE, given, httponly=True, samesite="strict")
                    return await r(scope, receive, send)
            r = error(401, "this server needs a token: send `Authorization: Bearer <token>` "
                           "(open the page as /?token=<token>)", {"WWW-Authenticate": "Bearer"})
            return await r(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        multipart = headers.get("content-type", "").startswith("multipart/")
        limit = self.config.max_upload_bytes + 65_536 if multipart else self.config.max_json_bytes
        length = headers.get("content-length")
        too_big = error(413, f"the request body is larger than {limit:,} bytes"
                             + (" (max_upload_bytes)" if multipart else " (max_json_bytes)"))
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_big(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooBig
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def create_app(store: str | Path, config: Optional[ServeConfig] = None, backend: Optional[Backend] = None) -> FastAPI:
    """The service for ``store``: loads the store, its index and encoder once."""
    config = config or ServeConfig()
    backend = backend or Backend(store, config)
    thumbs = Thumbnails(config.thumb_width, config.thumb_cache)
    app = FastAPI(title="vstore", version="1", description="Search a vstore store of video frame embeddings: "
                  "nearest frames or videos to a text, image, stored frame or vector.")
    app.state.backend, app.state.thumbnails = backend, thumbs
    app.router.on_shutdown.append(backend.close)

    @app.exception_handler(VStoreError)
    async def _domain(_: Request, e: VStoreError):
        return error(_status(e), str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        msg = {404: "no such route; the API is under /api (see /docs)", 405: "method not allowed on this route"}
        return error(e.status_code, e.detail if e.status_code not in msg else msg[e.status_code])

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ())[1:])}: {err.get('msg')}" for err in e.errors()]
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):
        log.exception("unexpected error")
        return error(500, f"internal error ({type(e).__name__}); the server log has the details")

    def urls(video_id: str, frame: Optional[int]) -> dict[str, Optional[str]]:
        v = quote(video_id, safe="")
        return {"thumbnail_url": None if frame is None else f"/api/videos/{v}/frames/{frame}.jpg",
                "video_url": f"/api/videos/{v}/file"}

    def hit_json(g: Generation, h: Hit) -> dict[str, Any]:
        frame = h.frame_index
        if frame is None:  # a video-level hit shows its middle sampled frame
            f = int(middle_frames(g.store, np.array([g.store.row(h.video_id)]))[0])
            frame = f if f >= 0 else None
        return {"rank": h.rank, "video_id": h.video_id, "frame_index": h.frame_index, "timestamp": h.timestamp,
                "score": h.score, "label": h.label, **urls(h.video_id, frame)}

    # -- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in PAGE_FILES:
            return error(404, f"no page file {name!r}")
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="Liveness: the generation served")
    async def healthz():
        return {"ok": True, "generation": backend.current.generation}

    # -- API -----------------------------------------------------------------------------------
    @app.get("/api/info", summary="What `vstore info --json` says, plus the index and generation served")
    def info():
        from cli.store_cmds import store_summary
        with backend.snapshot() as g:
            out = store_summary(g.store)
            out.pop("path", None)
            out["name"] = Path(g.store.path).name
            out["index"] = index_summary(backend, g)
            out["served_generation"] = g.generation
            out["text_queries"] = bool((g.store.encoder or {}).get("supports_text"))
            b = backend.batcher
            out["server"] = {"batches": b.batches, "queries": b.queries, "max_batch": config.max_batch,
                             "thumbnail_cache": {"hits": thumbs.hits, "misses": thumbs.misses}}
            return out

    async def answer(body: dict[str, Any], image: Optional[bytes]) -> dict[str, Any]:
        """A search request's answer. A vector query goes from the event loop straight to a
        search thread; a text, image or stored-video query is embedded on a worker thread first
        (announced to the batcher meanwhile, so a partial batch waits for it)."""
        t0 = time.perf_counter()
        q, params = parse_search(body, config, image)

        async def run(g: Generation):
            t = time.perf_counter()
            if q.kind == "vector":
                vector = embed(backend, g, q)
            else:
                vector = await run_in_threadpool(embed_announced, g, q)
            embedded = time.perf_counter() - t
            hits = await backend.search_vector(g, vector, params)
            return g.generation, [hit_json(g, h) for h in hits], embedded

        generation, hits, embedded = await backend.run(run)
        return {"query": q.describe(), "k": params.k, "generation": generation, "hits": hits,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3), "embed_ms": round(embedded * 1000, 3)}

    def embed_announced(g: Generation, q) -> np.ndarray:
        with backend.batcher.incoming():
            return embed(backend, g, q)

    @app.post("/api/search", summary="Nearest frames (or videos) to a text, stored video/frame, vector or image",
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": {"type": "object", "example": {
                      "text": "a plate of pasta", "k": 10, "per_video": True, "labels": ["food"]}}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "image": {"type": "string", "format": "binary"}, "k": {"type": "integer"}}}}}}})
    async def search_route(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=32, max_part_size=config.max_upload_bytes)
            except (StarletteHTTPException, ValueError) as e:
                raise QueryError(f"the multipart form cannot be read ({getattr(e, 'detail', e)})") from None
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise QueryError("an image query is a multipart form with a file field `image`")
            data = await upload.read()
            body: dict[str, Any] = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            for many in ("labels", "exclude"):
                if len(form.getlist(many)) > 1:
                    body[many] = [v for v in form.getlist(many) if isinstance(v, str)]
            return json_response(await answer(body, data))
        if ctype not in ("application/json", ""):
            return error(415, f"send the query as application/json (or multipart/form-data with an image), "
                              f"not {ctype}")
        body = parse_json_body(await request.body())
        return json_response(await answer(body, None))

    def map_json(g: Generation) -> dict[str, Any]:
        emap = backend.embedding_map(g)
        frames = middle_frames(g.store, np.arange(len(g.store.videos)))  # as a video-level hit shows
        return {"generation": g.generation, "method": emap.method, "method_reason": emap.reason, "title": emap.title,
                "videos": len(emap.ids), "label_names": g.store.label_names,
                "points": [{"video_id": v, "x": round(float(x), 5), "y": round(float(y), 5), "label": lab,
                            "split": sp, **urls(v, int(f) if f >= 0 else None)}
                           for v, (x, y), lab, sp, f in zip(emap.ids, emap.xy.tolist(), emap.labels, emap.splits,
                                                            frames)]}

    @app.get("/api/map", summary="The map of the videos (as `vstore map`), computed once per served generation")
    def map_route():
        with backend.snapshot() as g:
            return backend.once(g, "map", lambda: map_json(g))

    @app.get("/api/videos/{video_id}", summary="A video's metadata and sampled frames")
    def video(video_id: str):
        with backend.snapshot() as g:
            s = g.store
            r = s.row(video_id)
            t = s.videos
            fi, ts = s.get_frames(video_id)
            src = source_file(s, video_id)
            return {"video_id": video_id, "label": t.labels[r], "n_frames": int(t.n_frames[r]),
                    "total_frames": int(t.total_frames[r]), "duration": _num(t.duration[r]),
                    "source": Path(t.sources[r]).name if t.sources[r] else None, "source_available": src is not None,
                    "has_key_frame": bool(t.has_key_frame[r]), "video_url": urls(video_id, None)["video_url"],
                    "frames": [{"index": int(i), "timestamp": float(x), **urls(video_id, int(i))}
                               for i, x in zip(fi, ts)]}

    @app.get("/api/videos/{video_id}/frames/{frame}.jpg", summary="A sampled frame as JPEG (decoded on demand)",
             response_class=Response)
    def frame_jpeg(video_id: str, frame: int):
        with backend.snapshot() as g:
            t = thumbs.get(g.store, video_id, frame)
        return Response(t.jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600", "X-VStore-Frame-Source": t.source})

    @app.get("/api/videos/{video_id}/file", summary="The source video (HTTP range requests)",
             response_class=FileResponse)
    def video_file(video_id: str):
        with backend.snapshot() as g:
            path = source_file(g.store, video_id)
        if path is None:
            raise MediaNotFound(f"the source video of {video_id} is no longer where the store recorded it")
        return FileResponse(path, media_type=video_media_type(path))

    app.add_middleware(Guard, config=config)
    return app


def _num(x: float) -> Optional[float]:
    x = float(x)
    return None if x != x else x


class BackgroundServer:
    """uvicorn serving ``store`` in a thread (tests, benchmarks); ``url`` once started."""

    def __init__(self, store: str | Path, config: Optional[ServeConfig] = None):
        import threading

        import uvicorn
        self.config = config or ServeConfig(port=0)
        self.app = create_app(store, self.config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=self.config.host, port=self.config.port,
                                                    log_level=self.config.log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="vstore-serve", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start (see its log)")
            self.thread.join(0.01)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(store: str | Path, config: Optional[ServeConfig] = None) -> None:
    """Serve ``store`` until interrupted (what `vstore serve` runs)."""
    import uvicorn
    config = config or ServeConfig()
    app = create_app(store, config)
    log.warning("serving %s on http://%s:%d%s", store, config.host, config.port,
                " (token required)" if config.token else "")
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
