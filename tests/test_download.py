"""`vstore download` against real yt-dlp and a local HTTP server on 127.0.0.1 (no other traffic).

The server serves PyAV-made mp4 files at /<id>.mp4 and misbehaves on request: each id has a
script of behaviours, one per GET (yt-dlp's generic extractor makes one GET to look at the
link, then one to download), the last repeated. Every test passes a loopback --url-template.
"""
from __future__ import annotations

import csv
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yt_dlp

from cli.main import main
from encoders.download import (
    DEFAULT_URL_TEMPLATE,
    DownloadBusyError,
    DownloadConfig,
    RateGate,
    classify_error,
    download_videos,
)
from encoders.download.ledger import (
    BadDownload,
    VideoTableError,
    probe_download,
    read_video_table,
)
from encoders.video.synthetic import CONTENT_CLASSES, make_class_video
from vstore.fsutil import WriteLock
from vstore.labels import load_labels

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "youtube_slice.csv"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# -- the local server -------------------------------------------------------------------------------

class VideoServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 with a script of behaviours per id."""

    def __init__(self, videos: list[bytes]):
        self.videos = videos
        self.plans: dict[str, list[str]] = {}
        self.hits: Counter[str] = Counter()  # GETs per id
        self.ranges: dict[str, list[str]] = defaultdict(list)  # Range headers per id
        self.cookies: list[str] = []
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), id) of every GET
        self.trickle = (2048, 0.02)  # "slow": bytes per chunk, seconds between chunks
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set by close(): a "stall" answer ends then
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a killed run, or the extractor's peek)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{{id}}.mp4"

    def plan(self, vid: str, *behaviours: str) -> None:
        with self.lock:
            self.plans[vid] = list(behaviours)

    def body(self, vid: str) -> bytes:
        return self.videos[sum(vid.encode()) % len(self.videos)]

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        vid = unquote(urlparse(h.path).path).lstrip("/").removesuffix(".mp4")
        with self.lock:
            n = self.hits[vid]
            self.hits[vid] += 1
            self.log.append((time.monotonic(), vid))
            plan = self.plans.get(vid, ["ok"])
            what = plan[min(n, len(plan) - 1)]
            if h.headers.get("Range"):
                self.ranges[vid].append(h.headers["Range"])
            if h.headers.get("Cookie"):
                self.cookies.append(h.headers["Cookie"])
        body = self.body(vid)
        if what.isdigit():
            msg = f"error {what}".encode()
            h.send_response(int(what))
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(msg)))
            if what in ("429", "503"):
                h.send_header("Retry-After", "0")
            h.end_headers()
            h.wfile.write(msg)
            return
        if what == "html":
            page = b"<html><head><title>nothing</title></head><body>no video here</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(page)))
            h.end_headers()
            h.wfile.write(page)
            return
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes=") and what in ("ok", "slow"):
            start = int(rng[6:].split("-")[0] or 0)
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "video/mp4")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if what != "nolength-half":  # Content-Length is announced in full, also for "truncate"
            h.send_header("Content-Length", str(len(body) - start))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if what in ("truncate", "nolength-half"):
            h.wfile.write(body[:len(body) // 2])
        elif what == "stall":  # until the client gives up (its socket timeout) or the server closes
            h.wfile.write(body[:1024])
            h.wfile.flush()
            self.closing.wait(30)
        elif what == "slow":
            size, pause = self.trickle
            for i in range(start, len(body), size):
                h.wfile.write(body[i:i + size])
                h.wfile.flush()
                time.sleep(pause)
        else:
            h.wfile.write(body[start:])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[bytes]:
    root = tmp_path_factory.mktemp("served")
    return [make_class_video(root / f"{k}.mp4", k, n_frames=24, seed=i).read_bytes()
            for i, k in enumerate(CONTENT_CLASSES)]


@pytest.fixture
def server(videos):
    s = VideoServer(videos)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No proxy; a lookup of or a connection to anything but 127.0.0.1 is refused and fails the
    test (at teardown, since yt-dlp would record the error as a download failure)."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    elsewhere: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            elsewhere.append(address)
            raise ConnectionRefusedError(f"test guard: no traffic to {address!r}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            elsewhere.append(host)
            raise socket.gaierror(f"test guard: no lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not elsewhere, f"network traffic outside 127.0.0.1: {elsewhere}"


def fast(server: VideoServer, **kw) -> DownloadConfig:
    """A config for tests: loopback, tiny backoff and timeouts."""
    opts = dict(url_template=server.template, backoff=0.01, max_backoff=0.5, rate_limit_pause=0.05,
                socket_timeout=2.0, retries=3)
    opts.update(kw)
    return DownloadConfig(**opts)


def cli_args(server: VideoServer, table: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "download", str(table), "--out", str(out), "--url-template", server.template,
            "--backoff", "0.01", "--rate-limit-pause", "0.05", "--timeout", "2", *extra]


def rows(out: Path, name: str = "downloaded.csv") -> dict[str, dict[str, str]]:
    path = out / name
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def id_list(tmp_path: Path, *ids: str, name: str = "ids.txt") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return p


# -- the real dataset slice, end to end -------------------------------------------------------------

def test_slice_csv_downloads_once_per_id_and_reruns_without_requests(server, tmp_path, runner):
    out = tmp_path / "videos"
    result = runner.invoke(main, cli_args(server, SLICE, out, "--jobs", "4"))
    assert result.exit_code == 3, result.output  # the two '#NAME?' rows are invalid ids
    got = rows(out)
    with open(SLICE, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    valid = {r["link"] for r in table if r["link"] != "#NAME?"}
    assert set(got) == valid and len(valid) == 32
    for vid, row in got.items():
        assert (out / row["path"]).read_bytes() == server.body(vid)
        assert float(row["duration"]) == pytest.approx(2.0, abs=0.1)
        assert server.hits[vid] == 2  # one look, one download: duplicates are fetched once
    titles = {r["link"]: r["title"] for r in table}
    assert all(got[v]["title"] == titles[v] for v in got)  # multi-line descriptions did not shift columns
    assert got["kMwMTKh5jfM"]["category"] == ""  # listed as food and travel: ambiguous
    assert got["B4cKAoipapU"]["category"] == "food"
    failures = rows(out, "failures.csv")
    assert list(failures) == ["#NAME?"] and failures["#NAME?"]["kind"] == "invalid"
    assert "travel" in result.output and "(ambiguous)" in result.output
    total = next(ln for ln in result.output.splitlines() if ln.startswith("total")).split()
    assert total[1:] == ["33", "32", "0", "0", "0", "1"]
    labels = load_labels(out / "downloaded.csv")  # what `vstore build --labels` reads
    assert len(labels) == 31 and labels.names == ["art_music", "food", "history", "travel"]

    before = Counter(server.hits)
    again = runner.invoke(main, cli_args(server, SLICE, out, "--jobs", "4"))
    assert again.exit_code == 3, again.output
    assert server.hits == before  # nothing requested again
    total = next(ln for ln in again.output.splitlines() if ln.startswith("total")).split()
    assert total[1:] == ["33", "0", "32", "0", "0", "1"]


def test_downloaded_csv_is_accepted_by_vstore_build(server, tmp_path, runner):
    table = tmp_path / "youtube.csv"
    table.write_text('link,title,description,category\nvidA,A,"two\nlines",food\nvidB,B,,travel\n')
    out, store = tmp_path / "videos", tmp_path / "store"
    assert runner.invoke(main, cli_args(server, table, out)).exit_code == 0
    built = runner.invoke(main, ["-q", "build", str(out), "--store", str(store), "--labels",
                                 str(out / "downloaded.csv"), "--encoder", "thumbnail", "--frames", "2",
                                 "--workers", "0", "--device", "cpu"])
    assert built.exit_code == 0, built.output
    assert "built 2" in built.output and "no label" not in built.output


# -- failures ---------------------------------------------------------------------------------------

def test_failures_are_classified_and_retryable_ones_retried(server, tmp_path):
    server.plan("gone", "404")
    server.plan("forbidden", "403")
    server.plan("page", "html")
    server.plan("busy", "503", "503", "ok")
    server.plan("limited", "429", "ok")
    table = id_list(tmp_path, "fine", "gone", "forbidden", "page", "busy", "limited")
    out = tmp_path / "videos"
    summary = download_videos(table, out, fast(server, jobs=2), progress=False)
    assert set(rows(out)) == {"fine", "busy", "limited"}
    assert (out / "busy.mp4").read_bytes() == server.body("busy")
    failures = rows(out, "failures.csv")
    assert {k: f["kind"] for k, f in failures.items()} == {
        "gone": "permanent", "forbidden": "permanent", "page": "permanent"}
    assert "404" in failures["gone"]["reason"] and failures["gone"]["url"] == server.template.format(id="gone")
    assert "unsupported url" in failures["page"]["reason"].lower()
    assert server.hits["gone"] == 1 and server.hits["forbidden"] == 1  # permanent: never retried
    assert server.hits["busy"] == 4 and server.hits["limited"] == 3  # 503, 503, look, get / 429, look, get
    assert summary.rate_limited == 1
    t = summary.total
    assert (t.found, t.downloaded, t.permanent, t.retryable) == (6, 3, 3, 0)
    assert summary.exit_code == 3
    assert not list(out.glob("*.part"))


def test_429_pauses_every_worker(server, tmp_path):
    server.plan("limited", "429", "ok")
    ids = ["limited"] + [f"b{i}" for i in range(6)]
    summary = download_videos(id_list(tmp_path, *ids), tmp_path / "videos",
                              fast(server, jobs=2, rate_limit_pause=0.5, max_backoff=1.0), progress=False)
    assert summary.rate_limited == 1 and summary.total.downloaded == len(ids)
    t429 = next(t for t, v in server.log if v == "limited")
    first = {}
    for t, v in server.log:
        first.setdefault(v, t)
    # No download starts during the pause (allowing 0.1 s for the 429 to be noticed)...
    assert not [v for v, t in first.items() if t429 + 0.1 < t < t429 + 0.45]
    assert sum(t > t429 for t in first.values()) >= 3  # ...though several were waiting to
    retry = [t for t, v in server.log if v == "limited"][1]
    assert retry >= t429 + 0.45


def test_retry_failed_retries_retryable_and_leaves_permanent_alone(server, tmp_path, runner):
    server.plan("flaky", "503")
    server.plan("gone", "404")
    table = id_list(tmp_path, "ok1", "flaky", "gone")
    out = tmp_path / "videos"
    first = runner.invoke(main, cli_args(server, table, out, "--retries", "1"))
    assert first.exit_code == 3
    assert "1 retryable failure(s): rerun with --retry-failed" in first.output
    assert {k: f["kind"] for k, f in rows(out, "failures.csv").items()} == {"flaky": "retryable", "gone": "permanent"}
    assert server.hits["flaky"] == 2  # tried, retried once

    before = Counter(server.hits)
    plain = runner.invoke(main, cli_args(server, table, out))
    assert plain.exit_code == 3 and server.hits == before  # a plain rerun leaves failures alone
    assert "1 retryable failure(s) of earlier runs not retried; add --retry-failed" in plain.output

    server.plan("flaky", "ok")
    again = runner.invoke(main, cli_args(server, table, out, "--retry-failed"))
    assert again.exit_code == 3, again.output  # "gone" is still missing
    assert "left alone 1 permanent failure(s) of earlier runs" in again.output
    assert server.hits["gone"] == 1 and server.hits["flaky"] > before["flaky"]
    assert set(rows(out)) == {"ok1", "flaky"}
    assert set(rows(out, "failures.csv")) == {"gone"}

    table.write_text("ok1\nflaky\n")
    done = runner.invoke(main, cli_args(server, table, out))
    assert done.exit_code == 0, done.output


def test_truncated_body_never_counts_as_finished(server, tmp_path):
    server.plan("cut", "ok", "truncate")  # look, then a body shorter than its Content-Length
    out = tmp_path / "videos"
    summary = download_videos(id_list(tmp_path, "cut"), out, fast(server, retries=1), progress=False)
    assert not (out / "cut.mp4").exists() and "cut" not in rows(out)
    failure = rows(out, "failures.csv")["cut"]
    assert failure["kind"] == "retryable" and "expected" in failure["reason"]
    assert (out / "cut.mp4.part").exists()  # kept, to be resumed
    assert summary.total.retryable == 1

    server.plan("cut", "ok")
    download_videos(id_list(tmp_path, "cut"), out, fast(server, retry_failed=True), progress=False)
    assert (out / "cut.mp4").read_bytes() == server.body("cut")
    assert server.ranges["cut"] and server.ranges["cut"][-1] != "bytes=0-"  # resumed, not restarted
    assert not (out / "failures.csv").exists()


def test_short_body_without_length_is_caught_by_the_probe(server, tmp_path):
    # No Content-Length: yt-dlp cannot tell the transfer was cut; demuxing the file can.
    server.plan("half", "ok", "nolength-half", "ok")
    out = tmp_path / "videos"
    download_videos(id_list(tmp_path, "half"), out, fast(server), progress=False)
    assert (out / "half.mp4").read_bytes() == server.body("half")
    assert server.hits["half"] == 4

    server.plan("half2", "ok", "nolength-half")
    download_videos(id_list(tmp_path, "half2"), out, fast(server, retries=0), progress=False)
    assert not (out / "half2.mp4").exists() and "half2" not in rows(out)
    assert "not a readable, complete video" in rows(out, "failures.csv")["half2"]["reason"]


def test_probe_rejects_truncated_files(videos, tmp_path):
    full = tmp_path / "full.mp4"
    full.write_bytes(videos[0])
    assert probe_download(full) == pytest.approx(2.0, abs=0.1)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(videos[0][:len(videos[0]) // 2])  # index at the end: unreadable
    with pytest.raises(BadDownload) as e:
        probe_download(cut)
    assert e.value.kind == "retryable"
    import av
    fs = tmp_path / "faststart.mp4"  # index first: readable, but frames are missing
    with av.open(str(full)) as src, av.open(str(fs), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for pkt in src.demux(src.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = stream
                dst.mux(pkt)
    data = fs.read_bytes()
    fs.write_bytes(data[:int(len(data) * 0.8)])
    with pytest.raises(BadDownload, match="frames present"):
        probe_download(fs)


def test_slow_server_succeeds_and_a_stalled_one_times_out(server, tmp_path):
    server.plan("trickle", "ok", "slow")
    server.plan("stuck", "ok", "stall")
    out = tmp_path / "videos"
    summary = download_videos(id_list(tmp_path, "trickle", "stuck"), out,
                              fast(server, socket_timeout=0.5, retries=0, jobs=2), progress=False)
    assert (out / "trickle.mp4").read_bytes() == server.body("trickle")
    failure = rows(out, "failures.csv")["stuck"]
    assert failure["kind"] == "retryable" and "timed out" in failure["reason"]
    assert not (out / "stuck.mp4").exists()
    assert summary.bytes >= len(server.body("trickle")) - 4096  # bar's bytes/s: all but the first block


# -- hostile input ----------------------------------------------------------------------------------

def test_hostile_ids_are_rejected_and_nothing_leaves_out(server, tmp_path, runner):
    hostile = ["../x", "..", "/etc/passwd", "a" * 300, "ab\x00cd", "x y", "nul\x00", "ok1/../../evil"]
    table = id_list(tmp_path, "ok1", *hostile, "ok1", "https://www.youtube.com/watch?v=ok2",
                    "http://203.0.113.9/../../ok3")
    out = tmp_path / "deep" / "videos"
    result = runner.invoke(main, cli_args(server, table, out))
    assert result.exit_code == 3, result.output
    assert set(server.hits) == {"ok1", "ok2", "ok3"}  # URLs reduced to ids, fetched from the template only
    assert server.hits["ok1"] == 2  # listed twice, fetched once
    assert sorted(p.name for p in out.iterdir()) == [
        ".download.lock", "downloaded.csv", "failures.csv", "ok1.mp4", "ok2.mp4", "ok3.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "ids.txt"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["videos"]
    failures = rows(out, "failures.csv")
    assert all(f["kind"] == "invalid" and f["url"] == "" for f in failures.values())
    assert len(failures) == len(hostile)
    assert "ab\\x00cd" in failures and "../x" in failures
    long_one = next(k for k in failures if k.startswith("aaaa"))
    assert len(long_one) < 120 and "300 characters" in long_one
    assert "longer than 64" in failures[long_one]["reason"]
    assert "\x00" not in (out / "failures.csv").read_text()


def test_read_video_table_forms(tmp_path):
    plain = id_list(tmp_path, "abc", "https://youtu.be/def", "  ghi  ", "", "abc")
    t = read_video_table(plain)
    assert list(t.entries) == ["abc", "def", "ghi"] and t.duplicate_rows == 1 and not t.has_categories
    tsv = tmp_path / "t.tsv"
    tsv.write_text("video_id\tlabel\nabc\tx\n")
    assert read_video_table(tsv).entries["abc"].category == "x"
    ids_only = tmp_path / "ids.csv"
    ids_only.write_text("\n\nid,title\nabc,Some title \U0001F469\u200d\U0001F373\n")
    entry = read_video_table(ids_only).entries["abc"]
    assert entry.category == "" and entry.title == "Some title \U0001F469\u200d\U0001F373"  # emoji kept whole
    table = read_video_table(SLICE)
    assert len(table.entries) == 32 and [e.raw for e in table.invalid] == ["#NAME?"]
    assert table.invalid[0].rows == 2 and table.duplicate_rows == 3
    assert table.ambiguous == {"kMwMTKh5jfM": {"food", "travel"}}
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(VideoTableError, match="no video ids"):
        read_video_table(empty)


# -- interruption and resuming ----------------------------------------------------------------------

def start_child(server: VideoServer, table: Path, out: Path) -> subprocess.Popen:
    """`vstore download` in a child process, one job at a time."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    # SIGINT back to its default in the child: a test run started in the background (`pytest &`,
    # CI) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
    return subprocess.Popen([sys.executable, "-m", "cli.main", *cli_args(server, table, out, "--jobs", "1")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_mid_download(child: subprocess.Popen, out: Path, finished: set[str], partial: str) -> None:
    """Until ``finished`` are recorded and ``partial``'s .part file has data."""
    part = out / f"{partial}.mp4.part"

    def there() -> bool:
        try:
            return part.stat().st_size > 0 and finished <= set(rows(out))
        except FileNotFoundError:
            return False
    deadline = time.monotonic() + 40
    while not there():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never got to the slow download: {child.stderr.read().decode()}")
        time.sleep(0.01)


def test_kill_9_mid_download_then_rerun_resumes(server, tmp_path, runner):
    server.plan("slow1", "ok", "slow")
    server.trickle = (512, 0.05)  # ~4 s for the whole file
    table = id_list(tmp_path, "fast1", "fast2", "slow1", "fast3")
    out = tmp_path / "videos"
    child = start_child(server, table, out)
    try:
        wait_mid_download(child, out, {"fast1", "fast2"}, "slow1")
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert not (out / "slow1.mp4").exists()  # the partial file does not look finished...
    assert set(rows(out)) == {"fast1", "fast2"}  # ...nor is it recorded
    before = Counter(server.hits)

    server.plan("slow1", "ok")
    result = runner.invoke(main, cli_args(server, table, out))
    assert result.exit_code == 0, result.output
    assert server.hits["fast1"] == before["fast1"] and server.hits["fast2"] == before["fast2"]
    assert server.ranges["slow1"] and server.ranges["slow1"][-1] != "bytes=0-"  # resumed from the .part
    for vid in ("fast1", "fast2", "slow1", "fast3"):
        assert (out / f"{vid}.mp4").read_bytes() == server.body(vid)
    assert set(rows(out)) == {"fast1", "fast2", "slow1", "fast3"}
    assert not list(out.glob("*.part"))


def test_ctrl_c_keeps_finished_work_and_exits_130(server, tmp_path, runner):
    server.plan("slow1", "ok", "slow")
    server.trickle = (256, 0.1)  # ~17 s: it cannot finish before the Ctrl-C
    table = id_list(tmp_path, "fast1", "slow1", "fast2")
    out = tmp_path / "videos"
    child = start_child(server, table, out)
    try:
        wait_mid_download(child, out, {"fast1"}, "slow1")
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=120) == 130  # a hang guard only: the trickle alone lasts ~17 s
        err = child.stderr.read().decode()
        assert "interrupted" in err
        assert server.hits["fast2"] == 0  # nothing new was started after the Ctrl-C
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert set(rows(out)) == {"fast1"} and not (out / "slow1.mp4").exists()
    assert (out / "slow1.mp4.part").exists()  # kept for resuming

    server.plan("slow1", "ok")
    result = runner.invoke(main, cli_args(server, table, out))
    assert result.exit_code == 0, result.output
    assert server.hits["fast1"] == 2
    assert (out / "slow1.mp4").read_bytes() == server.body("slow1")


def test_rerun_repairs_bookkeeping(server, tmp_path):
    table = id_list(tmp_path, "a1", "a2", "a3", "a4")
    out = tmp_path / "videos"
    download_videos(table, out, fast(server), progress=False)
    (out / "a1.mp4").unlink()  # recorded, but the file is gone: fetched again
    kept = {k: v for k, v in rows(out).items() if k != "a2"}  # a file without its row (killed
    with open(out / "downloaded.csv", "w", newline="") as f:  # between rename and record): adopted
        w = csv.DictWriter(f, ["id", "category", "path", "duration", "title"], lineterminator="\n")
        w.writeheader()
        w.writerows(kept.values())
        f.write("a3,,a3.mp")  # a torn last line: dropped, the file is adopted
    (out / "a5.mp4").write_bytes(b"not a video")  # a junk file under a listed id: replaced
    table.write_text("a1\na2\na3\na4\na5\n")
    before = Counter(server.hits)
    summary = download_videos(table, out, fast(server), progress=False)
    assert (summary.total.downloaded, summary.total.present) == (2, 3)
    fetched = {k for k in server.hits if server.hits[k] > before[k]}
    assert fetched == {"a1", "a5"}
    assert set(rows(out)) == {"a1", "a2", "a3", "a4", "a5"}
    assert (out / "a5.mp4").read_bytes() == server.body("a5")
    assert (out / "downloaded.csv").read_bytes().endswith(b"\n")


# -- options, errors and pieces ---------------------------------------------------------------------

def test_cookies_are_sent_and_the_file_is_not_rewritten(server, tmp_path, runner):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tsecret42\n")
    before = cookies.read_bytes()
    out = tmp_path / "videos"
    result = runner.invoke(main, cli_args(server, id_list(tmp_path, "c1"), out, "--cookies", str(cookies)))
    assert result.exit_code == 0, result.output
    assert server.cookies and all("session=secret42" in c for c in server.cookies)
    assert cookies.read_bytes() == before

    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a cookies file\n")
    result = runner.invoke(main, cli_args(server, id_list(tmp_path, "c2"), out, "--cookies", str(bad)))
    assert result.exit_code == 1 and "not a readable Netscape-format cookies file" in result.output


def test_bad_options_and_inputs_are_one_line_errors(server, tmp_path, runner):
    table = id_list(tmp_path, "abc")
    out = tmp_path / "videos"
    for template, message in [("http://127.0.0.1:1/video.mp4", "must contain {id}"),
                              ("http://127.0.0.1:1/{id}/{name}.mp4", "may only contain the field {id}"),
                              ("ftp://127.0.0.1/{id}", "http:// or https://")]:
        result = runner.invoke(main, ["download", str(table), "--out", str(out), "--url-template", template])
        assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = runner.invoke(main, cli_args(server, empty, out))
    assert result.exit_code == 1 and "no video ids" in result.output
    result = runner.invoke(main, cli_args(server, table, out, "--jobs", "0"))
    assert result.exit_code == 2
    assert sum(server.hits.values()) == 0
    with pytest.raises(ValueError, match="retries"):
        DownloadConfig(retries=-1)
    assert DownloadConfig().url("abc") == DEFAULT_URL_TEMPLATE.format(id="abc")


def test_a_second_run_on_the_same_out_is_refused(server, tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    with WriteLock(out / ".download.lock", "vstore download"):
        with pytest.raises(DownloadBusyError, match="being downloaded into"):
            download_videos(id_list(tmp_path, "abc"), out, fast(server), progress=False)
    assert sum(server.hits.values()) == 0


@pytest.mark.parametrize("message, kind, limited", [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "permanent", False),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "permanent", False),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", "permanent", False),
    ("ERROR: Unsupported URL: http://example.invalid/x", "permanent", False),
    ("ERROR: [youtube] abc: Sign in to confirm you\u2019re not a bot. Use --cookies", "retryable", True),
    ("ERROR: [youtube] abc: Video unavailable. This content isn't available, try again later.", "retryable", True),
    ("ERROR: [generic] abc: Unable to download webpage: HTTP Error 429: Too Many Requests", "retryable", True),
    ("ERROR: [generic] abc: Unable to download webpage: HTTP Error 502: Bad Gateway", "retryable", False),
    ("ERROR: [generic] abc: Unable to download webpage: HTTP Error 410: Gone", "permanent", False),
    ("ERROR: \r[download] Got error: Downloaded 1000 bytes, expected 44891 bytes", "retryable", False),
    ("ERROR: \r[download] Got error: timed out", "retryable", False),
    ("ERROR: [Errno 104] Connection reset by peer", "retryable", False),
    ("ERROR: [youtube] abc: Requested format is not available. Use --list-formats", "retryable", False),
    ("ERROR: something nobody has seen before", "retryable", False),
])
def test_classify_error(message, kind, limited):
    c = classify_error(yt_dlp.utils.DownloadError(message))
    assert (c.kind, c.rate_limited) == (kind, limited)
    assert not c.reason.startswith("ERROR") and "\r" not in c.reason


def test_rate_gate_pauses_everyone_after_429_and_relaxes():
    now = [100.0]
    gate = RateGate(pause=10.0, max_pause=60.0, clock=lambda: now[0])
    assert gate.reserve() == 0 and gate.reserve() == 0
    gate.too_many_requests()
    assert gate.reserve() == pytest.approx(10.0)  # the next start waits out the pause...
    assert gate.reserve() == pytest.approx(20.0)  # ...and starts are spaced by it
    gate.too_many_requests(retry_after=45.0)
    assert gate.spacing == 20.0 and gate.hits == 2
    now[0] += 100
    gate.succeeded()
    gate.succeeded()
    assert gate.spacing == 5.0
    gate.succeeded()
    gate.succeeded()
    assert gate.spacing == 0.0 and gate.reserve() == 0


def test_ytdlp_warnings_are_shown_once_each(caplog):
    from encoders.download.fetch import _YtdlpLog
    ylog = _YtdlpLog(max_shown=2)
    with caplog.at_level("WARNING", logger="encoders.download.fetch"):
        for vid in ("abc", "def"):
            ylog.warning(f"WARNING: [youtube] {vid}: No supported JavaScript runtime could be found.")
        ylog.warning("WARNING: another")
        ylog.warning("WARNING: a third, past the limit")
        ylog.error("ERROR: reported by vstore itself")
    assert [r.getMessage() for r in caplog.records] == [
        "yt-dlp: No supported JavaScript runtime could be found.", "yt-dlp: another"]
