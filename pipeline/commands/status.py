"""`tans status`: what a zoo holds, per dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from tans.pipeline.acquisition.hypervolume import (
    dataset_hypervolumes,
    front_after,
    hv_history,
    hypervolume_after,
    normalizer_for,
)
from tans.pipeline.acquisition.priors import Prior, cached_profiles
from tans.retriever.stale import Staleness, staleness
from tans.zoo_schema.journal import read_failures
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import numpy_of, string_array, to_table
from tans.zoo_schema.results import SUMMARY, ZooState, result_columns
from tans.zoo_schema.shards import read_datasets
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


PHASES = ("data", "setup", "training", "evaluation", "profiling", "checkpoint")
# the result columns status reads (a tenth of a row without the embeddings)
COLUMNS = ["dataset_id", "job_id", "arch", "accuracy", "latency_ms", "params", "created_at"] + [
    f"{phase}_seconds" for phase in ("data", "setup", "train", "eval", "profile", "checkpoint")
]


STRINGS = ("dataset_id", "arch")  # as codes into their distinct values (a million rows: no Python strings)


def _columns(table) -> dict[str, np.ndarray]:
    """A status table's columns as numpy arrays, rows in commit order (created_at, job_id);
    `dataset_id` and `arch` as int codes, their values under `dataset_id:values` and
    `arch:values`. Sorted and encoded by Arrow: no Python object per row."""
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [("created_at", "ascending"), ("job_id", "ascending")]))
    cols: dict = {}
    for name in STRINGS:
        encoded = pc.dictionary_encode(table[name]).combine_chunks()
        cols[name] = numpy_of(encoded.indices)
        cols[f"{name}:values"] = encoded.dictionary.to_pylist()
    for name in ("accuracy", "latency_ms", "params"):
        cols[name] = numpy_of(table[name].cast(pa.float64()), np.nan)
    for name in COLUMNS[7:]:  # phase seconds: null (0, not timed) in rows written before those columns
        cols[name] = numpy_of(table[name], 0.0)
    for name in SUMMARY:  # nulls (rows read from their files) as -1 / NaN
        cols[name] = numpy_of(table[name], -1 if name != "hypervolume_after" else np.nan)
    cols["job_id"] = table["job_id"]  # Arrow: only looked up in
    return cols


def _per_dataset(cols: dict[str, np.ndarray], profiles: dict | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{dataset: (its rows' indices in commit order, its hypervolume after each of them)} and
    its front size after the last, from the snapshot's summaries where they hold (each row's
    rank in its dataset is its position now: no row left out, none added since), else
    computed from the rows."""
    names, inverse = cols["dataset_id:values"], cols["dataset_id"]
    arch_names = cols["arch:values"]
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    norm, prior = (normalizer_for(profiles), Prior({}, profiles)) if profiles else (None, None)
    out = {}
    for k, d in enumerate(names):
        idx = order[bounds[k] : bounds[k + 1]]
        rank, hv, front = cols["rank_in_dataset"][idx], cols["hypervolume_after"][idx], cols["front_after"][idx]
        if (rank == np.arange(len(idx))).all() and (front >= 0).all() and (norm is None or not np.isnan(hv).any()):
            out[str(d)] = (idx, hv, int(front[-1]))
            continue
        costs = np.stack([cols["accuracy"][idx], cols["latency_ms"][idx], cols["params"][idx]], axis=1)
        if norm is not None:
            archs = [arch_names[c] for c in cols["arch"][idx]]
            lat = [prior.profiles[a].latency_ms if a in prior.profiles else x for a, x in zip(archs, costs[:, 1])]
            par = [prior.profiles[a].params if a in prior.profiles else x for a, x in zip(archs, costs[:, 2])]
            hv = hypervolume_after(norm.objectives(costs[:, 0], lat, par).reshape(len(idx), 3))
        out[str(d)] = (idx, hv, int(front_after(costs)[-1]))
    return out


def _counts(cols: dict) -> dict[str, int]:
    """{dataset: its results}."""
    counts = np.bincount(cols["dataset_id"], minlength=len(cols["dataset_id:values"]))
    return {d: int(c) for d, c in zip(cols["dataset_id:values"], counts)}


def zoo_status(store: ZooStore, state: ZooState | None = None) -> ZooStatus:
    """What the zoo holds: summarized from the results' scalar columns (`result_columns`), with
    each dataset's Pareto front and hypervolume history taken from the snapshot's summaries
    where they still hold; from `state`'s records when the caller has them."""
    table = to_table(state.results).select(COLUMNS) if state is not None and state.results else None
    if state is None:
        table = result_columns(store, COLUMNS)
        state = ZooState(read_datasets(store), [], read_failures(store))
    elif table is not None:
        for name, kind in SUMMARY.items():
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    n = table.num_rows if table is not None else 0
    manifest = read_manifest(store)
    profiles = cached_profiles(store) if n else None
    cols = _columns(table) if n else {}
    groups = _per_dataset(cols, profiles) if n else {}
    ids = [d.dataset_id for d in state.datasets]
    hv = {d: float(groups[d][1][-1]) if d in groups else 0.0 for d in ids} if profiles else {}
    points = []
    if profiles:  # the mean over the datasets after each mark: known datasets, and others once seen
        delta, first_unknown = np.zeros(n), np.zeros(n)
        for d, (idx, after, _) in groups.items():
            delta[idx] = np.diff(after, prepend=0.0)
            if d not in hv:
                first_unknown[idx[0]] = 1
        means = np.cumsum(delta) / np.maximum(len(ids) + np.cumsum(first_unknown), 1)
        points = [HypervolumePoint(i + 1, round(float(means[i]), 5)) for i in history_marks(n)]
    failed_ids = {f.job_id for f in state.failures}
    if n and failed_ids:
        import pyarrow.compute as pc

        tried = sorted(failed_ids)
        done = pc.is_in(string_array(tried), value_set=cols["job_id"].combine_chunks()).to_pylist()
        failed_ids = {j for j, d in zip(tried, done) if not d}
    failed_by_dataset: dict[str, set] = {}
    for f in state.failures:
        if f.job_id in failed_ids:
            failed_by_dataset.setdefault(f.dataset_id, set()).add(f.job_id)
    rows = []
    for d in state.datasets:
        idx, _, front = groups.get(d.dataset_id, ([], None, 0))
        accuracy = cols["accuracy"][idx] if len(idx) else []
        rows.append(
            DatasetStatus(
                dataset_id=d.dataset_id,
                classes=d.num_classes,
                train=d.num_train,
                test=d.num_test,
                jobs=len(idx),
                failed=len(failed_by_dataset.get(d.dataset_id, ())),
                best_accuracy=float(max(accuracy)) if len(idx) else None,
                mean_accuracy=float(sum(accuracy) / len(idx)) if len(idx) else None,
                pareto_front=front,
                hypervolume=round(hv[d.dataset_id], 5) if d.dataset_id in hv else None,
            )
        )
    phases = dict.fromkeys(PHASES, 0.0)
    if n:
        timed = (cols["data_seconds"] != 0) | (cols["setup_seconds"] != 0)
        for phase, total in zip(
            PHASES,
            (
                cols["data_seconds"],
                cols["setup_seconds"],
                cols["train_seconds"] - cols["eval_seconds"],
                cols["eval_seconds"],
                cols["profile_seconds"],
                cols["checkpoint_seconds"],
            ),
        ):
            phases[phase] = float(total[timed].sum())
    total = sum(phases.values())
    return ZooStatus(
        job_seconds={k: round(v, 2) for k, v in phases.items()},
        non_training_share=round(1 - phases["training"] / total, 4) if total else None,
        zoo=store.uri,
        datasets=len(state.datasets),
        finished_jobs=n,
        failed_jobs=len(failed_ids),
        architectures=len(cols["arch:values"]) if n else 0,
        base_weights=manifest.base_weights.id if manifest else None,
        mean_hypervolume=round(sum(hv.values()) / len(hv), 5) if hv else None,
        hypervolume_history=points,
        per_dataset=rows,
        retriever=staleness(store, _counts(cols) if n else []),
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
