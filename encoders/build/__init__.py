"""``vstore build``: the pipeline (``pipeline``), its isolated decode workers (``workers``) and the
store's failures log (``failures``)."""
from ..errors import EXIT_SOME_FAILED
from .failures import FAILURES_NAME, Failure, FailureLog, read_failures
from .pipeline import BuildConfig, BuildSummary, DecodeTask, auto_workers, build_store, decode_task, plan_videos

__all__ = [
    "EXIT_SOME_FAILED", "FAILURES_NAME", "Failure", "FailureLog", "read_failures", "BuildConfig", "BuildSummary", "DecodeTask",
    "auto_workers", "build_store", "decode_task", "plan_videos",
]
