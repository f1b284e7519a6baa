"""Nothing lost, nothing mixed: moved and copied zoos, writes killed midway, files swapped
or damaged, a full disk, signals, secrets in URIs, mistyped paths. Real files, real
processes, a real Ray build."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tans.pipeline.cli import main
from tans.pipeline.commands.verify import verify_zoo
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.lease import Lease
from tans.pipeline.execution.recorded import last_build_config
from tans.pipeline.execution.run import run_build
from tans.workers.job import JobSpec
from tans.zoo_schema.errors import ConfigError, DatasetError, StorageError, ZooConflictError
from tans.zoo_schema.journal import record_failure
from tans.zoo_schema.layout import LEASE
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import to_table
from tans.zoo_schema.results import read_results, result_key, scan_results
from tans.zoo_schema.shards import load_split, read_dataset, read_datasets
from tans.zoo_schema.store import open_store
from tests.helpers import build_overrides, crash, toml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(ray_cluster, tiny_datasets, tmp_path_factory):
    """A small real zoo: 3 fine-tuned networks and a retriever version."""
    tmp = tmp_path_factory.mktemp("integrity")
    config = load_config(
        None,
        build_overrides(
            str(tmp / "zoo"), tiny_datasets, tmp, max_jobs=3, **{"retrain.after_build": True, "retrain.steps": 20}
        ),
    )
    run_build(config, log=lambda *_: None)
    return tmp / "zoo", config


def copy_of(built, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(built[0], target, symlinks=True)
    return target


def spec_of(store, record, config) -> JobSpec:
    m, d = read_manifest(store), read_dataset(store, record.dataset_id)
    return JobSpec(
        dataset_id=d.dataset_id,
        dataset_sha256=d.content_sha256,
        num_classes=d.num_classes,
        arch=record.arch,
        train=config.train,
        width=m.width,
        base_weights=m.base_weights,
        noise_seed=m.noise_seed,
        noise_shape=tuple(m.noise_shape),
    )


# -- a moved or copied zoo -----------------------------------------------------------------


def test_copied_zoo_keeps_and_checks_its_own_checkpoints(built, tiny_datasets, tmp_path, capsys):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    results = read_results(store)
    assert all(r.checkpoint_uri.startswith("checkpoints/") for r in results)  # zoo-relative keys
    report = verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert (report.problems, report.orphans) == ([], [])
    assert all((copy / r.checkpoint_uri).exists() for r in results)  # --clean-orphans deleted nothing

    # a row of schema 1 names its checkpoint by the absolute URI of the original zoo
    legacy = dataclasses.replace(results[0], checkpoint_uri=f"{built[0]}/{results[0].checkpoint_uri}")
    store.write_table(result_key(legacy), to_table([legacy]))
    shutil.rmtree(copy / "results_index")  # no snapshot: every row is read from its file
    report = verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert (report.problems, report.orphans, report.legacy_checkpoint_refs) == ([], [], 1)

    # a flipped byte in the copy is found in the copy (the original is intact)
    ckpt = copy / results[0].checkpoint_uri
    blob = bytearray(ckpt.read_bytes())
    blob[-5] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    assert main(["verify", str(copy), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert f"{copy}/checkpoints/" in out and "checkpoint sha256 mismatch" in out and "would be quarantined" in out
    assert verify_zoo(open_store(str(built[0]))).problems == []

    # search names checkpoints inside the zoo it was given
    assert main(["search", str(copy), "--dataset", str(tiny_datasets / "hue-6"), "--rerank", "source", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all(h["checkpoint_uri"].startswith(f"{copy}/checkpoints/") for h in hits)


def test_resume_builds_the_zoo_it_is_given(built, tmp_path, monkeypatch):
    copy = copy_of(built, tmp_path)
    monkeypatch.chdir(tmp_path)  # another directory than the build's
    config = last_build_config(str(copy), log=lambda *_: None)
    assert config.zoo == str(copy)
    assert all(os.path.isabs(d) for d in config.datasets)
    gone = tmp_path / "gone"
    shutil.copytree(built[0], gone)
    messages = []
    entries = [k for k in open_store(str(gone)).list("journal/builds")]
    data = json.loads((gone / entries[0]).read_text())
    data["config"]["datasets"] = [str(tmp_path / "moved-away")]
    (gone / entries[0]).write_text(json.dumps(data))
    assert last_build_config(str(gone), log=messages.append).datasets == []
    assert "no longer exists" in messages[0]


# -- crashes mid-write ---------------------------------------------------------------------


def test_ingestion_killed_midway_then_a_smaller_source_never_mixes_splits(tiny_datasets, tmp_path):
    zoo = tmp_path / "zoo"
    source = tmp_path / "digits"
    shutil.copytree(tiny_datasets / "digits-sklearn", source)
    crash({"call": "ingest", "zoo": str(zoo), "source": str(source), "prefix": "data/", "after": 1})
    store = open_store(str(zoo))
    assert read_datasets(store) == [] and store.list("data")  # a shard, but no dataset
    for cls in source.iterdir():  # the source shrinks before it is ingested again
        for f in sorted(cls.iterdir())[8:]:
            f.unlink()
    assert main(["datasets", "add", str(source), "--zoo", str(zoo)]) == 0
    (record,) = read_datasets(store)
    train, _ = load_split(store, record.dataset_id, "train")
    test, _ = load_split(store, record.dataset_id, "test")
    assert (len(train), len(test)) == (record.num_train, record.num_test) == (60, 20)
    assert not set(train) & set(test)
    report = verify_zoo(store)
    assert report.problems == [] and report.orphans  # the killed ingestion's shards: one, or two
    # when its train and test writers both finished one before the kill; never a live one
    assert {k.split("/")[2] for k in report.orphans} == {k.split("/")[2] for k in store.list("data")} - {
        record.write_id
    }
    verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert (verify_zoo(store).orphans, len(store.list("data"))) == ([], 2)


def test_retrain_killed_midway_leaves_no_mixed_version(built, tmp_path):
    from tans.retriever.train import load_version, versions

    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    before = versions(store)
    crash({"call": "retrain", "zoo": str(copy), "prefix": "retriever/files/", "after": 1, "image_size": 32})
    assert versions(store) == before
    report = verify_zoo(store)
    assert report.problems == [] and [k.rsplit("/", 1)[-1] for k in report.orphans] == ["weights.safetensors"]
    from tans.pipeline.execution.retrain import run_retrain
    from tans.retriever.train import RetrainSettings

    version = run_retrain(store, RetrainSettings(steps=5), 32, None, None, log=lambda *_: None)
    loaded = load_version(store, version)
    meta = loaded.meta
    assert version == before[-1] + 1 and loaded.models.num_rows == meta["results"] == 3
    assert meta["files"]["weights"]["key"] not in report.orphans
    assert verify_zoo(store).problems == []


def test_two_retrains_at_once_each_publish_a_whole_version(built, tmp_path):
    import threading

    from tans.retriever.train import RetrainSettings, gather, load_version, save_version, train_retriever, versions

    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    settings = RetrainSettings(steps=5)
    tensors = gather(store, 32)
    trained = [train_retriever(tensors, dataclasses.replace(settings, seed=s), log=lambda *_: None) for s in (1, 2)]
    saved = []
    threads = [
        threading.Thread(target=lambda m=m, x=x: saved.append(save_version(store, m, tensors, settings, x, 32)))
        for m, x in trained
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(saved) == versions(store)[-2:] and len(set(saved)) == 2
    metas = [load_version(store, v).meta for v in saved]
    assert metas[0]["files"]["weights"]["key"] != metas[1]["files"]["weights"]["key"]
    assert verify_zoo(store).problems == []


# -- files that are not what their key says ------------------------------------------------


def test_result_file_holding_another_jobs_row_is_refused_and_set_aside(built, tmp_path):
    from tans.workers.run import run_job

    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    a, b = read_results(store)[:2]
    (copy / result_key(a)).write_bytes((copy / result_key(b)).read_bytes())
    shutil.rmtree(copy / "results_index")  # no snapshot: every row is read from its file
    scan = scan_results(store)
    assert a.job_id not in {r.job_id for r in scan.results}
    assert [k for k, _ in scan.unusable] == [result_key(a)]
    spec = spec_of(store, a, built[1])
    assert spec.job_id == a.job_id
    with pytest.raises(StorageError, match=f"holds the row of job {b.job_id}"):
        run_job(spec, str(copy))  # the worker never returns another job's row
    report = verify_zoo(store)
    assert [p.key for p in report.problems] == [result_key(a)] and "re-trains" in report.problems[0].repair
    assert store.exists(f"quarantine/{result_key(a)}") and not store.exists(result_key(a))
    assert verify_zoo(store).problems == []


def test_damaged_data_shard_is_found_and_repaired_by_ingesting_again(built, tmp_path, capsys):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    record = read_dataset(store, read_results(store)[0].dataset_id)
    shard = next(k for k in store.list("data") if f"/{record.write_id}/test/" in k)
    store.delete(shard)
    with pytest.raises(DatasetError, match="holds 0 images, its record says"):
        load_split(store, record.dataset_id, "test")
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"tans datasets add {record.source}" in out and record.dataset_id in out
    assert record.dataset_id not in {d.dataset_id for d in read_datasets(store)}  # set aside
    assert main(["datasets", "add", record.source, "--zoo", str(copy)]) == 0
    assert "ingested as" in capsys.readouterr().out
    again = read_dataset(store, record.dataset_id)
    assert again.content_sha256 == record.content_sha256  # same content: its results still count
    assert verify_zoo(store, clean_orphans=True, min_age_s=0).problems == []
    assert verify_zoo(store).orphans == []

    # a shard swapped for another dataset's passes the row count but not the sha256
    other = next(d for d in read_datasets(store) if d.dataset_id != again.dataset_id)
    mine = next(k for k in store.list("data") if f"/{again.write_id}/train/" in k)
    theirs = next(k for k in store.list("data") if f"/{other.write_id}/train/" in k)
    (copy / mine).write_bytes((copy / theirs).read_bytes())
    problems = verify_zoo(store, dry_run=True).problems
    assert any(p.key.endswith(f"{again.dataset_id}.parquet") for p in problems)


def test_a_row_naming_another_jobs_checkpoint_is_set_aside_alone(built, tmp_path):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    a, b = read_results(store)[:2]
    thief = dataclasses.replace(a, checkpoint_uri=b.checkpoint_uri, checkpoint_sha256=b.checkpoint_sha256)
    store.write_table(result_key(thief), to_table([thief]))
    shutil.rmtree(copy / "results_index")  # no snapshot: every row is read from its file
    report = verify_zoo(store)
    assert [p.key for p in report.problems] == [result_key(a)]
    assert "not its own job's" in report.problems[0].problem
    assert store.exists(b.checkpoint_uri) and store.exists(result_key(b))  # the innocent job is untouched
    again = verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert again.problems == [] and len(read_results(store)) == 2 and store.exists(b.checkpoint_uri)


@pytest.mark.parametrize("ref", ["../../../../etc/passwd", "/etc/passwd", "s3://elsewhere/zoo/checkpoints/x/y"])
def test_a_bad_key_in_a_row_is_reported_and_the_check_carries_on(built, tmp_path, ref, capsys):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    a, b, c = read_results(store)
    bad = dataclasses.replace(a, checkpoint_uri=ref)
    store.write_table(result_key(bad), to_table([bad]))
    ckpt = copy / c.checkpoint_uri
    ckpt.write_bytes(ckpt.read_bytes()[:-1])  # another row is damaged too: it is found as well
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "3 results" in out and "not its own job's" in out and "checkpoint sha256 mismatch" in out
    assert not store.exists(result_key(a)) and not store.exists(result_key(c)) and store.exists(result_key(b))
    assert Path("/etc/passwd").exists()


def test_verify_never_deletes_through_a_symlink_or_what_tans_did_not_write(built, tmp_path):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    elsewhere = tmp_path / "other-disk"
    shutil.move(copy / "checkpoints", elsewhere)
    (copy / "checkpoints").symlink_to(elsewhere)  # checkpoints on another disk
    (elsewhere / "photos").mkdir()
    (elsewhere / "photos" / "holiday.jpg").write_bytes(b"jpeg")
    (elsewhere / "notes.txt").write_text("mine")
    stray = elsewhere / ("a" * 24) / (("b" * 64) + ".safetensors")  # named like a checkpoint, unreferenced
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    (copy / "data" / "readme.md").write_text("a user's note inside the zoo")
    report = verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert report.problems == [] and report.orphans == []
    assert sorted(report.foreign) == ["checkpoints/notes.txt", "checkpoints/photos/holiday.jpg", "data/readme.md"]
    assert report.outside == [f"checkpoints/{'a' * 24}/{'b' * 64}.safetensors"]
    assert (elsewhere / "photos" / "holiday.jpg").exists() and (elsewhere / "notes.txt").exists() and stray.exists()
    assert (copy / "data" / "readme.md").exists() and len(read_results(store)) == 3


def test_a_damaged_datasets_test_shards_are_not_orphans_and_hints_are_absolute(built, tmp_path, capsys, monkeypatch):
    copy = copy_of(built, tmp_path)
    store = open_store(str(copy))
    record = read_dataset(store, read_results(store)[0].dataset_id)
    train = next(k for k in store.list("data") if f"/{record.write_id}/train/" in k)
    test = [k for k in store.list("data") if f"/{record.write_id}/test/" in k]
    store.delete(train)
    report = verify_zoo(store, dry_run=True)
    assert [p.key for p in report.problems] == [f"datasets/{record.dataset_id}.parquet"]
    assert not set(test) & set(report.orphans)  # the record still names them
    monkeypatch.chdir(tmp_path)
    sources = tmp_path / "relative"
    shutil.copytree(Path(record.source), sources / "mine")
    assert main(["datasets", "add", "relative/mine", "--zoo", str(tmp_path / "fresh")]) == 0
    (fresh,) = read_datasets(open_store(str(tmp_path / "fresh")))
    assert fresh.source == str(sources / "mine")  # recorded absolute: the repair hint works from anywhere


def test_export_and_report_replace_planted_links_and_refuse_a_file_as_out(built, tmp_path, capsys):
    zoo = str(built[0])
    job = read_results(open_store(zoo))[0].job_id
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out, rep = tmp_path / "out", tmp_path / "rep"
    out.mkdir()
    rep.mkdir()
    for planted in (
        out / ".config.json.tmp",
        out / "config.json",
        out / "model.safetensors",
        rep / "index.html",
        rep / "status.json",
    ):
        planted.symlink_to(victim)
    assert main(["export", zoo, "--job", job, "--out", str(out)]) == 0
    assert main(["report", zoo, "--out", str(rep)]) == 0
    assert victim.read_text() == "precious"
    for written in (out / "config.json", out / "model.safetensors", rep / "index.html", rep / "status.json"):
        assert written.is_file() and not written.is_symlink()
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    for command in (["export", zoo, "--job", job], ["report", zoo]):
        assert main([*command, "--out", str(tmp_path / "afile")]) == 3
        assert "exists and is not a folder" in capsys.readouterr().err


# -- faults and operations -----------------------------------------------------------------


def test_full_disk_is_a_named_error_and_leaves_no_temp_files(tmpfs):
    store = open_store(str(tmpfs(2) / "zoo"))
    store.write_bytes("journal/small.json", b"{}")
    with pytest.raises(StorageError, match="the disk is full; free space"):
        store.write_bytes("checkpoints/j/big.safetensors", os.urandom(3 << 20))
    with pytest.raises(StorageError, match="disk is full"):
        for i in range(10_000):  # the journal fills the rest of the disk
            record_failure(store, f"job{i}", "d", "a", RuntimeError("x" * 3000))
    assert store.stray_temps() == []
    assert not store.exists("checkpoints/j/big.safetensors")


def test_temp_files_of_killed_writes_are_listed_and_cleaned(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    store.write_bytes("datasets/x.json", b"{}")
    old = tmp_path / "zoo" / "datasets" / ".tmp-0123abcd"
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young = tmp_path / "zoo" / "datasets" / ".tmp-4567ef"
    young.write_bytes(b"being written")
    assert verify_zoo(store).temp_files == ["datasets/.tmp-0123abcd", "datasets/.tmp-4567ef"]
    verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert not old.exists() and young.exists()  # a young one may be a write in progress
    held = Lease(store, ttl=60, command="tans datasets add").acquire()  # a live writer: nothing is touched
    with pytest.raises(ZooConflictError, match=r"held by .+ \(`tans datasets add`; .*pass --wait"):
        verify_zoo(store, clean_orphans=True, min_age_s=0)
    held.release()
    store.write_bytes(LEASE, b"{}")  # nobody can tell whether a writer is live: nothing is touched
    with pytest.raises(ZooConflictError, match="lease file .* is empty or corrupt"):
        verify_zoo(store, clean_orphans=True, min_age_s=0)
    assert young.exists()


def test_sigterm_stops_a_build_cleanly(ray_cluster, tiny_datasets, tmp_path):
    from mlflow.tracking import MlflowClient

    zoo = tmp_path / "zoo"
    o = build_overrides(str(zoo), tiny_datasets, tmp_path, max_jobs=20, address=ray_cluster.address_info["gcs_address"])
    cfg = tmp_path / "build.toml"
    cfg.write_text(toml(o))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tans.pipeline.cli", "build", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = open_store(str(zoo))
    deadline = time.time() + 300
    while not store.list("results") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not store.exists(LEASE)  # released: the next build starts at once
    client = MlflowClient(tracking_uri=o["mlflow.tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tans").experiment_id], "tags.`tans.kind` = 'build'")
    assert run.info.status == "KILLED"


def test_a_signal_surfacing_through_a_native_call_is_still_a_clean_stop(tmp_path, capsys, monkeypatch):
    """CI caught SIGTERM arriving inside Ray's Cython `CoreWorker.wait`: Python reported it as
    `SystemError(... returned a result with an exception set)` caused by our `Interrupted`."""
    import argparse

    import tans.pipeline.cli as cli
    from tans.zoo_schema.errors import Interrupted

    def wait_in_native_code(args):
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted as e:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from e

    def plain_bug(args):
        raise SystemError("a real bug")

    args = cli.parser().parse_args(["status", str(tmp_path)])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: args)
    monkeypatch.setattr(args, "func", wait_in_native_code)
    assert main([]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    monkeypatch.setattr(args, "func", plain_bug)
    with pytest.raises(SystemError, match="a real bug"):  # a crash stays a crash
        main([])


def test_credentials_in_uris_are_never_written(built, mlflow_server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    secret = "pa55-Wrd-SECRET"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    zoo = tmp_path / "replayed"
    lines = []
    run_build(
        load_config(
            None,
            {
                "zoo": str(zoo),
                "executor": f"replay:{built[0]}",
                "max_jobs": 2,
                "strategy": "random",
                "arch.pool_size": 10,
                "retrain.after_build": False,
                "mlflow.tracking_uri": uri,
                "mlflow.experiment": "secrets-test",
            },
        ),
        log=lines.append,
    )  # its own experiment: the server is shared with test_submit
    store = open_store(str(zoo))
    written = "\n".join(lines) + "".join(store.read_bytes(k).decode() for k in store.list("journal"))
    assert "alice:***@" in written and secret not in written
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("secrets-test").experiment_id], "tags.`tans.kind` = 'build'"
    )
    assert runs and all(secret not in json.dumps([r.data.params, r.data.tags]) for r in runs)
    record_failure(store, "j", "d", "a", RuntimeError(f"cannot reach {uri}/api"))
    assert secret not in "".join(store.read_bytes(k).decode() for k in store.list("journal/failures"))


# -- mistyped input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["verify"],
        ["verify", "--json"],
        ["report", "--out", "r"],
        ["search", "--dataset", "x"],
        ["retrain"],
        ["resume"],
    ],
)
def test_read_only_commands_on_a_mistyped_path_create_nothing(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-zoo"
    assert main([command[0], str(missing), *command[1:]]) == 3
    assert "there is no zoo at" in capsys.readouterr().err
    assert not missing.exists()


def test_whole_config_is_checked_before_anything_starts(tiny_datasets, tmp_path):
    zoo = tmp_path / "zoo"
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match="unknown strategy 'bogus'; valid strategies: nsga2, pareto, qnehvi, random, tpe"
    ):
        run_build(load_config(None, {"zoo": str(zoo), "datasets": [str(tiny_datasets)], "strategy": "bogus"}))
    assert time.monotonic() - started < 10 and not zoo.exists()
    collide = tmp_path / "collide"
    for name in ("My Data", "my-data"):
        shutil.copytree(tiny_datasets / "hue-6", collide / name)
    with pytest.raises(ConfigError, match=r"both get the id 'my-data'.*\[names\]"):
        run_build(load_config(None, {"zoo": str(zoo), "datasets": [str(collide)]}))
    assert not zoo.exists()
    config = load_config(None, {"zoo": str(zoo), "datasets": [str(collide)], "names": {"My Data": "my-data-2"}})
    from tans.pipeline.execution.run import validate_build

    assert len(validate_build(config)) == 2


def test_search_top_k_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "zoo", "--dataset", "x", "--top-k", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_during_ray_start_up_leaves_no_ray_process(tiny_datasets, tmp_path):
    """A local Ray half-started when SIGTERM arrives is stopped with the build: every process
    carrying this build's environment marker is gone afterwards."""
    import psutil

    cfg = tmp_path / "build.toml"
    cfg.write_text(toml(build_overrides(str(tmp_path / "zoo"), tiny_datasets, tmp_path, max_jobs=2)))
    marker = f"tans-test-{os.getpid()}-{time.time_ns()}"

    def marked() -> list:
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("TANS_TEST_MARK") == marker:
                    found.append(p)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return found

    proc = psutil.Popen(
        [sys.executable, "-m", "tans.pipeline.cli", "build", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "TANS_TEST_MARK": marker},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(c.name() == "raylet" for c in proc.children(recursive=True)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    deadline = time.time() + 30
    while marked() and time.time() < deadline:
        time.sleep(0.5)
    assert [p.name() for p in marked()] == []


def test_zoo_copied_to_s3_verifies_and_searches_there(built, tiny_datasets, s3_server, s3_bucket, capsys):
    from tans.zoo_schema.store import S3Settings

    remote_uri = f"s3://{s3_bucket}/moved/zoo"
    remote = open_store(remote_uri, S3Settings(endpoint_url=s3_server.url))
    for path in sorted(p for p in Path(built[0]).rglob("*") if p.is_file()):
        remote.write_bytes(path.relative_to(built[0]).as_posix(), path.read_bytes())
    report = verify_zoo(remote, clean_orphans=True, dry_run=True)
    assert (report.problems, report.orphans, report.results_checked) == ([], [], 3)
    assert (
        main(
            [
                "search",
                remote_uri,
                "--s3-endpoint",
                s3_server.url,
                "--dataset",
                str(tiny_datasets / "shapes-clean"),
                "--json",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert all(h["checkpoint_uri"].startswith(f"{remote_uri}/checkpoints/") for h in hits)
    remote.delete(read_results(remote)[0].checkpoint_uri)
    assert [p.problem for p in verify_zoo(remote).problems] == ["checkpoint missing"]
