"""`vstore serve` itself: the click command run as a real process (`python -m cli.main serve`
from this checkout) on a free port of 127.0.0.1, its options reaching the server (--host,
--port, --token and VSTORE_TOKEN, --no-refresh, --max-batch, the FAISS thread setting), and a
clean stop on SIGTERM and SIGINT; bad options refused by CliRunner with a one-line message."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import concurrent_rounds, wait_for

from cli.main import main
from vstore import Store

REPO = Path(__file__).resolve().parents[1]
TOKEN, ENV_TOKEN = "flag-token-1234", "env-token-5678"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening_addresses(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} write them) listening on TCP ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                out.append(addr)
    return out


class ServeProcess:
    """`python -m cli.main serve STORE --port P ARGS` in this checkout, its output in files."""

    def __init__(self, store: Path, args: list[str], log_dir: Path, env: dict | None = None):
        self.store, self.args, self.log_dir = store, args, log_dir
        self.env = {k: v for k, v in os.environ.items() if k != "VSTORE_TOKEN"}  # only a token we give
        self.env.update(PYTHONPATH=str(REPO), **(env or {}))

    def __enter__(self) -> "ServeProcess":
        for attempt in range(3):  # a free port can be taken between our probe and the server's bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.stderr_path = self.log_dir / f"serve-{self.port}.err"
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "serve", str(self.store), "--port", str(self.port), *self.args],
                    cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                wait_for(self._up, 60, f"`vstore serve` to answer on {self.url}", interval=0.1)
                return self
            except _Exited:
                if "address already in use" not in self.stderr().lower() or attempt == 2:
                    raise AssertionError(f"`vstore serve` exited with {self.proc.returncode}:\n{self.stderr()}") from None
            except BaseException:
                self.proc.kill()
                self.proc.wait(30)
                raise
        raise AssertionError("unreachable")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise _Exited
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code in (200, 401)
        except httpx.TransportError:
            return False

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int) -> int:
        """Send ``sig`` and wait (60 s at most) for the exit status."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`vstore serve` still runs 60 s after signal {sig}:\n{self.stderr()}") from None

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class _Exited(Exception):
    pass


@pytest.fixture
def vector_store_indexed(tmp_path) -> Path:
    from test_index import vector_store

    from vstore.index_build import build_index
    store = vector_store(tmp_path / "store", n_videos=20, frames=5)
    build_index(store)
    return store


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"], (r.status_code, r.text)


def test_serve_process_token_flag_no_refresh_and_sigterm(vector_store_indexed, tmp_path):
    """Default host 127.0.0.1 (and nothing else) on --port; --token: refused without it or with
    another, accepted with it; --no-refresh: a build's commit leaves the served generation as it
    was and the index reported stale; SIGTERM: a graceful exit that frees the port."""
    from test_index import vector_store
    store = vector_store_indexed
    with ServeProcess(store, ["--token", TOKEN, "--no-refresh"], tmp_path) as srv:
        assert listening_addresses(srv.port) == ["0100007F"]  # 127.0.0.1 only
        assert f"on http://127.0.0.1:{srv.port} (token required)" in srv.stderr()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            _assert_refused(c.get("/healthz"))
            _assert_refused(c.get("/api/info", headers=_bearer(ENV_TOKEN)))
            _assert_refused(c.post("/api/search", json={"video": "v001"}))
            first = c.get("/healthz", headers=_bearer(TOKEN)).json()
            assert first["ok"] is True
            r = c.post("/api/search", json={"video": "v001", "k": 3}, headers=_bearer(TOKEN))
            assert r.status_code == 200 and len(r.json()["hits"]) == 3
            vector_store(store, n_videos=3, frames=5, first=20)  # a build commits; the index is stale
            info = wait_for(lambda: (i := c.get("/api/info", headers=_bearer(TOKEN)).json())["index"]["state"]
                            == "stale" and i, 60, "the served index to be reported stale")
            assert info["served_generation"] == first["generation"] and "vstore index" in info["index"]["problem"]
            r = c.post("/api/search", json={"video": "v021", "k": 1}, headers=_bearer(TOKEN))
            assert r.status_code == 404 and "v021" in r.json()["error"]  # not refreshed: not served
        rc = srv.stop(signal.SIGTERM)
        assert rc in (0, -signal.SIGTERM), (rc, srv.stderr())  # uvicorn re-raises SIGTERM after its shutdown
        assert "Traceback" not in srv.stderr(), srv.stderr()
        assert port_is_free(srv.port)


def test_serve_process_env_token_host_max_batch_refresh_and_ctrl_c(vector_store_indexed, tmp_path):
    """VSTORE_TOKEN stands for --token; --host localhost; --max-batch 1: concurrent vector queries
    take one FAISS search each; refresh on (the default): a build's commit is served; Ctrl-C
    (SIGINT): a graceful exit 0 that frees the port."""
    from test_index import vector_store
    store = vector_store_indexed
    with ServeProcess(store, ["--host", "localhost", "--max-batch", "1"], tmp_path,
                      env={"VSTORE_TOKEN": ENV_TOKEN}) as srv:
        assert f"on http://localhost:{srv.port} (token required)" in srv.stderr()
        with httpx.Client(base_url=srv.url, timeout=30, headers=_bearer(ENV_TOKEN)) as c:
            with httpx.Client(base_url=srv.url, timeout=30) as anonymous:
                _assert_refused(anonymous.get("/healthz"))
                _assert_refused(anonymous.get("/api/info", headers=_bearer(TOKEN)))
            first = c.get("/healthz").json()["generation"]
            with Store.open(store) as s:
                vecs = np.random.default_rng(5).normal(size=(8, s.dim))
            before = c.get("/api/info").json()["server"]
            answers = concurrent_rounds(srv.url, [{"vector": v.tolist(), "k": 4} for v in vecs], 3,
                                        headers=_bearer(ENV_TOKEN))
            assert all(status == 200 and len(res["hits"]) == 4 for a in answers for status, res in a), answers
            after = c.get("/api/info").json()["server"]
            assert after["max_batch"] == 1
            assert after["queries"] - before["queries"] == 24 == after["batches"] - before["batches"]
            vector_store(store, n_videos=3, frames=5, first=20)  # a build commits: served once indexed
            wait_for(lambda: c.get("/healthz").json()["generation"] > first, 60, "the new generation to be served")
            info = c.get("/api/info").json()
            assert info["index"]["state"] == "fresh" and info["videos"] == 23
        rc = srv.stop(signal.SIGINT)
        assert rc == 0, (rc, srv.stderr())  # uvicorn shuts down and returns; the CLI exits 0
        assert "Traceback" not in srv.stderr(), srv.stderr()
        assert port_is_free(srv.port)


class OpenMPWorkersInSearchThreads(Exception):
    """FAISS started OpenMP workers in the served process although faiss_threads is 1."""


def test_faiss_threads_setting_reaches_the_search_threads(vector_store_indexed, tmp_path):
    """ServeConfig.faiss_threads (1) is FAISS's thread count where `vstore serve` searches: with
    OMP_NUM_THREADS=8, batched searches (16 clients at once) start no OpenMP worker threads."""
    with ServeProcess(vector_store_indexed, [], tmp_path, env={"OMP_NUM_THREADS": "8"}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        with Store.open(vector_store_indexed) as s:
            vecs = np.random.default_rng(6).normal(size=(16, s.dim))
        bodies = [{"vector": v.tolist(), "k": 4} for v in vecs]
        for b in bodies[:3]:  # one at a time (a batch of one runs no parallel region): the event loop warm
            assert c.post("/api/search", json=b).status_code == 200
        # only async routes until the second count (a sync route such as /api/info starts a worker thread)
        threads_before = srv.threads()
        answers = concurrent_rounds(srv.url, bodies, 4)
        threads_after = srv.threads()
        assert all(status == 200 for a in answers for status, _ in a)
        server = c.get("/api/info").json()["server"]
        if not server["batches"] < server["queries"]:
            pytest.fail(f"no FAISS search was shared ({server}): nothing was run in parallel to check")
        if threads_after > threads_before:
            raise OpenMPWorkersInSearchThreads(f"{threads_after - threads_before} threads appeared during batched "
                                               f"vector searches ({threads_before} -> {threads_after})")


@pytest.mark.parametrize("args,env,code,message", [
    (["--host", "example.com"], {}, 1,
     "Error: --host must be an IP address (127.0.0.1, 0.0.0.0, ::1) or localhost, got 'example.com'"),
    (["--token", "short"], {}, 1, "Error: --token must be at least 8 characters (or unset VSTORE_TOKEN)"),
    ([], {"VSTORE_TOKEN": "short"}, 1, "Error: --token must be at least 8 characters (or unset VSTORE_TOKEN)"),
    (["--port", "70000"], {}, 2, "Error: Invalid value for '--port': 70000 is not in the range 0<=x<=65535."),
    (["--max-batch", "0"], {}, 2, "Error: Invalid value for '--max-batch': 0 is not in the range x>=1."),
])
def test_bad_options_are_refused_with_one_line(runner, tmp_path, args, env, code, message):
    r = runner.invoke(main, ["serve", str(tmp_path), *args], env={"VSTORE_TOKEN": None, **env})
    assert r.exit_code == code, r.output
    assert r.output.splitlines()[-1] == message, r.output
    if code == 1:  # a config error: the message alone, no usage text
        assert r.output.splitlines() == [message]


def test_a_directory_that_is_not_a_store_is_refused_with_one_line(runner, tmp_path):
    r = runner.invoke(main, ["serve", str(tmp_path / "nothing"), "--port", str(free_port())],
                      env={"VSTORE_TOKEN": None})
    assert r.exit_code == 1 and r.output.splitlines() == [f"Error: {tmp_path / 'nothing'} does not exist; create it "
                                                          f"with `vstore build VIDEOS --store {tmp_path / 'nothing'}`"]
