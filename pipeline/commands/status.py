"""`tans status`: what a zoo holds, per dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tans.pipeline.acquisition.hypervolume import dataset_hypervolumes, front_indices, hv_history
from tans.pipeline.acquisition.priors import cached_profiles
from tans.retriever.stale import Staleness, staleness
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.results import ZooState, read_state
from tans.zoo_schema.store import ZooStore


@dataclass(frozen=True)
class DatasetStatus:
    dataset_id: str
    classes: int
    train: int
    test: int
    jobs: int
    failed: int  # jobs given up or failing, with no result
    best_accuracy: float | None
    mean_accuracy: float | None
    pareto_front: int  # networks on its (accuracy, latency, params) front
    hypervolume: float | None  # normalized; None before a build profiled the pool


@dataclass(frozen=True)
class HypervolumePoint:
    results: int
    mean_hypervolume: float


@dataclass(frozen=True)
class ZooStatus:
    zoo: str
    datasets: int
    finished_jobs: int
    failed_jobs: int
    architectures: int
    base_weights: str | None
    mean_hypervolume: float | None
    hypervolume_history: list[HypervolumePoint]
    per_dataset: list[DatasetStatus]
    job_seconds: dict[str, float]  # summed over the jobs that recorded their phases
    non_training_share: float | None  # of those jobs' time, what was not training steps
    retriever: Staleness  # the newest retriever version, and whether (and why) it is stale

    def as_dict(self) -> dict:
        return asdict(self)


def hypervolumes(store: ZooStore, state: ZooState, at: list[int] | None = None) -> tuple[dict[str, float], list[float]]:
    """Per-dataset normalized hypervolume now, and the mean over datasets after each result
    (or after the results at the indices `at`).

    Derived from the results (commit order) and the pool profiles cached in the zoo; empty
    when no build has profiled the pool yet.
    """
    profiles = cached_profiles(store)
    if profiles is None or not state.results:
        return {}, []
    ids = [d.dataset_id for d in state.datasets]
    return dataset_hypervolumes(state.results, profiles, ids), hv_history(state.results, profiles, ids, at)


def history_marks(n: int) -> list[int]:
    """The result indices `tans status` shows the hypervolume after: about 20, and the last."""
    step = max(1, n // 20)
    return sorted(set(range(step - 1, n, step)) | {n - 1}) if n else []


def job_phases(results) -> dict[str, float]:
    """Seconds the jobs spent per phase, summed over the results that timed them."""
    timed = [r for r in results if r.data_seconds or r.setup_seconds]
    return {
        "data": sum(r.data_seconds for r in timed),
        "setup": sum(r.setup_seconds for r in timed),
        "training": sum(r.train_seconds - r.eval_seconds for r in timed),
        "evaluation": sum(r.eval_seconds for r in timed),
        "profiling": sum(r.profile_seconds for r in timed),
        "checkpoint": sum(r.checkpoint_seconds for r in timed),
    }


def zoo_status(store: ZooStore, state: ZooState | None = None, hv=None) -> ZooStatus:
    """What the zoo holds; `state` and `hv` (from `hypervolumes`, the whole history) when the
    caller has them."""
    state = state if state is not None else read_state(store, light=True)  # no embeddings needed
    manifest = read_manifest(store)
    marks = history_marks(len(state.results))
    if hv is None:  # the history at the marks only: 21 hypervolume steps, not one per result
        hv, at_marks = hypervolumes(store, state, marks)
    else:
        hv, history = hv
        at_marks = [history[i] for i in marks] if history else []
    points = [HypervolumePoint(i + 1, round(v, 5)) for i, v in zip(marks, at_marks)]
    failed_ids = {f.job_id for f in state.failures} - state.done_ids
    by_dataset: dict[str, list] = {}
    for r in state.results:
        by_dataset.setdefault(r.dataset_id, []).append(r)
    failed_by_dataset: dict[str, set] = {}
    for f in state.failures:
        if f.job_id in failed_ids:
            failed_by_dataset.setdefault(f.dataset_id, set()).add(f.job_id)
    rows = []
    for d in state.datasets:
        results = by_dataset.get(d.dataset_id, [])
        costs = [(r.accuracy, r.latency_ms, r.params) for r in results]
        rows.append(
            DatasetStatus(
                dataset_id=d.dataset_id,
                classes=d.num_classes,
                train=d.num_train,
                test=d.num_test,
                jobs=len(results),
                failed=len(failed_by_dataset.get(d.dataset_id, ())),
                best_accuracy=max((r.accuracy for r in results), default=None),
                mean_accuracy=(sum(r.accuracy for r in results) / len(results)) if results else None,
                pareto_front=len(front_indices(costs)),
                hypervolume=round(hv[d.dataset_id], 5) if d.dataset_id in hv else None,
            )
        )
    phases = job_phases(state.results)
    total = sum(phases.values())
    return ZooStatus(
        job_seconds={k: round(v, 2) for k, v in phases.items()},
        non_training_share=round(1 - phases["training"] / total, 4) if total else None,
        zoo=store.uri,
        datasets=len(state.datasets),
        finished_jobs=len(state.results),
        failed_jobs=len(failed_ids),
        architectures=len({r.arch for r in state.results}),
        base_weights=manifest.base_weights.id if manifest else None,
        mean_hypervolume=round(sum(hv.values()) / len(hv), 5) if hv else None,
        hypervolume_history=points,
        per_dataset=rows,
        retriever=staleness(store, state.results),
    )


def format_status(status: ZooStatus) -> str:
    lines = [
        f"zoo {status.zoo}: {status.datasets} datasets, {status.finished_jobs} finished "
        f"jobs ({status.architectures} architectures), {status.failed_jobs} failed; "
        f"base weights {status.base_weights}",
        "",
    ]
    header = (
        f"{'dataset':34} {'cls':>3} {'train':>5} {'test':>5} {'jobs':>4} {'fail':>4} "
        f"{'best':>6} {'mean':>6} {'front':>5} {'hv':>6}"
    )
    lines += [header, "-" * len(header)]

    def pct(v):
        return "-" if v is None else f"{v:.3f}"

    for r in status.per_dataset:
        lines.append(
            f"{r.dataset_id[:34]:34} {r.classes:>3} {r.train:>5} {r.test:>5} "
            f"{r.jobs:>4} {r.failed:>4} {pct(r.best_accuracy):>6} "
            f"{pct(r.mean_accuracy):>6} {r.pareto_front:>5} {pct(r.hypervolume):>6}"
        )
    r = status.retriever
    if r.version is None:
        lines += ["", f"retriever: none yet; train one with `tans retrain {status.zoo}`"]
    elif r.stale:
        lines += ["", f"retriever v{r.version}: STALE ({r.why}); `tans retrain {status.zoo} --if-stale` retrains it"]
    else:
        lines += ["", f"retriever v{r.version}: up to date (trained on {r.trained_on} of {r.results} results)"]
    if status.non_training_share is not None:
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in status.job_seconds.items())
        lines += ["", f"where the jobs' time went: {parts}; {status.non_training_share:.0%} not training"]
    if status.hypervolume_history:
        lines += ["", "mean normalized hypervolume as the zoo grew:"]
        lines += ["  " + "  ".join(f"{h.results}:{h.mean_hypervolume:.3f}" for h in status.hypervolume_history)]
    return "\n".join(lines)
