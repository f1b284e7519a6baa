"""`tans status`: what a zoo holds, per dataset."""
from __future__ import annotations

from pipeline.pareto import front_indices
from pipeline.state import read_state
from zoo_schema.manifest import read_manifest
from zoo_schema.store import ZooStore


def zoo_status(store: ZooStore) -> dict:
    state = read_state(store)
    manifest = read_manifest(store)
    failed_ids = {f.job_id for f in state.failures} - state.done_ids
    rows = []
    for d in state.datasets:
        results = [r for r in state.results if r.dataset_id == d.dataset_id]
        points = [(r.accuracy, r.latency_ms, r.params) for r in results]
        rows.append({
            "dataset_id": d.dataset_id, "classes": d.num_classes,
            "train": d.num_train, "test": d.num_test, "jobs": len(results),
            "failed": len({f.job_id for f in state.failures if f.dataset_id == d.dataset_id} & failed_ids),
            "best_accuracy": max((r.accuracy for r in results), default=None),
            "mean_accuracy": (sum(r.accuracy for r in results) / len(results)) if results else None,
            "pareto_front": len(front_indices(points)),
        })
    return {"zoo": store.uri, "datasets": len(state.datasets), "finished_jobs": len(state.results),
            "failed_jobs": len(failed_ids), "architectures": len({r.arch for r in state.results}),
            "base_weights": manifest.base_weights["id"] if manifest else None,
            "per_dataset": rows}


def format_status(status: dict) -> str:
    lines = [f"zoo {status['zoo']}: {status['datasets']} datasets, {status['finished_jobs']} finished "
             f"jobs ({status['architectures']} architectures), {status['failed_jobs']} failed; "
             f"base weights {status['base_weights']}", ""]
    header = f"{'dataset':34} {'cls':>3} {'train':>5} {'test':>5} {'jobs':>4} {'fail':>4} {'best':>6} {'mean':>6} {'front':>5}"
    lines += [header, "-" * len(header)]

    def pct(v):
        return "-" if v is None else f"{v:.3f}"
    for r in status["per_dataset"]:
        lines.append(f"{r['dataset_id'][:34]:34} {r['classes']:>3} {r['train']:>5} {r['test']:>5} "
                     f"{r['jobs']:>4} {r['failed']:>4} {pct(r['best_accuracy']):>6} "
                     f"{pct(r['mean_accuracy']):>6} {r['pareto_front']:>5}")
    return "\n".join(lines)
