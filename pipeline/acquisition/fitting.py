"""Fitting the accuracy predictor off the driver's loop.

A fit of S_zoo on a large zoo takes tens of seconds (36 s at 14,000 results on one CPU
thread); done inside `propose` it stalls the driver, and every worker that finishes
meanwhile waits for its next job. `Fitter` runs the fits in one spawned process that
imports torch once and lives as long as the driver's process: the Pareto policy starts the
next fit there and keeps proposing with the newest finished one.

The child fits with a fixed number of threads, so the same rows and seed give the same
predictor whichever policy asked for it (a resumed build's, or an uninterrupted one's). It
ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and stopping the build
is the driver's business. It is a daemon, so it ends with the driver; if it dies (killed,
out of memory), the next fit starts a new one. Only arrays cross the pipe, never a model:
the parent rebuilds the predictor from the fitted weights.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from tans.zoo_schema.errors import TansError

THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # the child's torch threads: half the cores, at most 4


@dataclass
class Fit:
    """One fit of the predictor: on the first `size` results in commit order (`key`: a hash
    of their job ids), seeded by `seed`; `model` once it is done."""

    size: int
    key: int
    seed: int
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    model: object | None = None  # a tans.pipeline.acquisition.predictor.AccuracyPredictor


def _serve(conn, threads: int) -> None:
    """The child: fit what arrives, send back the weights, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from tans.pipeline.acquisition.predictor import fit

    torch.set_num_threads(threads)
    while True:
        try:
            data, topo, func, d_index, a_index, y, seed = conn.recv()
        except EOFError:
            return
        try:
            model = fit(data[d_index], topo[a_index], func[a_index], y, seed=seed)
            conn.send(({k: v.numpy() for k, v in model.state_dict().items()}, float(model.val_mse), None))
        except Exception as e:  # sent back, raised in the driver
            conn.send((None, None, f"{type(e).__name__}: {e}"))


class Fitter:
    """One background process fitting one predictor at a time, shared by the process's
    policies (see the module docstring). Fits are known by a key the caller derives from
    everything the fit depends on (its rows, their inputs, the seed); the last few finished
    ones are kept, so a policy finds the fit another asked for."""

    KEEP = 4

    def __init__(self, threads: int = THREADS):
        self.threads = threads
        self._process = None
        self._conn = None
        self.running: Fit | None = None
        self.done: dict[int, Fit] = {}

    _shared: Fitter | None = None

    @classmethod
    def shared(cls) -> Fitter:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def warm(self) -> None:
        """Start the process (and its torch import) now, so the first fit does not wait for it."""
        if self._process is None or not self._process.is_alive():
            self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, self.threads), daemon=True, name="tans-predictor-fit")
        self._process.start()
        child.close()

    def request(self, fit: Fit, inputs) -> bool:
        """Start `fit` unless it is done or running; False when another fit is running (ask
        again later). `inputs()` gives (data, topo, func, d_index, a_index, y): the unique
        datasets' features and archs' inputs and one index pair per row, so that a
        14,000-row fit sends 2 MB, not 200."""
        self.poll()
        if fit.key in self.done or (self.running is not None and self.running.key == fit.key):
            return True
        if self.running is not None:
            return False
        self.warm()
        data, topo, func, d_index, a_index, y = inputs()
        arrays = (np.asarray(data, np.float32), np.asarray(topo, np.float32), np.asarray(func, np.float32))
        index = (np.asarray(d_index, np.int64), np.asarray(a_index, np.int64), np.asarray(y, np.float32))
        fit.started = time.monotonic()
        self._conn.send((*arrays, *index, fit.seed))
        self.running = fit
        return True

    def poll(self) -> None:
        """Collect the running fit if it has finished; never blocks."""
        if self.running is not None and self._conn.poll():
            self._collect()

    def wait_for(self, fit: Fit, inputs) -> Fit:
        """`fit`, done: started if need be (after the running one), waited for."""
        while fit.key not in self.done:
            if not self.request(fit, inputs):
                self._collect()  # another fit is running: let it finish first
            elif self.running is not None:
                self._collect()
        return self.done[fit.key]

    def _collect(self) -> None:
        from tans.pipeline.acquisition.predictor import AccuracyPredictor

        fit, self.running = self.running, None
        try:
            state, val_mse, error = self._conn.recv()
        except (EOFError, OSError):
            self._process = None
            raise TansError(
                "the process fitting the accuracy predictor died (killed, or out of memory); "
                "resume the build (`tans resume ZOO`) to start a new one"
            ) from None
        if error:
            raise TansError(f"fitting the accuracy predictor failed: {error}")
        import torch

        model = AccuracyPredictor(state["data_mean"].shape[0], state["func_mean"].shape[0])
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        model.val_mse = val_mse
        fit.model, fit.seconds = model.eval(), time.monotonic() - fit.started
        self.done[fit.key] = fit
        while len(self.done) > self.KEEP:
            self.done.pop(next(iter(self.done)))
