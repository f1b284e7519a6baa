"""The driver's plug-ins: stoppers say when a build ends and why, callbacks hear of starts,
results, failures and the end (the snapshot callback rewrites the snapshot on its cadence)."""

from __future__ import annotations

from types import SimpleNamespace

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
        hypervolume=SimpleNamespace(history=lambda: list(history), profiles=lambda: None),
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
