"""`vstore serve`: a thin click command over ``cli.serve.app.serve``."""
from __future__ import annotations

import click

from ..options import store_argument
from .config import ServeConfig

_D = ServeConfig()


@click.command("serve", epilog="""\b
Examples:
  vstore serve runs/store                        # http://127.0.0.1:8000: the page, the JSON API, /docs
  vstore serve runs/store --host 0.0.0.0 --port 8080 --token "$VSTORE_TOKEN"
  curl -s localhost:8000/api/search -H 'content-type: application/json' \\
       -d '{"text": "a plate of pasta", "k": 10, "per_video": true, "labels": ["food"]}'
  curl -s localhost:8000/api/search -F image=@query.jpg -F k=20

\b
The store, its index and the encoder load once. When `vstore build` or `vstore index`
commits a new generation the server serves it without a restart (with --refresh, the
default, it brings a stale index up to date itself, as `vstore search --refresh`). With a
token every route needs `Authorization: Bearer <token>`; open the page as /?token=<token>.
The API is described in docs/serve.md and at /docs.
""")
@store_argument
@click.option("--host", default=_D.host, show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the service to the network (use a --token).")
@click.option("--port", type=click.IntRange(0, 65535), default=_D.port, show_default=True, help="TCP port.")
@click.option("--token", envvar="VSTORE_TOKEN", default=None, show_envvar=True,
              help="Require `Authorization: Bearer TOKEN` on every route.")
@click.option("--refresh/--no-refresh", default=_D.refresh, show_default=True,
              help="Update a stale index when a new generation commits (else keep serving the last indexed one).")
@click.option("--device", default=_D.device, show_default=True, help="Device of the text/image encoder.")
@click.option("--max-batch", type=click.IntRange(min=1), default=_D.max_batch, show_default=True,
              help="Concurrent vector queries answered by one FAISS search (1 = no batching).")
@click.option("--search-threads", type=click.IntRange(min=1), default=_D.search_threads, show_default=True,
              help="Threads running FAISS searches (each takes a batch of queries).")
@click.option("--faiss-threads", type=click.IntRange(min=0), default=_D.faiss_threads, show_default=True,
              help="OpenMP threads inside each FAISS search (0 = all cores; 1 lets concurrent requests "
                   "share the cores instead).")
def serve_cmd(store, host, port, token, refresh, device, max_batch, search_threads, faiss_threads):
    """Serve STORE as a live search service with a web page."""
    from .app import serve
    serve(store, ServeConfig(host=host, port=port, token=token or None, refresh=refresh, device=device,
                             max_batch=max_batch, search_threads=search_threads, faiss_threads=faiss_threads))


COMMANDS = [serve_cmd]
