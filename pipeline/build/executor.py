"""Executors run job specs somewhere and report each one's outcome.

Contract (`Executor`; tested over the Ray and replay executors):
- `submit(spec)` starts a job and returns at once; `in_flight` counts the jobs submitted
  and not yet returned by `wait`;
- `wait(timeout)` returns the outcomes finished so far: at least one unless the timeout
  passes or nothing is in flight (then []); each job's outcome exactly once;
- a job's exception is an outcome (`Outcome.error`), never raised; only a signal to stop
  (`Interrupted`) propagates;
- `universe()` is the set of pairs the executor can run (None: any), which the policy
  must stay inside.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from pipeline.acquisition.base import Pair
from pipeline.build.signals import interruption
from workers.job import JobSpec
from workers.run import run_job
from zoo_schema.errors import Interrupted
from zoo_schema.layout import checkpoint_uri
from zoo_schema.records import ResultRecord, to_table
from zoo_schema.results import read_result, read_results
from zoo_schema.store import S3Settings, ZooStore


@dataclass(frozen=True)
class ResourceSettings:
    num_cpus: float = 1.0           # per fine-tuning task
    num_gpus: float = 0.0           # per fine-tuning task; >0 makes tasks wait for GPU nodes
    max_in_flight: int = 2          # fine-tuning tasks running at once
    max_attempts: int = 3           # a job whose worker died is retried up to this many tries


@dataclass(frozen=True)
class Outcome:
    """How one submitted job ended: its committed result, or the error it failed with."""

    spec: JobSpec
    result: ResultRecord | None = None
    error: BaseException | None = None


class Executor(Protocol):
    @property
    def in_flight(self) -> int: ...

    def submit(self, spec: JobSpec) -> None: ...

    def wait(self, timeout: float | None = None) -> list[Outcome]: ...

    def universe(self) -> frozenset[Pair] | None: ...


def start_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None):
    """Connect to a Ray cluster at `address`, or start a local one bound to 127.0.0.1."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback
    import ray
    if ray.is_initialized():
        return ray
    # Ray's core installs its own SIGTERM handler (it aborts the process: exit 134); the
    # caller's handlers (tans stops cleanly on SIGTERM/SIGINT) are put back after init.
    handlers = _python_handlers()
    if not address:
        _adopt_orphans()
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
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


def _run_remote(spec: JobSpec, zoo_uri: str, s3: S3Settings, threads: int):
    return run_job(spec, zoo_uri, s3, threads=threads)


@dataclass
class RayExecutor:
    zoo_uri: str
    s3: S3Settings
    resources: ResourceSettings

    def __post_init__(self):
        import ray
        self._ray = ray
        self._task = ray.remote(_run_remote).options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus,
            max_retries=0, retry_exceptions=False)  # the driver retries, recording each reason
        self._pending: dict = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def universe(self) -> None:
        return None  # any pair: the workers train what they are given

    def submit(self, spec: JobSpec) -> None:
        threads = max(1, int(self.resources.num_cpus))
        ref = self._task.remote(spec, self.zoo_uri, self.s3, threads)
        self._pending[ref] = spec

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            spec = self._pending.pop(ref)
            try:
                outcomes.append(Outcome(spec, result=self._ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a failed job is an outcome, not a crash
                if interruption(e) is not None:  # unless a signal arrived inside ray.get
                    raise interruption(e) from None
                outcomes.append(Outcome(spec, error=e.cause if getattr(e, "cause", None) else e))
        return outcomes


class ReplayExecutor:
    """Answers each job from an existing evaluated zoo instead of training (paper A.1).

    Jobs complete in submission order, `in_flight` at a time, like W workers of equal
    speed. Each answer is committed to the target zoo like a real result (create-only row;
    the checkpoint stays in the source zoo and the row points there), so replay goes
    through the same driver, policy and store code as the Ray executor. Only pairs the
    source zoo holds can be proposed: `universe()` says which.
    """

    def __init__(self, source: ZooStore, target: ZooStore):
        self.source, self.target = source, target
        self._answers = {Pair(r.dataset_id, r.arch): r for r in read_results(source)}
        self._queue: list[JobSpec] = []

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def universe(self) -> frozenset[Pair]:
        return frozenset(self._answers)

    def submit(self, spec: JobSpec) -> None:
        self._queue.append(spec)

    def _answer(self, spec: JobSpec) -> Outcome:
        src = self._answers.get(Pair(spec.dataset_id, spec.arch))
        if src is None:
            return Outcome(spec, error=KeyError(f"the replay zoo {self.source.uri} has no result for "
                                                f"({spec.dataset_id}, {spec.arch})"))
        # the checkpoint stays in the source zoo: the replayed row names it absolutely
        record = dataclasses.replace(src, job_id=spec.job_id, checkpoint_uri=checkpoint_uri(self.source, src.checkpoint_uri),
                                     created_at=datetime.now(timezone.utc).isoformat())
        if not self.target.write_table(spec.result_key, to_table([record]), create_only=True):
            return Outcome(spec, result=read_result(self.target, spec.result_key))
        return Outcome(spec, result=record)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._queue:
            return []
        return [self._answer(self._queue.pop(0))]
