"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1), a real local Ray,
and small real image datasets from the built-in suite."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

# Dummy credentials for the local S3 endpoint; set before Ray starts so workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`moto_server` as a real HTTP process on loopback; the test stops it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=name)
        return name


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def s3_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    return s3_server.bucket(name)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the test module, on loopback, with two logical GPUs."""
    import ray

    ctx = ray.init(
        address="local", num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False
    )
    assert ctx.address_info["node_ip_address"] == "127.0.0.1"
    yield ctx
    ray.shutdown()


TINY = {"hue-6": 12, "shapes-clean": 10, "digits-sklearn": 0, "glyphs-digits-clean": 10}


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """Four small real image datasets in the ImageFolder layout (built-in generators)."""
    from tans.pipeline.datasets import synth

    out = tmp_path_factory.mktemp("datasets")
    specs = {s.name: s for s in synth.suite()}
    for name, per_class in TINY.items():
        synth.write_dataset(dataclasses.replace(specs[name], per_class=per_class), out, seed=0)
    # scikit-learn's digits are 1797 images; keep 12 per class to stay small
    for cls_dir in (out / "digits-sklearn").iterdir():
        for f in sorted(cls_dir.iterdir())[12:]:
            f.unlink()
    return out


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """`mlflow server -w 1` on 127.0.0.1, sqlite backend, artifacts in the S3 endpoint."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    s3_server.bucket("mlflow-artifacts")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server.url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            "s3://mlflow-artifacts/runs",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(size_mb)`: a real file system of that size (tmpfs) under tmp_path, unmounted at
    the end. Mounting needs root: without it the test is skipped."""
    mounted = []

    def mount(size_mb: int):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:200]}); needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


# Fixtures that make a test slow (a Ray cluster, servers, a mounted file system): a test that
# uses one, directly or through another fixture, is marked `slow`, and `make test-fast`
# (pytest -m "not slow") leaves it out. Slow tests without such a fixture say so themselves.
SLOW_FIXTURES = {"ray_cluster", "s3_server", "s3_bucket", "mlflow_server", "tmpfs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
