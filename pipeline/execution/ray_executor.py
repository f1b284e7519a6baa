"""The Ray executors, two implementations of the `Executor` contract: `ActorExecutor` runs jobs
on the cluster's warm workers (`pool.WorkerPool`), `TaskExecutor` runs one fresh Ray task per
job (`resources.warm_workers = false`); `ray_executor` picks the one the resources ask for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tans.pipeline.execution import pool as pool_module
from tans.pipeline.execution.executor import Outcome, ResourceSettings
from tans.pipeline.execution.pool import WorkerPool, least_loaded, run_remote
from tans.pipeline.execution.signals import interruption
from tans.workers.job import JobSpec
from tans.workers.measure_archs import profile_remote
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile
from tans.zoo_schema.store import S3Settings


def ray_executor(zoo_uri: str, s3: S3Settings, resources: ResourceSettings) -> RayJobs:
    """The Ray executor the resources ask for: warm workers (`ActorExecutor`, the default) or
    a fresh task per job (`TaskExecutor`, `resources.warm_workers = false`)."""
    return (ActorExecutor if resources.warm_workers else TaskExecutor)(zoo_uri, s3, resources)


@dataclass
class RayJobs:
    """What both Ray executors share: the jobs in flight and their outcomes, prefetch hints,
    and profiling the pool (on the warm workers, or as tasks)."""

    zoo_uri: str
    s3: S3Settings
    resources: ResourceSettings

    def __post_init__(self):
        import ray

        self._ray = ray
        self._threads = max(1, int(self.resources.num_cpus))
        self.pool = WorkerPool(ray, self.zoo_uri, self.s3, self.resources, self._threads)
        self._prefetches: list = []  # refs of prefetch calls (hints: their errors are dropped)
        self._ran_on: dict = {}  # ref -> the actor its job was sent to
        self._pending: dict = {}  # ref -> (spec, worker slot or None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def universe(self) -> None:
        return None  # any pair: the workers train what they are given

    def close(self) -> None:
        """Stop the warm workers now (their CPUs and GPUs are freed for whatever runs next)."""
        self.pool.close()
        self._prefetches.clear()
        self._ran_on.clear()

    def _load(self) -> Counter:
        return Counter(slot for _, slot in self._pending.values())

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]:
        """The archs' profiles, measured in parallel chunks, one per worker that fits now (with
        the jobs' CPUs and GPUs, so latency is measured on the device the jobs run on): on the
        warm workers, which keep the base supernet they load for the jobs that follow, or as
        fresh tasks. A chunk that fails is tried twice more (a dead worker is replaced; the
        chunk goes to a live worker, or to a task when none is left); then the error is
        raised: a build needs the profiles. A chunk on a worker that does not start while
        another has is moved to a started one."""
        if not arch_ids:
            return []
        run = _Profiling(self, manifest, arch_ids, image_size)
        try:
            return run.collect()
        except BaseException as e:
            if run.cancel():
                self.close()  # warm workers mid-chunk: stopped with their work
            if interruption(e) is not None:
                raise interruption(e) from None
            raise

    def _drop_finished_prefetches(self) -> None:
        """Collect the prefetch calls that ended; a worker's death there shows in its jobs."""
        if not self._prefetches:
            return
        done, self._prefetches = self._ray.wait(self._prefetches, num_returns=len(self._prefetches), timeout=0)
        for ref in done:
            try:
                self._ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a hint only, unless a signal arrived inside get
                if interruption(e) is not None:
                    raise interruption(e) from None

    def _before_wait(self) -> None:
        """What an executor does before it waits for its jobs (nothing here)."""

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._drop_finished_prefetches()
        if not self._pending:
            return []
        self._before_wait()
        if self.pool.starting:  # wake up in time to give up a worker that does not start
            timeout = min(pool_module.START_DEADLINE_S / 8, timeout if timeout is not None else float("inf"))
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        return [self._outcome(ref) for ref in ready]

    def _outcome(self, ref) -> Outcome:
        spec, slot = self._pending.pop(ref)
        actor = self._ran_on.pop(ref, None)
        try:
            return Outcome(spec, result=self._ray.get(ref))
        except Exception as e:  # noqa: BLE001 - a failed job is an outcome, not a crash
            if interruption(e) is not None:  # unless a signal arrived inside ray.get
                raise interruption(e) from None
            dead = slot is not None and isinstance(e, self._ray.exceptions.RayActorError)
            if dead and self.pool.workers.get(slot) is actor:  # not its replacement: a queued job's
                self.pool.replace(slot)  # the worker died (killed, out of memory, node lost)
            cause = getattr(e, "cause", None)
            return Outcome(spec, error=cause if isinstance(cause, BaseException) else e)


class TaskExecutor(RayJobs):
    """One fresh Ray task per job: it loads the base weights and decodes its data itself."""

    def __post_init__(self):
        super().__post_init__()
        self._task = self._ray.remote(run_remote).options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, max_retries=0, retry_exceptions=False
        )  # the driver retries, recording each reason

    def submit(self, spec: JobSpec) -> None:
        self._pending[self._task.remote(spec, self.zoo_uri, self.s3, self._threads)] = (spec, None)


class ActorExecutor(RayJobs):
    """Jobs on a pool of warm workers (actors holding the base supernet and recently used
    datasets), as many as `max_in_flight` and the cluster's CPUs and GPUs allow; a dataset's
    next job goes to a free worker that holds it, else to any free one, else it queues behind
    the least loaded worker's job, and that worker decodes the queued job's data meanwhile
    (`WarmWorker.prefetch`). A worker that dies is replaced; its job fails like any other
    and is retried by the driver."""

    def submit(self, spec: JobSpec) -> None:
        self._submit_to(self.pool.slot_for(spec.dataset_id, self._load()), spec)

    def _submit_to(self, slot: int, spec: JobSpec) -> None:
        worker = self.pool.worker(slot, spec.dataset_id)
        queued = any(s == slot for _, s in self._pending.values())
        ref = worker.run.remote(spec)
        self._pending[ref], self._ran_on[ref] = (spec, slot), worker
        if queued:  # it waits behind a running job: its data is decoded meanwhile
            self._prefetches.append(worker.prefetch.options(concurrency_group="prefetch").remote(spec))

    def _before_wait(self) -> None:
        """The one place that moves jobs off workers that never started: their queued jobs go
        to the least loaded started workers (they never ran, so no attempt is counted)."""
        for slot in self.pool.give_up_unstarted():
            for ref, (spec, s) in list(self._pending.items()):
                if s == slot:
                    self._submit_to(least_loaded(self.pool.started(), self._load()), spec)
                    del self._pending[ref]
                    self._ran_on.pop(ref, None)


class _Profiling:
    """One `RayJobs.profile` call: the pool's archs in chunks, each on a warm worker (or a
    task), retried and moved as the workers die or fail to start."""

    def __init__(self, executor: RayJobs, manifest: Manifest, arch_ids: list[str], image_size: int):
        self.ex, self.pool, self._ray = executor, executor.pool, executor._ray
        self.manifest, self.image_size = manifest, image_size
        res = executor.resources
        self.task = self._ray.remote(profile_remote).options(  # idempotent: retried on any failure
            num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_retries=2, retry_exceptions=True
        )
        self.warm = res.warm_workers
        slots = min(self.pool.capacity(), len(arch_ids))
        if self.warm:  # a worker keeps its resources: only as many as fit now (a task would just wait)
            slots = min(slots, max(1, len(self.pool.workers) + self.pool.room()))
        size = -(-len(arch_ids) // slots)
        self.chunks = [arch_ids[i : i + size] for i in range(0, len(arch_ids), size)]
        self.refs: dict = {}  # ref -> (chunk index, warm worker slot or None for a task, tries so far)

    def launch(self, i: int, slot: int | None, tries: int) -> None:
        if slot is None:
            ref = self.task.remote(
                self.ex.zoo_uri, self.ex.s3, self.manifest, self.chunks[i], self.image_size, self.ex._threads
            )
        else:
            ref = self.pool.worker(slot).profile.remote(self.manifest, self.chunks[i], self.image_size)
        self.refs[ref] = (i, slot, tries)

    def collect(self) -> list[ArchProfile]:
        targets = [None] * len(self.chunks)  # tasks
        if self.warm:  # the live workers first, then new ones in free slots
            free = [slot for slot in range(self.pool.capacity()) if slot not in self.pool.workers]
            targets = [*sorted(self.pool.workers), *free][: len(self.chunks)]
        for i, slot in enumerate(targets):
            self.launch(i, slot, 0)
        done: dict[int, list[ArchProfile]] = {}
        while self.refs:
            timeout = pool_module.START_DEADLINE_S / 8 if self.warm else None
            ready, _ = self._ray.wait(list(self.refs), num_returns=1, timeout=timeout)
            if not ready:
                self.move_unstarted()
                continue
            i, slot, tries = self.refs.pop(ready[0])
            try:
                done[i] = self._ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - raised once the chunk's tries are spent
                if interruption(e) is not None or slot is None or tries >= 2:
                    raise  # (Ray has retried a task twice itself)
                if isinstance(e, self._ray.exceptions.RayActorError):
                    self.pool.replace(slot)  # dead (a node lost?): the slot gets a fresh worker later
                live = self.pool.started() or sorted(self.pool.workers)
                self.launch(i, live[i % len(live)] if live else None, tries + 1)
        return [p for i in range(len(self.chunks)) for p in done[i]]

    def move_unstarted(self) -> None:
        for gone in self.pool.give_up_unstarted():
            for ref, (i, slot, tries) in list(self.refs.items()):
                if slot == gone:
                    self.launch(i, least_loaded(self.pool.started(), self.ex._load()), tries)
                    del self.refs[ref]

    def cancel(self) -> bool:
        """Cancel the tasks still running; True when warm workers were mid-chunk."""
        for ref, (_, slot, _) in self.refs.items():
            if slot is None:
                self._ray.cancel(ref, force=True)
        return any(slot is not None for _, slot, _ in self.refs.values())
