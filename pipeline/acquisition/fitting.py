"""Fitting the accuracy predictor off the driver's loop.

A fit of S_zoo on a large zoo takes tens of seconds (36 s at 14,000 results on one CPU
thread); done inside `propose` it stalls the driver, and every worker that finishes
meanwhile waits for its next job. `Fitter` runs the fits in one child process
(`python -m tans.pipeline.acquisition.fitting`) that imports torch once and lives as long as
the driver's process: the Pareto policy starts the next fit there and keeps proposing with the
newest finished one.

The child is a plain subprocess, not a `multiprocessing` one: those re-run the caller's main
module, which breaks a user's script that builds a zoo without an `if __name__ ==
"__main__"` guard. Messages are length-prefixed `.npz` payloads (arrays only, no pickle) on
its stdin and stdout. It fits with a fixed number of threads, so the same rows and seed give
the same predictor whichever policy asked for it (a resumed build's, or an uninterrupted
one's). It ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and
stopping the build is the driver's business. It ends when its stdin closes (the driver
exited) or at the driver's exit; if it dies (killed, out of memory), the next fit starts a
new one.
"""

from __future__ import annotations

import atexit
import io
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from tans.zoo_schema.errors import TansError

THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # the child's torch threads: half the cores, at most 4


@dataclass
class Fit:
    """One fit of the predictor: on the first `size` results in commit order (`key`: a hash
    of their job ids), seeded by `seed`; `model` once it is done, and the `seconds` the
    background process spent fitting it."""

    size: int
    key: int
    seed: int
    seconds: float | None = None
    model: object | None = None  # a tans.pipeline.acquisition.predictor.AccuracyPredictor
    weights: bytes | None = None  # the model as the fitting process sent it (an .npz of arrays)


def model_of(weights: bytes):
    """The predictor in `weights` (an .npz of its state, as the fitting process sends it and
    the zoo keeps it: arrays only, never pickle), in eval mode, with its held-out MSE."""
    import torch

    from tans.pipeline.acquisition.predictor import AccuracyPredictor

    a = _arrays(weights)
    state = {k[2:]: torch.from_numpy(v) for k, v in a.items() if k.startswith("w.")}
    model = AccuracyPredictor(state["data_mean"].shape[0], state["func_mean"].shape[0])
    model.load_state_dict(state)
    model.val_mse = float(a["val_mse"])
    return model.eval()


def _send(stream, kind: bytes, payload: bytes) -> None:
    stream.write(kind + struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _receive(stream) -> tuple[bytes, bytes]:
    head = stream.read(9)
    if len(head) < 9:
        raise EOFError
    (size,) = struct.unpack("<Q", head[1:])
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return head[:1], payload


def _npz(**arrays) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _arrays(payload: bytes) -> dict:
    with np.load(io.BytesIO(payload), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def main() -> None:
    """The child: fit what arrives on stdin, write the weights to stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from tans.pipeline.acquisition.predictor import fit

    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else THREADS)
    source, sink = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")  # the protocol's own stdout ...
    os.dup2(2, 1)  # ... and whatever a library prints goes to stderr instead
    sys.stdout = sys.stderr
    while True:
        try:
            kind, payload = _receive(source)
        except EOFError:
            return
        if kind == b"P":  # a ping: answered once torch is imported
            _send(sink, b"P", b"")
            continue
        try:
            a = _arrays(payload)
            d, j = a["d_index"], a["a_index"]
            started = time.monotonic()
            model = fit(a["data"][d], a["topo"][j], a["func"][j], a["y"], seed=int(a["seed"]))
            seconds = np.float64(time.monotonic() - started)
            state = {f"w.{k}": v.numpy() for k, v in model.state_dict().items()}
            _send(sink, b"R", _npz(val_mse=np.float64(model.val_mse), seconds=seconds, **state))
        except Exception as e:  # sent back, raised in the driver
            _send(sink, b"E", f"{type(e).__name__}: {e}".encode())


class Fitter:
    """One background process fitting one predictor at a time, shared by the process's
    policies (see the module docstring). Fits are known by a key the caller derives from
    everything the fit depends on (its rows, their inputs, the seed); the last few finished
    ones are kept, so a policy finds the fit another asked for."""

    KEEP = 4

    def __init__(self, threads: int = THREADS):
        self.threads = threads
        self._process: subprocess.Popen | None = None
        self.running: Fit | None = None
        self.done: dict[int, Fit] = {}
        atexit.register(self.close)

    _shared: Fitter | None = None

    @classmethod
    def shared(cls) -> Fitter:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def warm(self) -> None:
        """Start the process (and its torch import) now, so the first fit does not wait for it."""
        if self._process is None or self._process.poll() is not None:
            self.close()  # a dead one's pipes, and the fit it held (asked for again by its policy)
            self._start()

    def _talk(self, fn, *args):
        """One send or receive of the protocol. Its replies carry no id, so one cut short (Ctrl-C
        while waiting for a fit) ends the process: a later reply is never read as another's."""
        try:
            return fn(*args)
        except (BrokenPipeError, EOFError, OSError):
            raise self._died() from None
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        """Start the process if need be and wait until it can fit (torch imported: a ping
        answered); at once while a fit runs. A real build needs no such wait, as its first
        results come a fine-tune after the policy starts the process; a replay benchmark,
        whose jobs take no time, waits here before its timed loop."""
        self.warm()
        if self.running is None:
            self._talk(_send, self._process.stdin, b"P", b"")
            kind, _ = self._talk(_receive, self._process.stdout)
            if kind != b"P":
                self.close()
                raise TansError(f"the fitting process answered a ping with {kind!r}")

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tans.pipeline.acquisition.fitting", str(self.threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

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
        message = _npz(
            data=np.asarray(data, np.float32),
            topo=np.asarray(topo, np.float32),
            func=np.asarray(func, np.float32),
            d_index=np.asarray(d_index, np.int64),
            a_index=np.asarray(a_index, np.int64),
            y=np.asarray(y, np.float32),
            seed=np.int64(fit.seed),
        )
        self._talk(_send, self._process.stdin, b"F", message)
        self.running = fit
        return True

    def poll(self) -> None:
        """Collect the running fit if it has finished; never blocks."""
        if self.running is not None and select.select([self._process.stdout], [], [], 0)[0]:
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
        fit, self.running = self.running, None
        kind, payload = self._talk(_receive, self._process.stdout)
        if kind not in (b"R", b"E"):
            self.close()
            raise TansError(f"the fitting process answered a fit with {kind!r}")
        if kind == b"E":
            raise TansError(f"fitting the accuracy predictor failed: {payload.decode(errors='replace')}")
        fit.model, fit.weights = model_of(payload), payload
        fit.seconds = float(_arrays(payload)["seconds"])  # the fit's own time, not until it was collected
        self.done[fit.key] = fit
        while len(self.done) > self.KEEP:
            self.done.pop(next(iter(self.done)))

    def _died(self) -> TansError:
        self.close()
        return TansError(
            "the process fitting the accuracy predictor died (killed, or out of memory); "
            "resume the build (`tans resume ZOO`) to start a new one"
        )

    def close(self) -> None:
        """End the child (at the driver's exit; a running fit is dropped)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
        self._process = self.running = None


if __name__ == "__main__":
    main()
