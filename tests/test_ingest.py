"""Ingestion: every bad-input case gets a clear error, and nothing half-written is visible."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tans.pipeline.datasets.ingest import IngestSettings, ingest
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import S3Settings, open_store
from tests.helpers import make_folder, png


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "zoo"))


def test_good_folder_is_split_stratified_and_recorded(tmp_path, store):
    src = make_folder(tmp_path / "animals", {"cat": 10, "dog": 20})
    report = ingest(store, str(src))
    assert report.dataset_ids == ["animals"] and report.images == 30 and not report.skipped
    (rec,) = read_datasets(store)
    assert (rec.num_classes, rec.class_names, rec.num_train, rec.num_test) == (2, ["cat", "dog"], 24, 6)
    _, test_labels = load_split(store, "animals", "test")
    assert sorted(test_labels) == [0, 0, 1, 1, 1, 1]  # 20% of each class
    again = ingest(store, str(src))
    assert again.already_present and len(read_datasets(store)) == 1


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "b" / "notes.txt").write_text("hello")
    (src / "stray.jpg").write_bytes(b"x")
    report = ingest(store, str(src))
    reasons = dict(report.skipped)
    assert reasons["a/broken.png"].startswith("cannot decode image")
    assert reasons["b/notes.txt"] == "not an image file name"
    assert reasons["stray.jpg"] == "not inside a class folder"
    assert report.images == 12 and read_datasets(store)[0].skipped_files == 3


def test_grayscale_rgba_palette_become_rgb(tmp_path, store):
    src = tmp_path / "modes"
    for mode in ("L", "RGBA", "P"):
        make_folder(src, {f"c{mode}": 5}, mode=mode)
    ingest(store, str(src))
    images, _ = load_split(store, "modes", "train")
    assert {Image.open(io.BytesIO(b)).mode for b in images} == {"RGB"}


def test_empty_dataset(tmp_path, store):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no readable images.*ImageFolder layout"):
        ingest(store, str(tmp_path / "empty"))
    assert store.list("datasets") == [] and store.list("data") == []


def test_only_corrupt_images_is_empty(tmp_path, store):
    d = tmp_path / "bad" / "a"
    d.mkdir(parents=True)
    (d / "x.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"holds no readable images \(1 files skipped\)"):
        ingest(store, str(tmp_path / "bad"))


def test_single_class(tmp_path, store):
    src = make_folder(tmp_path / "one", {"only": 10})
    with pytest.raises(DatasetError, match="only 1 class \\('only'\\).*at least 2 classes"):
        ingest(store, str(src))
    assert read_datasets(store) == []


def test_too_few_images_per_class(tmp_path, store):
    src = make_folder(tmp_path / "few", {"a": 10, "b": 3, "c": 1})
    with pytest.raises(DatasetError, match="class\\(es\\) 'b' \\(3\\), 'c' \\(1\\) have fewer than 5"):
        ingest(store, str(src))


def test_missing_path(tmp_path, store):
    with pytest.raises(DatasetError, match="does not exist"):
        ingest(store, str(tmp_path / "nope"))


def test_more_than_20_classes_are_split(tmp_path, store):
    src = make_folder(tmp_path / "many", {f"k{i:02d}": 5 for i in range(45)})
    report = ingest(store, str(src), settings=IngestSettings(max_classes=20))
    assert report.dataset_ids == ["many-part0", "many-part1", "many-part2"]
    recs = read_datasets(store)
    assert [r.num_classes for r in recs] == [15, 15, 15]
    assert sorted(c for r in recs for c in r.class_names) == [f"k{i:02d}" for i in range(45)]


def test_conflicting_content_under_same_name_is_refused(tmp_path, store):
    ingest(store, str(make_folder(tmp_path / "a" / "ds", {"x": 5, "y": 5})))
    other = make_folder(tmp_path / "b" / "ds", {"x": 6, "y": 5})
    with pytest.raises(DatasetError, match="already has a dataset 'ds' with other content.*--name"):
        ingest(store, str(other))
    ingest(store, str(other), name="ds-v2")
    assert [r.dataset_id for r in read_datasets(store)] == ["ds", "ds-v2"]


def test_parquet_source_with_hf_struct_images(tmp_path, store):
    rows = [{"bytes": png((i * 20, 0, 0)), "path": None} for i in range(12)]
    table = pa.table({"image": rows, "label": ["red"] * 6 + ["blue"] * 6})
    pq.write_table(table, tmp_path / "colours.parquet")
    report = ingest(store, str(tmp_path / "colours.parquet"))
    assert report.dataset_ids == ["colours"] and read_datasets(store)[0].class_names == ["blue", "red"]


def test_parquet_without_label_column(tmp_path, store):
    pq.write_table(pa.table({"image": [png((0, 0, 0))]}), tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match="lacks column\\(s\\) \\['label'\\]"):
        ingest(store, str(tmp_path / "x.parquet"))


def test_s3_source_into_s3_zoo(tmp_path, s3_server, s3_bucket):
    import boto3

    src = make_folder(tmp_path / "s3ds", {"a": 5, "b": 5})
    client = boto3.client("s3", endpoint_url=s3_server.url)
    for f in src.rglob("*.png"):
        client.upload_file(str(f), s3_bucket, f"raw/s3ds/{f.relative_to(src).as_posix()}")
    s3 = S3Settings(endpoint_url=s3_server.url)
    zoo = open_store(f"s3://{s3_bucket}/zoo", s3)
    report = ingest(zoo, f"s3://{s3_bucket}/raw/s3ds", s3=s3)
    assert report.images == 10 and read_datasets(zoo)[0].num_train == 8


def test_shard_ranges_are_the_shards_write_split_writes(tmp_path, monkeypatch):
    import random

    from tans.zoo_schema import shards

    monkeypatch.setattr(shards, "SHARD_ROWS", 5)
    monkeypatch.setattr(shards, "SHARD_BYTES", 600)
    store = open_store(str(tmp_path / "zoo"))
    rng = random.Random(0)
    for n, case in enumerate([[], [10], [100] * 5, [700], [rng.randrange(1, 400) for _ in range(60)]]):
        written = shards.write_split(store, f"p{n}", "train", [(b"x" * length, 0) for length in case])
        rows = [len(store.read_table(key)) for key, _ in written]
        assert [end - start for start, end in shards.shard_ranges(case)] == rows
