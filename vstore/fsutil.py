"""Crash-safe file primitives: atomic replace, directory fsync and the store's write lock."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from .errors import StoreCorruptError, StoreLockedError, StoreWriteError

TMP_PREFIX = ".tmp-"


def inside(folder: str | Path, name: str, what: str = "file") -> Path:
    """``folder / name`` for a relative ``name`` read from a file (a manifest, index.json, a run
    directory) after checking that it stays inside ``folder``: not absolute, no ``..``, and no
    symbolic link on the way that leads out. Raises ``StoreCorruptError`` naming both otherwise.
    """
    folder = Path(folder)
    pure = Path(name) if isinstance(name, str) else None
    if (pure is None or not name or "\0" in name or pure.is_absolute() or ".." in pure.parts
            or pure.parts[:1] == ("~",)):
        raise StoreCorruptError(f"{folder}: {what} {name!r} points outside its folder; refused "
                                f"(restore the file that lists it from a backup, or rebuild)", str(folder))
    if any(len(os.fsencode(part)) > 255 for part in pure.parts):
        raise StoreCorruptError(f"{folder}: {what} {name[:80]!r}... has a name longer than 255 bytes; refused",
                                str(folder))
    path = folder / pure
    try:
        real, base = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise StoreCorruptError(f"{path}: cannot be resolved ({e}); refused", str(path)) from None
    if real == base:
        raise StoreCorruptError(f"{folder}: {what} {name!r} names the folder itself; refused", str(folder))
    if base not in real.parents:
        raise StoreCorruptError(f"{folder}: {what} {name!r} leads outside its folder (to {real}) through a "
                                f"symbolic link; refused", str(folder))
    return path


def path_text(path: str | Path) -> str:
    """A path (or any text from the OS) as UTF-8-safe, readable text to record: a file name
    that is not valid UTF-8 (``caf\\xe9.mp4`` in Latin-1) shows its odd bytes as ``\\xe9``
    instead of making every writer of a CSV, JSON or segment raise ``UnicodeEncodeError``.
    Valid names come back unchanged."""
    s = os.fspath(path)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from the OS
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


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


_RENAME_EXCHANGE = 2


def replace_dir(new: Path, dest: Path) -> None:
    """Put the finished directory ``new`` at ``dest`` (same parent) so that ``dest`` is always
    either the old directory or the new one, whole: Linux swaps the two names atomically
    (``renameat2(RENAME_EXCHANGE)``); elsewhere the old one is renamed aside first. The old
    directory is deleted afterwards."""
    new, dest = Path(new), Path(dest)
    fsync_dir(new)
    if not dest.exists():
        os.rename(new, dest)
        fsync_dir(dest.parent)
        return
    swapped = False
    if sys.platform.startswith("linux"):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            at_fdcwd = -100
            swapped = fn(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(dest), _RENAME_EXCHANGE) == 0
    if swapped:  # ``new`` now names the old directory
        old = new
    else:
        old = temp_path(dest.parent, "-old")
        os.rename(dest, old)
        os.rename(new, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


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

    def _cannot(self, e: OSError) -> StoreWriteError:
        """The one-line error for an environment that refuses the lock file."""
        why = {errno.EROFS: "the filesystem is read-only", errno.ENOSPC: "the disk is full",
               errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is not a folder",
               errno.ENOENT: "the folder does not exist"}.get(e.errno, e.strerror or str(e))
        way = {errno.EROFS: "mount it read-write or copy the store elsewhere (reading needs no lock)",
               errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk space",
               errno.ENOTDIR: "choose a store path whose parents are folders",
               errno.ENOENT: "check the store path"}.get(e.errno, "fix the folder's permissions")
        return StoreWriteError(f"cannot take the write lock {self.path} for {self.what} ({why}); {way}; "
                               "the store is unchanged")

    def acquire(self) -> "WriteLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._cannot(e) from None
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
            raise self._cannot(e) from None
        try:  # who holds it, for the message above; a full disk refuses this too
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({self.what})".encode())
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._cannot(e) from None
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
