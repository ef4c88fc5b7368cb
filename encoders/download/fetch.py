"""``vstore download``: fetch a dataset's videos with yt-dlp (as a library), restartably.

Each id of the table (``ledger.read_video_table``) becomes ``OUT/<id>.<ext>``, named
from the validated id only. yt-dlp writes ``<file>.part`` and renames it when the byte count
matches; the file is then demuxed end to end (``probe_download``) before its row goes into
``OUT/downloaded.csv``, the archive a rerun consults: finished ids cost no request, a
``.part`` left by a killed run is resumed, and a final-named file without a row (a kill
between rename and record) is probed and adopted or deleted.

Failures are classified (``classify_error``): permanent ones (removed, private, geo-blocked,
unsupported, HTTP 4xx) are recorded at once; retryable ones (HTTP 429 and 5xx, timeouts,
resets, short reads) are retried with exponential backoff, and a 429 pauses every worker
(``RateGate``). What still fails goes to ``OUT/failures.csv``.
"""
from __future__ import annotations

import logging
import queue
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vstore.errors import StoreLockedError, VStoreError
from vstore.fsutil import WriteLock

from .ledger import (
    PERMANENT,
    RETRYABLE,
    BadDownload,
    DownloadedLog,
    DownloadedRow,
    DownloadFailure,
    DownloadFailures,
    DownloadSummary,
    VideoTable,
    category_of,
    finished_files,
    plan_run,
    probe_download,
    read_video_table,
    remove_partials,
)

log = logging.getLogger(__name__)

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={id}"
# mp4 of at most 360p (the reference study's choice); formats of unknown height qualify
# (direct file links), and without any such format the best single file is taken.
DEFAULT_FORMAT = "best[ext=mp4][height<=?360]/best[height<=?360]/best"
LOCK_NAME = ".download.lock"
STOP_GRACE = 5.0  # seconds an interrupted run waits for its downloads to stop


class DownloadBusyError(VStoreError):
    """Another ``vstore download`` is writing the same output directory."""


@dataclass
class DownloadConfig:
    # Where an id is fetched from; "{id}" is replaced by the validated id. Any site yt-dlp
    # supports works, direct links to media files included (yt-dlp's generic extractor).
    url_template: str = DEFAULT_URL_TEMPLATE
    # yt-dlp format selector (see DEFAULT_FORMAT). Single-file formats need no ffmpeg.
    format: str = DEFAULT_FORMAT
    # Concurrent downloads, one thread and one yt_dlp.YoutubeDL each (YouTube 429s bursts).
    jobs: int = 1
    # Extra attempts for a retryable failure within one run (0 = try once).
    retries: int = 3
    # Seconds before the first retry, doubled for each further one (+-20 % jitter), at most
    # max_backoff (which also caps Retry-After headers).
    backoff: float = 2.0
    max_backoff: float = 300.0
    # After an HTTP 429 no worker starts a request for this long; further 429s double it (up
    # to max_backoff) and requests stay spaced out by it until successes relax it again.
    rate_limit_pause: float = 30.0
    # Seconds a stalled connection waits for data before it counts as a (retryable) timeout.
    socket_timeout: float = 30.0
    # Netscape cookies file for yt-dlp ("confirm you're not a bot"); workers use private copies.
    cookies: Optional[str] = None
    # Also try again the ids that failed retryably in an earlier run (permanent ones never).
    retry_failed: bool = False

    def __post_init__(self) -> None:
        try:
            url = self.url_template.format(id="ID")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"url template {self.url_template!r} may only contain the field {{id}} ({e})") from None
        if "{id}" not in self.url_template:
            raise ValueError(f"url template {self.url_template!r} must contain {{id}}")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ValueError(f"url template {self.url_template!r} must be an http:// or https:// URL")
        for ok, what in [(self.format.strip(), "format must not be empty"),
                         (1 <= int(self.jobs) <= 64, f"jobs must be in 1..64, got {self.jobs}"),
                         (int(self.retries) >= 0, f"retries must be >= 0, got {self.retries}"),
                         (min(self.backoff, self.rate_limit_pause) >= 0, "backoff and rate_limit_pause must be >= 0"),
                         (self.max_backoff >= self.backoff, f"max_backoff must be >= backoff ({self.backoff})"),
                         (self.socket_timeout > 0, f"socket_timeout must be > 0, got {self.socket_timeout}")]:
            if not ok:
                raise ValueError(what)

    def url(self, vid: str) -> str:
        return self.url_template.format(id=vid)


# -- classifying failures ---------------------------------------------------------------------------

@dataclass
class Classified:
    kind: str  # PERMANENT or RETRYABLE
    reason: str  # one line, for failures.csv
    rate_limited: bool = False  # HTTP 429 or a bot check: slow the whole run down
    retry_after: Optional[float] = None  # seconds, from a Retry-After header


# YouTube's answers when it throttles a client; checked before the permanent texts below
# because some of them start with "Video unavailable".
_RATE_LIMIT_TEXT = re.compile(
    r"too many requests|rate.?limit|confirm you.?re not a bot|try again later", re.I)
_PERMANENT_TEXT = re.compile(
    r"private video|video unavailable|(this )?video (is|has been) (not available|removed|deleted)|"
    r"has been removed|removed by the uploader|account .{0,60} terminated|copyright|"
    r"not (made this video )?available in your country|geo.?restrict|blocked it in your country|"
    r"unsupported url|is not a valid url|members.only|join this channel|confirm your age|age.restricted|"
    r"premieres in|live event will begin|does not exist", re.I)
# Not listed as permanent, as they mostly mean a problem here, not with the video: "Requested
# format is not available" (e.g. no JavaScript runtime for YouTube), "ffmpeg is not installed".
_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _chain(exc: BaseException):
    """``exc`` and the exceptions behind it (yt-dlp's exc_info and cause, Python's chaining)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if isinstance(e, BaseException) and id(e) not in seen:
            seen.add(id(e))
            yield e
            info = getattr(e, "exc_info", None)
            todo += [info[1] if isinstance(info, tuple) and len(info) > 1 else None,
                     getattr(e, "cause", None), e.__cause__, e.__context__]


def _reason(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).replace("\r", " ")
    text = re.sub(r"^\s*ERROR:\s*", "", text)
    text = re.sub(r"\s*\(caused by .*\)\s*$", "", text, flags=re.S)
    text = re.sub(r"^\[[\w:]+\]\s*", "", text)  # yt-dlp's "[generic] " / "[download] " tag
    return " ".join(text.split())[:300] or type(exc).__name__


def classify_error(exc: BaseException) -> Classified:
    """Permanent (removed, private, geo-blocked, unsupported, HTTP 4xx) or retryable (HTTP 429,
    408 and 5xx, timeouts, resets, short reads, anything unrecognised) for a yt-dlp failure."""
    from yt_dlp.networking.exceptions import HTTPError
    reason = _reason(exc)
    chain = list(_chain(exc))
    http = next((e for e in chain if isinstance(e, HTTPError)), None)
    m = _HTTP_STATUS.search(" ".join(str(e) for e in chain))
    status = http.status if http is not None else int(m.group(1)) if m else None
    after = str(http.response.headers.get("Retry-After") or "") if http is not None else ""
    retry_after = float(after) if re.fullmatch(r"\d+(\.\d+)?", after) else None
    if status == 429 or _RATE_LIMIT_TEXT.search(reason):
        return Classified(RETRYABLE, reason, rate_limited=True, retry_after=retry_after)
    if status is not None:
        if status in (408, 425) or status >= 500:
            return Classified(RETRYABLE, reason, retry_after=retry_after)
        if 400 <= status < 500:
            return Classified(PERMANENT, reason)
    if _PERMANENT_TEXT.search(reason):
        return Classified(PERMANENT, reason)
    # Transport trouble (timeouts, resets, short reads: "Downloaded N bytes, expected M") and
    # anything unrecognised: worth another try, bounded by --retries.
    return Classified(RETRYABLE, reason)


# -- pacing -----------------------------------------------------------------------------------------

class RateGate:
    """Shared by all workers: after an HTTP 429 nobody starts a request for a while, and
    starts stay spaced out until successes relax the spacing again."""

    def __init__(self, pause: float, max_pause: float, clock=time.monotonic):
        self.pause, self.max_pause, self.clock, self.hits = pause, max(pause, max_pause), clock, 0
        self.spacing = 0.0  # seconds between request starts, across all workers
        self._next, self._lock = 0.0, threading.Lock()  # _next: no request may start before it

    def reserve(self) -> float:
        """Take the next start slot; returns how long to wait for it."""
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.spacing
            return start - now

    def too_many_requests(self, retry_after: Optional[float] = None) -> None:
        with self._lock:
            self.hits += 1
            self.spacing = min(self.max_pause, max(self.pause, 2 * self.spacing))
            hold = max(self.spacing, min(retry_after or 0.0, self.max_pause))
            self._next = max(self._next, self.clock() + hold)

    def succeeded(self) -> None:
        with self._lock:
            self.spacing = self.spacing / 2 if self.spacing > self.pause / 4 else 0.0


def backoff_delay(config: DownloadConfig, attempt: int, retry_after: Optional[float] = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    delay = min(config.max_backoff, config.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
    return min(max(delay, retry_after or 0.0), config.max_backoff)


# -- the workers ------------------------------------------------------------------------------------

class _Cancelled(BaseException):
    """Raised inside a worker (from yt-dlp's progress hook) once the run is being stopped."""


class _YtdlpLog:
    """yt-dlp's messages go to the debug log (failures are reported by us), except its
    warnings, shown once each: e.g. that YouTube extraction lacks a JavaScript runtime."""

    def __init__(self, max_shown: int = 20) -> None:
        self._shown: set[str] = set()
        self._lock, self.max_shown = threading.Lock(), max_shown

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = error = debug

    def warning(self, msg: str) -> None:
        text = re.sub(r"^(WARNING:\s*)?(\[[\w:]+\]\s*)?([\w-]+:\s)?", "", _ANSI.sub("", msg)).strip()
        with self._lock:
            new = text not in self._shown and len(self._shown) < self.max_shown
            self._shown.add(text)
        log.log(logging.WARNING if new else logging.DEBUG, "yt-dlp: %s", text)


@dataclass
class _Outcome:
    id: str
    path: Optional[Path] = None  # the finished file
    duration: Optional[float] = None
    title: str = ""
    present: bool = False  # an existing finished file, adopted
    failure: Optional[Classified] = None


class _Downloader:
    """Runs in the pool threads; everything it shares is the gate, the stop event and counters."""

    def __init__(self, out_dir: Path, config: DownloadConfig, existing: dict[str, list[Path]]):
        self.out_dir, self.config, self.existing = out_dir, config, existing
        self.gate = RateGate(config.rate_limit_pause, config.max_backoff)
        self.stop, self.bytes, self.threads = threading.Event(), 0, []
        self._lock, self._local, self._instances, self._ytdlp_log = threading.Lock(), threading.local(), [], _YtdlpLog()
        self._tmp = Path(tempfile.mkdtemp(prefix="vstore-download-")) if config.cookies else None

    def start(self, todo: list[str]) -> "queue.SimpleQueue":
        """Worker threads over ``todo``; each outcome (or a worker's crash) comes out of the queue.
        They are daemon threads, so one stuck on a stalled connection cannot hold up an exit."""
        tasks, results = queue.SimpleQueue(), queue.SimpleQueue()
        for vid in todo:
            tasks.put(vid)

        def work() -> None:
            while not self.stop.is_set():
                try:
                    results.put(self.download(tasks.get_nowait()))
                except (queue.Empty, _Cancelled):
                    return
                except BaseException as e:  # a bug: the main thread re-raises it
                    return results.put(e)
        self.threads = [threading.Thread(target=work, name=f"download-{i}", daemon=True)
                        for i in range(min(self.config.jobs, len(todo)))]
        for t in self.threads:
            t.start()
        return results

    def finish(self, grace: float) -> int:
        """Stop the workers, waiting up to ``grace`` seconds; returns how many are still busy."""
        self.stop.set()
        deadline = time.monotonic() + grace
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = sum(t.is_alive() for t in self.threads)
        while self._instances and not busy:
            try:
                self._instances.pop().close()
            except Exception as e:  # noqa: BLE001 - closing must not hide the run's result
                log.debug("closing yt-dlp: %s", e)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return busy

    def _ydl(self):
        ydl = getattr(self._local, "ydl", None)
        if ydl is None:
            import yt_dlp
            cookiefile = None
            if self.config.cookies:
                cookiefile = str(self._tmp / f"cookies-{threading.get_ident()}.txt")
                shutil.copyfile(self.config.cookies, cookiefile)
            ydl = yt_dlp.YoutubeDL({
                "paths": {"home": str(self.out_dir)},
                "outtmpl": {"default": "%(vstore_id)s.%(ext)s"},  # the validated id, never the title
                "format": self.config.format,
                "quiet": True, "noprogress": True, "logger": self._ytdlp_log, "color": "no_color",
                "retries": 0, "extractor_retries": 0, "fragment_retries": 3,  # retrying is ours
                "socket_timeout": self.config.socket_timeout,
                "noplaylist": True, "cachedir": False, "continuedl": True, "updatetime": False,
                "restrictfilenames": True, "cookiefile": cookiefile,
                "progress_hooks": [self._hook],
            })
            self._local.ydl = ydl
            with self._lock:
                self._instances.append(ydl)
        return ydl

    def _hook(self, d: dict) -> None:
        if self.stop.is_set():
            raise _Cancelled()
        if d.get("status") == "downloading" and d.get("downloaded_bytes") is not None:
            n = int(d["downloaded_bytes"])  # includes what a resumed .part already held,
            seen = self._local.seen  # so the first report of a download only sets the baseline
            delta = 0 if seen is None else (n - seen if n >= seen else n)
            self._local.seen = n
            with self._lock:
                self.bytes += delta

    def _wait(self, seconds: float) -> None:
        if (seconds > 0 and self.stop.wait(seconds)) or self.stop.is_set():
            raise _Cancelled()

    def _fetch(self, vid: str, url: str) -> tuple[Path, dict]:
        ydl = self._ydl()
        self._local.seen = None
        info = ydl.extract_info(url, download=False)
        if info is None or info.get("_type", "video") != "video":
            raise BadDownload(PERMANENT, f"{url} is a playlist or a page of several videos, not one video")
        info["vstore_id"] = vid
        result = ydl.process_ie_result(info, download=True) or info
        done = [d.get("filepath") for d in result.get("requested_downloads") or [] if d.get("filepath")]
        path = Path(done[0] if done else ydl.prepare_filename(result))
        if path.parent.resolve() != self.out_dir.resolve() or not re.fullmatch(rf"{vid}\.[A-Za-z0-9]{{1,10}}", path.name):
            raise BadDownload(PERMANENT, f"yt-dlp produced an unexpected file name {path}")
        if not path.is_file():
            raise BadDownload(RETRYABLE, f"yt-dlp finished but {path.name} is missing")
        return path, result

    def download(self, vid: str) -> _Outcome:
        """Adopt a finished file or fetch one id, with retries; never raises except _Cancelled."""
        for p in self.existing.get(vid, []):
            try:
                return _Outcome(vid, p, probe_download(p), present=True)
            except BadDownload as e:
                log.warning("%s: not adopting %s (%s); deleting it and downloading again", vid, p.name, e)
                p.unlink(missing_ok=True)
        url = self.config.url(vid)
        attempt = 0
        while True:
            self._wait(self.gate.reserve())
            try:
                path, info = self._fetch(vid, url)
                try:
                    duration = probe_download(path)
                except BadDownload:
                    path.unlink(missing_ok=True)
                    raise
                self.gate.succeeded()
                return _Outcome(vid, path, duration, title=str(info.get("title") or ""))
            except _Cancelled:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is classified and recorded
                failure = (Classified(e.kind, str(e)) if isinstance(e, BadDownload) else classify_error(e))
            if failure.rate_limited:
                self.gate.too_many_requests(failure.retry_after)
            attempt += 1
            if failure.kind == PERMANENT or attempt > self.config.retries:
                if failure.kind == PERMANENT:
                    remove_partials(self.out_dir, vid)
                return _Outcome(vid, failure=failure)
            delay = backoff_delay(self.config, attempt, failure.retry_after)
            log.info("%s: %s; retry %d/%d in %.1f s", vid, failure.reason, attempt, self.config.retries, delay)
            self._wait(delay)


# -- the run ----------------------------------------------------------------------------------------

def _check_cookies(path: str) -> None:
    from yt_dlp.cookies import YoutubeDLCookieJar
    try:
        YoutubeDLCookieJar(path).load()
    except Exception as e:  # noqa: BLE001 - the jar raises several kinds on a bad file
        raise VStoreError(f"cookies file {path} is not a readable Netscape-format cookies file ({e}); "
                          f"export one with a browser extension such as 'Get cookies.txt'") from None


def download_videos(table_path: str | Path, out_dir: str | Path, config: Optional[DownloadConfig] = None,
                    progress: bool = True) -> DownloadSummary:
    """Download every video of the table into ``out_dir`` (or resume doing so)."""
    config = config or DownloadConfig()
    t0 = time.monotonic()
    table = read_video_table(table_path)
    if config.cookies:
        _check_cookies(config.cookies)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VStoreError(f"cannot create the output directory {out}: {e}") from None
    lock = WriteLock(out / LOCK_NAME, "vstore download")
    try:
        lock.acquire()
    except StoreLockedError:
        holder = (out / LOCK_NAME).read_text(errors="replace").strip() or "another process"
        raise DownloadBusyError(f"{out} is being downloaded into by {holder}; wait for it to finish") from None
    try:
        return _run(table, out, config, progress, t0)
    finally:
        lock.release()


def _run(table: VideoTable, out: Path, config: DownloadConfig, progress: bool, t0: float) -> DownloadSummary:
    summary = DownloadSummary(out, duplicate_rows=table.duplicate_rows, ambiguous=sorted(table.ambiguous))
    downloaded = DownloadedLog(out)
    failures = DownloadFailures(out)
    todo = plan_run(table, downloaded, failures, summary, config.url, config.retry_failed)
    existing = finished_files(out)  # complete files without a row: adopted after a probe
    log.info("%d ids in %s, %d to fetch (the others are done or failed earlier)", len(table.entries),
             table.path, len(todo))

    dl = _Downloader(out, config, {v: existing[v] for v in todo if v in existing})
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True, desc="download")
    done_ok = failed = 0

    def record(outcome: _Outcome) -> None:
        nonlocal done_ok, failed
        entry = table.entries[outcome.id]
        c = summary.counts(category_of(entry))
        if outcome.failure is None:
            downloaded.add(DownloadedRow(outcome.id, entry.category, outcome.path.name, outcome.duration,
                                         entry.title or outcome.title))
            kind = "present" if outcome.present else "downloaded"
            done_ok += 1
        else:
            f = outcome.failure
            failure = DownloadFailure(outcome.id, config.url(outcome.id), f.kind, f.reason)
            failures.add(failure)
            summary.failures.append(failure)
            kind = f.kind
            log.warning("%s: %s failure: %s", outcome.id, f.kind, f.reason)
            failed += 1
        setattr(c, kind, getattr(c, kind) + 1)
        bar.update(1)

    def refresh() -> None:
        rate = dl.bytes / max(time.monotonic() - t0, 1e-9)
        bar.set_postfix(done=done_ok, failed=failed, speed=tqdm.format_sizeof(rate, "B/s", 1024))

    results, left = dl.start(todo), len(todo)
    try:
        with logging_redirect_tqdm():
            while left:
                try:
                    outcome = results.get(timeout=0.5)
                except queue.Empty:
                    outcome = None
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is not None:
                    record(outcome)
                    left -= 1
                refresh()
    except BaseException:
        # Ctrl-C (or a bug): stop the workers and record what finished meanwhile. Downloads stop
        # at their next block; one stuck on a stalled connection is left behind (its .part is
        # resumed by the next run).
        busy = dl.finish(grace=STOP_GRACE)
        if busy:
            log.warning("%d download(s) did not stop within %.0f s; left unfinished", busy, STOP_GRACE)
        while not results.empty():
            outcome = results.get()
            if isinstance(outcome, _Outcome):
                record(outcome)
        raise
    finally:
        dl.finish(grace=0.0 if dl.stop.is_set() else STOP_GRACE)
        bar.close()
        failures.finish(set(downloaded.rows))
        for vid, entry in table.entries.items():  # categories and titles as the table says now
            row = downloaded.rows.get(vid)
            if row is not None:
                row.category, row.title = entry.category, entry.title or row.title
        downloaded.rewrite()
        summary.bytes = dl.bytes
        summary.rate_limited = dl.gate.hits
        summary.seconds = time.monotonic() - t0
    return summary
