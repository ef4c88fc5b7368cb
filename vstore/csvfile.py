"""CSV mechanics shared by every table vstore reads or keeps: the dialect of a dataset table,
and logs appended row by row (a crash loses at most a torn last line) and rewritten atomically.

What the columns mean belongs to each file's own module (``vstore.labels``,
``encoders.build.failures``, ``encoders.download.ledger``).
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Iterable

from .csvsafe import plain_cell, safe_row
from .fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


def table_dialect(path: Path, text: str) -> str:
    """``excel-tab`` for a ``.tsv`` file or one whose first non-empty line has tabs but no
    commas, else ``excel``: the dataset CSV (and its TSV exports) as users have them."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return "excel-tab" if Path(path).suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else "excel"


def csv_line(cells: Iterable[str]) -> bytes:
    """One CSV record (quoted as needed, ``\\n``-terminated, cells a spreadsheet would run as
    formulas escaped: ``csvsafe.safe_row``) as UTF-8."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(safe_row(cells))
    return buf.getvalue().encode("utf-8")


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[str]]) -> None:
    """Replace ``path`` atomically with ``header`` and ``rows``."""
    atomic_write_bytes(path, csv_line(header) + b"".join(csv_line(r) for r in rows))


def append_row(path: Path, header: Iterable[str], cells: Iterable[str]) -> None:
    """Append one record durably (flush + fsync), writing ``header`` first into a new file."""
    fresh = not path.exists() or path.stat().st_size == 0
    with open(path, "ab") as f:
        f.write((csv_line(header) if fresh else b"") + csv_line(cells))
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> tuple[list[dict[str, str]], bool]:
    """Records of a log written by ``append_row``/``write_csv`` as dicts (a quoted multi-line
    field is one record), and whether the file needs rewriting (a torn last line, from a
    process that died while appending, is dropped; an unreadable file reads as empty)."""
    if not path.is_file():
        return [], False
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    if torn:
        data = data[:data.rfind(b"\n") + 1]
        log.warning("%s: dropped an incomplete last line (an interrupted run)", path)
    try:
        rows = [{k: plain_cell(v) if isinstance(v, str) else v for k, v in r.items()}
                for r in csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))]
    except csv.Error as e:
        log.warning("%s: unreadable (%s); starting it afresh", path, e)
        return [], True
    return rows, torn
