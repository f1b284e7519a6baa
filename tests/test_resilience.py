"""Failures with real processes: SIGKILLed drivers and workers, a stopped S3 endpoint,
two drivers on one zoo, corrupt files. Nothing lost, nothing trained twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tans.pipeline.commands.verify import verify_zoo
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.lease import LEASE_KEY, Lease
from tans.pipeline.execution.run import run_build
from tans.zoo_schema.errors import ZooConflictError
from tans.zoo_schema.journal import read_failures, read_starts
from tans.zoo_schema.results import read_results, read_state
from tans.zoo_schema.store import S3Settings, open_store
from tests.helpers import assert_trained_once, build_overrides, crash, toml, wait_for

# -- leases --------------------------------------------------------------------------------


def test_second_driver_is_refused_and_stale_lease_taken_over(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    first = Lease(store, ttl=60).acquire()
    with pytest.raises(ZooConflictError, match=r"held by .+:\d+ \(`tans build`; last heartbeat \d+s ago\)"):
        Lease(store, ttl=60).acquire()
    with pytest.raises(ZooConflictError, match="held by"):  # a whole build is refused too
        run_build(load_config(None, {"zoo": store.uri, "max_jobs": 0}))
    stale = store.read_json(LEASE_KEY)
    stale["heartbeat"] -= 120
    store.write_json(LEASE_KEY, stale)
    messages = []
    second = Lease(store, ttl=60, log=messages.append).acquire()
    assert "taking over the stale lease" in messages[0]
    with pytest.raises(ZooConflictError, match="lost the lease"):
        first.heartbeat(force=True)
    second.release()
    assert not store.exists(LEASE_KEY)


# -- driver killed -------------------------------------------------------------------------


def test_sigkill_driver_at_several_points_then_resume(ray_cluster, tiny_datasets, tmp_path):
    """The driver runs as its own process on the shared Ray; it is SIGKILLed after 1 and
    after 3 committed results, then run again to the end. The zoo equals an uninterrupted
    build's: the same job ids, one row each, no completed job trained twice."""
    gcs = ray_cluster.address_info["gcs_address"]
    zoo = tmp_path / "zoo"
    cfg = tmp_path / "build.toml"
    cfg.write_text(toml(build_overrides(str(zoo), tiny_datasets, tmp_path, max_jobs=6, address=gcs)))
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    store = open_store(str(zoo))

    def driver():
        return subprocess.Popen(
            [sys.executable, "-m", "tans.pipeline.cli", "build", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    for kill_after in (1, 3):
        proc = driver()
        wait_for(lambda: len(store.list("results")) >= kill_after or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # its lease is taken over at once: it ran on this host
    proc = driver()
    assert proc.wait(timeout=600) == 0
    interrupted = read_results(store)
    assert len(interrupted) == 6 and len(store.list("results")) == 6
    assert_trained_once(store)
    assert len(read_starts(store)) >= 6

    reference = tmp_path / "reference"
    run_build(load_config(None, build_overrides(str(reference), tiny_datasets, tmp_path, max_jobs=6)))
    assert {r.job_id for r in interrupted} == {r.job_id for r in read_results(open_store(str(reference)))}


# -- worker killed -------------------------------------------------------------------------


def test_sigkill_worker_mid_job_is_retried(ray_cluster, tiny_datasets, tmp_path):
    zoo = str(tmp_path / "zoo")
    store = open_store(zoo)
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            summary=run_build(load_config(None, build_overrides(zoo, tiny_datasets, tmp_path, max_jobs=3)))
        )
    )
    thread.start()
    wait_for(lambda: store.list("journal/starts"))
    victim = read_starts(store)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(600)
    assert outcome["summary"].finished == 3 and outcome["summary"].failed == 0
    failures = read_failures(store)
    assert [f.job_id for f in failures] == [victim["job_id"]]
    assert "died" in failures[0].error.lower() or "crash" in failures[0].error.lower()
    assert victim["job_id"] in {r.job_id for r in read_results(store)}
    assert_trained_once(store)


# -- storage outage ------------------------------------------------------------------------


def test_s3_endpoint_stopped_30s_mid_build(ray_cluster, tiny_datasets, tmp_path):
    from tests.conftest import MotoServer

    server = MotoServer().start()
    try:
        bucket = server.bucket("outage")
        zoo = f"s3://{bucket}/zoo"
        store = open_store(zoo, S3Settings(endpoint_url=server.url))
        outcome = {}
        o = build_overrides(
            zoo, tiny_datasets, tmp_path, max_jobs=4, lease_seconds=120.0, **{"s3.endpoint_url": server.url}
        )
        thread = threading.Thread(target=lambda: outcome.update(summary=run_build(load_config(None, o))))
        thread.start()
        wait_for(lambda: len(store.list("results")) >= 1, timeout=300)
        server.proc.send_signal(signal.SIGSTOP)  # the endpoint stops answering
        time.sleep(30)
        server.proc.send_signal(signal.SIGCONT)
        thread.join(600)
        assert outcome["summary"].finished == 4
        assert len(read_results(store)) == 4 and not verify_zoo(store).problems
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.stop()


# -- integrity -----------------------------------------------------------------------------


def test_corrupt_checkpoint_and_truncated_result_are_found_and_skipped(ray_cluster, tiny_datasets, tmp_path):
    from tans.pipeline.cli import main

    zoo = str(tmp_path / "zoo")
    run_build(load_config(None, build_overrides(zoo, tiny_datasets, tmp_path, max_jobs=3)))
    store = open_store(zoo)
    a, b, c = read_results(store)
    ckpt = tmp_path / "zoo" / a.checkpoint_uri  # a zoo-relative key
    blob = bytearray(ckpt.read_bytes())
    blob[-10] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    result_file = tmp_path / "zoo" / f"results/dataset={b.dataset_id}/{b.job_id}.parquet"
    result_file.write_bytes(result_file.read_bytes()[:40])
    assert main(["verify", zoo]) == 1
    report = verify_zoo(store)  # already quarantined: a second look is clean
    assert report.problems == []
    assert store.exists(f"quarantine/results/dataset={b.dataset_id}/{b.job_id}.parquet")
    assert store.exists(f"quarantine/{a.checkpoint_uri}")
    # acquisition and search see only the sound result; a later build re-trains the others
    assert [r.job_id for r in read_state(store).results] == [c.job_id]
    again = run_build(load_config(None, build_overrides(zoo, tiny_datasets, tmp_path, max_jobs=3)))
    assert again.finished == 2 and len(read_results(store)) == 3


def test_orphan_checkpoints_are_listed_and_cleaned(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    orphan = f"checkpoints/{'d' * 24}/{'0' * 64}.safetensors"  # a checkpoint's name, no result row
    store.write_bytes(orphan, b"orphan")
    store.write_bytes("checkpoints/deadbeef/00.safetensors", b"not a name tans writes")
    report = verify_zoo(store)
    assert (report.orphans, report.foreign) == ([orphan], ["checkpoints/deadbeef/00.safetensors"])
    assert verify_zoo(store, clean_orphans=True).young == [orphan]  # just written: a writer may commit it
    assert store.exists(orphan)
    verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert store.list("checkpoints") == ["checkpoints/deadbeef/00.safetensors"]
    shutil.rmtree(tmp_path / "zoo")


# -- chaos ---------------------------------------------------------------------------------


def test_chaos_moved_zoo_killed_ingestion_and_retrain(ray_cluster, tiny_datasets, tmp_path):
    """Ingestion killed mid-write, a build, the zoo moved, retraining killed mid-write, the
    build resumed and grown in its new place: `verify` then finds no problem, its orphans are
    exactly what the kills left, and the results equal an uninterrupted build's."""
    import dataclasses

    from tans.pipeline.execution.recorded import last_build_config
    from tans.retriever.train import load_version, versions

    first = tmp_path / "first"
    crash({"call": "ingest", "zoo": str(first), "source": str(tiny_datasets / "hue-6"), "prefix": "data/", "after": 1})
    run_build(load_config(None, build_overrides(str(first), tiny_datasets, tmp_path, max_jobs=3)), log=lambda *_: None)
    moved = tmp_path / "elsewhere" / "zoo"
    moved.parent.mkdir()
    shutil.move(first, moved)
    crash({"call": "retrain", "zoo": str(moved), "prefix": "retriever/files/", "after": 1, "image_size": 32})
    config = last_build_config(str(moved), log=lambda *_: None)
    config = dataclasses.replace(
        config, max_jobs=5, retrain=dataclasses.replace(config.retrain, after_build=True, steps=20)
    )
    assert run_build(config, log=lambda *_: None).finished == 2
    store = open_store(str(moved))
    assert not first.exists()  # nothing was written at the old place
    report = verify_zoo(store)
    assert report.problems == [] and report.results_checked == 5
    # what the kills left: ingestion writes its shards from several threads, so one or two
    # data files may land before the SIGKILL does
    assert sorted({k.split("/")[0] for k in report.orphans}) == ["data", "retriever"]
    verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert verify_zoo(store).orphans == [] and versions(store) == [1]
    assert load_version(store).meta["results"] == 5

    reference = tmp_path / "reference"
    run_build(
        load_config(None, build_overrides(str(reference), tiny_datasets, tmp_path, max_jobs=5)), log=lambda *_: None
    )
    ref = open_store(str(reference))
    assert {r.job_id for r in read_results(store)} == {r.job_id for r in read_results(ref)}
    assert [(d.dataset_id, d.content_sha256, d.num_train, d.num_test) for d in read_state(store).datasets] == [
        (d.dataset_id, d.content_sha256, d.num_train, d.num_test) for d in read_state(ref).datasets
    ]
    assert_trained_once(store)
