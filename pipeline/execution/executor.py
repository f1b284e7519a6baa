"""Executors run job specs somewhere and report each one's outcome: the contract. The
implementations are `ray_executor.ActorExecutor` (warm workers), `ray_executor.TaskExecutor` (a
Ray task per job) and
`replay.ReplayExecutor`.

Contract (`Executor`; tested over the Ray and replay executors):
- `submit(spec)` starts a job and returns at once; `in_flight` counts the jobs submitted
  and not yet returned by `wait`;
- `wait(timeout)` returns the outcomes finished so far: at least one unless the timeout
  passes or nothing is in flight (then []; the Ray executor also returns [] early, every
  START_DEADLINE_S / 8, while a warm worker is starting); each job's outcome exactly once;
- a job's exception is an outcome (`Outcome.error`), never raised; only a signal to stop
  (`Interrupted`) propagates;
- `universe()` is the set of pairs the executor can run (None: any), which the policy
  must stay inside;
- `close()` frees what it holds (warm workers); jobs still in flight are abandoned (their
  results, if any, commit as usual; a resumed build finds them);
- `profile(manifest, arch_ids, image_size)` returns the profiles of those archs (with the
  base weights, untrained), in order: where the jobs run, in parallel when it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tans.pipeline.acquisition.base import Pair
from tans.workers.job import JobSpec
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile, ResultRecord


@dataclass(frozen=True)
class ResourceSettings:
    num_cpus: float = 1.0  # per fine-tuning task
    num_gpus: float = 0.0  # per fine-tuning task; >0 makes tasks wait for GPU nodes
    max_in_flight: int = 2  # jobs in flight; above the workers that fit, a worker gets a next job
    # queued and decodes its data while the current one trains
    max_attempts: int = 3  # a job whose worker died is retried up to this many tries
    warm_workers: bool = True  # long-lived workers (Ray actors) that keep data and weights;
    # false: a fresh Ray task per job
    worker_cache_mb: int = 2048  # per warm worker: decoded dataset splits held between jobs


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

    def close(self) -> None: ...

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]: ...
