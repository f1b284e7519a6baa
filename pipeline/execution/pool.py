"""The warm workers: `WarmWorker` is the Ray actor that runs jobs with a cache, `WorkerPool`
the driver-side owner of those actors (slots, start deadlines, replacement after a death)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

from tans.workers.cache import JobCache
from tans.workers.job import JobSpec
from tans.workers.measure_archs import profile_remote
from tans.workers.run import prefetch_data, run_job
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile, ResultRecord
from tans.zoo_schema.store import S3Settings

REPLACE_AFTER_S = 60.0  # a dead warm worker's slot is refilled after this (see WorkerPool.replace)
START_DEADLINE_S = 120.0  # a new warm worker not started by then is given up while another is live


def run_remote(spec: JobSpec, zoo_uri: str, s3: S3Settings, threads: int):
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


class WorkerPool:
    """The warm workers of an `ActorExecutor`: one actor per slot, as many as `max_in_flight` and
    the cluster's free CPUs and GPUs allow. It owns the actors, which datasets each ran last,
    which are still starting, and when a slot's worker died; it chooses a slot for a job
    (`slot_for`) and gives up workers that never start (`give_up_unstarted`). The executor
    owns the jobs and says how loaded each slot is (`load`: slot -> jobs on it)."""

    def __init__(self, ray, zoo_uri: str, s3: S3Settings, resources, threads: int):
        self._ray, self.zoo_uri, self.s3, self.resources, self.threads = ray, zoo_uri, s3, resources, threads
        self._actor_class = ray.remote(concurrency_groups={"prefetch": 1})(WarmWorker).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0, max_task_retries=0
        )  # jobs run one at a time; a prefetch runs beside them
        self.workers: dict[int, object] = {}  # slot -> actor handle
        self.holds: dict[int, list[str]] = {}  # slot -> dataset ids it ran, most recent last
        self.starting: dict[int, tuple] = {}  # slot -> (its __ray_ready__ ref, when created)
        self.died: dict[int, float] = {}  # slot -> when its worker died
        self.replaced = 0  # workers that died and were replaced
        self.unstarted = 0  # workers given up for not starting (see give_up_unstarted)

    def worker(self, slot: int, dataset_id: str | None = None):
        """The slot's actor (created when the slot has none), noting that it runs `dataset_id`."""
        if slot not in self.workers:
            actor = self._actor_class.remote(self.zoo_uri, self.s3, self.threads, self.resources.worker_cache_mb)
            self.workers[slot] = actor
            self.starting[slot] = (actor.__ray_ready__.remote(), time.monotonic())
        if dataset_id is not None:
            holds = [d for d in self.holds.get(slot, []) if d != dataset_id] + [dataset_id]
            self.holds[slot] = holds[-8:]
        return self.workers[slot]

    def slot_for(self, dataset_id: str, load: Counter) -> int:
        """A free worker that ran this dataset last (its data is likely still held), else any
        free worker, else a new worker if the cluster has room, else the least loaded one (the
        job queues behind its current one). A live worker counts even after the cluster shrank
        (a node lost) below the slots in use."""
        capacity = self.capacity()
        slots = sorted(set(range(capacity)) | set(self.workers))
        free = [slot for slot in slots if not load[slot]]
        holding = [slot for slot in free if dataset_id in self.holds.get(slot, [])]
        if holding:
            return max(holding, key=lambda slot: self.holds[slot].index(dataset_id))
        running = [slot for slot in free if slot in self.workers]
        if running:
            return running[0]
        now = time.monotonic()
        creatable = [slot for slot in free if now - self.died.get(slot, -REPLACE_AFTER_S) >= REPLACE_AFTER_S]
        if free and (not self.workers or (creatable and len(self.workers) < capacity and self.room() >= 1)):
            return (creatable or free)[0]  # a new worker: the cluster has room for it now
        # no room for another worker (e.g. a node was lost): queue behind a live one's job
        return least_loaded([slot for slot in slots if slot in self.workers] or list(slots), load)

    def started(self) -> list[int]:
        """The slots of the live workers that have started (their constructor has run)."""
        if self.starting:
            refs = [ref for ref, _ in self.starting.values()]
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
            for slot, (ref, _) in list(self.starting.items()):
                if ref in ready:
                    del self.starting[slot]  # started (or failed to: its jobs fail like any other)
        return [slot for slot in sorted(self.workers) if slot not in self.starting]

    def give_up_unstarted(self) -> list[int]:
        """Give up the new workers that have not started within START_DEADLINE_S while another
        worker has: the cluster can count a lost node's resources for a while and place a
        worker there that never starts. A worker still starting when none has is waited for:
        there is nowhere else to go. Returns the slots given up: the caller moves their work
        to the started workers (no attempt is counted: it never ran)."""
        started, now = self.started(), time.monotonic()
        late = [slot for slot, (_, created) in self.starting.items() if now - created >= START_DEADLINE_S]
        if not started:
            return []
        for slot in late:
            self._ray.kill(self.workers[slot])
            self.forget(slot)
            self.unstarted += 1
        return late

    def capacity(self) -> int:
        """How many warm workers the cluster can hold at once (they keep their CPUs and GPUs
        while they live): at most `max_in_flight`, at least one."""
        total = self._ray.cluster_resources()
        n = self.resources.max_in_flight
        if self.resources.num_cpus > 0:
            n = min(n, int(total.get("CPU", 0) // self.resources.num_cpus))
        if self.resources.num_gpus > 0:
            n = min(n, int(total.get("GPU", 0) // self.resources.num_gpus))
        return max(1, n)

    def room(self) -> int:
        """How many more workers the cluster's free CPUs and GPUs hold now (a worker keeps its
        resources while it lives, so one created without room could wait forever)."""
        free = self._ray.available_resources()
        n = [int(free.get("CPU", 0) // self.resources.num_cpus)] if self.resources.num_cpus > 0 else []
        n += [int(free.get("GPU", 0) // self.resources.num_gpus)] if self.resources.num_gpus > 0 else []
        return min(n) if n else self.capacity()

    def replace(self, slot: int) -> None:
        """Forget a dead worker. Its slot gets a fresh one once REPLACE_AFTER_S have passed (by
        then the cluster knows whether the dead worker's node is gone; a worker created
        earlier could be counted on the lost node's resources and never start), and at once
        when no worker is left; meanwhile jobs queue behind the live workers."""
        self.forget(slot)
        self.replaced += 1

    def forget(self, slot: int) -> None:
        self.workers.pop(slot, None)
        self.holds.pop(slot, None)
        self.starting.pop(slot, None)
        self.died[slot] = time.monotonic()

    def close(self) -> None:
        """Stop the warm workers now (their CPUs and GPUs are freed for whatever runs next)."""
        for actor in self.workers.values():
            self._ray.kill(actor)
        self.workers.clear()
        self.holds.clear()
        self.starting.clear()


def least_loaded(slots: list[int], load: Counter) -> int:
    return min(slots, key=lambda slot: load[slot])
