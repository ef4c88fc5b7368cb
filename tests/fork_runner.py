"""A fork server for the kill -9 tests: one process imports vstore (torch, h5py, the CLI)
once, then runs each ``vstore ...`` command line it is sent in a forked child, so a test can
kill thirty builds at random moments without paying thirty interpreter start-ups (3-10 s
each on a loaded 2-core machine, most of the old test's 340 s).

Protocol (line-based JSON over the pipes): the test writes ``["build", ...]``; the server
forks, the child runs ``cli.main.main(argv)`` (stdout/stderr to /dev/null) and ``_exit``s
with its status, and the server answers ``{"pid": PID}``, then ``{"exit": PID, "status":
S}`` once the child is gone (S is negative for a signal). Nothing here has run a torch op
before a fork, so no thread pool is copied into a child.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ForkRunner:
    """The test side: ``start(argv) -> pid``; ``wait(pid) -> status`` (-9 when killed)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", __file__], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self._read() == {"ready": True}
        self._exits: dict[int, int] = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped (status {self.proc.wait()})")
        return json.loads(line)

    def start(self, argv: list[str]) -> int:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        while "pid" not in (msg := self._read()):
            self._exits[msg["exit"]] = msg["status"]
        return msg["pid"]

    def wait(self, pid: int) -> int:
        while pid not in self._exits:
            msg = self._read()
            self._exits[msg["exit"]] = msg["status"]
        return self._exits.pop(pid)

    def kill(self, pid: int) -> int:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it had finished
            pass
        return self.wait(pid)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _serve() -> None:  # pragma: no cover - runs in the server process
    """One thread only (a lock held by another thread at a fork would be held forever in the
    child): wait for a command line or a child's exit, whichever comes first."""
    import select

    import cli.main  # noqa: F401  (every command: vstore, encoders, classifiers, torch)
    import encoders.clip_encoder  # noqa: F401  (what option defaults import on demand)
    import encoders.thumbnail  # noqa: F401

    def say(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    children: set[int] = set()
    pending = b""
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                say({"exit": pid, "status": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)})
        if b"\n" not in pending:
            if not select.select([0], [], [], 0.005 if children else None)[0]:
                continue
            chunk = os.read(0, 65536)
            if not chunk:  # the test closed the pipe
                for pid in children:
                    os.waitpid(pid, 0)
                return
            pending += chunk
            if b"\n" not in pending:
                continue
        line, pending = pending.split(b"\n", 1)
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                cli.main.main(argv, standalone_mode=False)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.add(pid)
        say({"pid": pid})


if __name__ == "__main__":
    _serve()
