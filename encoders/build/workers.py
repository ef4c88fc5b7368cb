"""A process pool where a task that crashes, hangs or raises costs only that task.

``concurrent.futures.ProcessPoolExecutor`` breaks entirely when one worker dies and cannot
time out a stuck task. Here every worker is a process with its own pipe; a dispatcher thread
hands out tasks, receives results while the caller is busy (so decoding overlaps encoding),
kills workers that exceed the timeout and replaces dead ones. A task's timeout counts from
when its worker is up (each says so once started), so a slow start on a busy machine is
not taken for a hung decoder. Results come back in
completion order through a bounded queue, which bounds memory.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, Optional

from vstore.errors import VStoreError

log = logging.getLogger(__name__)


@dataclass
class TaskFailure:
    """Why a task produced no result."""

    reason: str


def describe_exception(e: BaseException) -> str:
    """A one-line reason: our own errors are already readable, others get their type."""
    if isinstance(e, VStoreError) and str(e):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _worker_main(conn, fn: Callable[[Any], Any]) -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        conn.send(_READY)  # the task's timeout counts from here, not from a (slow, busy-machine) start
    except (BrokenPipeError, OSError):
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result: Any = ("ok", fn(task))
        except Exception as e:  # reported per task; the worker lives on
            result = ("error", describe_exception(e), traceback.format_exc(limit=3))
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: Any = None
        self.started = 0.0
        self.ready = False  # has said it is running (imports done)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class IsolatedPool:
    """Run ``fn(task)`` over tasks in ``workers`` processes; yields ``(task, result)`` where
    result is ``fn``'s return value or a ``TaskFailure``."""

    def __init__(self, fn: Callable[[Any], Any], workers: int, timeout: Optional[float] = None,
                 prefetch: Optional[int] = None, start_method: str = "spawn"):
        assert workers >= 1
        self.fn = fn
        self.n_workers = workers
        self.timeout = timeout
        self.ctx = mp.get_context(start_method)
        self.results: "queue.Queue[tuple[Any, Any]]" = queue.Queue(maxsize=prefetch or 2 * workers)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def imap_unordered(self, tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        self._thread = threading.Thread(target=self._dispatch, args=(iter(tasks),), daemon=True)
        self._thread.start()
        try:
            while True:
                item = self.results.get()
                if item is _DONE:
                    break
                yield item
        finally:
            self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():  # unblock a dispatcher waiting on a full queue
                try:
                    self.results.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _dispatch(self, tasks: Iterator[Any]) -> None:
        workers: list[_Worker] = []
        try:
            workers = [_Worker(self.ctx, self.fn) for _ in range(self.n_workers)]
            pending = True
            while not self._stop.is_set():
                for w in workers:  # hand out work to idle workers
                    if w.task is None and pending:
                        try:
                            task = next(tasks)
                        except StopIteration:
                            pending = False
                            break
                        w.task, w.started = task, time.monotonic()
                        try:
                            w.conn.send(task)
                        except (BrokenPipeError, OSError):
                            pass  # dead worker; noticed below through its sentinel
                busy = [w for w in workers if w.task is not None]
                if not busy and not pending:
                    break
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.5)
                now = time.monotonic()
                for i, w in enumerate(workers):
                    if w.task is None:
                        continue
                    outcome: Any = _NOTHING
                    if w.conn in ready:
                        try:
                            msg = w.conn.recv()
                            if msg == _READY:
                                w.ready, w.started = True, now
                            else:
                                outcome = msg[1] if msg[0] == "ok" else TaskFailure(msg[1])
                                if msg[0] != "ok":
                                    log.debug("task failed: %s\n%s", msg[1], msg[2])
                        except (EOFError, OSError):
                            pass  # died while sending; handled as a crash below
                    if outcome is _NOTHING and not w.proc.is_alive():
                        code = w.proc.exitcode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        outcome = TaskFailure(f"decoder process crashed ({how})")
                    elif outcome is _NOTHING and self.timeout and w.ready and now - w.started > self.timeout:
                        outcome = TaskFailure(f"timed out after {self.timeout:.0f} s (decoder hung?)")
                        w.proc.kill()
                    elif outcome is _NOTHING and not w.ready and now - w.started > STARTUP_TIMEOUT:
                        outcome = TaskFailure(f"decoder process timed out starting (not up within {STARTUP_TIMEOUT:.0f} s)")
                        w.proc.kill()
                    if outcome is _NOTHING:
                        continue
                    task, w.task = w.task, None
                    if isinstance(outcome, TaskFailure) and (not w.proc.is_alive() or "timed out" in outcome.reason):
                        w.kill()
                        workers[i] = _Worker(self.ctx, self.fn)
                    if not self._put((task, outcome)):
                        return
        except BaseException as e:  # surfaced in the consumer thread
            self._error = e
        finally:
            for w in workers:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for w in workers:
                w.proc.join(timeout=1)
                w.kill()
            self._put_done()

    def _put_done(self) -> None:
        while True:
            try:
                self.results.put(_DONE, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    try:
                        self.results.get_nowait()
                    except queue.Empty:
                        pass


_DONE = object()
_NOTHING = object()
_READY = ("ready",)  # a worker's first message
STARTUP_TIMEOUT = 120.0  # seconds a new decode process may take to start (imports) before its task fails


def run_inline(fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """The same contract in this process (``--workers 0``): exceptions become failures."""
    for task in tasks:
        try:
            yield task, fn(task)
        except Exception as e:
            yield task, TaskFailure(describe_exception(e))
