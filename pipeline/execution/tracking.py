"""MLflow tracking: each build is a run, each finished or failed job a child run.

The driver logs (the workers do not), so workers need no MLflow access or credentials and
a sqlite store never sees concurrent writers. A job's per-epoch metrics are logged with
their epoch as the step when the job reports back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tans.pipeline.execution.signals import deferred
from tans.workers.job import JobSpec
from tans.workers.networks.export import network_config
from tans.workers.networks.nets import checkpoint_bytes
from tans.zoo_schema.records import ResultRecord
from tans.zoo_schema.redact import redact
from tans.zoo_schema.shards import read_dataset


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "tans"
    log_networks: bool = True  # each job's run gets its network (model.safetensors, config.json)


def tracking_uri(settings: MlflowSettings) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI (as MLflow itself does), else ./mlflow.db."""
    return settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: next to a sqlite tracking store (sqlite:///DIR/x.db:
    DIR/mlruns), so that the store and its artifacts move together, wherever the command runs
    from. Other stores decide for themselves (None): a tracking server, a file store."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns").as_uri()
    return None


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created (with its artifacts next to a local store) if new."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location(uri))


def flat_params(data: dict, prefix: str = "") -> dict:
    """A nested config as MLflow params with dotted keys (`train.epochs`)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "names":
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """A build (or fine-tune) as an MLflow run named `run_name`, each job a child run. With a
    `store`, a finished job's run also holds its network as artifacts (`network/`)."""

    def __init__(
        self, settings: MlflowSettings, build_params: dict, run_name: str = "build", store=None, width: float = 1.0
    ):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(settings)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = experiment_id(self.client, settings.experiment, self.uri)
        with deferred():
            self.build_run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"tans.kind": "build"})
        self._ended = False
        self.store = store if settings.log_networks else None
        self.width = width
        self._log(self.build_run.info.run_id, params=build_params)

    def _log(self, run_id: str, params: dict | None = None, metrics: list | None = None, tags: dict | None = None):
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        with deferred():  # a signal never cuts a write (sqlite would stay locked)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, step) for k, v, step in (metrics or [])],
                params=[Param(k, redact(str(v))[:6000]) for k, v in (params or {}).items()],
                tags=[RunTag(k, redact(str(v))) for k, v in (tags or {}).items()],
            )

    def _job_run(self, spec: JobSpec, status_tag: str):
        return self.client.create_run(
            self.experiment_id,
            run_name=f"{spec.dataset_id}/{spec.job_id[:8]}",
            tags={
                "mlflow.parentRunId": self.build_run.info.run_id,
                "tans.kind": "job",
                "tans.job_id": spec.job_id,
                "tans.dataset_id": spec.dataset_id,
                "tans.status": status_tag,
            },
        )

    def _job_params(self, spec: JobSpec) -> dict:
        t = spec.train
        return {
            "dataset_id": spec.dataset_id,
            "arch": spec.arch,
            "epochs": t.epochs,
            "image_size": t.image_size,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "weight_decay": t.weight_decay,
            "seed": t.seed,
            "width": spec.width,
            "base_weights": spec.base_weights.id,
            "evaluate_every_epoch": t.evaluate_every_epoch,
        }

    def log_result(self, spec: JobSpec, record: ResultRecord, predictor_fit: int | None = None) -> None:
        """The job's run; `predictor_fit`: the size of the accuracy predictor's fit that proposed it."""
        with deferred():
            self._log_result(spec, record, predictor_fit)

    def _log_result(self, spec: JobSpec, record: ResultRecord, predictor_fit: int | None = None) -> None:
        run = self._job_run(spec, "finished")
        metrics = [("train_loss", v, i) for i, v in enumerate(record.epoch_losses)]
        first = len(record.epoch_losses) - len(record.epoch_accuracies)  # the last epochs were evaluated
        metrics += [("test_accuracy", v, first + i) for i, v in enumerate(record.epoch_accuracies)]
        metrics += [
            ("accuracy", record.accuracy, 0),
            ("params", record.params, 0),
            ("flops", record.flops, 0),
            ("latency_ms", record.latency_ms, 0),
            ("train_seconds", record.train_seconds, 0),
        ]
        self._log(
            run.info.run_id,
            params=self._job_params(spec),
            metrics=metrics,
            tags={
                "tans.checkpoint_uri": record.checkpoint_uri,
                "tans.latency_device": record.latency_device,
                **({"tans.predictor_fit": str(predictor_fit)} if predictor_fit is not None else {}),
            },
        )
        if self.store is not None:
            self._log_network(run.info.run_id, record)
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def _log_network(self, run_id: str, record: ResultRecord) -> None:
        """The network as artifacts of its run: its checkpoint (sha256 verified) and config.json."""
        data = checkpoint_bytes(self.store, record)
        config = network_config(record, read_dataset(self.store, record.dataset_id), self.width)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model.safetensors").write_bytes(data)
            (Path(tmp) / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
            self.client.log_artifacts(run_id, tmp, "network")

    def log_failure(self, spec: JobSpec, error: str) -> None:
        with deferred():
            run = self._job_run(spec, "failed")
            self._log(run.info.run_id, params=self._job_params(spec), tags={"tans.error": error[:4000]})
            self.client.set_terminated(run.info.run_id, "FAILED")

    def finish(self, summary: dict) -> None:
        self._log(
            self.build_run.info.run_id,
            metrics=[(k, v, 0) for k, v in summary.items() if isinstance(v, (int, float))],
            tags={"tans.stop_reason": redact(str(summary.get("stop_reason", "")))},
        )
        self.end("FINISHED")

    def end(self, status: str, reason: str = "") -> None:
        """End the build run: FINISHED, FAILED (an error) or KILLED (a signal); once."""
        if self._ended:
            return
        self._ended = True
        with deferred():
            if reason:
                self._log(self.build_run.info.run_id, tags={"tans.stop_reason": redact(reason)[:4000]})
            self.client.set_terminated(self.build_run.info.run_id, status)
