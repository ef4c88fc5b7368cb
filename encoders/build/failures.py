"""``STORE/failures.csv`` (id, path, reason): the videos a build could not add, and why."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from vstore.csvsafe import plain_cell, safe_row
from vstore.fsutil import atomic_write_bytes, path_text

log = logging.getLogger(__name__)

FAILURES_NAME = "failures.csv"


@dataclass
class Failure:
    id: str
    path: str
    reason: str


def _cells(f: Failure) -> list[str]:
    """A row safe to open in a spreadsheet, for any path the OS gave (see ``path_text``)."""
    return safe_row(path_text(c) for c in (f.id, f.path, f.reason))


class FailureLog:
    """``STORE/failures.csv`` (id, path, reason): appended as failures happen, so a crash keeps
    them; rewritten at the end with this run's failures plus older ones still unresolved."""

    def __init__(self, store_path: Path):
        self.path = Path(store_path) / FAILURES_NAME
        self.old: dict[str, Failure] = {}
        if self.path.is_file():
            try:  # a damaged log (invalid UTF-8, NULs) is read as far as it goes, never fatal
                with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
                    for row in csv.DictReader(f):
                        vid = plain_cell(row.get("id") or "")
                        if vid:
                            self.old[vid] = Failure(vid, plain_cell(row.get("path") or ""),
                                                    plain_cell(row.get("reason") or ""))
            except (csv.Error, OSError) as e:
                log.warning("%s is damaged (%s); it is rewritten at the end of this build", self.path, e)
        self.new: dict[str, Failure] = {}

    def add(self, failure: Failure) -> None:
        self.new[failure.id] = failure
        fresh = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if fresh:
                w.writerow(["id", "path", "reason"])
            w.writerow(_cells(failure))

    def finish(self, attempted: set[str], committed: set[str]) -> None:
        # Older failures stay listed while still unresolved: not retried now, not in the
        # store, and the file is still there.
        keep = {k: v for k, v in self.old.items()
                if k not in attempted and k not in committed and Path(v.path).exists()}
        keep.update(self.new)
        if not keep:
            self.path.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "path", "reason"])
        for f in keep.values():
            w.writerow(_cells(f))
        atomic_write_bytes(self.path, buf.getvalue().encode("utf-8"))
