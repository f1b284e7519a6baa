"""The build driver: a thin composition of a policy, a store and an executor.

Each `step()` fills the free worker slots with the policy's proposals, waits for one
outcome and records it. All state is re-derivable from the zoo (results and failure
journal), so stopping anywhere and running the build again continues it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from dataclasses import dataclass, field

from tans.pipeline.acquisition.base import Pair, PolicyContext
from tans.pipeline.acquisition.compute_priors import profile_pool
from tans.pipeline.acquisition.hypervolume import dataset_hypervolumes, hv_history
from tans.pipeline.acquisition.registry import create_policy
from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.executor import Executor, Outcome
from tans.workers.job import JobSpec, job_spec
from tans.workers.networks.ofa_space import arch_pool
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.journal import read_failures, record_failure, write_journal
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import DatasetRecord, ResultRecord
from tans.zoo_schema.redact import redact_obj
from tans.zoo_schema.results import SNAPSHOT_MIN_NEW, ZooState, quarantine, scan_results, write_snapshot
from tans.zoo_schema.shards import read_datasets
from tans.zoo_schema.store import ZooStore


def journal_config(config: BuildConfig) -> dict:
    """The config as the journal keeps it for `tans resume`: local dataset folders made
    absolute (a resume may run from another directory), credentials in URIs masked."""
    data = dataclasses.asdict(config)
    data["datasets"] = [d if "://" in d else os.path.abspath(d) for d in config.datasets]
    return redact_obj(data)


@dataclass
class BuildSummary:
    finished: int = 0
    failed: int = 0
    zoo_results: int = 0
    zoo_failed: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    failures: list = field(default_factory=list)
    mlflow_run: str = ""  # the build's MLflow run id, when the build was tracked

    def as_dict(self) -> dict:
        return dict(self.__dict__)


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def storage_fault(error: BaseException | None) -> bool:
    """Whether a job failed because the zoo's storage refused a write or was out of reach (a
    full disk, no permission, a read-only or unreachable store), not because of the job."""
    return isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in STORAGE_ERRNOS)


class Driver:
    """Steps a build. A job that fails is retried (with the reason journaled) until it has
    failed `resources.max_attempts` times; then its pair is given up and counts against
    the budget. A storage fault (`storage_fault`) is not the job's failure: it stops the
    build with a StorageError and counts no attempt, so the pair stays trainable. `lease`,
    when given, is renewed between steps."""

    def __init__(
        self,
        config: BuildConfig,
        store: ZooStore,
        manifest: Manifest,
        executor: Executor,
        tracker=None,
        log=print,
        lease=None,
        progress=None,
    ):
        self.config, self.store, self.manifest = config, store, manifest
        self.executor, self.tracker, self.log, self.lease = executor, tracker, log, lease
        self.progress = progress
        self._hv: dict[str, float] = {}
        pool = [a.id for a in arch_pool(manifest.pool_seed, manifest.pool_size)]
        self.policy = create_policy(
            config.strategy,
            PolicyContext(
                seed=config.seed,
                pool=tuple(pool),
                store=store,
                manifest=manifest,
                image_size=config.train.image_size,
                pareto=config.pareto,
                log=log,
            ),
        )
        scan = scan_results(store)
        for key, reason in scan.unusable:  # the driver sets them aside; their jobs are trained again
            quarantine(store, key, reason)
        self.datasets: dict[str, DatasetRecord] = {d.dataset_id: d for d in read_datasets(store)}
        self.results: list[ResultRecord] = list(scan.results)
        self.failures = read_failures(store)
        self.pending: set[Pair] = set()
        self.summary = BuildSummary()
        self._stop: str | None = None
        self._profiles = None
        self._started = time.monotonic()
        self._snapshot_at = len(self.results) - scan.outside_snapshot  # rewritten after 64 more
        write_journal(
            store, "builds", {"event": "start", "results": len(self.results), "config": journal_config(config)}
        )

    @property
    def state(self) -> ZooState:
        return ZooState(list(self.datasets.values()), self.results, self.failures, self.config.resources.max_attempts)

    @property
    def given_up(self) -> set[Pair]:
        return self.state.given_up()

    def spec_for(self, pair: Pair) -> JobSpec:
        return job_spec(self.datasets[pair.dataset_id], pair.arch, self.config.train, self.manifest)

    @property
    def used_budget(self) -> int:
        return len(self.results) + len(self.given_up)

    def _fill(self) -> None:
        free = self.config.resources.max_in_flight - self.executor.in_flight
        left = self.config.max_jobs - self.used_budget - self.executor.in_flight
        n = min(free, left)
        if n <= 0:
            return
        for pair in self.policy.propose(
            self.state, n, pending=frozenset(self.pending), universe=self.executor.universe()
        ):
            self.executor.submit(self.spec_for(pair))
            self.pending.add(pair)

    def _record(self, done: Outcome) -> None:
        spec, outcome = done.spec, done.result
        pair = Pair(spec.dataset_id, spec.arch)
        self.pending.discard(pair)
        if outcome is not None:
            self.results.append(outcome)
            if len(self.results) - self._snapshot_at >= SNAPSHOT_MIN_NEW:
                write_snapshot(self.store, self.results)
                self._snapshot_at = len(self.results)
            self.summary.finished += 1
            if self.tracker:
                self.tracker.log_result(spec, outcome)
            self._hv[spec.dataset_id] = self._dataset_hv(spec.dataset_id)
            self.log(
                f"[{self.used_budget}/{self.config.max_jobs}] {spec.dataset_id} {spec.arch} "
                f"acc={outcome.accuracy:.3f} params={outcome.params / 1e6:.2f}M "
                f"flops={outcome.flops / 1e6:.1f}M latency={outcome.latency_ms:.1f}ms "
                f"({outcome.train_seconds:.1f}s train) | {self.executor.in_flight} in flight, "
                f"{self.summary.failed} failed, mean HV {self.mean_hypervolume():.3f}{self._eta()}"
            )
        else:
            if storage_fault(done.error):  # not the job's fault: stop, and spend no attempt on it
                raise StorageError(
                    f"the build stops: a worker could not write job {spec.job_id} ({spec.dataset_id} {spec.arch}) "
                    f"to the zoo: {str(done.error)[:500]}. No attempt was counted; once that is fixed, the same "
                    f"command trains the job again and finishes the budget"
                ) from None
            failure = record_failure(self.store, spec.job_id, spec.dataset_id, spec.arch, done.error)
            self.failures.append(failure)
            attempts = self.state.failed_attempts()[spec.job_id]
            if self.tracker:
                self.tracker.log_failure(spec, failure.error)
            last_line = failure.error.splitlines()[-1] if failure.error else type(done.error).__name__
            if attempts < self.config.resources.max_attempts and not self._stop:
                self.log(f"attempt {attempts} of {spec.dataset_id} {spec.arch} failed ({last_line}); retrying")
                self.executor.submit(spec)
                self.pending.add(pair)
                return
            self.summary.failed += 1
            self.summary.failures.append(failure.error)
            self.log(
                f"[{self.used_budget}/{self.config.max_jobs}] FAILED {spec.dataset_id} {spec.arch} "
                f"after {attempts} attempt(s): {last_line}"
            )

    def _pool_profiles(self) -> dict:
        if self._profiles is None:
            self._profiles = profile_pool(self.store, self.manifest, self.config.train.image_size, self.log)
        return self._profiles

    def _dataset_hv(self, dataset_id: str) -> float:
        """One dataset's normalized hypervolume (only the dataset that changed is recomputed)."""
        return dataset_hypervolumes(self.results, self._pool_profiles(), [dataset_id])[dataset_id]

    def mean_hypervolume(self) -> float:
        """The mean over the zoo's datasets of their normalized hypervolumes, now."""
        if not self.datasets:
            return 0.0
        for d in self.datasets:
            if d not in self._hv:
                self._hv[d] = self._dataset_hv(d)
        return sum(self._hv[d] for d in self.datasets) / len(self.datasets)

    def progress_line(self) -> str:
        done = self.summary.finished
        return (
            f"jobs: {self.used_budget}/{self.config.max_jobs} (+{done} run) | {self.executor.in_flight} "
            f"in flight, {self.summary.failed} failed | HV {self.mean_hypervolume():.3f} |"
            f"{self._eta() or ' eta -'}"
        )

    def _eta(self) -> str:
        done = self.summary.finished + self.summary.failed
        left = self.config.max_jobs - self.used_budget
        if done == 0 or left <= 0:
            return ""
        per_job = (time.monotonic() - self._started) / done
        return f" eta {per_job * left / 60:.1f} min"

    def hv_history(self) -> list[float]:
        return hv_history(self.results, self._pool_profiles(), sorted(self.datasets))

    def _stop_reason(self) -> str | None:
        """A termination condition other than the job budget, once it holds."""
        stop = self.config.stop
        hours = sum(r.train_seconds for r in self.results) / 3600
        if stop.max_worker_hours > 0 and hours >= stop.max_worker_hours:
            return f"worker-hour budget reached ({hours:.2f} h of fine-tuning)"
        if stop.min_hv_gain > 0 and len(self.results) > stop.hv_window:
            history = self.hv_history()
            gain = history[-1] - history[-1 - stop.hv_window]
            if gain < stop.min_hv_gain:
                return f"hypervolume gain {gain:.4f} over the last {stop.hv_window} results is below {stop.min_hv_gain}"
        return None

    def step(self, timeout: float | None = None) -> bool:
        """Dispatch what fits, record at least one outcome; False once the build is over."""
        if not self.datasets:
            self.summary.stop_reason = "no datasets in the zoo"
            return False
        if self.lease:
            self.lease.heartbeat()
        self._stop = self._stop or self._stop_reason()
        if not self._stop:
            self._fill()
        if self.executor.in_flight == 0:
            self.summary.stop_reason = self._stop or (
                "job budget reached" if self.used_budget >= self.config.max_jobs else "no untrained pairs left"
            )
            return False
        if timeout is None and self.lease:
            timeout = self.lease.ttl / 3
        if self.progress:
            self.progress.update(self.progress_line())
        for done in self.executor.wait(timeout):
            self._record(done)
        if self.progress:
            self.progress.update(self.progress_line())
        return True

    def run(self) -> BuildSummary:
        while self.step():
            pass
        return self.finish()

    def finish(self) -> BuildSummary:
        s = self.summary
        s.seconds = time.monotonic() - self._started
        s.zoo_results = len(self.results)
        s.zoo_failed = len(self.given_up)
        if len(self.results) > self._snapshot_at:
            write_snapshot(self.store, self.results)
        write_journal(self.store, "builds", {"event": "stop", **s.as_dict()})
        if self.tracker:
            self.tracker.finish(s.as_dict())
        return s
