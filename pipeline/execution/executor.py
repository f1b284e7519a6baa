"""Executors run job specs somewhere and report each one's outcome.

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

import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from tans.pipeline.acquisition.base import Pair
from tans.pipeline.acquisition.priors import cached_profiles
from tans.pipeline.execution.signals import interruption
from tans.workers.cache import JobCache
from tans.workers.job import JobSpec
from tans.workers.measure_archs import profile_remote
from tans.workers.run import prefetch_data, run_job
from tans.zoo_schema.errors import Interrupted
from tans.zoo_schema.layout import checkpoint_uri
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile, ResultRecord, to_table
from tans.zoo_schema.results import read_result, read_results
from tans.zoo_schema.store import S3Settings, ZooStore

REPLACE_AFTER_S = 60.0  # a dead warm worker's slot is refilled after this (see RayExecutor._replace)
START_DEADLINE_S = 120.0  # a new warm worker not started by then is given up while another is live


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


def _run_remote(spec: JobSpec, zoo_uri: str, s3: S3Settings, threads: int):
    return run_job(spec, zoo_uri, s3, threads=threads)


class WarmWorker:
    """A long-lived worker (a Ray actor): runs jobs one at a time with a `JobCache`, so the base
    supernet is loaded and a dataset decoded once per worker, not once per job; a job queued
    behind the running one has its data decoded meanwhile (`prefetch`, in its own thread)."""

    def __init__(self, zoo_uri: str, s3: S3Settings, threads: int, cache_mb: int):
        self.zoo_uri, self.s3, self.threads = zoo_uri, s3, threads
        self.cache = JobCache(cache_mb << 20)
        self.prefetched: list[tuple[str, bool, str]] = []

    def run(self, spec: JobSpec) -> ResultRecord:
        return run_job(spec, self.zoo_uri, self.s3, threads=self.threads, cache=self.cache)

    def prefetch(self, spec: JobSpec) -> bool:
        """Decode a job queued behind the running one into the cache (called in the actor's
        `prefetch` concurrency group, so it runs while `run` trains)."""
        held = prefetch_data(spec, self.zoo_uri, self.s3, self.cache, self.threads)
        self.prefetched.append((spec.job_id, held, datetime.now(UTC).isoformat()))
        return held

    def cache_stats(self) -> dict:
        """What the cache holds, how often it was asked, and the prefetches: {datasets, hits,
        misses, prefetched: [(job id, both splits held, when it ended)]}."""
        return {
            "datasets": sorted(self.cache.datasets()),
            "hits": self.cache.hits,
            "misses": self.cache.misses,
            "prefetched": list(self.prefetched),
        }

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]:
        """Profile pool archs with the base supernet this worker then keeps for its jobs."""
        return profile_remote(self.zoo_uri, self.s3, manifest, arch_ids, image_size, self.threads, self.cache)


@dataclass
class RayExecutor:
    zoo_uri: str
    s3: S3Settings
    resources: ResourceSettings

    """Runs each job on the Ray cluster: by default on a pool of warm workers (actors holding
    the base supernet and recently used datasets), as many as `max_in_flight` and the
    cluster's CPUs and GPUs allow; a dataset's next job goes to a free worker that holds it,
    else to any free one, else it queues behind the least loaded worker's job, and that worker
    decodes the queued job's data meanwhile (`WarmWorker.prefetch`). A worker that
    dies is replaced; its job fails like any other and is retried by the driver. Or one fresh
    task per job (`resources.warm_workers = false`)."""

    def __post_init__(self):
        import ray

        self._ray = ray
        self._threads = max(1, int(self.resources.num_cpus))
        self._task = ray.remote(_run_remote).options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, max_retries=0, retry_exceptions=False
        )  # the driver retries, recording each reason
        self._actor_class = ray.remote(concurrency_groups={"prefetch": 1})(WarmWorker).options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, max_restarts=0, max_task_retries=0
        )  # jobs run one at a time; a prefetch runs beside them
        self._prefetches: list = []  # refs of prefetch calls (hints: their errors are dropped)
        self._ran_on: dict = {}  # ref -> the actor its job was sent to
        self._pending: dict = {}  # ref -> (spec, worker slot or None)
        self._workers: dict[int, object] = {}  # slot -> actor handle
        self._holds: dict[int, list[str]] = {}  # slot -> dataset ids it ran, most recent last
        self.replaced = 0  # workers that died and were replaced
        self.unstarted = 0  # workers given up for not starting (see _check_starts)
        self._starting: dict[int, tuple] = {}  # slot -> (its __ray_ready__ ref, when created)
        self._died: dict[int, float] = {}  # slot -> when its worker died

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def universe(self) -> None:
        return None  # any pair: the workers train what they are given

    def close(self) -> None:
        """Stop the warm workers now (their CPUs and GPUs are freed for whatever runs next)."""
        for actor in self._workers.values():
            self._ray.kill(actor)
        self._workers.clear()
        self._holds.clear()
        self._starting.clear()
        self._prefetches.clear()
        self._ran_on.clear()

    def submit(self, spec: JobSpec) -> None:
        if not self.resources.warm_workers:
            self._pending[self._task.remote(spec, self.zoo_uri, self.s3, self._threads)] = (spec, None)
            return
        self._submit_to(self._free_slot(spec.dataset_id), spec)

    def _submit_to(self, slot: int, spec: JobSpec) -> None:
        if slot not in self._workers:
            self._new_worker(slot)
        holds = [d for d in self._holds.get(slot, []) if d != spec.dataset_id] + [spec.dataset_id]
        self._holds[slot] = holds[-8:]
        queued = any(s == slot for _, s in self._pending.values())
        ref = self._workers[slot].run.remote(spec)
        self._pending[ref], self._ran_on[ref] = (spec, slot), self._workers[slot]
        if queued:  # it waits behind a running job: its data is decoded meanwhile
            self._prefetches.append(self._workers[slot].prefetch.options(concurrency_group="prefetch").remote(spec))

    def _free_slot(self, dataset_id: str) -> int:
        """A free worker that ran this dataset last (its data is likely still held), else any
        free worker, else a new worker if the cluster has room, else the least loaded one (the
        job queues behind its current one). A live worker counts even after the cluster shrank
        (a node lost) below the slots in use."""
        load = Counter(slot for _, slot in self._pending.values())
        capacity = self._capacity()
        slots = sorted(set(range(capacity)) | set(self._workers))
        free = [slot for slot in slots if not load[slot]]
        holding = [slot for slot in free if dataset_id in self._holds.get(slot, [])]
        if holding:
            return max(holding, key=lambda slot: self._holds[slot].index(dataset_id))
        running = [slot for slot in free if slot in self._workers]
        if running:
            return running[0]
        now = time.monotonic()
        creatable = [slot for slot in free if now - self._died.get(slot, -REPLACE_AFTER_S) >= REPLACE_AFTER_S]
        if free and (not self._workers or (creatable and len(self._workers) < capacity and self._fits_another())):
            return (creatable or free)[0]  # a new worker: the cluster has room for it now
        # no room for another worker (e.g. a node was lost): queue behind a live one's job
        return self._least_loaded([slot for slot in slots if slot in self._workers] or list(slots))

    def _new_worker(self, slot: int) -> None:
        actor = self._actor_class.remote(self.zoo_uri, self.s3, self._threads, self.resources.worker_cache_mb)
        self._workers[slot] = actor
        self._starting[slot] = (actor.__ray_ready__.remote(), time.monotonic())

    def _started(self) -> list[int]:
        """The slots of the live workers that have started (their constructor has run)."""
        if self._starting:
            refs = [ref for ref, _ in self._starting.values()]
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
            for slot, (ref, _) in list(self._starting.items()):
                if ref in ready:
                    del self._starting[slot]  # started (or failed to: its jobs fail like any other)
        return [slot for slot in sorted(self._workers) if slot not in self._starting]

    def _give_up_unstarted(self) -> list[int]:
        """Give up the new workers that have not started within START_DEADLINE_S while another
        worker has: the cluster can count a lost node's resources for a while and place a
        worker there that never starts. A worker still starting when none has is waited for:
        there is nowhere else to go. Returns the slots given up; see `_check_starts`."""
        started, now = self._started(), time.monotonic()
        late = [slot for slot, (_, created) in self._starting.items() if now - created >= START_DEADLINE_S]
        if not started:
            return []
        for slot in late:
            self._ray.kill(self._workers[slot])
            self._forget(slot)
            self.unstarted += 1
        return late

    def _check_starts(self) -> None:
        """Move the jobs queued on workers given up for not starting (`_give_up_unstarted`) to
        the least loaded started workers. They never ran, so no attempt is counted."""
        for slot in self._give_up_unstarted():
            for ref, (spec, s) in list(self._pending.items()):
                if s == slot:
                    self._submit_to(self._least_loaded(self._started()), spec)
                    del self._pending[ref]
                    self._ran_on.pop(ref, None)

    def _least_loaded(self, slots: list[int]) -> int:
        load = Counter(slot for _, slot in self._pending.values())
        return min(slots, key=lambda slot: load[slot])

    def _fits_another(self) -> bool:
        """Whether the cluster's free CPUs and GPUs hold one more worker now. A worker keeps
        its resources while it lives, so one created without room could wait forever."""
        return self._room() >= 1

    def _capacity(self) -> int:
        """How many warm workers the cluster can hold at once (they keep their CPUs and GPUs
        while they live): at most `max_in_flight`, at least one."""
        total = self._ray.cluster_resources()
        n = self.resources.max_in_flight
        if self.resources.num_cpus > 0:
            n = min(n, int(total.get("CPU", 0) // self.resources.num_cpus))
        if self.resources.num_gpus > 0:
            n = min(n, int(total.get("GPU", 0) // self.resources.num_gpus))
        return max(1, n)

    def _replace(self, slot: int) -> None:
        """Forget a dead worker. Its slot gets a fresh one once REPLACE_AFTER_S have passed (by
        then the cluster knows whether the dead worker's node is gone; a worker created
        earlier could be counted on the lost node's resources and never start), and at once
        when no worker is left; meanwhile jobs queue behind the live workers."""
        self._forget(slot)
        self.replaced += 1

    def _forget(self, slot: int) -> None:
        self._workers.pop(slot, None)
        self._holds.pop(slot, None)
        self._starting.pop(slot, None)
        self._died[slot] = time.monotonic()

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]:
        """The archs' profiles, measured in parallel chunks, one per worker that fits now (with
        the jobs' CPUs and GPUs, so latency is measured on the device the jobs run on): on the
        warm workers, which keep the base supernet they load for the jobs that follow, or as
        fresh tasks. A chunk that fails is tried twice more (a dead worker is replaced; the
        chunk goes to a live worker, or to a task when none is left); then the error is
        raised: a build needs the profiles. A chunk on a worker that does not start while
        another has is moved as in `_check_starts`."""
        if not arch_ids:
            return []
        task = self._ray.remote(profile_remote).options(  # idempotent: retried on any failure
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, max_retries=2, retry_exceptions=True
        )
        warm = self.resources.warm_workers
        slots = min(self._capacity(), len(arch_ids))
        if warm:  # a worker keeps its resources: only as many as fit now (a task would just wait)
            slots = min(slots, max(1, len(self._workers) + self._room()))
        size = -(-len(arch_ids) // slots)
        chunks = [arch_ids[i : i + size] for i in range(0, len(arch_ids), size)]
        refs: dict = {}  # ref -> (chunk index, warm worker slot or None for a task, tries so far)

        def launch(i: int, slot: int | None, tries: int) -> None:
            if slot is None:
                ref = task.remote(self.zoo_uri, self.s3, manifest, chunks[i], image_size, self._threads)
            else:
                if slot not in self._workers:
                    self._new_worker(slot)
                ref = self._workers[slot].profile.remote(manifest, chunks[i], image_size)
            refs[ref] = (i, slot, tries)

        done: dict[int, list[ArchProfile]] = {}
        try:
            targets = [None] * len(chunks)  # tasks
            if warm:  # the live workers first, then new ones in free slots
                free = [slot for slot in range(self._capacity()) if slot not in self._workers]
                targets = [*sorted(self._workers), *free][: len(chunks)]
            for i, slot in enumerate(targets):
                launch(i, slot, 0)
            while refs:
                ready, _ = self._ray.wait(list(refs), num_returns=1, timeout=START_DEADLINE_S / 8 if warm else None)
                if not ready:
                    for gone in self._give_up_unstarted():
                        for ref, (i, slot, tries) in list(refs.items()):
                            if slot == gone:
                                launch(i, self._least_loaded(self._started()), tries)
                                del refs[ref]
                    continue
                i, slot, tries = refs.pop(ready[0])
                try:
                    done[i] = self._ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - raised once the chunk's tries are spent
                    if interruption(e) is not None or slot is None or tries >= 2:
                        raise  # (Ray has retried a task twice itself)
                    if isinstance(e, self._ray.exceptions.RayActorError):
                        self._replace(slot)  # dead (a node lost?): the slot gets a fresh worker later
                    live = self._started() or sorted(self._workers)
                    launch(i, live[i % len(live)] if live else None, tries + 1)
            return [p for i in range(len(chunks)) for p in done[i]]
        except BaseException as e:
            for ref, (_, slot, _) in refs.items():
                if slot is None:
                    self._ray.cancel(ref, force=True)
            if any(slot is not None for _, slot, _ in refs.values()):
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

    def _room(self) -> int:
        """How many more workers the cluster's free CPUs and GPUs hold now."""
        free = self._ray.available_resources()
        n = [int(free.get("CPU", 0) // self.resources.num_cpus)] if self.resources.num_cpus > 0 else []
        n += [int(free.get("GPU", 0) // self.resources.num_gpus)] if self.resources.num_gpus > 0 else []
        return min(n) if n else self._capacity()

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._drop_finished_prefetches()
        if not self._pending:
            return []
        self._check_starts()
        if self._starting:  # wake up in time to give up a worker that does not start
            timeout = min(START_DEADLINE_S / 8, timeout if timeout is not None else float("inf"))
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            spec, slot = self._pending.pop(ref)
            actor = self._ran_on.pop(ref, None)
            try:
                outcomes.append(Outcome(spec, result=self._ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a failed job is an outcome, not a crash
                if interruption(e) is not None:  # unless a signal arrived inside ray.get
                    raise interruption(e) from None
                if (
                    slot is not None
                    and isinstance(e, self._ray.exceptions.RayActorError)
                    and self._workers.get(slot) is actor
                ):  # not its replacement: a queued job's
                    self._replace(slot)  # the worker died (killed, out of memory, node lost)
                cause = getattr(e, "cause", None)
                outcomes.append(Outcome(spec, error=cause if isinstance(cause, BaseException) else e))
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

    def close(self) -> None:
        self._queue.clear()

    def submit(self, spec: JobSpec) -> None:
        self._queue.append(spec)

    def _answer(self, spec: JobSpec) -> Outcome:
        src = self._answers.get(Pair(spec.dataset_id, spec.arch))
        if src is None:
            return Outcome(
                spec,
                error=KeyError(f"the replay zoo {self.source.uri} has no result for ({spec.dataset_id}, {spec.arch})"),
            )
        # the checkpoint stays in the source zoo: the replayed row names it absolutely
        record = dataclasses.replace(
            src,
            job_id=spec.job_id,
            checkpoint_uri=checkpoint_uri(self.source, src.checkpoint_uri),
            created_at=datetime.now(UTC).isoformat(),
        )
        if not self.target.write_table(spec.result_key, to_table([record]), create_only=True):
            return Outcome(spec, result=read_result(self.target, spec.result_key))
        return Outcome(spec, result=record)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._queue:
            return []
        return [self._answer(self._queue.pop(0))]

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]:
        """The source zoo's profiles of these archs (a replay measures nothing)."""
        known = cached_profiles(self.source) or {}
        missing = [a for a in arch_ids if a not in known]
        if missing:
            raise KeyError(
                f"the replay zoo {self.source.uri} has no profiles of {len(missing)} "
                f"pool archs (e.g. {missing[0]}); replay from a zoo built with the same pool"
            )
        return [known[a] for a in arch_ids]
