"""A zoo in use: commands at once on one zoo, a disk that fills mid-build, input that is not
what it claims, output folders someone prepared, readers that go away. Real processes,
real files, a real small file system."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tans.pipeline.cli import main
from tans.pipeline.commands.verify import verify_zoo
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.lease import LEASE_KEY, Lease
from tans.pipeline.execution.run import base_weights_entry, run_build
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.journal import read_failures
from tans.zoo_schema.outfiles import output_folder, write_file
from tans.zoo_schema.results import read_results
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import open_store
from tests.helpers import build_overrides, noise_folder, noise_png

pytestmark = pytest.mark.slow  # real processes, Ray clusters, file systems

ROOT = Path(__file__).resolve().parents[1]


def tans(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tans.pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kw
    )


# -- commands at once on one zoo -----------------------------------------------------------


def test_verify_clean_orphans_never_deletes_an_ingestion_in_flight(tmp_path, tiny_datasets):
    """`datasets add` holds the zoo while it writes shards; `verify --clean-orphans` is refused
    (naming the writer), or with --wait waits for it, and the zoo verifies clean after."""
    zoo = tmp_path / "zoo"
    assert main(["datasets", "add", str(tiny_datasets / "hue-6"), "--zoo", str(zoo)]) == 0
    big = noise_folder(tmp_path / "big", classes=6, per_class=60, side=320)
    adding = subprocess.Popen(
        [sys.executable, "-m", "tans.pipeline.cli", "datasets", "add", str(big), "--zoo", str(zoo)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = open_store(str(zoo))
        deadline = time.time() + 120
        while not store.exists(LEASE_KEY) and adding.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert store.exists(LEASE_KEY), adding.communicate()
        refused = tans("verify", str(zoo), "--clean-orphans")
        assert refused.returncode == 3, refused.stderr
        assert "held by" in refused.stderr and "`tans datasets add`" in refused.stderr and "--wait" in refused.stderr
        assert "Traceback" not in refused.stderr
        waited = tans("verify", str(zoo), "--clean-orphans", "--wait")
        out, err = adding.communicate(timeout=300)
    finally:
        if adding.poll() is None:
            adding.kill()
    assert adding.returncode == 0, err
    assert waited.returncode == 0, waited.stderr
    assert "waiting for" in waited.stdout and "`tans datasets add`" in waited.stdout  # says whom it waited for
    (record,) = [d for d in read_datasets(store) if d.dataset_id == "big"]
    train, _ = load_split(store, record.dataset_id, "train")  # checks the shards against the record
    assert len(train) == record.num_train == 6 * 48
    report = verify_zoo(store, dry_run=True)
    assert (report.problems, report.orphans) == ([], [])
    assert not store.exists(LEASE_KEY)


def test_a_second_writer_is_refused_or_waits(tmp_path, tiny_datasets):
    zoo = open_store(str(tmp_path / "zoo"))
    held = Lease(zoo, ttl=60, command="tans retrain").acquire()
    r = tans("datasets", "add", str(tiny_datasets / "hue-6"), "--zoo", str(tmp_path / "zoo"))
    assert r.returncode == 3 and "`tans retrain`" in r.stderr and "pass --wait" in r.stderr
    assert read_datasets(zoo) == []  # nothing written
    show = tans("lease", "show", str(tmp_path / "zoo"))
    assert "running `tans retrain`" in show.stdout
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tans.pipeline.cli",
            "datasets",
            "add",
            str(tiny_datasets / "hue-6"),
            "--zoo",
            str(tmp_path / "zoo"),
            "--wait",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    assert waiting.poll() is None and read_datasets(zoo) == []  # still waiting
    held.release()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "waiting for" in out and [d.dataset_id for d in read_datasets(zoo)] == ["hue-6"]


# -- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_stops_the_build_and_spends_no_budget(ray_cluster, tiny_datasets, tmp_path, tmpfs):
    small_disk = tmpfs(256)
    from mlflow.tracking import MlflowClient

    zoo = small_disk / "zoo"
    o = build_overrides(str(zoo), tiny_datasets, tmp_path, max_jobs=6, address=ray_cluster.address_info["gcs_address"])
    config = load_config(None, o)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave room for the datasets, the base weights (30 MB) and about a checkpoint
        f.write(b"\0" * (256 - 30 - 24) * 2**20)
    with pytest.raises(StorageError, match="the build stops: .*the disk is full.*No attempt was counted"):
        run_build(config, log=lambda *_: None)
    store = open_store(str(zoo))
    done = len(read_results(store))
    assert done < 6 and read_failures(store) == []  # no failed attempt was journaled or counted
    client = MlflowClient(tracking_uri=o["mlflow.tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tans").experiment_id], "tags.`tans.kind` = 'build'")
    assert run.info.status == "FAILED"
    assert not store.exists(LEASE_KEY)
    filler.unlink()  # space freed: the same command finishes the budget
    summary = run_build(config, log=lambda *_: None)
    assert summary.finished == 6 - done and summary.zoo_results == 6 and summary.failed == 0
    report = verify_zoo(store, dry_run=True)
    assert report.problems == []


def test_base_weights_already_in_the_zoo_are_not_written_again(tmpfs):
    """A no-op start on a full disk: the weights are there, so nothing is written (not even a temp)."""
    small_disk = tmpfs(48)
    store = open_store(str(small_disk / "zoo"))
    config = load_config(None, {"zoo": str(small_disk / "zoo")})
    entry = base_weights_entry(store, config)
    path = small_disk / "zoo" / entry.key
    before = path.stat()
    with open(small_disk / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
    assert base_weights_entry(store, config) == entry
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# -- input that is not what it claims -------------------------------------------------------


def parquet_dataset(path: Path, images: list[bytes], labels) -> Path:
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": labels}), path)
    return path


@pytest.mark.parametrize("damage", ["empty", "truncated", "footer", "foreign"])
def test_damaged_parquet_is_refused_by_every_command_that_reads_it(tmp_path, damage, tiny_datasets):
    good = parquet_dataset(
        tmp_path / "good.parquet", [noise_png(i, 16) for i in range(30)], [f"c{i % 3}" for i in range(30)]
    )
    blob = good.read_bytes()
    bad = tmp_path / "bad" / "data.parquet"
    bad.parent.mkdir()
    bad.write_bytes(
        {
            "empty": b"",
            "truncated": blob[: len(blob) // 2],
            "footer": blob[:-8] + (2_000_000_000).to_bytes(4, "little") + b"PAR1",
            "foreign": b"not parquet at all " * 50,
        }[damage]
    )
    zoo = tmp_path / "zoo"
    r = tans("datasets", "add", str(bad), "--zoo", str(zoo))
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert f"Parquet dataset {bad} cannot be read" in r.stderr and "add it again" in r.stderr
    assert not zoo.exists() or read_datasets(open_store(str(zoo))) == []
    r = tans("build", str(zoo), "--datasets", str(bad.parent), "--max-jobs", "1")
    assert r.returncode == 3 and f"Parquet dataset {bad} cannot be read" in r.stderr and "Traceback" not in r.stderr
    assert main(["datasets", "add", str(tiny_datasets / "hue-6"), "--zoo", str(zoo)]) == 0
    r = tans("search", str(zoo), "--dataset", str(bad), "--rerank", "none")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert f"Parquet dataset {bad} cannot be read" in r.stderr or "no built networks" in r.stderr


@pytest.mark.parametrize(
    "labels, kind",
    [
        (pa.array([f"c{i % 3}".encode() for i in range(30)], pa.binary()), "binary"),
        (pa.array([[i % 3] for i in range(30)]), "list<element: int64>"),
    ],
)
def test_labels_that_are_not_ints_or_strings_are_refused(tmp_path, labels, kind):
    path = parquet_dataset(tmp_path / "d.parquet", [noise_png(i, 16) for i in range(30)], labels)
    r = tans("datasets", "add", str(path), "--zoo", str(tmp_path / "zoo"))
    assert r.returncode == 3 and f"its 'label' column is {kind}, not ints or strings" in r.stderr, r.stderr


def test_duplicate_images_never_straddle_the_split(tmp_path):
    images = [noise_png(i, 16) for i in range(30)]
    labels = [f"c{i % 3}" for i in range(30)]
    path = parquet_dataset(tmp_path / "twice.parquet", images + images, labels + labels)  # written twice
    folder = noise_folder(tmp_path / "folder", classes=3, per_class=10, side=16)
    shutil.copy(folder / "c0" / "0.png", folder / "c0" / "copy.png")  # the same image twice in one class
    shutil.copy(folder / "c0" / "1.png", folder / "c2" / "stray.png")  # and once in another class
    zoo = tmp_path / "zoo"
    for source, dropped, kept in ((path, 30, 30), (folder, 2, 30)):
        r = tans("datasets", "add", str(source), "--zoo", str(zoo), "--json")
        assert r.returncode == 0, r.stderr
        (report,) = __import__("json").loads(r.stdout)
        assert (report["duplicates"], report["images"]) == (dropped, kept)
        store = open_store(str(zoo))
        (dataset_id,) = report["dataset_ids"]
        train, _ = load_split(store, dataset_id, "train")
        test, _ = load_split(store, dataset_id, "test")
        assert not set(train) & set(test) and len(set(train + test)) == kept
    r = tans("datasets", "add", str(folder), "--zoo", str(zoo))
    assert "2 of them duplicate images" in r.stdout or "already in the zoo" in r.stdout


# -- output folders someone prepared --------------------------------------------------------


def test_outputs_replace_planted_links_instead_of_writing_through_them(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").symlink_to(victim)
    write_file(output_folder(out), "config.json", b"{}")
    assert victim.read_text() == "precious"
    assert not (out / "config.json").is_symlink() and (out / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no temp file left
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="exists and is not a folder"):
        output_folder(tmp_path / "file")
    other = tmp_path / "theirs"
    other.mkdir()
    os.chown(other, 65534, 65534)  # another user's folder (as root here; as a user, /tmp/x made by someone else)
    if os.geteuid() == 0:
        with pytest.raises(StorageError, match="belongs to another user"):
            output_folder(other)
    link = tmp_path / "link"
    link.symlink_to(out)
    assert output_folder(link) == out  # a link of one's own to a folder of one's own is fine


# -- readers that go away ------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly(tmp_path, tiny_datasets):
    zoo = tmp_path / "zoo"
    assert (
        main(["datasets", "add", str(tiny_datasets / "hue-6"), str(tiny_datasets / "shapes-clean"), "--zoo", str(zoo)])
        == 0
    )
    for _ in range(4):
        r = subprocess.run(
            f"{sys.executable} -m tans.pipeline.cli status --json {zoo} | head -1",
            shell=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.stdout.strip() == "{" and r.stderr == "", r.stderr
