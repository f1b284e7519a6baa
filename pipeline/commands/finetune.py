"""`tans finetune`: fine-tune a retrieved zoo network on the user's dataset, as a Ray task.

The dataset is ingested into the zoo (so a worker on any node reads it from there), the
job starts from the chosen result's checkpoint with a new classifier, and its result is
committed like any zoo job (checkpoint, metrics, functional embedding), so it can be
searched and fine-tuned again.
"""

from __future__ import annotations

from dataclasses import replace

from tans.pipeline.datasets.ingest import ingest
from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.lease import holding
from tans.pipeline.execution.ray_executor import ray_executor
from tans.pipeline.execution.runtime import start_ray
from tans.pipeline.execution.tracking import Tracker
from tans.workers.job import job_spec
from tans.zoo_schema.errors import DatasetError, TansError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import ResultRecord
from tans.zoo_schema.results import find_result
from tans.zoo_schema.shards import read_datasets
from tans.zoo_schema.store import open_store


def run_finetune(config: BuildConfig, job_id: str, source: str, log=print, wait: bool = False) -> ResultRecord:
    """Ingest `source`, fine-tune job `job_id` on it and commit the result, holding the zoo's
    lease throughout (with `wait`, after the command that holds it is done)."""
    store = open_store(config.zoo, config.s3)
    with holding(store, "tans finetune", wait=wait, log=log):
        return _finetune(store, config, job_id, source, log)


def _finetune(store, config: BuildConfig, job_id: str, source: str, log) -> ResultRecord:
    manifest = read_manifest(store)
    if manifest is None:
        raise TansError(f"{config.zoo} is not a tans zoo (no manifest.json)")
    base = find_result(store, job_id)
    if base is None:
        raise TansError(f"job {job_id} has no result in {store.uri}; pick one from `tans search`")
    report = ingest(store, source, settings=config.ingest, s3=config.s3)
    if len(report.dataset_ids) != 1:
        raise DatasetError(
            f"{source} has more than {config.ingest.max_classes} classes and was split into "
            f"{', '.join(report.dataset_ids)}; fine-tune on one part at a time"
        )
    dataset = next(d for d in read_datasets(store) if d.dataset_id == report.dataset_ids[0])
    spec = job_spec(dataset, base.arch, config.train, manifest, init_job=job_id)
    start_ray(config.address)
    executor = ray_executor(store.uri, config.s3, replace(config.resources, max_in_flight=1))
    log(
        f"fine-tuning {job_id} ({base.arch}, trained on {base.dataset_id}) on {dataset.dataset_id} "
        f"for {config.train.epochs} epochs"
    )
    executor.submit(spec)
    outcomes = []
    try:
        while not outcomes:
            outcomes = executor.wait(60)
    finally:
        executor.close()
    outcome = outcomes[0].result
    if outcome is None:
        raise TansError(f"fine-tuning failed: {outcomes[0].error}")
    first = len(outcome.epoch_losses) - len(outcome.epoch_accuracies)  # the last epochs were evaluated
    for epoch, loss in enumerate(outcome.epoch_losses, 1):
        acc = f", test accuracy {outcome.epoch_accuracies[epoch - 1 - first]:.4f}" if epoch > first else ""
        log(f"epoch {epoch}: train loss {loss:.4f}{acc}")
    tracker = Tracker(
        config.mlflow,
        {"zoo": store.uri, "finetune_of": job_id, "dataset": source},
        run_name=f"finetune {job_id[:8]} on {dataset.dataset_id}",
        store=store,
        width=manifest.width,
    )
    tracker.log_result(spec, outcome)
    tracker.end("FINISHED")
    log(f"saved as job {outcome.job_id}: {outcome.checkpoint_uri}")
    return outcome
