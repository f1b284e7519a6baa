"""The deployment files: ray_cluster.yaml through Ray's own config preparation and schema
validator; the Kubernetes manifests and the image definition checked against the project."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["max_workers"] == 0  # no GPU work on the head
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1 and workers[0]["resources"]["GPU"] >= 1
    assert workers[0]["min_workers"] == 0 < workers[0]["max_workers"]  # autoscaling
    assert workers[0]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["file_mounts"]["/home/ubuntu/tans"] == "."
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "/home/ubuntu/tans" in setup
    assert "TANS_ZOO=" in setup and "MLFLOW_TRACKING_URI=" in setup
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start and "--num-gpus=0" in start
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "ray_cluster.yaml").read_text()

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_wrokers"] = 0
    with pytest.raises(jsonschema.exceptions.ValidationError, match="min_wrokers"):
        validate_config(prepare_config(broken))


def test_kuberay_rayjob_runs_a_tans_build_with_gpu_workers():
    from tans.pipeline.cli import parser

    job = yaml.safe_load((ROOT / "infra/kuberay/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "tans"
    args = parser().parse_args(argv[1:])
    assert args.command == "build" and args.ray_address == "auto"
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    worker = cluster["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and worker["minReplicas"] == 0
    env = {e["name"]: e for e in container["env"]}
    assert {"TANS_ZOO", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE"} <= set(env)
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"):
        assert "secretKeyRef" in env[secret]["valueFrom"]  # never a literal


def test_minio_and_mlflow_manifests():
    minio = list(yaml.safe_load_all((ROOT / "infra/minio/minio.yaml").read_text()))
    assert {d["kind"] for d in minio} == {"PersistentVolumeClaim", "Deployment", "Service"}
    mlflow = list(yaml.safe_load_all((ROOT / "infra/mlflow/mlflow.yaml").read_text()))
    server = next(d for d in mlflow if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = server["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert "--backend-store-uri postgresql://" in command and "--artifacts-destination s3://" in command
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and env["MLFLOW_S3_ENDPOINT_URL"]
    import mlflow as mlflow_package

    assert f"mlflow:v{mlflow_package.__version__}" in container["image"]  # the version the project pins


def test_worker_image_copies_what_exists_and_pins_the_projects_torch():
    text = (ROOT / "infra/image/Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+?) \S+$", text, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    constraints = (ROOT / "constraints.txt").read_text()  # the versions CI and `make` install
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", text):
        assert pin in constraints
    ray_version = re.search(r"rayproject/ray:([\d.]+)", text).group(1)
    assert f"ray=={ray_version}" in constraints
    assert "--constraint constraints.txt" in text
