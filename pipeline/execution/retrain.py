"""The final stage: meta-train the retriever over the zoo, again when the zoo has grown.

A new version is written to the zoo (`retriever/vN`) and, when MLflow is configured,
logged as a run (settings, metrics, the version's files as artifacts) and registered as
a version of the model `tans-retriever` with the alias `champion`.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as metadata_version
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ParamSchema, ParamSpec

from tans import retriever
from tans.pipeline.execution.tracking import MlflowSettings, tracking_uri
from tans.retriever.rerank import DEFAULT_IMAGELESS
from tans.retriever.stale import staleness
from tans.retriever.train import RetrainSettings, gather, save_version, train_retriever, version_blob
from tans.zoo_schema.layout import RETRIEVER_FILES, retriever_meta_key
from tans.zoo_schema.store import ZooStore

REGISTERED_MODEL = "tans-retriever"
PYFUNC_CODE = Path(retriever.__file__).resolve().parent / "mlflow_model.py"  # MLflow runs it; not imported here


def run_retrain(
    store: ZooStore,
    settings: RetrainSettings,
    image_size: int,
    if_grown: float | None = None,
    mlflow: MlflowSettings | None = None,
    log=print,
) -> int | None:
    """Train and save a new retriever version; with `if_grown`, only when the newest version is
    stale (`tans.retriever.stale`: a dataset it does not know, or results grown by `if_grown`);
    None when it was not."""
    if if_grown is None:
        why = "asked for"
    else:
        state = staleness(store, if_grown=if_grown)
        if not state.stale:
            log(
                f"retriever not retrained: v{state.version} knows every dataset with networks; the zoo grew by "
                f"{state.results - state.trained_on} results since ({state.trained_on}), "
                f"threshold {max(state.trained_on * if_grown if if_grown < 1 else if_grown, 1):g}"
            )
            return None
        why = state.why
    log(f"training the retriever ({why})")
    tensors = gather(store, image_size, settings.backbone)
    model, metrics = train_retriever(tensors, settings, log)
    version = save_version(store, model, tensors, settings, metrics, image_size)
    log(
        f"retriever v{version} saved: R@1 {metrics['R@1']:.1f} R@5 {metrics['R@5']:.1f} "
        f"R@10 {metrics['R@10']:.1f} over {metrics['datasets']} datasets, {metrics['models']} models"
    )
    if mlflow is not None:
        register(store, version, settings, metrics, mlflow)
    return version


def register(
    store: ZooStore, version: int, settings: RetrainSettings, metrics: dict, mlflow_settings: MlflowSettings
) -> str:
    """Log the version as an MLflow run holding a pyfunc model (`retriever/mlflow_model.py`,
    logged as code: nothing is pickled) and register it with the alias `champion`, so that
    `mlflow.pyfunc.load_model("models:/tans-retriever@champion")` ranks the zoo's networks."""
    uri = tracking_uri(mlflow_settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(mlflow_settings.experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(mlflow_settings.experiment)
    run = client.create_run(
        experiment_id,
        run_name=f"retriever-v{version} {store.uri}",
        tags={"tans.kind": "retriever", "tans.zoo": store.uri, "tans.version": str(version)},
    )
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k.replace("@", "_at_"), float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in asdict(settings).items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = store.read_json(retriever_meta_key(version))
        artifacts = {}
        for name, file in RETRIEVER_FILES.items():
            (folder / file).write_bytes(version_blob(store, version, meta, name))
            artifacts[name] = str(folder / file)
        (folder / "meta.json").write_bytes(store.read_bytes(retriever_meta_key(version)))
        artifacts["meta"] = str(folder / "meta.json")
        model_dir = folder / "retriever"  # a pyfunc model folder (MLmodel, code, artifacts), then logged
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            model_config={"zoo": store.uri, "version": version},
            signature=ModelSignature(
                params=ParamSchema([ParamSpec("top_k", "long", 10), ParamSpec("rerank", "string", DEFAULT_IMAGELESS)])
            ),
            pip_requirements=[f"tans=={_version()}"],
        )
        client.log_artifacts(run.info.run_id, str(model_dir), "retriever")
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException:
        pass  # already registered
    mv = client.create_model_version(
        REGISTERED_MODEL,
        f"{run.info.artifact_uri}/retriever",
        run.info.run_id,
        tags={"tans.zoo": store.uri, "tans.version": str(version)},
    )
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", mv.version)
    client.set_terminated(run.info.run_id, "FINISHED")
    return mv.version


def _version() -> str:
    try:
        return metadata_version("tans")
    except PackageNotFoundError:
        return "0+unknown"
