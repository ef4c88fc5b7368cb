"""`vstore serve`: a store as a live HTTP search service with a web page (FastAPI + uvicorn).

Layers: ``config`` (ServeConfig), ``backend`` (the served snapshot of store + index, swapped
when a new generation commits; the only module that touches index loading), ``batcher``
(concurrent vector queries answered by one FAISS search), ``media`` (thumbnails, source
videos), ``app`` (routes, errors, token), ``commands`` (the click command), ``static/`` (the page).
FastAPI is imported only by ``app`` so the rest of the CLI starts without it.
"""
from .config import ServeConfig

__all__ = ["ServeConfig"]
