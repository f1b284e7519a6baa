"""`tans build --follow`: a build that keeps running as datasets arrive under an S3 prefix
(a real moto S3 endpoint, a real build in its own process with its own local Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tans.zoo_schema.results import read_results
from tans.zoo_schema.store import open_store
from tests.helpers import build_overrides, toml


def test_following_picks_up_a_dataset_written_to_s3_while_it_runs(tiny_datasets, s3_server, s3_bucket, tmp_path):
    """`tans build --datasets s3://.../incoming --follow --add-jobs 2`: the first dataset is
    ingested and built, a second one uploaded mid-run is too, the retriever learns both; SIGTERM
    stops it cleanly (exit 143, lease released) and the same command goes on."""
    import boto3

    from tans.pipeline.execution.lease import read_lease
    from tans.retriever.stale import staleness

    client = boto3.client("s3", endpoint_url=s3_server.url)

    def upload(name: str) -> None:
        for f in sorted((tiny_datasets / name).rglob("*")):
            if f.is_file():
                client.upload_file(str(f), s3_bucket, f"incoming/{name}/{f.relative_to(tiny_datasets / name)}")

    upload("hue-6")
    zoo = tmp_path / "zoo"
    o = build_overrides(str(zoo), f"s3://{s3_bucket}/incoming", tmp_path, max_jobs=0)
    o.update({"retrain.after_build": True, "retrain.steps": 20, "follow.poll_seconds": 1.0})
    o["s3.endpoint_url"] = s3_server.url
    (tmp_path / "build.toml").write_text(toml(o))
    command = [sys.executable, "-m", "tans.pipeline.cli", "build", "--config", str(tmp_path / "build.toml")]
    command += ["--follow", "--add-jobs", "2"]
    log = open(tmp_path / "follow.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    store = open_store(str(zoo))

    def datasets_built() -> set[str]:
        return {r.dataset_id for r in read_results(store, light=True)} if (zoo / "manifest.json").exists() else set()

    try:
        wait_for(lambda: datasets_built() == {"hue-6"} and staleness(store).version == 1, proc, tmp_path)
        upload("shapes-clean")  # while it runs
        wait_for(lambda: staleness(store).version == 2, proc, tmp_path)
    finally:
        os.killpg(proc.pid, 15)
        code = proc.wait(60)
        log.close()
    text = (tmp_path / "follow.log").read_text()
    assert code == 143, text
    results = read_results(store, light=True)
    assert len(results) == 4 and {r.dataset_id for r in results} == {"hue-6", "shapes-clean"}
    assert staleness(store).unknown_datasets == [] and read_lease(store) is None
    assert "1 new dataset(s): the budget is now 4 jobs" in text and "stopped by SIGTERM" in text


def wait_for(condition, proc, tmp_path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError((tmp_path / "follow.log").read_text()[-4000:])
        time.sleep(1)
