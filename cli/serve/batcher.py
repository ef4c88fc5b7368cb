"""Micro-batching: concurrent vector queries with equal parameters answered by one FAISS search.

Requests ``submit`` (key, item) and wait: a thread blocks in ``submit``, a coroutine awaits
``submit_async`` (the event loop hands the query to a search thread directly, without a
worker-thread hop each way). Search threads take the oldest queued item and every other
queued item with the same key (up to ``max_batch``) and run them as one (B, D) search. A
search thread waits up to ``window_s`` for more queries only while other requests have
announced themselves (``incoming``) and not yet submitted, so a lone query is
answered at once: batching adds latency only when it has something to batch.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, Hashable, Iterator

log = logging.getLogger(__name__)


class _Item:
    __slots__ = ("key", "value", "on_done", "result", "error")

    def __init__(self, key: Hashable, value: Any, on_done: Callable[[], None]):
        self.key, self.value = key, value
        self.on_done = on_done  # called once, on a search thread, when result or error is set
        self.result: Any = None
        self.error: BaseException | None = None


class MicroBatcher:
    """``run(key, values) -> results`` (one result per value, same order) on batches."""

    def __init__(self, run: Callable[[Hashable, list], list], max_batch: int = 32, window_s: float = 0.0015,
                 threads: int = 2, thread_init: Callable[[], None] | None = None):
        """``thread_init`` runs first on each search thread (per-thread settings such as
        OpenMP's thread count, which a thread does not inherit from the one that made it)."""
        assert max_batch >= 1 and threads >= 1
        self.run, self.max_batch, self.window_s = run, max_batch, window_s
        self.thread_init = thread_init
        self._queue: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._incoming = 0  # requests announced and not yet submitted
        self._tickets = threading.local()  # the announcement of the request on this thread
        self._closed = False
        self.batches = 0  # statistics, for /api/info and the benchmark
        self.queries = 0
        self._threads = [threading.Thread(target=self._work, name=f"vstore-serve-search-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Wrap a request's work before ``submit`` (parsing, encoding): search threads holding
        a partial batch wait (up to the window) for announced requests to submit."""
        ticket = SimpleNamespace(open=True)
        with self._cv:
            self._incoming += 1
        self._tickets.ticket = ticket
        try:
            yield
        finally:
            self._tickets.ticket = None
            if ticket.open:
                with self._cv:
                    self._incoming -= 1
                    self._cv.notify_all()

    def submit(self, key: Hashable, value: Any) -> Any:
        """The result for ``value``, blocking this thread until a search thread has it."""
        done = threading.Event()
        item = _Item(key, value, done.set)
        self._enqueue(item)
        while not done.wait(1.0):  # a search thread that died must not hang its requests
            self._check_alive()
        if item.error is not None:
            raise item.error
        return item.result

    async def submit_async(self, key: Hashable, value: Any) -> Any:
        """The result for ``value``, awaited on the running event loop (which never blocks)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve() -> None:  # on the loop
            if not future.done():
                if item.error is not None:
                    future.set_exception(item.error)
                else:
                    future.set_result(item.result)

        item = _Item(key, value, lambda: loop.call_soon_threadsafe(resolve))
        self._enqueue(item)
        while True:
            done, _ = await asyncio.wait([future], timeout=1.0)
            if done:
                return future.result()
            self._check_alive()

    def _enqueue(self, item: _Item) -> None:
        ticket = getattr(self._tickets, "ticket", None)
        with self._cv:
            if self._closed:
                raise RuntimeError("the search service is shutting down")
            if ticket is not None and ticket.open:  # this request is no longer on its way
                ticket.open = False
                self._incoming -= 1
            self._queue.append(item)
            self._cv.notify_all()

    def _check_alive(self) -> None:
        if not any(t.is_alive() for t in self._threads):
            raise RuntimeError("the search threads stopped; see the server log")

    def _take(self) -> list[_Item] | None:
        with self._cv:
            while True:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed and not self._queue:
                    return None
                deadline = time.perf_counter() + self.window_s
                while 0 < len(self._queue) < self.max_batch and self._incoming > 0:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if self._queue:  # another search thread may have taken them while we waited
                    break
            key = self._queue[0].key
            batch: list[_Item] = []
            keep: deque[_Item] = deque()
            while self._queue:
                it = self._queue.popleft()
                (batch if it.key == key and len(batch) < self.max_batch else keep).append(it)
            self._queue = keep
            if keep:
                self._cv.notify_all()
            return batch

    def _work(self) -> None:
        if self.thread_init is not None:
            self.thread_init()
        while (batch := self._take()) is not None:
            try:
                results = self.run(batch[0].key, [it.value for it in batch])
                assert len(results) == len(batch)
                for it, r in zip(batch, results):
                    it.result = r
            except BaseException as e:
                if len(batch) == 1:
                    batch[0].error = e
                else:  # one bad query must not fail the others: answer each alone
                    for it in batch:
                        try:
                            it.result = self.run(it.key, [it.value])[0]
                        except BaseException as e1:
                            it.error = e1
            with self._cv:
                self.batches += 1
                self.queries += len(batch)
            for it in batch:
                try:
                    it.on_done()
                except RuntimeError:  # the request's event loop closed (server shutting down)
                    log.debug("a search result arrived after its event loop closed")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
