"""Bookkeeping of ``vstore download``: the input table, ``OUT/downloaded.csv``, ``OUT/failures.csv``
and the checks on the video files themselves.

``downloaded.csv`` (id, category, path, duration, title) is both the labels file that
``vstore build --labels`` reads and the download archive: a row is appended (and fsynced) only
after its file has its final name and was probed complete, so a killed run never leaves a
row for a partial file. A torn last row (the process died mid-write) is dropped on the next
start; so are rows whose file is gone, so that file is fetched again.

``failures.csv`` (id, url, kind, reason) is appended as failures happen and rewritten at the
end with this run's failures plus the earlier ones that were not retried.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import av

from vstore.csvfile import append_row, read_rows, write_csv
from vstore.errors import VStoreError
from vstore.labels import ID_COLUMNS, LABEL_COLUMNS, cell, column, id_from_link, is_youtube_id, table_rows

from ..errors import EXIT_SOME_FAILED
from ..video.sampling import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

DOWNLOADED_NAME = "downloaded.csv"
FAILURES_NAME = "failures.csv"
DOWNLOADED_COLUMNS = ("id", "category", "path", "duration", "title")
FAILURE_COLUMNS = ("id", "url", "kind", "reason")
PERMANENT, RETRYABLE, INVALID = "permanent", "retryable", "invalid"
FAILURE_KINDS = (PERMANENT, RETRYABLE, INVALID)
MAX_ID_LENGTH = 64  # YouTube ids have 11 characters; anything this long is not an id
TITLE_COLUMNS = ("title", "name")
NO_CATEGORY, AMBIGUOUS = "(none)", "(ambiguous)"  # summary rows of ids without one category
_PARTIAL_MARKS = (".part", ".ytdl", ".part-frag", ".temp")


class VideoTableError(VStoreError):
    """The list of videos to download cannot be read."""


def printable(s: str, limit: int = 80) -> str:
    """``s`` made safe for a one-line report: control characters escaped, long text shortened."""
    out = "".join(c if unicodedata.category(c)[0] != "C" else f"\\x{ord(c):02x}"
                  if ord(c) < 256 else f"\\u{ord(c):04x}" for c in s[:limit + 1])
    return out[:limit] + f"... ({len(s)} characters)" if len(s) > limit else out


def one_line(s: str) -> str:
    """Newlines and other control characters -> spaces (titles and categories in the CSVs)."""
    return " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s).split())


def check_id(vid: str) -> Optional[str]:
    """Why ``vid`` cannot be a video id (it names a file in OUT), or None when it can."""
    if not vid:
        return "empty id"
    if len(vid) > MAX_ID_LENGTH:
        return f"id longer than {MAX_ID_LENGTH} characters ({len(vid)})"
    if not is_youtube_id(vid):
        return "not a video id (only A-Z a-z 0-9 _ - are allowed)"
    return None


@dataclass
class TableEntry:
    id: str
    line: int  # line of the first row listing it
    categories: set[str] = field(default_factory=set)
    title: str = ""

    @property
    def category(self) -> str:
        """The id's category; empty when it has none or is listed under several (ambiguous)."""
        return next(iter(self.categories)) if len(self.categories) == 1 else ""

    @property
    def ambiguous(self) -> bool:
        return len(self.categories) > 1


@dataclass
class InvalidEntry:
    raw: str  # the id (or link) as written in the table
    line: int
    reason: str
    category: str = ""
    rows: int = 1

    @property
    def shown(self) -> str:
        return printable(self.raw)


@dataclass
class VideoTable:
    path: Path
    entries: dict[str, TableEntry]  # by id, in table order
    invalid: list[InvalidEntry]
    duplicate_rows: int = 0  # rows repeating an id already listed
    has_categories: bool = False

    @property
    def ambiguous(self) -> dict[str, set[str]]:
        return {v: e.categories for v, e in self.entries.items() if e.ambiguous}


def _rows(text: str, path: Path) -> tuple[Iterable[tuple[int, str, str, str]], bool]:
    """(line, raw id, category, title) of each row, and whether the table has a category column."""
    header, records = table_rows(text, path, VideoTableError)
    if not any(h in ID_COLUMNS for h in header):  # a plain list: one id or URL per line
        return ((i, ln.strip(), "", "") for i, ln in enumerate(text.splitlines(), 1) if ln.strip()), False
    id_col, label_col, title_col = column(header, ID_COLUMNS), column(header, LABEL_COLUMNS), column(header, TITLE_COLUMNS)
    rows = ((line, cell(row, id_col), cell(row, label_col), cell(row, title_col)) for line, row in records)
    return rows, label_col is not None


def read_video_table(path: str | Path) -> VideoTable:
    """Read the videos to download: the YouTube Videos Dataset CSV (link,title,description,
    category), any CSV with an id/link column, or a plain list of ids or URLs, one a line.

    Ids are deduplicated; a URL is reduced to its id (``watch?v=ID``, ``youtu.be/ID``, or the
    last path segment); an id that could not name a file safely is reported in ``invalid``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VideoTableError(f"video table {path} does not exist") from None
    except IsADirectoryError:
        raise VideoTableError(f"video table {path} is a directory, not a CSV or list file") from None
    except UnicodeDecodeError as e:
        raise VideoTableError(f"video table {path} is not UTF-8 text ({e})") from None
    rows, has_categories = _rows(text, path)
    table = VideoTable(path, {}, [], has_categories=has_categories)
    invalid: dict[str, InvalidEntry] = {}
    for line, raw, category, title in rows:
        vid = id_from_link(raw)
        category, title = one_line(category), one_line(title)
        if vid in table.entries:
            entry = table.entries[vid]
            table.duplicate_rows += 1
            if category:
                entry.categories.add(category)
            entry.title = entry.title or title
            continue
        reason = check_id(vid)
        if reason is not None:
            if raw in invalid:
                invalid[raw].rows += 1
            else:
                invalid[raw] = InvalidEntry(raw, line, reason, category)
            continue
        table.entries[vid] = TableEntry(vid, line, {category} if category else set(), title)
    table.invalid = list(invalid.values())
    if not table.entries and not table.invalid:
        raise VideoTableError(f"{path}: no video ids found (expected a CSV with a link/id column, "
                              f"or one id or URL per line)")
    ambiguous = table.ambiguous
    if ambiguous:
        some = ", ".join(f"{v} ({'/'.join(sorted(c))})" for v, c in list(ambiguous.items())[:5])
        log.warning("%s: %d id(s) are listed under several categories; they are downloaded once and "
                    "left without a category in %s: %s%s", path, len(ambiguous), DOWNLOADED_NAME, some,
                    " ..." if len(ambiguous) > 5 else "")
    return table


# -- the summary ----------------------------------------------------------------------------------

@dataclass
class CategoryCounts:
    found: int = 0  # distinct ids listed (rejected ones included)
    downloaded: int = 0  # fetched by this run
    present: int = 0  # there before this run (in downloaded.csv, or a finished file adopted)
    permanent: int = 0  # failed for good, in this or an earlier run
    retryable: int = 0  # failed but may work later (--retry-failed)
    invalid: int = 0  # ids rejected before any request

    @property
    def failed(self) -> int:
        return self.permanent + self.retryable + self.invalid

    def add(self, other: "CategoryCounts") -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class DownloadSummary:
    out_dir: Path
    categories: dict[str, CategoryCounts] = field(default_factory=dict)  # NO_CATEGORY / AMBIGUOUS too
    failures: list[DownloadFailure] = field(default_factory=list)  # this run's (invalid ids included)
    earlier_permanent: int = 0  # not retried: failed permanently in an earlier run
    earlier_retryable: int = 0  # not retried: failed retryably earlier and retry_failed was off
    duplicate_rows: int = 0
    ambiguous: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    rate_limited: int = 0  # HTTP 429 answers seen

    def counts(self, category: str) -> CategoryCounts:
        return self.categories.setdefault(category, CategoryCounts())

    @property
    def total(self) -> CategoryCounts:
        t = CategoryCounts()
        for c in self.categories.values():
            t.add(c)
        return t

    @property
    def failed(self) -> int:
        return self.total.failed

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    @property
    def labels_path(self) -> Path:
        return self.out_dir / DOWNLOADED_NAME


def category_of(entry: TableEntry) -> str:
    """The summary row an id counts in."""
    return AMBIGUOUS if entry.ambiguous else (entry.category or NO_CATEGORY)



def plan_run(table: VideoTable, downloaded: "DownloadedLog", failures: "DownloadFailures", summary: DownloadSummary,
             url_of: Callable[[str], str], retry_failed: bool) -> list[str]:
    """Count what is settled before any request (rejected ids, finished videos, earlier failures
    left alone) into ``summary``; returns the ids to fetch, in table order."""
    invalid = [DownloadFailure(e.shown, "", INVALID, f"line {e.line}: {e.reason}" + (
        f" ({e.rows} rows)" if e.rows > 1 else "")) for e in table.invalid]
    failures.set_invalid(invalid)
    summary.failures.extend(invalid)
    for e in table.invalid:
        c = summary.counts(e.category or NO_CATEGORY)
        c.found += 1
        c.invalid += 1
    todo: list[str] = []
    for vid, entry in table.entries.items():
        c = summary.counts(category_of(entry))
        c.found += 1
        old = failures.old.get(vid)
        if vid in downloaded:
            c.present += 1
        elif (old is not None and old.kind != INVALID and old.url == url_of(vid)  # same URL, not to retry
              and not (old.kind == RETRYABLE and retry_failed)):
            setattr(c, old.kind, getattr(c, old.kind) + 1)
            if old.kind == PERMANENT:
                summary.earlier_permanent += 1
            else:
                summary.earlier_retryable += 1
        else:
            todo.append(vid)
    return todo


# -- downloaded.csv ---------------------------------------------------------------------------------

@dataclass
class DownloadedRow:
    id: str
    category: str
    path: str  # file name inside OUT (OUT/<id>.<ext>)
    duration: Optional[float]
    title: str

    def cells(self) -> list[str]:
        d = "" if self.duration is None else f"{self.duration:.3f}"
        return [self.id, one_line(self.category), self.path, d, one_line(self.title)]


class DownloadedLog:
    """``OUT/downloaded.csv``: one row per finished video; the run's download archive."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / DOWNLOADED_NAME
        self.rows: dict[str, DownloadedRow] = {}
        raw, dirty = read_rows(self.path)
        parsed = [self._parse(r) for r in raw]
        self.rows.update((row.id, row) for row in parsed if row is not None)
        if dirty or None in parsed:
            self.rewrite()

    def _parse(self, r: dict[str, str]) -> Optional[DownloadedRow]:
        vid, name = (r.get("id") or "").strip(), (r.get("path") or "").strip()
        if check_id(vid) is not None or not name.startswith(vid + ".") or Path(name).name != name:
            log.warning("%s: ignoring a malformed row %s", self.path, printable(str(r), 120))
            return None
        if not (self.out_dir / name).is_file():
            log.warning("%s: %s was recorded as downloaded but %s is gone; it will be fetched again",
                        self.path, vid, name)
            return None
        duration = r.get("duration") or ""
        duration = float(duration) if re.fullmatch(r"\d+(\.\d*)?", duration) else None
        return DownloadedRow(vid, r.get("category") or "", name, duration, r.get("title") or "")

    def __contains__(self, vid: str) -> bool:
        return vid in self.rows

    def add(self, row: DownloadedRow) -> None:
        append_row(self.path, DOWNLOADED_COLUMNS, row.cells())
        self.rows[row.id] = row

    def rewrite(self) -> None:
        if not self.rows and not self.path.exists():
            return
        write_csv(self.path, DOWNLOADED_COLUMNS, (r.cells() for r in self.rows.values()))


# -- failures.csv -----------------------------------------------------------------------------------

@dataclass
class DownloadFailure:
    id: str  # the id; for kind "invalid", the rejected text made printable
    url: str
    kind: str  # permanent | retryable | invalid
    reason: str

    def cells(self) -> list[str]:
        return [self.id, self.url, self.kind, one_line(self.reason)]


class DownloadFailures:
    """``OUT/failures.csv``: appended as failures happen (a crash keeps them); ``finish`` rewrites
    it with this run's failures plus earlier ones that were not retried nor since downloaded."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / FAILURES_NAME
        self.old: dict[str, DownloadFailure] = {}
        raw, _ = read_rows(self.path)
        for r in raw:
            kind = (r.get("kind") or "").strip()
            if r.get("id") and kind in FAILURE_KINDS:
                self.old[r["id"]] = DownloadFailure(r["id"], r.get("url") or "", kind, r.get("reason") or "")
        self.new: dict[str, DownloadFailure] = {}
        self.invalid: dict[str, DownloadFailure] = {}

    def set_invalid(self, invalid: Iterable[DownloadFailure]) -> None:
        """Record the table's rejected ids now, so even an interrupted run lists them."""
        self.invalid = {f.id: f for f in invalid}
        self._rewrite(self.current(set()))

    def add(self, failure: DownloadFailure) -> None:
        self.new[failure.id] = failure
        append_row(self.path, FAILURE_COLUMNS, failure.cells())

    def current(self, downloaded: set[str]) -> dict[str, DownloadFailure]:
        keep = {k: f for k, f in self.old.items()
                if f.kind != INVALID and k not in self.new and k not in downloaded}
        keep.update(self.new)
        keep.update(self.invalid)
        return keep

    def _rewrite(self, keep: dict[str, DownloadFailure]) -> None:
        if keep:
            write_csv(self.path, FAILURE_COLUMNS, (f.cells() for f in keep.values()))
        else:
            self.path.unlink(missing_ok=True)

    def finish(self, downloaded: set[str]) -> list[DownloadFailure]:
        """Rewrite the file without the ids now downloaded; returns what it lists."""
        keep = self.current(downloaded)
        self._rewrite(keep)
        return list(keep.values())


# -- the files in OUT ------------------------------------------------------------------------------

class BadDownload(Exception):
    """A downloaded file that is not a complete video; ``kind`` says whether to try again."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def probe_download(path: Path) -> Optional[float]:
    """Duration in seconds (None if unknown) of a downloaded video, after demuxing all its
    packets. Raises ``BadDownload`` when it is unreadable, has no video stream, or ends early:
    fewer frames than its index lists (mp4), or a shorter span than its declared duration
    (beyond 0.5 s or 1 %) - a truncated transfer whose server sent no length."""
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            streams = [s for s in c.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
            if not streams:
                kinds = ", ".join(sorted({s.type for s in c.streams})) or "no streams"
                raise BadDownload(PERMANENT, f"downloaded file has no video stream ({kinds})")
            s = streams[0]
            tb, listed = s.time_base, s.frames
            first = last = None
            n = 0
            for pkt in c.demux(s):
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if pkt.size == 0 or t is None:
                    continue
                n += 1
                first = t if first is None else min(first, t)
                last = max(last or t, t + (pkt.duration or 0))
            if first is None:
                raise BadDownload(RETRYABLE, "downloaded file has no video frames")
            if listed and n < listed:
                raise BadDownload(RETRYABLE, f"incomplete download: {n} of {listed} frames present")
            container = c.duration / av.time_base if c.duration else None
            declared = float(s.duration * tb) if s.duration and tb else container
            span = float((last - first) * tb) if tb else None
            if span is not None and declared and span < declared - max(0.5, 0.01 * declared):
                raise BadDownload(RETRYABLE, f"incomplete download: video ends at {span:.1f} s of {declared:.1f} s")
            return container or declared or span
    except av.FFmpegError as e:
        raise BadDownload(RETRYABLE, f"downloaded file is not a readable, complete video ({e})") from None


def remove_partials(out_dir: Path, vid: str) -> None:
    """Delete yt-dlp's unfinished files of ``vid`` (``.part``, ``.ytdl``, fragments)."""
    for p in out_dir.glob(f"{vid}.*"):  # vid is validated: no glob or path characters
        if any(m in p.name.lower() for m in _PARTIAL_MARKS):
            p.unlink(missing_ok=True)


def finished_files(out_dir: Path) -> dict[str, list[Path]]:
    """``OUT/<id>.<video ext>`` files by id (yt-dlp gives them their name only when complete)."""
    found: dict[str, list[Path]] = {}
    for p in out_dir.iterdir():
        stem, dot, ext = p.name.partition(".")
        if dot and "." not in ext and f".{ext.lower()}" in VIDEO_EXTENSIONS and p.is_file():
            found.setdefault(stem, []).append(p)
    return found
