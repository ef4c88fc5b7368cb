"""Task functions for the isolated-pool tests (importable by spawned worker processes)."""
import os
import signal
import time


def misbehave(task):
    if task == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if task == "hang":
        time.sleep(3600)
    if task == "raise":
        raise RuntimeError("bad input")
    if task == "exit":
        os._exit(7)
    return task * 2
