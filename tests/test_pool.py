"""The decode pool: a task that crashes, hangs or raises costs only that task."""
from pool_tasks import misbehave

from encoders.build.workers import IsolatedPool, TaskFailure, run_inline


def test_bad_tasks_cost_only_themselves():
    tasks = [1, "segfault", 2, "hang", 3, "raise", 4, "exit", 5]
    out = dict(IsolatedPool(misbehave, workers=2, timeout=3).imap_unordered(tasks))
    assert {k: out[k] for k in (1, 2, 3, 4, 5)} == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10}
    assert "crashed (killed by signal 11)" in out["segfault"].reason
    assert "timed out after 3 s" in out["hang"].reason
    assert out["raise"].reason == "RuntimeError: bad input"
    assert "exit code 7" in out["exit"].reason
    assert all(isinstance(out[k], TaskFailure) for k in ("segfault", "hang", "raise", "exit"))


def test_consumer_can_stop_early():
    pool = IsolatedPool(misbehave, workers=2, prefetch=1)
    it = pool.imap_unordered(range(100))
    first = next(it)
    it.close()  # stops the dispatcher and the workers
    assert first[1] == first[0] * 2
    assert not pool._thread.is_alive()


def test_inline_runner_turns_exceptions_into_failures():
    out = dict(run_inline(misbehave, [1, "raise"]))
    assert out[1] == 2 and out["raise"].reason == "RuntimeError: bad input"
