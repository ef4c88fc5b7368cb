"""Joining (or starting) a Ray cluster, shared by the Ray build (``encoders.build.ray_engine``)
and the Ray index (``vstore.index_ray``). Ray is optional: imported only here, only when asked."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from .errors import VStoreError

log = logging.getLogger(__name__)


ENGINES = ("local", "ray")

# Ray starts its workers at niceness 15, behind every other process: on a shared machine the
# build's own decode and encode work then starved (the Ray tests with two busy loops beside
# them: over 1,700 s, against 148 s at the driver's priority). A private Ray's workers do this
# command's work, so they run at its priority; a joined cluster keeps its operator's setting.
PRIVATE_RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


@dataclass
class EngineConfig:
    """Where `vstore build` / `vstore index` run (not recorded in the store: both engines make
    the same store and index)."""

    engine: str = "local"  # local = this machine; ray = a Ray cluster (docs/scale.md)
    address: Optional[str] = None  # ray: None = a private Ray here, "auto", "ray://head:10001", "head:6379"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")


class RayEngineError(VStoreError):
    """Ray is missing, the cluster cannot be reached, or it cannot run the job."""


def import_ray():
    """The ``ray`` module (with Ray Data), or a ``RayEngineError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayEngineError('--engine ray needs Ray Data: pip install "vstore[ray]" (or "ray[data]")') from None
    return ray


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://head:10001``, ``head:6379``) or, when
    None, start a private Ray on this machine with ``num_cpus`` CPUs (None = all). Nothing when
    this process already is a Ray driver. True when this call initialised Ray (the caller then
    shuts it down with ``ray.shutdown()``)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address or "local", "log_to_driver": False,
                              "logging_level": logging.WARNING, "include_dashboard": False}
    if address is None:
        kwargs["num_cpus"] = num_cpus
        kwargs["_system_config"] = PRIVATE_RAY_SYSTEM_CONFIG
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset "starting execution" lines
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayEngineError(f"could not start or reach {where}: {str(e).strip().splitlines()[0][:300]}") from None
    return True
