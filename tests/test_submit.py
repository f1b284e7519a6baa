"""The cluster path end to end, everything on 127.0.0.1: a Ray head started with `ray start`
(dashboard and Jobs API on loopback, token authentication on), the zoo on a moto S3
endpoint, a real `mlflow server` (sqlite backend, artifacts proxied to the S3 endpoint).
`tans submit` ships the build as a Ray Job; the zoo, the MLflow runs and the registered
retriever are checked, and the report page is rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def base_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` with the dashboard on 127.0.0.1; stopped by the fixture."""
    port, dash = free_port(), free_port()
    env = base_env()
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            "--num-cpus=3",
            "--num-gpus=0",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while True:  # the Jobs API answers once the dashboard's job module is up
            r = subprocess.run(
                [sys.executable, "-m", "tans.pipeline.cli", "jobs", "list", "--address", url],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(1)
        assert r.returncode == 0, r.stderr
        yield url
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def tans(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tans.pipeline.cli", *args],
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def render(page: Path, tmp: Path) -> str:
    """The DOM of `page` after load, from headless Chromium (the page notes its loaded images)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (`apt-get install chromium`; .ci/run installs it)"
    r = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_submit_a_build_to_a_ray_head_with_s3_zoo_and_mlflow_server(
    ray_head, mlflow_server, s3_server, tiny_datasets, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tans.zoo_schema.results import read_results
    from tans.zoo_schema.store import S3Settings, open_store

    bucket = s3_server.bucket("cluster-zoo")
    zoo = f"s3://{bucket}/zoo"
    config = tmp_path / "build.toml"
    config.write_text(f"""
zoo = "{zoo}"
datasets = ["{tiny_datasets}"]
max_jobs = 4
strategy = "random"
[train]
epochs = 1
latency_repeats = 3
[arch]
pool_size = 10
[resources]
max_in_flight = 2
[retrain]
steps = 30
[s3]
endpoint_url = "{s3_server.url}"
[mlflow]
tracking_uri = "{mlflow_server}"
""")
    first = tans("submit", "--address", ray_head, "--config", str(config))
    assert first.returncode == 0, first.stderr
    sid = first.stdout.split("submitted build ", 1)[1].split()[0]
    again = tans("submit", "--address", ray_head, "--config", str(config))  # while it runs
    assert again.returncode == 0 and "not starting a second driver" in again.stdout and sid in again.stdout

    follow = tans("jobs", "logs", sid, "--follow", "--address", ray_head, timeout=900)
    status = json.loads(tans("jobs", "status", sid, "--json", "--address", ray_head).stdout)
    assert follow.returncode == 0 and status["status"] == "SUCCEEDED", follow.stdout[-3000:]
    assert status["zoo"] == zoo
    assert "retriever v1 saved" in follow.stdout and "mean HV" in follow.stdout  # plain progress lines

    store = open_store(zoo, S3Settings(endpoint_url=s3_server.url))
    results = read_results(store)
    assert len(results) == 4 and store.exists("retriever/v1/meta.json")

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("tans").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("tans.job_id")]
    assert {r.data.tags["tans.job_id"] for r in jobs} == {r.job_id for r in results}
    assert all("accuracy" in r.data.metrics for r in jobs)
    champion = client.get_model_version_by_alias("tans-retriever", "champion")
    assert champion.tags["tans.zoo"] == zoo
    import boto3

    artifacts = boto3.client("s3", endpoint_url=s3_server.url).list_objects_v2(Bucket="mlflow-artifacts")
    keys = [o["Key"] for o in artifacts.get("Contents", [])]
    assert any(k.endswith("retriever/artifacts/weights.safetensors") for k in keys)  # the version's files
    assert any(k.endswith("retriever/MLmodel") for k in keys), [k for k in keys if "retriever" in k][:20]
    job_runs = {r.info.run_id for r in jobs}  # the bucket is shared with other tests' servers' runs
    assert sum(k.endswith("network/model.safetensors") and k.split("/")[-4] in job_runs for k in keys) == len(
        results
    )  # each job's network
    (build_run,) = [r for r in runs if r.data.tags.get("tans.kind") == "build"]
    assert build_run.info.run_name.startswith("build zoo (") and "train.epochs" in build_run.data.params
    assert any(k.endswith(f"{build_run.info.run_id}/artifacts/report/index.html") for k in keys), keys[:20]

    # a resubmit after the build finished is a new attempt that resumes: nothing done twice
    resumed = tans("submit", "--address", ray_head, "--config", str(config), "--wait", timeout=900)
    assert resumed.returncode == 0 and f"{sid}-r2" in resumed.stdout, resumed.stdout[-3000:]
    assert sorted(r.job_id for r in read_results(store)) == sorted(r.job_id for r in results), resumed.stdout[-3000:]

    # a bigger build is stopped mid-way: the job ends STOPPED and the zoo stays consistent
    bigger = tans("submit", "--address", ray_head, "--config", str(config), "--max-jobs", "8")
    other = bigger.stdout.split("submitted build ", 1)[1].split()[0]
    assert bigger.returncode == 0 and other.split("-")[:-1] == sid.split("-")[:-1] and other != sid
    assert tans("jobs", "stop", other, "--address", ray_head).returncode == 0
    deadline = time.time() + 120
    while (
        state := json.loads(tans("jobs", "status", other, "--json", "--address", ray_head).stdout)["status"]
    ) not in ("STOPPED", "SUCCEEDED", "FAILED") and time.time() < deadline:
        time.sleep(1)
    assert state == "STOPPED"
    verify = tans("verify", zoo, "--s3-endpoint", s3_server.url)
    assert verify.returncode == 0, verify.stdout

    # without the cluster's token the Jobs API refuses (token authentication is on)
    no_token = tans(
        "jobs",
        "list",
        "--address",
        ray_head,
        env={**base_env(), "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "not-the-token"},
    )
    assert no_token.returncode != 0 and "not-the-token" not in no_token.stdout + no_token.stderr

    report = tans("report", zoo, "--out", str(tmp_path / "report"), "--s3-endpoint", s3_server.url)
    assert report.returncode == 0, report.stderr
    page = tmp_path / "report" / "index.html"
    images = page.read_text().count("<img ")
    assert images == 3 + len(
        {r.dataset_id for r in read_results(store)}
    )  # HV, accuracy, latent map, one front per dataset
    assert f'data-images-loaded="{images}/{images}"' in render(page, tmp_path)


@pytest.mark.slow
def test_unreachable_cluster_is_a_clear_error(tmp_path):
    from tests.conftest import free_port

    r = tans("jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert r.returncode == 3 and "cannot reach the Ray Jobs API" in r.stderr and "--address" in r.stderr
    config = tmp_path / "b.toml"
    config.write_text('zoo = "zoo"\n[mlflow]\ntracking_uri = "http://127.0.0.1:5000"\n')
    r = tans("submit", "--address", "http://127.0.0.1:1", "--config", str(config))
    assert r.returncode == 3 and "relative path" in r.stderr  # refused before contacting anything
