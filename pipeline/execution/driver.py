"""The build driver: a thin composition of a policy, a store and an executor, extended by
plug-ins (`plugins`: stoppers and callbacks).

Each `step()` asks the stoppers whether to go on, fills the free worker slots with the
policy's proposals, waits for one outcome and records it, telling the callbacks (journal,
snapshot, MLflow). All state is re-derivable from the zoo (results and failure journal), so
stopping anywhere and running the build again continues it. The progress shown on a
terminal is a `progress.Status` record.
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
from tans.pipeline.execution.plugins import (
    Callback,
    JournalCallback,
    SnapshotCallback,
    Stopper,
    TrackingCallback,
    stoppers_for,
)
from tans.pipeline.execution.progress import Status
from tans.workers.job import JobSpec, job_spec
from tans.workers.networks.ofa_space import arch_pool
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.journal import Failure, read_failures, record_failure
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import DatasetRecord, ResultRecord
from tans.zoo_schema.redact import redact_obj
from tans.zoo_schema.results import ZooState, quarantine, scan_results
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
    per_dataset: dict = field(default_factory=dict)  # this build's finished jobs per dataset id

    def as_dict(self) -> dict:
        return dict(self.__dict__)


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def storage_fault(error: BaseException | None) -> bool:
    """Whether a job failed because the zoo's storage refused a write or was out of reach (a
    full disk, no permission, a read-only or unreachable store), not because of the job."""
    return isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in STORAGE_ERRNOS)


class Hypervolumes:
    """The zoo's normalized hypervolumes as the driver sees them: per dataset (recomputed only
    for the dataset that changed), their mean now, and the mean as the zoo grew."""

    def __init__(self, driver: Driver):
        self.driver = driver
        self._hv: dict[str, float] = {}
        self._profiles = None
        self._rows: dict[str, list[ResultRecord]] = {}  # driver.results by dataset (it only appends)
        self._indexed = 0

    def profiles(self) -> dict:
        d = self.driver
        if self._profiles is None:
            self._profiles = profile_pool(d.store, d.manifest, d.config.train.image_size, d.log)
        return self._profiles

    def changed(self, dataset_id: str) -> None:
        self._hv[dataset_id] = self._of(dataset_id)

    def _of(self, dataset_id: str) -> float:
        return self._recount([dataset_id])[dataset_id]

    def _recount(self, dataset_ids: list[str]) -> dict[str, float]:
        """These datasets' hypervolumes from their own results: a commit costs the size of its
        dataset, not of the zoo (at 10,000 results in 140 datasets a resumed build's first
        commit scanned every result once per dataset: 1 s)."""
        results = self.driver.results
        for r in results[self._indexed :]:
            self._rows.setdefault(r.dataset_id, []).append(r)
        self._indexed = len(results)
        rows = [r for d in dataset_ids for r in self._rows.get(d, [])]
        return dataset_hypervolumes(rows, self.profiles(), dataset_ids)

    def mean(self) -> float:
        """The mean over the zoo's datasets of their normalized hypervolumes, now."""
        datasets = self.driver.datasets
        if not datasets:
            return 0.0
        missing = [d for d in datasets if d not in self._hv]
        if missing:  # a fresh driver: every dataset once, in one pass
            self._hv.update(self._recount(missing))
        return sum(self._hv[d] for d in datasets) / len(datasets)

    def history(self, at: list[int] | None = None) -> list[float]:
        """The mean after each result in commit order (with `at`, after those results only)."""
        return hv_history(self.driver.results, self.profiles(), sorted(self.driver.datasets), at)


class Driver:
    """Steps a build. A job that fails is retried (with the reason journaled) until it has
    failed `resources.max_attempts` times; then its pair is given up and counts against
    the budget. A storage fault (`storage_fault`) is not the job's failure: it stops the
    build with a StorageError and counts no attempt, so the pair stays trainable. `lease`,
    when given, is renewed between steps. `stoppers` and `callbacks` default to those of the
    config (the job budget, `[stop]`; the journal, the snapshot and, with a tracker, MLflow)."""

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
        stoppers: list[Stopper] | None = None,
        callbacks: list[Callback] | None = None,
    ):
        self.config, self.store, self.manifest = config, store, manifest
        self.executor, self.log, self.lease, self.progress = executor, log, lease, progress
        pool = [a.id for a in arch_pool(manifest.pool_seed, manifest.pool_size)]
        context = PolicyContext(
            seed=config.seed,
            pool=tuple(pool),
            store=store,
            manifest=manifest,
            image_size=config.train.image_size,
            pareto=config.pareto,
            log=log,
        )
        self.policy = create_policy(config.strategy, context)
        scan = scan_results(store, sealed_light=True)  # sealed rows without embeddings: never read here
        for key, reason in scan.unusable:  # the driver sets them aside; their jobs are trained again
            quarantine(store, key, reason)
        self.datasets: dict[str, DatasetRecord] = {d.dataset_id: d for d in read_datasets(store)}
        self.results: list[ResultRecord] = list(scan.results)
        self.failures = read_failures(store)
        self.pending: set[Pair] = set()
        self.proposed_by: dict[Pair, int] = {}  # pending pairs -> the predictor fit's size that proposed them
        self.summary = BuildSummary()
        self.hypervolume = Hypervolumes(self)
        self.stoppers = stoppers if stoppers is not None else stoppers_for(config.stop)
        self.callbacks = (
            callbacks
            if callbacks is not None
            else [
                JournalCallback(journal_config(config)),
                SnapshotCallback(len(self.results) - scan.outside_snapshot),  # rewritten after 64 more
                *([TrackingCallback(tracker)] if tracker else []),
            ]
        )
        self._stop: str | None = None
        self._started = time.monotonic()
        for c in self.callbacks:
            c.on_start(self)

    @property
    def state(self) -> ZooState:
        return ZooState(list(self.datasets.values()), self.results, self.failures, self.config.resources.max_attempts)

    @property
    def used_budget(self) -> int:
        return len(self.results) + len(self.state.given_up())

    def spec_for(self, pair: Pair) -> JobSpec:
        return job_spec(self.datasets[pair.dataset_id], pair.arch, self.config.train, self.manifest)

    def _fill(self) -> None:
        free = self.config.resources.max_in_flight - self.executor.in_flight
        left = self.config.max_jobs - self.used_budget - self.executor.in_flight
        n = min(free, left)
        if n <= 0:
            return
        universe = self.executor.universe()
        proposals = self.policy.propose(self.state, n, pending=frozenset(self.pending), universe=universe)
        fits = getattr(self.policy, "last_fit_of", {})  # which predictor fit proposed each (Pareto)
        for pair in proposals:
            self.executor.submit(self.spec_for(pair))
            self.pending.add(pair)
            if pair in fits:
                self.proposed_by[pair] = fits[pair]

    def _record(self, done: Outcome) -> None:
        spec = done.spec
        self.pending.discard(Pair(spec.dataset_id, spec.arch))
        if done.result is not None:
            self._committed(spec, done.result)
        elif storage_fault(done.error):  # not the job's fault: stop, and spend no attempt on it
            raise StorageError(
                f"the build stops: a worker could not write job {spec.job_id} ({spec.dataset_id} {spec.arch}) "
                f"to the zoo: {str(done.error)[:500]}. No attempt was counted; once that is fixed, the same "
                f"command trains the job again and finishes the budget"
            ) from None
        else:
            self._failed(spec, record_failure(self.store, spec.job_id, spec.dataset_id, spec.arch, done.error))

    def _committed(self, spec: JobSpec, outcome: ResultRecord) -> None:
        self.results.append(outcome)
        self.summary.finished += 1
        self.summary.per_dataset[spec.dataset_id] = self.summary.per_dataset.get(spec.dataset_id, 0) + 1
        for c in self.callbacks:
            c.on_result(self, spec, outcome)
        self.hypervolume.changed(spec.dataset_id)
        self.log(
            f"[{self.used_budget}/{self.config.max_jobs}] {spec.dataset_id} {spec.arch} "
            f"acc={outcome.accuracy:.3f} params={outcome.params / 1e6:.2f}M "
            f"flops={outcome.flops / 1e6:.1f}M latency={outcome.latency_ms:.1f}ms "
            f"({outcome.train_seconds:.1f}s train) | {self.executor.in_flight} in flight, "
            f"{self.summary.failed} failed, mean HV {self.hypervolume.mean():.3f}{self._eta()}"
        )

    def _failed(self, spec: JobSpec, failure: Failure) -> None:
        self.failures.append(failure)
        attempts = self.state.failed_attempts()[spec.job_id]
        for c in self.callbacks:
            c.on_failure(self, spec, failure)
        last_line = failure.error.splitlines()[-1] if failure.error else "unknown error"
        if attempts < self.config.resources.max_attempts and not self._stop:
            self.log(f"attempt {attempts} of {spec.dataset_id} {spec.arch} failed ({last_line}); retrying")
            self.executor.submit(spec)
            self.pending.add(Pair(spec.dataset_id, spec.arch))
            return
        self.summary.failed += 1
        self.summary.failures.append(failure.error)
        self.log(
            f"[{self.used_budget}/{self.config.max_jobs}] FAILED {spec.dataset_id} {spec.arch} "
            f"after {attempts} attempt(s): {last_line}"
        )

    def status(self) -> Status:
        """What the progress line shows now."""
        counts = (f"+{self.summary.finished} run",)
        work = (f"{self.executor.in_flight} in flight", f"{self.summary.failed} failed")
        hv = (f"HV {self.hypervolume.mean():.3f}",)
        return Status(self.used_budget, self.config.max_jobs, (counts, work, hv, (self._eta().strip() or "eta -",)))

    def _eta(self) -> str:
        done = self.summary.finished + self.summary.failed
        left = self.config.max_jobs - self.used_budget
        if done == 0 or left <= 0:
            return ""
        per_job = (time.monotonic() - self._started) / done
        return f" eta {per_job * left / 60:.1f} min"

    def step(self, timeout: float | None = None) -> bool:
        """Dispatch what fits, record at least one outcome; False once the build is over."""
        if not self.datasets:
            self.summary.stop_reason = "no datasets in the zoo"
            return False
        if self.lease:
            self.lease.heartbeat()
        self._stop = self._stop or next((r for s in self.stoppers if (r := s(self))), None)
        if not self._stop:
            self._fill()
        if self.executor.in_flight == 0:
            self.summary.stop_reason = self._stop or "no untrained pairs left"
            return False
        if timeout is None and self.lease:
            timeout = self.lease.ttl / 3
        if self.progress:
            self.progress.update(self.status())
        for done in self.executor.wait(timeout):
            self._record(done)
        if self.progress:
            self.progress.update(self.status())
        return True

    def run(self) -> BuildSummary:
        while self.step():
            pass
        return self.finish()

    def finish(self) -> BuildSummary:
        s = self.summary
        s.seconds = time.monotonic() - self._started
        s.zoo_results = len(self.results)
        s.zoo_failed = len(self.state.given_up())
        for c in self.callbacks:
            c.on_finish(self, s)
        return s
