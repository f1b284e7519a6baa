"""Integration: real builds on a local Ray (logical GPUs), real OFA fine-tuning on real
images, the zoo on local disk and on an S3 endpoint, MLflow in a sqlite store."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from tans.pipeline.commands.status import format_status, zoo_status
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.run import run_build
from tans.workers.networks.images import load_tensors
from tans.workers.networks.nets import load_checkpoint
from tans.workers.networks.training import evaluate
from tans.zoo_schema.journal import read_failures
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.results import ZooState, read_results
from tans.zoo_schema.store import S3Settings, open_store


def config(zoo, data, tmp_path, **kw):
    overrides = {
        "zoo": zoo,
        "datasets": [str(data)],
        "max_jobs": 5,
        "train.epochs": 1,
        "train.latency_repeats": 3,
        "resources.num_gpus": 0.5,
        "retrain.after_build": False,
        "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    overrides.update(kw)
    return load_config(None, overrides)


def check_zoo(store, expected_jobs):
    results = read_results(store)
    assert len(results) == expected_jobs
    assert len({r.job_id for r in results}) == expected_jobs
    manifest = read_manifest(store)
    torch.set_num_threads(1)
    for r in results:
        assert len(r.topology) == 45 and 0.0 <= r.accuracy <= 1.0
        assert r.params > 0 and r.flops > 0 and r.latency_ms > 0
        assert len(r.functional_embedding) == 1280
        assert r.checkpoint_uri == f"checkpoints/{r.job_id}/{r.checkpoint_sha256}.safetensors"  # zoo-relative
        blob = store.read_bytes(r.checkpoint_uri)
        assert hashlib.sha256(blob).hexdigest() == r.checkpoint_sha256
        model = load_checkpoint(store, r, manifest.width)
        xt, yt = load_tensors(store, r.dataset_id, "test", r.image_size)
        # recomputed on other threads: a near-tie image may flip in float32, nothing more
        assert evaluate(model, xt, yt) == pytest.approx(r.accuracy, abs=1.01 / len(yt))
    return results


def mlflow_job_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tans")
    return client.search_runs([exp.experiment_id], "tags.`tans.kind` = 'job'")


def test_local_build_resume_and_status(ray_cluster, tiny_datasets, tmp_path, capsys):
    zoo = str(tmp_path / "zoo")
    retrain = {"retrain.after_build": True, "retrain.steps": 20}
    summary = run_build(config(zoo, tiny_datasets, tmp_path, **retrain))
    assert (summary.finished, summary.failed, summary.stop_reason) == (5, 0, "job budget reached")
    from tans.retriever.train import versions

    store = open_store(zoo)
    results = check_zoo(store, 5)
    assert len({r.dataset_id for r in results}) == 4  # the random strategy spreads over datasets

    runs = mlflow_job_runs(tmp_path)
    assert len(runs) == 5
    assert {r.data.tags["tans.job_id"] for r in runs} == {r.job_id for r in results}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(a.path for a in client.list_artifacts(runs[0].info.run_id, "network")) == [
        "network/config.json",
        "network/model.safetensors",
    ]  # each job's network is an artifact of its run
    (build_run,) = client.search_runs([runs[0].info.experiment_id], "tags.`tans.kind` = 'build'")
    assert build_run.info.run_name == "build zoo (pareto)" and build_run.info.status == "FINISHED"
    assert build_run.data.params["train.epochs"] == "1" and build_run.data.params["resources.max_attempts"] == "3"
    history = runs[0].data.metrics
    assert "test_accuracy" in history and "train_loss" in history and "latency_ms" in history

    assert versions(store) == [1]  # the build ended with the retriever stage
    # the same command again: nothing to do, nothing trained twice, no retraining
    again = run_build(config(zoo, tiny_datasets, tmp_path, **retrain))
    assert (again.finished, again.zoo_results) == (0, 5) and versions(store) == [1]
    # a larger budget continues the same build; the zoo grew by 20% > 10%: retrained
    more = run_build(config(zoo, tiny_datasets, tmp_path, max_jobs=6, **retrain))
    assert (more.finished, more.zoo_results) == (1, 6) and versions(store) == [1, 2]
    assert {r.job_id for r in read_results(store)} >= {r.job_id for r in results}

    status = zoo_status(store)
    assert status.finished_jobs == 6 and status.datasets == 4
    row = next(r for r in status.per_dataset if r.jobs)
    assert row.pareto_front >= 1 and row.best_accuracy is not None
    # each row says where its job's time went; status sums it
    assert all(
        r.data_seconds > 0
        and r.setup_seconds > 0
        and 0 < r.eval_seconds < r.train_seconds
        and r.profile_seconds > 0
        and r.checkpoint_seconds > 0
        for r in read_results(store)
    )
    assert 0 < status.non_training_share < 1 and status.job_seconds["training"] > 0
    text = format_status(status)
    assert "hue-6" in text and "6 finished jobs" in text and "not training" in text
    json.dumps(status.as_dict())

    # compacted, the zoo resumes: the driver holds the sealed rows without their embeddings,
    # trains only what is new, and the snapshot it writes caches the new files' rows in full
    from tans.pipeline.commands.compact import compact_zoo
    from tans.zoo_schema.results import read_segments, scan_results

    before = {r.job_id: r for r in read_results(store)}
    assert compact_zoo(store, log=lambda *_: None).sealed_rows == 6
    light = scan_results(store, sealed_light=True).results  # what the driver never reads is left out
    assert all(not (r.functional_embedding or r.topology or r.epoch_losses or r.epoch_accuracies) for r in light)
    assert [
        dataclasses.replace(r, functional_embedding=[], topology=[], epoch_losses=[], epoch_accuracies=[])
        for r in before.values()
    ] == light
    grown = run_build(config(zoo, tiny_datasets, tmp_path, max_jobs=8, **retrain))
    assert (grown.finished, grown.zoo_results) == (2, 8) and versions(store) == [1, 2, 3]
    after = {r.job_id: r for r in read_results(store)}
    assert len(after) == 8 and all(after[j] == r for j, r in before.items())  # the sealed rows, untouched
    assert all(len(r.functional_embedding) == 1280 for r in after.values())
    cached = read_segments(store)
    assert sum(s.rows for s in cached) == 2  # only the two new files' rows, with their embeddings
    assert scan_results(store).outside_snapshot == 0 and scan_results(store).results == list(after.values())


def test_build_with_zoo_on_s3(ray_cluster, tiny_datasets, tmp_path, s3_server, s3_bucket, monkeypatch, capsys):
    secret = "Sup3rSecretKeyThatMustNeverLeak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # the driver's credentials (moto takes any)
    zoo = f"s3://{s3_bucket}/zoo"
    cfg = config(zoo, tiny_datasets, tmp_path, max_jobs=3, **{"s3.endpoint_url": s3_server.url})
    summary = run_build(cfg)
    assert summary.finished == 3
    store = open_store(zoo, S3Settings(endpoint_url=s3_server.url))
    results = check_zoo(store, 3)
    assert all(r.checkpoint_uri.startswith("checkpoints/") for r in results)
    # the results are one Hive-partitioned Parquet dataset, readable with plain pyarrow
    import pyarrow.dataset as pads

    fs, base = store.arrow_filesystem()
    table = pads.dataset(f"{base}/results", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert sorted(table["job_id"].to_pylist()) == sorted(r.job_id for r in results)
    runs = mlflow_job_runs(tmp_path)
    assert len(runs) == 3
    # credentials appear nowhere: not in the zoo's manifest or journal, MLflow, or the output
    texts = [store.read_bytes(k).decode() for k in ["manifest.json"] + store.list("journal") if k.endswith(".json")]
    texts += [str(r.data.params) + str(r.data.tags) for r in runs]
    out = capsys.readouterr()
    texts += [out.out, out.err]
    assert not any(secret in t for t in texts)


def test_failed_job_is_recorded_and_build_goes_on(ray_cluster, tiny_datasets, tmp_path):
    zoo = str(tmp_path / "zoo")
    store = open_store(zoo)
    from tans.pipeline.datasets.ingest import ingest

    ingest(store, str(tiny_datasets / "hue-6"))
    ingest(store, str(tiny_datasets / "shapes-clean"))
    from tans.zoo_schema.shards import read_dataset, shard_keys

    for key in shard_keys(store, read_dataset(store, "shapes-clean"), "train"):  # no training data left
        store.delete(key)
    summary = run_build(config(zoo, tiny_datasets, tmp_path, datasets=[], max_jobs=4, **{"resources.max_attempts": 2}))
    failures = read_failures(store)
    # each failing job was tried twice (reason journaled each time), then given up
    assert summary.failed >= 1 and summary.finished + summary.failed == 4
    assert len(failures) == 2 * summary.failed
    assert {f.dataset_id for f in failures} == {"shapes-clean"}
    assert all("the train split of dataset 'shapes-clean'" in f.error and "holds 0 images" in f.error for f in failures)
    assert {r.dataset_id for r in read_results(store)} == {"hue-6"}
    assert zoo_status(store).failed_jobs == summary.failed
    failed_runs = [r for r in mlflow_job_runs(tmp_path) if r.info.status == "FAILED"]
    assert len(failed_runs) == len(failures)


def test_manifest_conflict_is_refused(ray_cluster, tiny_datasets, tmp_path):
    from tans.zoo_schema.errors import ZooConflictError

    zoo = str(tmp_path / "zoo")
    run_build(config(zoo, tiny_datasets, tmp_path, max_jobs=0))
    with pytest.raises(ZooConflictError, match="width: zoo has 1.0, build asks 1.2"):
        run_build(
            config(zoo, tiny_datasets, tmp_path, max_jobs=0, **{"arch.width": 1.2, "arch.base_weights": "random"})
        )


def test_pareto_build_on_ray_then_replay_gives_same_proposals(ray_cluster, tiny_datasets, tmp_path):
    """Algorithm 1 end to end on Ray; the replay executor rebuilds the same state from that
    zoo, and the policy proposes the same pairs from either state."""
    from tans.pipeline.acquisition.base import PolicyContext
    from tans.pipeline.acquisition.pareto import ParetoPolicy
    from tans.workers.networks.ofa_space import arch_pool
    from tans.zoo_schema.results import read_state

    zoo = str(tmp_path / "zoo")
    pareto = {"strategy": "pareto", "arch.pool_size": 10, "pareto.n_init_per_dataset": 1, "max_jobs": 7}
    lines: list[str] = []
    summary = run_build(config(zoo, tiny_datasets, tmp_path, **pareto), log=lines.append)
    assert summary.finished == 7
    assert any("accuracy predictor retrained on 4 results" in line for line in lines)
    # each job's MLflow run names the predictor fit that proposed it (none for random ones: the
    # initial design, and the picks made while fewer than 4 results were in)
    fits = [r.data.tags.get("tans.predictor_fit", "-") for r in mlflow_job_runs(tmp_path)]
    assert set(fits) == {"-", "4"} and fits.count("-") >= 4
    store = open_store(zoo)
    assert store.exists("pool/profiles.parquet")
    assert len(store.list("query_features")) == 4  # each dataset embedded once, cached
    state = read_state(store)
    pool = [a.id for a in arch_pool(0, 10)]
    assert {r.arch for r in state.results} <= set(pool)

    replay_zoo = str(tmp_path / "replayed")
    replay = run_build(
        config(replay_zoo, tiny_datasets, tmp_path, strategy="random", max_jobs=7, executor=f"replay:{zoo}"),
        tracking=False,
    )
    assert replay.finished == 7
    replayed = read_state(open_store(replay_zoo))
    assert {(r.dataset_id, r.arch, r.accuracy) for r in replayed.results} == {
        (r.dataset_id, r.arch, r.accuracy) for r in state.results
    }
    assert {r.job_id for r in replayed.results} == {r.job_id for r in state.results}

    def proposals(s, st):
        cfg = load_config(None, pareto)
        return ParetoPolicy(
            PolicyContext(
                0,
                tuple(pool),
                store=s,
                manifest=read_manifest(s),
                pareto=cfg.pareto,
                image_size=cfg.train.image_size,
                log=lambda *_: None,
            )
        ).propose(st, 3)

    # the predictor trains on the first m results in commit order: with the Ray build's commit
    # times, the replayed zoo (its copied features and profiles) gives the same proposals
    when = {(r.dataset_id, r.arch): r.created_at for r in state.results}
    aligned = ZooState(
        replayed.datasets,
        [dataclasses.replace(r, created_at=when[(r.dataset_id, r.arch)]) for r in replayed.results],
        replayed.failures,
    )
    assert proposals(store, state) == proposals(open_store(replay_zoo), aligned)
    status = zoo_status(store)
    assert 0 < status.mean_hypervolume <= 1 and len(status.hypervolume_history) >= 1
    # the peers run through the same driver and store: a replayed build, then its resume
    for name in ("nsga2", "tpe", "qnehvi"):
        peer_zoo = str(tmp_path / f"peer-{name}")
        peer = config(peer_zoo, tiny_datasets, tmp_path, strategy=name, max_jobs=6, executor=f"replay:{zoo}")
        assert run_build(peer, tracking=False).finished == 6
        grown = run_build(
            config(peer_zoo, tiny_datasets, tmp_path, strategy=name, max_jobs=7, executor=f"replay:{zoo}"),
            tracking=False,
        )
        peer_state = read_state(open_store(peer_zoo))
        assert grown.finished == 1 and len(peer_state.results) == 7
        assert len({(r.dataset_id, r.arch) for r in peer_state.results}) == 7
