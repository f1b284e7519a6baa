"""Ray start-up and process hygiene: connect to a cluster or start a local Ray on
127.0.0.1, keep tans' own signal handlers, and leave no Ray process behind when a start is
interrupted (this process adopts its orphans and stops its descendants)."""

from __future__ import annotations

import os
import signal
import threading

from tans.pipeline.execution.console import quiet_third_party, verbose
from tans.zoo_schema.errors import Interrupted


def start_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None):
    """Connect to a Ray cluster at `address`, or start a local one bound to 127.0.0.1."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback
    import ray

    quiet_third_party()  # Ray sets its loggers to INFO on import
    if ray.is_initialized():
        return ray
    # Ray's core installs its own SIGTERM handler (it aborts the process: exit 134); the
    # caller's handlers (tans stops cleanly on SIGTERM/SIGINT) are put back after init.
    handlers = _python_handlers()
    if not address:
        _adopt_orphans()
    try:
        if address:
            ray.init(address=address, log_to_driver=True, configure_logging=verbose())  # its INFO lines: -v
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
    except BaseException as e:  # a signal mid-start (Ray's handler raises SystemExit(15))
        if not address:
            _stop_children()  # the half-started local Ray: its processes are our descendants
        if isinstance(e, SystemExit) and e.code in (signal.SIGTERM, signal.SIGINT):
            raise Interrupted(e.code) from None
        raise
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return ray


def _adopt_orphans() -> None:
    """Make this process the Linux subreaper of its descendants, so that processes a
    half-started Ray spawns (its agents, children of the raylet) stay our descendants
    when their parent dies, and `_stop_children` finds them. No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _stop_children(grace: float = 5.0) -> None:
    """Terminate every descendant of this process, until none is left (kill after `grace`)."""
    import psutil

    for _ in range(5):
        children = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        if not children:
            return
        for p in children:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(children, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def _python_handlers() -> dict:
    """The Python-level SIGTERM/SIGINT handlers now installed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT) if callable(signal.getsignal(s))}
