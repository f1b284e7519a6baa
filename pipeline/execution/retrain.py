"""The final stage: meta-train the retriever over the zoo, again when the zoo has grown.

A new version is written to the zoo (`retriever/vN`) and, when MLflow is configured,
logged as a run (settings, metrics, the version's files as artifacts) and registered as
a version of the model `tans-retriever` with the alias `champion`.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from importlib.metadata import requires as metadata_requires
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from tans import retriever
from tans.layers import copy_package
from tans.pipeline.execution.tracking import MlflowSettings, experiment_id, tracking_uri
from tans.retriever.proxy import FINETUNE_TOP, SECONDS
from tans.retriever.rerank import DEFAULT_RERANK
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
    """Log the version as an MLflow run holding a pyfunc model and register it with the alias
    `champion`, so that `mlflow.pyfunc.load_model("models:/tans-retriever@champion")` and
    `mlflow models serve -m models:/tans-retriever@champion` rank the zoo's networks. The model
    is `retriever/mlflow_model.py` (logged as code: nothing is pickled) with tans itself as its
    code (`code/tans`), the version's files as artifacts, the project's dependencies as its
    requirements, a signature and an input example."""
    uri = tracking_uri(mlflow_settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(
        experiment_id(client, mlflow_settings.experiment, uri),
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
        copy_package(folder / "code", skip=("*.safetensors",))  # the shipped weights are in the zoo
        model_dir = folder / "retriever"  # a pyfunc model folder (MLmodel, code, artifacts), then logged
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            code_paths=[str(folder / "code" / "tans")],
            model_config={"zoo": store.uri, "version": version},
            signature=SIGNATURE,
            input_example=(input_example(), {"top_k": 3}),
            pip_requirements=requirements(),
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


SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.binary, "image", required=False),
            ColSpec(DataType.long, "label", required=False),
            ColSpec(Array(DataType.float), "features", required=False),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("top_k", "long", 10),
            ParamSpec("rerank", "string", DEFAULT_RERANK),
            ParamSpec("finetune_top", "long", FINETUNE_TOP),
            ParamSpec("budget", "double", SECONDS),
            ParamSpec("max_params", "double", 0.0),
            ParamSpec("max_flops", "double", 0.0),
            ParamSpec("max_latency_ms", "double", 0.0),
        ]
    ),
)


def input_example():
    """A query of two classes (red and blue squares), three PNG images each, with their labels."""
    import io

    import pandas as pd
    from PIL import Image

    rows = []
    for label, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        for shade in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), tuple(max(0, c - 20 * shade) for c in color)).save(buffer, "PNG")
            rows.append({"image": buffer.getvalue(), "label": label})
    return pd.DataFrame(rows)


def requirements() -> list[str]:
    """The installed project's own dependencies (without its extras): tans itself travels as
    the model's code, so no requirement names it (no index serves this project)."""
    return [r for r in (metadata_requires("tans") or []) if "extra ==" not in r]
