"""Ingestion on a Ray cluster: the files are decoded by Ray tasks on the nodes, which write the
shards too when the zoo is on S3, and the zoo gets exactly what a local ingestion writes (the same
dataset ids, shards and hashes, the same files skipped for the same reasons), with hostile files
among them, from a local folder (read by the caller) and from S3 (read by the tasks); a file
changed between the two passes, or a node with another Pillow, leaves nothing in the zoo."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from tans.pipeline.cli import main
from tans.pipeline.datasets.ingest import IngestSettings, ingest
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import open_store
from tests.helpers import make_folder


@pytest.fixture(scope="module")
def address(ray_cluster):
    return ray_cluster.address_info["address"]


def hostile_folder(root, classes: dict[str, int]):
    """An ImageFolder with what ingestion must refuse or convert: a decompression bomb, a corrupt
    PNG, an empty file, a duplicate, a 16-bit ramp and a JPEG kept as it is."""
    src = make_folder(root, classes)
    first = next(iter(classes))
    Image.new("L", (13000, 13000)).save(src / first / "bomb.png")
    (src / first / "corrupt.png").write_bytes((src / first / "0.png").read_bytes()[:40])
    (src / first / "empty.png").write_bytes(b"")
    (src / first / "copy.png").write_bytes((src / first / "1.png").read_bytes())
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    Image.fromarray(ramp).save(src / first / "ramp16.png")
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, format="JPEG")
    (src / first / "photo.jpg").write_bytes(out.getvalue())
    return src


def same_zoo(a, b) -> None:
    ra, rb = read_datasets(a), read_datasets(b)
    strip = ("write_id", "created_at", "source")
    assert [dataclasses.replace(r, **{k: "" for k in strip}) for r in ra] == [
        dataclasses.replace(r, **{k: "" for k in strip}) for r in rb
    ]
    for x, y in zip(ra, rb):  # data_sha256 covers each shard's name and bytes
        assert x.data_sha256 == y.data_sha256
        for split in ("train", "test"):
            assert load_split(a, x.dataset_id, split) == load_split(b, y.dataset_id, split)


@pytest.mark.parametrize(
    "classes,max_classes",
    [({"a": 12, "b": 9, "c": 7}, 20), ({f"k{i}": 6 for i in range(5)}, 2)],  # streamed; split into parts
)
def test_ingestion_on_ray_writes_what_local_ingestion_writes(tmp_path, address, classes, max_classes):
    src = hostile_folder(tmp_path / "ds", classes)
    settings = IngestSettings(max_classes=max_classes)
    here, there = open_store(str(tmp_path / "local")), open_store(str(tmp_path / "ray"))
    local = ingest(here, str(src), settings=settings)
    remote = ingest(there, str(src), settings=settings, on_ray=True)
    assert (remote.dataset_ids, remote.images, remote.skipped) == (local.dataset_ids, local.images, local.skipped)
    assert local.decoded_on == {} and sum(remote.decoded_on.values()) == sum(classes.values()) + 6
    assert local.written_on == remote.written_on == {}  # a zoo on local disk: written here
    reasons = dict(remote.skipped)
    assert "over ingest.max_pixels" in reasons[f"{next(iter(classes))}/bomb.png"]
    assert reasons[f"{next(iter(classes))}/empty.png"] == "no image bytes"
    same_zoo(here, there)


def test_datasets_add_address_decodes_on_the_cluster(tmp_path, address, capsys):
    src = hostile_folder(tmp_path / "ds", {"a": 6, "b": 6})
    zoo = tmp_path / "zoo"
    assert main(["datasets", "add", str(src), "--zoo", str(zoo), "--address", address, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert sum(report["decoded_on"].values()) == 18 and report["images"] == 14
    assert report["written_on"] == {}
    assert main(["datasets", "add", str(src), "--zoo", str(tmp_path / "plain")]) == 0
    same_zoo(open_store(str(tmp_path / "plain")), open_store(str(zoo)))


def s3_source(tmp_path, s3_server, s3_bucket, kind: str, classes: dict[str, int]) -> tuple[str, str]:
    """The hostile folder as a local folder, an S3 folder or a Parquet file on S3: (uri, local copy)."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = hostile_folder(tmp_path / "ds", classes)
    client = boto3.client("s3", endpoint_url=s3_server.url)
    if kind == "local folder":
        return str(src), str(src)
    if kind == "s3 folder":
        for f in sorted(src.rglob("*.*")):
            client.upload_file(str(f), s3_bucket, f"raw/ds/{f.relative_to(src).as_posix()}")
        return f"s3://{s3_bucket}/raw/ds", str(src)
    files = sorted(src.rglob("*.*"))
    table = pa.table({"image": [f.read_bytes() for f in files], "label": [f.parent.name for f in files]})
    pq.write_table(table, tmp_path / "ds.parquet", row_group_size=7)
    client.upload_file(str(tmp_path / "ds.parquet"), s3_bucket, "raw/ds.parquet")
    return f"s3://{s3_bucket}/raw/ds.parquet", str(tmp_path / "ds.parquet")


@pytest.mark.parametrize("kind", ["local folder", "s3 folder", "s3 parquet"])
def test_into_a_zoo_on_s3(tmp_path, address, s3_server, s3_bucket, kind, monkeypatch):
    """The nodes write the shards of a source of files (read by the tasks when it is on S3); a
    Parquet source's decoded images come back and are written here."""
    from tans.pipeline.datasets.sources import Source
    from tans.zoo_schema.store import S3Settings

    uri, copy = s3_source(tmp_path, s3_server, s3_bucket, kind, {"a": 9, "b": 8})
    s3 = S3Settings(endpoint_url=s3_server.url)
    here = open_store(str(tmp_path / "local"))
    there = open_store(f"s3://{s3_bucket}/zoo", s3)
    local = ingest(here, copy, name="ds", s3=s3)

    def not_here(*_):
        raise AssertionError("the caller read the source's images")

    if kind != "local folder":
        monkeypatch.setattr(Source, "read", not_here)  # in this process only: the tasks read
    remote = ingest(there, uri, name="ds", s3=s3, on_ray=True)
    assert (remote.dataset_ids, remote.images, remote.skipped) == (local.dataset_ids, local.images, local.skipped)
    assert remote.images == 17 + 2  # the ramp and the JPEG are kept
    assert sum(remote.written_on.values()) == (0 if kind == "s3 parquet" else remote.images)
    same_zoo(here, there)


def test_a_file_changed_between_the_passes_leaves_nothing(tmp_path, address, s3_server, s3_bucket, monkeypatch):
    from tans.pipeline.datasets import ingest as ingest_module
    from tans.zoo_schema.errors import DatasetError
    from tans.zoo_schema.store import S3Settings

    src = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    decode = ingest_module.decode_on_ray

    def then_change(*args):
        yield from decode(*args)
        Image.new("RGB", (20, 16), (1, 2, 3)).save(src / "b" / "3.png")  # decodable, other pixels

    monkeypatch.setattr(ingest_module, "decode_on_ray", then_change)
    zoo = open_store(f"s3://{s3_bucket}/zoo", S3Settings(endpoint_url=s3_server.url))
    with pytest.raises(DatasetError, match=r"b/3.png in .* changed or went away while it was being ingested"):
        ingest(zoo, str(src), on_ray=True)
    assert read_datasets(zoo) == [] and zoo.list("data") == []


def test_a_node_with_another_pillow_is_refused(tmp_path, address, monkeypatch):
    import PIL

    from tans.zoo_schema.errors import StorageError

    src = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    monkeypatch.setattr(PIL, "__version__", "1.0")  # this process's; the nodes report theirs
    zoo = open_store(str(tmp_path / "zoo"))
    with pytest.raises(StorageError, match=r"decodes with Pillow .*, this machine with 1.0: .* install the same"):
        ingest(zoo, str(src), on_ray=True)
    assert read_datasets(zoo) == [] and zoo.list("data") == []
