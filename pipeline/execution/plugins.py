"""What extends the driver's loop without editing it (Ray Tune's `Stopper` and `Callback`):

- stoppers: each says, between steps, whether the build should stop and why (the job
  budget, a worker-hour budget, a hypervolume plateau); the first reason ends dispatching;
- callbacks: told when the build starts, a job commits, an attempt fails and the build ends
  (the build journal, the results snapshot, MLflow tracking).

Each is handed the `Driver` itself (not imported here: the driver imports this module) and
reads its `config`, `store`, `results`, `used_budget` and `hypervolume`.
"""

from __future__ import annotations

from typing import Protocol

from tans.pipeline.acquisition.base import Pair
from tans.pipeline.acquisition.hypervolume import summarize_rows
from tans.zoo_schema.journal import write_journal
from tans.zoo_schema.results import SNAPSHOT_MIN_NEW, write_snapshot
from tans.zoo_schema.shards import cache_datasets, read_datasets


class Stopper(Protocol):
    def __call__(self, driver) -> str | None:
        """Why the build should stop now, or None to go on."""


class BudgetStopper:
    """The job budget: `max_jobs` results and given-up pairs in the zoo."""

    def __call__(self, driver) -> str | None:
        return "job budget reached" if driver.used_budget >= driver.config.max_jobs else None


class WorkerHoursStopper:
    """The summed fine-tuning time of the zoo's results reached `max_hours`."""

    def __init__(self, max_hours: float):
        self.max_hours = max_hours

    def __call__(self, driver) -> str | None:
        hours = sum(r.train_seconds for r in driver.results) / 3600
        return f"worker-hour budget reached ({hours:.2f} h of fine-tuning)" if hours >= self.max_hours else None


class HypervolumePlateauStopper:
    """The mean normalized hypervolume gained less than `min_gain` over the last `window` results."""

    def __init__(self, min_gain: float, window: int):
        if window < 1:
            raise ValueError(f"the plateau window is a number of results, at least 1, not {window}")
        self.min_gain, self.window = min_gain, window

    def __call__(self, driver) -> str | None:
        if len(driver.results) <= self.window:
            return None
        n = len(driver.results)
        before, now = driver.hypervolume.history(at=[n - 1 - self.window, n - 1])  # not every step's
        gain = now - before
        if gain >= self.min_gain:
            return None
        return f"hypervolume gain {gain:.4f} over the last {self.window} results is below {self.min_gain}"


def stoppers_for(stop) -> list[Stopper]:
    """The stoppers a build config's `[stop]` asks for, after the job budget."""
    out: list[Stopper] = [BudgetStopper()]
    if stop.max_worker_hours > 0:
        out.append(WorkerHoursStopper(stop.max_worker_hours))
    if stop.min_hv_gain > 0:
        out.append(HypervolumePlateauStopper(stop.min_hv_gain, stop.hv_window))
    return out


class Callback:
    """Hooks of the build loop; each does nothing unless overridden."""

    def on_start(self, driver) -> None: ...

    def on_result(self, driver, spec, record) -> None: ...

    def on_failure(self, driver, spec, failure) -> None: ...

    def on_finish(self, driver, summary) -> None: ...


class JournalCallback(Callback):
    """`journal/builds/`: the start (with the config `tans resume` reads) and the stop."""

    def __init__(self, config: dict):
        self.config = config

    def on_start(self, driver) -> None:
        write_journal(driver.store, "builds", {"event": "start", "results": len(driver.results), "config": self.config})

    def on_finish(self, driver, summary) -> None:
        write_journal(driver.store, "builds", {"event": "stop", **summary.as_dict()})


class SnapshotCallback(Callback):
    """The results snapshot (fast resume, fast status): a segment of the new results, with each
    dataset's hypervolume and front size after each, after SNAPSHOT_MIN_NEW new results and at
    the end."""

    def __init__(self, snapshot_at: int):
        self.snapshot_at = snapshot_at  # results the snapshot holds

    def on_result(self, driver, spec, record) -> None:
        if len(driver.results) - self.snapshot_at >= SNAPSHOT_MIN_NEW:
            self._write(driver)

    def on_finish(self, driver, summary) -> None:
        if len(driver.results) > self.snapshot_at:
            self._write(driver)

    def _write(self, driver) -> None:
        summarize = summarize_rows(driver.results, driver.hypervolume.profiles())  # for `tans status`
        write_snapshot(driver.store, driver.results, summarize)
        cache_datasets(driver.store, read_datasets(driver.store))
        self.snapshot_at = len(driver.results)


class TrackingCallback(Callback):
    """MLflow: a child run per job and per failed attempt, the build run's end."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_result(self, driver, spec, record) -> None:
        self.tracker.log_result(spec, record, driver.proposed_by.pop(Pair(spec.dataset_id, spec.arch), None))

    def on_failure(self, driver, spec, failure) -> None:
        self.tracker.log_failure(spec, failure.error)

    def on_finish(self, driver, summary) -> None:
        self.tracker.finish(summary.as_dict())
