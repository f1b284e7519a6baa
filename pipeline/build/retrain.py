"""The final stage: meta-train the retriever over the zoo, again when the zoo has grown.

A new version is written to the zoo (`retriever/vN`) and, when MLflow is configured,
logged as a run (settings, metrics, the version's files as artifacts) and registered as
a version of the model `tans-retriever` with the alias `champion`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.build.tracking import MlflowSettings, tracking_uri
from retriever.train import RetrainSettings, gather, grown_enough, save_version, train_retriever, version_blob
from zoo_schema.layout import RETRIEVER_FILES, retriever_meta_key
from zoo_schema.store import ZooStore

REGISTERED_MODEL = "tans-retriever"


def run_retrain(store: ZooStore, settings: RetrainSettings, image_size: int, if_grown: float | None = None,
                mlflow: MlflowSettings | None = None, log=print) -> int | None:
    """Train and save a new retriever version; None when the zoo has not grown enough."""
    grown, why = grown_enough(store, if_grown)
    if not grown:
        log(f"retriever not retrained: {why}")
        return None
    log(f"training the retriever ({why})")
    tensors = gather(store, image_size, settings.backbone)
    model, metrics = train_retriever(tensors, settings, log)
    version = save_version(store, model, tensors, settings, metrics, image_size)
    log(f"retriever v{version} saved: R@1 {metrics['R@1']:.1f} R@5 {metrics['R@5']:.1f} "
        f"R@10 {metrics['R@10']:.1f} over {metrics['datasets']} datasets, {metrics['models']} models")
    if mlflow is not None:
        register(store, version, settings, metrics, mlflow)
    return version


def register(store: ZooStore, version: int, settings: RetrainSettings, metrics: dict, mlflow: MlflowSettings) -> str:
    """Log the version as an MLflow run and register it with the alias `champion`."""
    from dataclasses import asdict

    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(mlflow))
    exp = client.get_experiment_by_name(mlflow.experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(mlflow.experiment)
    run = client.create_run(experiment_id, run_name=f"retriever-v{version}",
                            tags={"tans.kind": "retriever", "tans.zoo": store.uri, "tans.version": str(version)})
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k.replace("@", "_at_"), float(v), 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in asdict(settings).items()])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "retriever"
        folder.mkdir()
        meta = store.read_json(retriever_meta_key(version))
        for name, file in RETRIEVER_FILES.items():
            (folder / file).write_bytes(version_blob(store, version, meta, name))
        (folder / "meta.json").write_bytes(store.read_bytes(retriever_meta_key(version)))
        client.log_artifacts(run.info.run_id, str(folder), "retriever")
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException:
        pass  # already registered
    mv = client.create_model_version(REGISTERED_MODEL, f"{run.info.artifact_uri}/retriever", run.info.run_id,
                                     tags={"tans.zoo": store.uri, "tans.version": str(version)})
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", mv.version)
    client.set_terminated(run.info.run_id, "FINISHED")
    return mv.version
