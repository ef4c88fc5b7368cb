"""Labels files: the YouTube Videos Dataset CSV, vstore's downloaded.csv, or a JSON mapping.

Accepted forms (the format is detected from the content, not only the extension):

* CSV/TSV with a header holding an id column (``id``, ``link``, ``video_id``, ``video``) and a
  label column (``category``, ``label``, ``class``). ``link`` may be a full YouTube URL.
  Quoted multi-line fields (the dataset's descriptions) are fine.
* JSON ``{"<id>": "<label>", ...}`` (the reference study's config.json) or
  ``{"<label>": ["<id>", ...], ...}``, optionally under a top-level ``"labels"`` key.

Ids given two different labels are ambiguous: they are left unlabeled and reported.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import parse_qs, urlparse

from .csvfile import table_dialect
from .csvsafe import plain_cell
from .errors import LabelsError, VStoreError
from .records import MAX_ID_BYTES, MAX_LABEL_CHARS, text_problem

log = logging.getLogger(__name__)

ID_COLUMNS = ("id", "video_id", "link", "video", "youtube_id")
LABEL_COLUMNS = ("category", "label", "class")
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def id_from_link(link: str) -> str:
    """``https://www.youtube.com/watch?v=abc`` / ``https://youtu.be/abc`` -> ``abc``; ids pass through."""
    link = link.strip()
    if "://" not in link:
        return link
    u = urlparse(link)
    if "v" in parse_qs(u.query):
        return parse_qs(u.query)["v"][0]
    return Path(u.path).name or link


def is_youtube_id(s: str) -> bool:
    # fullmatch: with match, "$" also matches before a trailing newline ("abc\n" passed)
    return bool(_YOUTUBE_ID.fullmatch(s))


@dataclass
class Labels:
    mapping: dict[str, str]  # video id -> label
    path: Path
    conflicts: dict[str, set[str]] = field(default_factory=dict)  # ambiguous ids (left unlabeled)
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)  # (line/entry, reason)

    def get(self, video_id: str) -> Optional[str]:
        return self.mapping.get(video_id)

    @property
    def names(self) -> list[str]:
        return sorted(set(self.mapping.values()))

    def __len__(self) -> int:
        return len(self.mapping)


def _collect(pairs, path: Path) -> Labels:
    seen: dict[str, set[str]] = {}
    skipped: list[tuple[int, str]] = []
    for where, vid, label in pairs:
        vid = (vid or "").strip()
        label = (label or "").strip()
        if not vid:
            skipped.append((where, "empty id"))
            continue
        if not label:
            skipped.append((where, f"empty label for {vid!r}"))
            continue
        problem = (text_problem(vid, "id", MAX_ID_BYTES)
                   or (len(label) > MAX_LABEL_CHARS and f"label of {vid!r} is longer than {MAX_LABEL_CHARS} characters")
                   or text_problem(label, f"label of {vid!r}", 4 * MAX_LABEL_CHARS))
        if problem:
            skipped.append((where, problem))
            continue
        seen.setdefault(vid, set()).add(label)
    mapping = {v: next(iter(ls)) for v, ls in seen.items() if len(ls) == 1}
    conflicts = {v: ls for v, ls in seen.items() if len(ls) > 1}
    if conflicts:
        some = ", ".join(f"{v} ({'/'.join(sorted(ls))})" for v, ls in list(conflicts.items())[:5])
        log.warning("%s: %d id(s) have conflicting labels and are left unlabeled: %s%s", path,
                    len(conflicts), some, " ..." if len(conflicts) > 5 else "")
    if skipped:
        log.warning("%s: skipped %d row(s), e.g. %s", path, len(skipped), skipped[0])
    return Labels(mapping, path, conflicts, skipped)


def _from_json(data, path: Path) -> Labels:
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise LabelsError(f"{path}: expected a JSON object {{id: label}} or {{label: [ids]}}")
    values = list(data.values())
    if all(isinstance(v, str) for v in values):
        return _collect(((k, k, v) for k, v in data.items()), path)
    if all(isinstance(v, list) for v in values):
        return _collect(((lab, str(v), lab) for lab, ids in data.items() for v in ids), path)
    raise LabelsError(f"{path}: values must be all strings ({{id: label}}) or all lists ({{label: [ids]}})")


def table_rows(text: str, path: Path, error: type[VStoreError] = LabelsError, has_header: bool = True
               ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A dataset table (CSV or TSV, see ``csvfile.table_dialect``): its header, stripped and
    lower-cased ([] when the first record is not CSV, or with ``has_header=False``, where the
    first record is data), and its non-blank records as (line the record ended on, cells);
    quoted multi-line fields are one record. A malformed record raises ``error`` naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect=table_dialect(path, text))
    header: list[str] = []
    if has_header:
        try:
            header = [h.strip().lower() for h in next((r for r in reader if any(c.strip() for c in r)), [])]
        except csv.Error:
            pass

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for row in reader:
                if any(c.strip() for c in row):
                    yield reader.line_num, row
        except csv.Error as e:
            raise error(f"{path}: CSV error near line {reader.line_num}: {e}") from None
    return header, rows()


def column(header: list[str], names: Sequence[str]) -> Optional[int]:
    """Position of the first of ``names`` found in ``header``, or None."""
    return next((header.index(c) for c in names if c in header), None)


def cell(row: list[str], col: Optional[int]) -> str:
    """The cell's text as written (a spreadsheet-escaped cell, see ``csvsafe``, unescaped)."""
    return plain_cell(row[col]) if col is not None and col < len(row) else ""


def _from_csv(text: str, path: Path) -> Labels:
    header, records = table_rows(text, path)
    id_col, label_col = column(header, ID_COLUMNS), column(header, LABEL_COLUMNS)
    if id_col is None or label_col is None:
        raise LabelsError(
            f"{path}: header {header} needs an id column (one of {', '.join(ID_COLUMNS)}) and a label "
            f"column (one of {', '.join(LABEL_COLUMNS)})")
    return _collect(((line, id_from_link(cell(row, id_col)), cell(row, label_col)) for line, row in records), path)


def read_list_file(path: Path, what: str, error: type[VStoreError]) -> tuple[str, Any]:
    """``(text, parsed JSON or None)`` of a user's labels or id-list file: UTF-8 (a BOM is
    fine), JSON when named ``.json`` or starting with ``[``/``{``. Every way it can be
    unreadable is an ``error`` naming the file (``what`` says what it was meant to be)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text ({e})") from None
    if not text.strip():
        raise error(f"{what} {path} is empty")
    if not (path.suffix.lower() == ".json" or text.lstrip()[:1] in "{["):
        return text, None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be a {what}") from None


def load_labels(path: str | Path) -> Labels:
    """Read a labels file; raises ``LabelsError`` naming the file and what is wrong."""
    path = Path(path)
    text, data = read_list_file(path, "labels file", LabelsError)
    if data is not None:
        labels = _from_json(data, path)
    else:
        labels = _from_csv(text, path)
    if not labels.mapping:
        raise LabelsError(f"{path}: no usable (id, label) pairs")
    return labels
