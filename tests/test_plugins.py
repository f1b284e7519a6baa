"""The driver's plug-ins: stoppers say when a build ends and why, callbacks hear of starts,
results, failures and the end (the snapshot callback rewrites the snapshot on its cadence)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tans.pipeline.execution.config import StopSettings
from tans.pipeline.execution.plugins import (
    BudgetStopper,
    HypervolumePlateauStopper,
    SnapshotCallback,
    WorkerHoursStopper,
    stoppers_for,
)
from tans.zoo_schema.results import SNAPSHOT_MIN_NEW, read_segments
from tans.zoo_schema.store import open_store
from tests.helpers import result


def fake_driver(n_results: int, train_seconds: float = 60.0, history=(), max_jobs: int = 100, store=None):
    results = [result("d0", "a", 0.5, i) for i in range(n_results)]
    results = [r.__class__(**{**r.__dict__, "train_seconds": train_seconds}) for r in results]
    return SimpleNamespace(
        results=results,
        used_budget=n_results,
        config=SimpleNamespace(max_jobs=max_jobs),
        hypervolume=SimpleNamespace(
            history=lambda at=None: [history[i] for i in at] if at is not None else list(history), profiles=lambda: None
        ),
        store=store,
    )


def test_each_stopper_says_why_once_its_condition_holds():
    assert BudgetStopper()(fake_driver(99)) is None
    assert BudgetStopper()(fake_driver(100)) == "job budget reached"
    hours = WorkerHoursStopper(1.0)
    assert hours(fake_driver(59)) is None
    assert hours(fake_driver(60)) == "worker-hour budget reached (1.00 h of fine-tuning)"
    plateau = HypervolumePlateauStopper(min_gain=0.01, window=3)
    assert plateau(fake_driver(3, history=[0.1, 0.2, 0.3])) is None  # not enough results yet
    assert plateau(fake_driver(5, history=[0.1, 0.2, 0.3, 0.35, 0.4])) is None  # gained 0.2 over 3
    assert plateau(fake_driver(5, history=[0.1, 0.5, 0.501, 0.502, 0.505])) == (
        "hypervolume gain 0.0050 over the last 3 results is below 0.01"
    )


def test_the_config_chooses_the_stoppers():
    assert [type(s) for s in stoppers_for(StopSettings())] == [BudgetStopper]
    chosen = stoppers_for(StopSettings(max_worker_hours=2.0, min_hv_gain=0.01, hv_window=8))
    assert [type(s) for s in chosen] == [BudgetStopper, WorkerHoursStopper, HypervolumePlateauStopper]


def test_the_snapshot_is_rewritten_on_its_cadence_and_at_the_end(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    callback = SnapshotCallback(snapshot_at=0)
    driver = fake_driver(SNAPSHOT_MIN_NEW - 1, store=store)
    callback.on_result(driver, None, driver.results[-1])
    assert read_segments(store) is None
    driver.results.append(result("d0", "a", 0.5, SNAPSHOT_MIN_NEW))
    callback.on_result(driver, None, driver.results[-1])
    assert sum(s.rows for s in read_segments(store)) == SNAPSHOT_MIN_NEW
    driver.results.append(result("d0", "a", 0.5, SNAPSHOT_MIN_NEW + 1))
    callback.on_finish(driver, None)
    assert sum(s.rows for s in read_segments(store)) == SNAPSHOT_MIN_NEW + 1


def test_the_drivers_hypervolumes_follow_each_commit_as_a_full_recount_does():
    """The driver's tracker indexes the results by dataset as they come (a commit recounts its
    own dataset, not the zoo); its mean, and the plateau stopper's gain read at two marks, are
    what the whole computation over every result gives."""
    import random

    from tans.pipeline.acquisition.hypervolume import dataset_hypervolumes, hv_history
    from tans.pipeline.execution.driver import Hypervolumes
    from tans.zoo_schema.records import ArchProfile

    archs = [f"arch-{k}" for k in range(6)]
    profiles = {a: ArchProfile(a, 1000 * (k + 1), 1, 1.0 + k, [0.0]) for k, a in enumerate(archs)}
    rng = random.Random(0)
    driver = SimpleNamespace(results=[], datasets={f"d{k}": None for k in range(4)})
    tracker = Hypervolumes(driver)
    tracker._profiles = profiles  # as the pool's profiling gives them
    for n in range(40):
        r = result(rng.choice(sorted(driver.datasets)), rng.choice(archs), rng.random(), n)
        r = r.__class__(**{**r.__dict__, "created_at": float(n)})
        driver.results.append(r)
        if n == 10:
            assert tracker.mean() >= 0  # read midway: the index catches up with what came before
        tracker.changed(r.dataset_id)
        full = dataset_hypervolumes(driver.results, profiles, sorted(driver.datasets))
        assert tracker.mean() == sum(full.values()) / len(full)
        assert sorted(r.job_id for rows in tracker._rows.values() for r in rows) == sorted(
            r.job_id for r in driver.results
        )  # each result indexed once
    history = hv_history(driver.results, profiles, sorted(driver.datasets))
    assert tracker.history(at=[29, 39]) == [history[29], history[39]]
    driver.hypervolume = tracker
    # a window whose gain differs from those of the windows one shorter and one longer, so that a
    # mark one off would show
    window = next(w for w in range(1, 38) if len({history[-1] - history[-1 - w + k] for k in (-1, 0, 1)}) == 3)
    gain = history[-1] - history[-1 - window]
    said = HypervolumePlateauStopper(min_gain=gain + 1e-12, window=window)(driver)
    assert said.startswith(f"hypervolume gain {gain:.4f} over the last {window} results")
    assert HypervolumePlateauStopper(min_gain=gain, window=window)(driver) is None  # the gain itself is not below
    with pytest.raises(ValueError, match="at least 1"):
        HypervolumePlateauStopper(min_gain=0.1, window=0)
