"""SIGTERM and SIGINT stop tans cleanly: they raise `Interrupted` in the main thread, so every
`finally` runs (the lease is released, Ray shut down, the MLflow run ends KILLED).

Code that must not be cut midway (an MLflow write holds its database's lock until it ends)
runs inside `deferred()`: a signal arriving there is held, and raised when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from tans.zoo_schema.errors import Interrupted

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


def interruption(exc: BaseException | None) -> Interrupted | None:
    """The `Interrupted` behind `exc`, if a signal caused it. A signal that arrives while a
    native extension runs (Ray's `CoreWorker.wait` is Cython) can surface as that call's
    `SystemError(... returned a result with an exception set)` with our `Interrupted` as
    its cause; it is still a request to stop, not a crash."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
