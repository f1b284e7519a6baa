"""`tans submit` and `tans jobs`: a zoo build as a Ray Job, through the Jobs API.

The project's packages and the resolved build config travel in the job's `runtime_env`
(`working_dir`); the cluster's nodes need the project's dependencies installed (the
cluster launcher's setup commands, or the worker image in infra/). The submission id is
derived from the zoo and the build config, so submitting the same build again while it
runs does not start a second driver; once it has stopped (finished, failed, head node
restarted), the same command submits a new attempt, which resumes from the zoo.

The client talks to the dashboard's HTTP address (`http://HEAD:8265`) with Ray's token
authentication (RAY_AUTH_MODE=token unless set otherwise; the token comes from
RAY_AUTH_TOKEN or ~/.ray/auth_token, and is never printed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from tans.layers import copy_package
from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.recorded import resolve_config
from tans.zoo_schema.errors import ConfigError, TansError

CONFIG_NAME = "build.json"
ENTRYPOINT = (
    f"python -m tans.pipeline.cli build --config {CONFIG_NAME} --resolved-config"  # the environment is not read
)


class ClusterError(TansError):
    """The Ray cluster (its Jobs API) cannot be reached or refused a request."""


def client(address: str):
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # the SDK raises ConnectionError/RuntimeError/ValueError variously
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}; "
            "check --address (the dashboard's http://HEAD:8265) and that the head runs "
            "with the dashboard (`ray start --head --dashboard-host=127.0.0.1`), and "
            "for token authentication RAY_AUTH_TOKEN or ~/.ray/auth_token"
        ) from None


def cluster_config(config: BuildConfig) -> BuildConfig:
    """The config as the job's driver runs it: connected to its cluster, with every location
    one that all nodes can see."""
    for where, value in [("zoo", config.zoo)] + [("datasets", d) for d in config.datasets]:
        if "://" not in value and not os.path.isabs(value):
            raise ConfigError(
                f"{where} {value!r} is a relative path; a submitted build runs in a "
                "temporary directory on the head node: use s3://... or an absolute path "
                "every node can read"
            )
    if not config.mlflow.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "mlflow.tracking_uri is not set; a submitted build needs a tracking server "
            "(http://MLFLOW:5000) or an absolute sqlite:/// path on the head node"
        )
    mlflow = dataclasses.replace(
        config.mlflow, tracking_uri=config.mlflow.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    )
    return dataclasses.replace(config, address="auto", mlflow=mlflow)


def submission_base(config: BuildConfig) -> str:
    """`tans-<zoo name>-<hash of the build config>`; attempts after the first add `-rN`."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()
    name = "".join(c if c.isalnum() else "-" for c in config.zoo.rstrip("/").rsplit("/", 1)[-1].lower())
    return f"tans-{name.strip('-')[:40] or 'zoo'}-{digest[:12]}"


def tans_jobs(c, prefix: str = "tans-") -> list:
    return sorted(
        (j for j in c.list_jobs() if (j.submission_id or "").startswith(prefix)), key=lambda j: j.start_time or 0
    )


def submit(
    address: str, config_path: str | None, overrides: dict | None = None, log=print, add_jobs: int | None = None
) -> str:
    """Submit the build (or report the attempt already running); returns its submission id.
    The config is resolved here, on an existing zoo from its recorded settings (as `tans build`)."""
    config = cluster_config(resolve_config(config_path, overrides or {}, add_jobs=add_jobs, log=log))
    c = client(address)
    base = submission_base(config)
    attempts = [j for j in tans_jobs(c, base) if j.submission_id == base or j.submission_id.startswith(base + "-r")]
    live = [j for j in attempts if not j.status.is_terminal()]
    if live:
        log(
            f"build {live[-1].submission_id} is already {live[-1].status.value} on {address}; "
            "not starting a second driver"
        )
        return live[-1].submission_id
    sid = base if not attempts else f"{base}-r{len(attempts) + 1}"
    with tempfile.TemporaryDirectory(prefix="tans-submit-") as staging:
        copy_package(staging)
        (Path(staging) / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(config), indent=1))
        try:
            c.submit_job(
                entrypoint=ENTRYPOINT,
                submission_id=sid,
                runtime_env={"working_dir": staging, "env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}},
                metadata={"tans_zoo": config.zoo},
            )
        except Exception as e:
            if "already exists" in str(e):  # a concurrent submit of the same build won
                log(f"build {sid} was just submitted by someone else; not starting a second driver")
                return sid
            raise ClusterError(f"the cluster at {address} refused the job: {str(e).splitlines()[0]}") from None
    log(
        f"submitted build {sid} (zoo {config.zoo}, "
        f"{'resuming: attempt ' + str(len(attempts) + 1) if attempts else 'first attempt'})\n"
        f"  follow it: tans jobs logs {sid} --follow --address {address}\n"
        f"  status:    tans jobs status {sid} --address {address}\n"
        f"  stop it:   tans jobs stop {sid} --address {address}"
    )
    return sid


def describe(info) -> dict:
    return {
        "submission_id": info.submission_id,
        "status": info.status.value,
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "zoo": (info.metadata or {}).get("tans_zoo"),
    }


def job_info(address: str, sid: str) -> dict:
    c = client(address)
    try:
        info = c.get_job_info(sid)
    except Exception as e:
        raise ClusterError(
            f"no job {sid} on {address} ({str(e).splitlines()[0]}); list them with `tans jobs list --address {address}`"
        ) from None
    return describe(info)


def logs(address: str, sid: str) -> str:
    job_info(address, sid)  # a clear error for an unknown id
    return client(address).get_job_logs(sid)


def follow(address: str, sid: str, out=print, poll: float = 2.0) -> str:
    """Print the job's log as it grows until the job stops; returns its final status."""
    job_info(address, sid)  # a clear error for an unknown id
    c = client(address)
    shown = 0
    while True:
        status = c.get_job_status(sid).value
        text = c.get_job_logs(sid)
        if len(text) > shown:
            out(text[shown:].rstrip("\n"))
            shown = len(text)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(poll)


def stop(address: str, sid: str) -> bool:
    job_info(address, sid)
    return client(address).stop_job(sid)
