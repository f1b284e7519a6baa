"""The Executor contract (pipeline/execution/executor.py), tested over both executors.

Each runs against a zoo whose rows are written directly (no fine-tuning): the Ray executor's
workers answer a committed job with its row at once, and fail a job whose dataset the zoo
lacks; the replay executor answers the pairs its source zoo holds and fails the others.
"""

from __future__ import annotations

import threading
import time

import pytest

from tans.pipeline.acquisition.base import Pair
from tans.pipeline.execution.executor import Outcome, ResourceSettings
from tans.pipeline.execution.ray_executor import ray_executor
from tans.pipeline.execution.replay import ReplayExecutor
from tans.workers.job import TrainSettings, job_spec
from tans.workers.networks.ofa_space import arch_pool
from tans.zoo_schema import layout
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import DatasetRecord, to_table
from tans.zoo_schema.shards import read_dataset
from tans.zoo_schema.store import S3Settings, open_store
from tests.helpers import ARCHS, MANIFEST, committed_zoo

MISSING = DatasetRecord("not-in-the-zoo", "n", 2, ["a", "b"], 8, 2, "x", "sha2", 0, 0, "t")


@pytest.fixture(
    params=[
        pytest.param("ray-warm-workers", marks=pytest.mark.slow),
        pytest.param("ray-tasks", marks=pytest.mark.slow),
        "replay",
    ]
)
def executor_case(request, tmp_path):
    """(executor, specs it completes, a spec it fails, its universe)."""
    store, specs = committed_zoo(tmp_path / "zoo")
    failing = job_spec(MISSING, ARCHS[0], TrainSettings(), MANIFEST)
    if request.param.startswith("ray"):
        request.getfixturevalue("ray_cluster")
        resources = ResourceSettings(warm_workers=request.param == "ray-warm-workers")
        executor = ray_executor(store.uri, S3Settings(), resources)
        yield executor, specs, failing, None
        executor.close()  # its warm workers hold the module cluster's CPUs
        return
    target = open_store(str(tmp_path / "target"))
    yield ReplayExecutor(store, target), specs, failing, frozenset(Pair(s.dataset_id, s.arch) for s in specs)


def drain(executor, deadline_s: float = 120) -> list[Outcome]:
    outcomes, deadline = [], time.time() + deadline_s
    while executor.in_flight and time.time() < deadline:
        outcomes += executor.wait(5)
    return outcomes


def test_executor_contract(executor_case):
    executor, specs, failing, universe = executor_case
    assert executor.in_flight == 0 and executor.wait(0.1) == []  # nothing in flight: [] at once
    assert executor.universe() == universe
    for spec in [*specs, failing]:
        executor.submit(spec)  # returns at once
    assert executor.in_flight == len(specs) + 1
    outcomes = drain(executor)
    assert executor.in_flight == 0
    # each job's outcome exactly once; a failed job is an outcome, not an exception
    assert sorted(o.spec.job_id for o in outcomes) == sorted(s.job_id for s in [*specs, failing])
    done = {o.spec.job_id: o for o in outcomes}
    for spec in specs:
        assert done[spec.job_id].error is None
        assert (done[spec.job_id].result.dataset_id, done[spec.job_id].result.arch) == (spec.dataset_id, spec.arch)
    assert done[failing.job_id].result is None and done[failing.job_id].error is not None
    assert executor.wait(0.1) == []
    executor.close()
    executor.close()  # twice is fine


def ingested_zoo(datasets, zoo):
    """A zoo holding the tiny datasets and its manifest, and no results (a build of 0 jobs)."""
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build

    run_build(
        load_config(
            None,
            {
                "zoo": str(zoo),
                "datasets": [str(datasets)],
                "max_jobs": 0,
                "arch.pool_size": 5,
                "retrain.after_build": False,
            },
        ),
        log=lambda *_: None,
        tracking=False,
    )
    return zoo


def test_warm_workers_keep_data_and_weights_and_train_as_fresh_tasks_do(ray_cluster, tiny_datasets, tmp_path):
    """Three jobs on one dataset through one warm worker: the first decodes the data and loads
    the base supernet, the next find them held. The same jobs as fresh tasks, on a copy of the
    zoo, give the same results bit for bit."""
    import shutil

    zoo = ingested_zoo(tiny_datasets, tmp_path / "zoo")
    shutil.copytree(zoo, tmp_path / "copy")
    runs = {}
    for name, warm in (("zoo", True), ("copy", False)):
        store = open_store(str(tmp_path / name))
        manifest, dataset = read_manifest(store), read_dataset(store, "hue-6")
        executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=1, warm_workers=warm))
        runs[name] = []
        for arch in ARCHS:
            executor.submit(job_spec(dataset, arch, TrainSettings(epochs=1, latency_repeats=2), manifest))
            (outcome,) = drain(executor)
            assert outcome.error is None, outcome.error
            runs[name].append(outcome.result)
    warm, cold = runs["zoo"], runs["copy"]
    assert all(
        w.data_seconds < warm[0].data_seconds / 3 and w.setup_seconds < warm[0].setup_seconds for w in warm[1:]
    )  # held by the worker
    assert [(w.job_id, w.accuracy, w.epoch_losses, w.epoch_accuracies) for w in warm] == [
        (c.job_id, c.accuracy, c.epoch_losses, c.epoch_accuracies) for c in cold
    ]


def test_a_job_queued_behind_a_running_one_has_its_data_decoded_meanwhile(ray_cluster, tiny_datasets, tmp_path):
    """More jobs in flight than warm workers (two on the one 2-CPU worker the cluster holds):
    the queued job's splits are decoded in the worker's `prefetch` concurrency group while the
    first job trains, so the queued job finds them held (had the prefetch waited in the jobs'
    queue, it would have run after the job, found it committed and decoded nothing)."""
    import ray

    zoo = ingested_zoo(tiny_datasets, tmp_path / "zoo")
    store = open_store(str(zoo))
    manifest, train = read_manifest(store), TrainSettings(epochs=1, latency_repeats=2)
    first, queued = (
        job_spec(read_dataset(store, d), a, train, manifest)
        for d, a in (("hue-6", ARCHS[0]), ("shapes-clean", ARCHS[1]))
    )
    executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=2, num_cpus=2))
    executor.submit(first)
    executor.submit(queued)
    assert executor.in_flight == 2 and len(executor.pool.workers) == 1
    outcomes = drain(executor)
    assert [o.error for o in outcomes] == [None, None]
    stats = ray.get(executor.pool.workers[0].cache_stats.remote())
    executor.close()
    assert stats["datasets"] == ["hue-6", "shapes-clean"]
    # misses: the first job's two splits and the supernet, the prefetch's two splits;
    # hits: the queued job's two splits and the supernet
    assert (stats["misses"], stats["hits"]) == (5, 3)
    # the prefetch held both splits before the queued job started, and that job started only
    # after the first had committed: the jobs ran one after the other
    done = {o.spec.job_id: o.result for o in outcomes}
    started = [store.read_json(k)["at"] for k in store.list(layout.start_key(queued.job_id, "x").rsplit("/", 1)[0])]
    ((job_id, held, prefetched_at),) = stats["prefetched"]
    assert job_id == queued.job_id and held and prefetched_at < started[0]
    assert len(started) == 1 and started[0] >= done[first.job_id].created_at


def test_a_dead_workers_second_job_does_not_retire_its_replacement(ray_cluster, tiny_datasets, tmp_path):
    """A worker killed with a job running and one queued fails both. The first failure's
    retry gets a new worker in the same slot; the queued job's failure, seen after that, is
    the old worker's and must not make the executor forget the new one."""
    import ray

    zoo = ingested_zoo(tiny_datasets, tmp_path / "zoo")
    store = open_store(str(zoo))
    manifest, train = read_manifest(store), TrainSettings(epochs=1, latency_repeats=2)
    specs = [job_spec(read_dataset(store, "hue-6"), a, train, manifest) for a in ARCHS[:2]]
    executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=2, num_cpus=2))
    for spec in specs:
        executor.submit(spec)
    old = executor.pool.workers[0]
    ray.kill(old)
    first = []
    while not first:
        first = executor.wait(30)
    assert first[0].error is not None and executor.pool.replaced == 1
    executor.submit(first[0].spec)  # the driver's retry: a new worker in slot 0
    new = executor.pool.workers[0]
    assert new is not old
    second = []
    while not second:
        second = executor.wait(30)
    assert second[0].error is not None  # the queued job, failed with the old worker
    assert executor.pool.workers.get(0) is new and executor.pool.replaced == 1
    executor.submit(second[0].spec)
    outcomes = drain(executor)
    assert sorted(o.spec.job_id for o in outcomes) == sorted(s.job_id for s in specs)
    assert all(o.error is None for o in outcomes)
    executor.close()


def test_executor_profiles_archs_in_order(executor_case, tmp_path):
    """`profile` gives each arch's profile, in the order asked: the Ray executor measures them in
    parallel tasks (what a local measurement gives, latency aside), the replay executor takes
    the source zoo's."""
    import numpy as np

    from tans.pipeline.acquisition.priors import PROFILES_KEY
    from tans.workers.measure_archs import profile_archs

    executor, _, _, _ = executor_case
    store = open_store(str(tmp_path / "zoo"))
    local = profile_archs(store, MANIFEST, ARCHS, 32)
    if isinstance(executor, ReplayExecutor):
        store.write_table(PROFILES_KEY, to_table(local))
    got = executor.profile(MANIFEST, ARCHS, 32)
    assert [p.arch for p in got] == ARCHS
    assert [(p.params, p.flops) for p in got] == [(p.params, p.flops) for p in local]
    assert all(
        np.allclose(g.functional_embedding, w.functional_embedding, rtol=1e-4, atol=1e-6) for g, w in zip(got, local)
    )
    assert all(p.latency_ms > 0 for p in got)
    if isinstance(executor, ReplayExecutor):
        with pytest.raises(KeyError, match="has no profiles of 1 pool archs"):
            executor.profile(MANIFEST, [*ARCHS, arch_pool(1, 1)[0].id], 32)


def test_a_warm_worker_that_never_starts_is_given_up_and_its_job_moved(ray_cluster, tmp_path, monkeypatch):
    """Just after a node is lost the cluster can still count its resources, and a new warm
    worker placed on them never starts. Once START_DEADLINE_S has passed with another worker
    live, the executor gives it up and its queued job runs on the live one: no job waits
    forever, none counts as failed. (Here a held CPU and a stale `WorkerPool.room` make it.)
    Profiling, first, makes only as many workers as there is room for."""
    import ray

    from tans.pipeline.execution import pool as pool_module

    store, specs = committed_zoo(tmp_path / "zoo")
    hold = ray.remote(num_cpus=1)(type("Hold", (), {})).remote()
    executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=2, warm_workers=True))
    try:
        ray.get(hold.__ray_ready__.remote(), timeout=60)  # one of the two CPUs taken
        profiled: list = []  # profiling makes only the worker there is room for (two would hang)
        thread = threading.Thread(target=lambda: profiled.extend(executor.profile(MANIFEST, ARCHS, 32)), daemon=True)
        thread.start()
        thread.join(120)
        assert [p.arch for p in profiled] == ARCHS and sorted(executor.pool.workers) == [0]
        executor.submit(specs[0])
        assert [o.error for o in drain(executor)] == [None]  # on worker 0, on the other CPU
        monkeypatch.setattr(pool_module, "START_DEADLINE_S", 3.0)
        monkeypatch.setattr(executor.pool, "room", lambda: 1)  # the stale view
        executor.submit(specs[1])  # to worker 0, which holds the dataset
        executor.submit(specs[2])  # to a new worker 1, which cannot start
        assert sorted(executor.pool.workers) == [0, 1]
        outcomes = drain(executor, 60)
        assert sorted(o.spec.job_id for o in outcomes) == sorted(s.job_id for s in specs[1:])
        assert all(o.error is None for o in outcomes)
        assert executor.pool.unstarted == 1 and executor.pool.replaced == 0 and sorted(executor.pool.workers) == [0]
    finally:
        executor.close()
        ray.kill(hold)


def test_profiling_on_warm_workers_leaves_them_holding_the_base(ray_cluster, tmp_path):
    """With warm workers, the pool is profiled on them, in one chunk per worker: each then
    holds the base supernet for the jobs that follow. A worker that died meanwhile is
    replaced, and its chunk is measured by the live one: the profiles are the same."""
    import ray

    store, _ = committed_zoo(tmp_path / "zoo")
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)  # the workers of the tests before are gone: room for two
    executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=2, warm_workers=True))
    try:
        first = executor.profile(MANIFEST, ARCHS, 32)
        assert sorted(executor.pool.workers) == [0, 1]
        held = [
            ray.get(w.__ray_call__.remote(lambda self: list(self.cache._supernets)))
            for w in executor.pool.workers.values()
        ]
        assert all(len(h) == 1 and h[0][2] == MANIFEST.base_weights.id for h in held)
        ray.kill(executor.pool.workers[0])
        again = executor.profile(MANIFEST, ARCHS, 32)
        assert executor.pool.replaced == 1 and 0 not in executor.pool.workers
        assert [(p.arch, p.params, p.flops) for p in again] == [(p.arch, p.params, p.flops) for p in first]
    finally:
        executor.close()


def test_the_paper_scale_replay_source_of_the_driver_benchmark_is_a_zoo_it_can_replay(tmp_path, monkeypatch):
    """bench/driver_scale.py writes its synthetic source zoo through the production writers
    (result files and their snapshot); a change to what they accept must not leave the
    benchmark unable to start, as the snapshot's refusal of light records once did."""
    import importlib.util
    import sys
    from pathlib import Path

    from tans.zoo_schema.results import read_results

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the benchmark works from the repository root ...
    monkeypatch.setattr(sys, "path", list(sys.path))  # ... and puts it first on the path
    spec = importlib.util.spec_from_file_location("driver_scale", root / "bench" / "driver_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    profiles = {a.id: {"params": 2_000_000 + 1000 * k, "latency_ms": 5.0 + k} for k, a in enumerate(arch_pool(0, 3))}
    model = {"fits": [(0.6, 0.05)], "arch_sd": 0.02, "noise_sd": 0.03}
    source = bench.make_source(tmp_path / "zoo", 2, profiles, model, seed=0)
    rows = read_results(source)
    assert len(rows) == 6 and {r.arch for r in rows} == set(profiles)
    replay = ReplayExecutor(source, open_store(str(tmp_path / "target")))
    assert len(replay.universe()) == 6
