"""SIGTERM and SIGINT stop tans cleanly: they raise `Interrupted` in the main thread, so every
`finally` runs (the lease is released, Ray shut down, the MLflow run ends KILLED).

Code that must not be cut midway (an MLflow write holds its database's lock until it ends)
runs inside `deferred()`: a signal arriving there is held, and raised when the block ends.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from pipeline.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = threading.local()


def _handler(signum, frame):
    if getattr(_state, "depth", 0):
        _state.pending = signum
        return
    raise Interrupted(signum)


def install() -> dict | None:
    """Install the handler (main thread only); returns the previous handlers for `restore`."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {s: signal.signal(s, _handler) for s in SIGNALS}


def restore(previous: dict | None) -> None:
    for s, h in (previous or {}).items():
        signal.signal(s, h)


@contextlib.contextmanager
def deferred():
    """Hold SIGTERM/SIGINT until the block ends, then stop as they asked."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        pending = getattr(_state, "pending", None)
        if not _state.depth and pending is not None:
            _state.pending = None
            raise Interrupted(pending)
