"""``STORE/failures.csv`` (id, path, reason): the videos a build could not add, and why."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vstore.csvfile import append_row, read_rows, write_csv
from vstore.fsutil import path_text

FAILURES_NAME = "failures.csv"
FAILURE_COLUMNS = ("id", "path", "reason")


@dataclass
class Failure:
    id: str
    path: str
    reason: str

    def cells(self) -> list[str]:
        """Readable text for any path the OS gave (see ``path_text``); ``csvfile`` escapes
        what a spreadsheet would run as a formula."""
        return [path_text(c) for c in (self.id, self.path, self.reason)]


def read_failures(store_path: str | Path) -> dict[str, Failure]:
    """The failures listed in ``STORE/failures.csv`` by id (CSV records: a reason may span lines)."""
    rows, _ = read_rows(Path(store_path) / FAILURES_NAME)
    return {r["id"]: Failure(r["id"], r.get("path") or "", r.get("reason") or "") for r in rows if r.get("id")}


class FailureLog:
    """``STORE/failures.csv`` (id, path, reason): appended as failures happen, so a crash keeps
    them; rewritten at the end with this run's failures plus older ones still unresolved."""

    def __init__(self, store_path: Path):
        self.path = Path(store_path) / FAILURES_NAME
        self.old: dict[str, Failure] = read_failures(store_path)
        self.new: dict[str, Failure] = {}

    def add(self, failure: Failure) -> None:
        self.new[failure.id] = failure
        append_row(self.path, FAILURE_COLUMNS, failure.cells())

    def finish(self, attempted: set[str], committed: set[str]) -> None:
        # Older failures stay listed while still unresolved: not retried now, not in the
        # store, and the file is still there.
        keep = {k: v for k, v in self.old.items()
                if k not in attempted and k not in committed and Path(v.path).exists()}
        keep.update(self.new)
        if not keep:
            self.path.unlink(missing_ok=True)
            return
        write_csv(self.path, FAILURE_COLUMNS, (f.cells() for f in keep.values()))
