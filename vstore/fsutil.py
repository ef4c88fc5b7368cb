"""Crash-safe file primitives: atomic replace, directory fsync and the store's write lock."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from .errors import StoreLockedError

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: Path, suffix: str = "") -> Path:
    """A fresh temporary name inside ``directory`` (same filesystem, so rename is atomic)."""
    return directory / f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a mix.

    The temporary file is removed if anything fails (disk full included) and the original
    is left untouched.
    """
    path = Path(path)
    tmp = temp_path(path.parent, path.suffix)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def remove_temp_files(directory: Path) -> int:
    """Delete leftovers of interrupted writes. Only call while holding the write lock."""
    removed = 0
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


class WriteLock:
    """An exclusive, non-blocking ``flock`` on ``STORE/.lock``.

    The kernel drops the lock when the holder dies (kill -9 included), so a crashed build
    never leaves the store locked. The file's content says who holds it, for the error message.
    """

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "WriteLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text(errors="replace").strip() or "another process"
                raise StoreLockedError(
                    f"{self.path.parent} is being written by {holder}. Wait for it to finish "
                    f"(one writer at a time: build, import-json, compact, index, split)."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({self.what})".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriteLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def command_line() -> str:
    return " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]
