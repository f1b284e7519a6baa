"""Streaming, parallel ingestion: JPEGs kept as they are, decoding on several processes, shards
written while the dataset decodes, and the same zoo content whichever way it is written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import tans.pipeline.datasets.ingest as ingest_mod
from tans.pipeline.datasets.decode import SpoolReader
from tans.pipeline.datasets.ingest import IngestSettings, ingest, read_images, validate
from tans.pipeline.datasets.sources import list_source
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import open_store


def _jpeg(path, size=(40, 30), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, quality=90)


def jpeg_folder(root, classes: dict[str, int], size=(40, 30)):
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _jpeg(root / name / f"{i:03d}.jpg", size, seed=100 * c + i)
    return root


def _content(store, dataset_id):
    return {split: load_split(store, dataset_id, split) for split in ("train", "test")}


def _prefixes(zoo_dir, dataset_id):
    """The write ids that hold shards of a dataset (empty folders do not count: no key is in them)."""
    return sorted({key.split("/")[2] for key in open_store(str(zoo_dir)).list(f"data/{dataset_id}")})


def test_rgb_jpegs_are_stored_as_they_are_others_downscaled_to_png(tmp_path):
    src = tmp_path / "ds"
    (src / "small").mkdir(parents=True)
    (src / "large").mkdir()
    for i in range(5):
        _jpeg(src / "small" / f"{i}.jpg", (500, 375), seed=i)  # <= keep_jpeg_side: kept
        _jpeg(src / "large" / f"{i}.jpg", (900, 600), seed=10 + i)  # larger: downscaled to PNG
    (src / "small" / "gray.jpg").write_bytes(b"")
    _jpeg(src / "small" / "gray.jpg", (60, 40), seed=99, mode="L")  # not RGB: converted, PNG
    by_class, skipped = read_images(str(src))
    assert not skipped
    kept = {(src / "small" / f"{i}.jpg").read_bytes() for i in range(5)}
    assert kept <= set(by_class["small"])
    for image in by_class["large"]:
        with Image.open(io.BytesIO(image)) as im:
            assert (im.format, im.mode, max(im.size)) == ("PNG", "RGB", 256)
    converted = [b for b in by_class["small"] if b not in kept]
    with Image.open(io.BytesIO(converted[0])) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (60, 40))


def test_truncated_and_corrupt_jpegs_are_skipped_though_decoded_at_reduced_scale(tmp_path):
    src = jpeg_folder(tmp_path / "ds", {"a": 5, "b": 5}, size=(400, 300))
    whole = (src / "a" / "000.jpg").read_bytes()
    (src / "a" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # truncated half way
    (src / "b" / "junk.jpg").write_bytes(whole[:200] + bytes(5000))  # header, then zeros
    _, skipped = read_images(str(src))
    reasons = dict(skipped)
    assert set(reasons) == {"a/cut.jpg", "b/junk.jpg"}
    assert all(r.startswith("cannot decode image") for r in reasons.values())


def test_decoding_processes_give_what_one_process_gives(tmp_path):
    src = jpeg_folder(tmp_path / "ds", {"a": 70, "b": 70})  # three chunks of files
    (src / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    source = list_source(str(src))
    runs = []
    for processes in (1, 2):
        spool = tmp_path / f"spool{processes}"
        spool.mkdir()
        by_class, skipped = validate("ds", source, IngestSettings(), str(spool), processes=processes)
        runs.append(({c: [s.sha256 for s in v] for c, v in by_class.items()}, skipped))
    assert runs[0] == runs[1] and runs[0][1] == [("b/broken.jpg", "cannot decode image (UnidentifiedImageError)")]


def test_streamed_shards_equal_shards_written_after_decoding(tmp_path, monkeypatch):
    src = jpeg_folder(tmp_path / "ds", {"a": 30, "b": 25, "c": 12})
    streamed = open_store(str(tmp_path / "zoo1"))
    ingest(streamed, str(src))
    feeds = []
    real_feed = ingest_mod.ShardStream.feed
    monkeypatch.setattr(
        ingest_mod.ShardStream,
        "feed",
        lambda self, cls, images: feeds.append(cls) or (self.abandon() if cls == "b" else real_feed(self, cls, images)),
    )
    fallback = open_store(str(tmp_path / "zoo2"))
    ingest(fallback, str(src))  # the stream stops at class b: written from the spool instead
    assert feeds == ["a", "b", "c"]
    (one,), (two,) = read_datasets(streamed), read_datasets(fallback)
    assert one.content_sha256 == two.content_sha256 and (one.num_train, one.num_test) == (two.num_train, two.num_test)
    assert _content(streamed, "ds") == _content(fallback, "ds")
    assert _prefixes(tmp_path / "zoo2", "ds") == [two.write_id]  # nothing left of the stopped stream


def test_an_unreadable_class_stops_the_stream_and_is_left_out(tmp_path):
    src = jpeg_folder(tmp_path / "ds", {"a": 6, "c": 6})
    (src / "b").mkdir()
    for i in range(3):
        (src / "b" / f"{i}.jpg").write_bytes(b"\xff\xd8 broken")
    zoo = tmp_path / "zoo"
    report = ingest(open_store(str(zoo)), str(src))
    (record,) = read_datasets(open_store(str(zoo)))
    assert record.class_names == ["a", "c"] and len(report.skipped) == 3
    _, labels = load_split(open_store(str(zoo)), "ds", "train")
    assert sorted(set(labels)) == [0, 1]  # c is label 1, not 2
    assert _prefixes(zoo, "ds") == [record.write_id]


def test_a_source_file_changed_while_ingesting_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    src = jpeg_folder(tmp_path / "ds", {"a": 6, "b": 6})
    real_read = SpoolReader.read

    def read_after_an_edit(self, stored):
        if stored.spool.endswith("b/002.jpg"):
            _jpeg(stored.spool, seed=1234)  # another writer replaces the file
        return real_read(self, stored)

    monkeypatch.setattr(SpoolReader, "read", read_after_an_edit)
    zoo = tmp_path / "zoo"
    with pytest.raises(DatasetError, match=r"b/002.jpg changed or went away while it was being ingested"):
        ingest(open_store(str(zoo)), str(src))
    assert read_datasets(open_store(str(zoo))) == []
    assert _prefixes(zoo, "ds") == []


def test_a_class_below_the_minimum_leaves_no_streamed_shards(tmp_path):
    src = jpeg_folder(tmp_path / "ds", {"a": 8, "b": 3, "c": 8})
    zoo = tmp_path / "zoo"
    with pytest.raises(DatasetError, match=r"class\(es\) 'b' \(3\) have fewer than 5"):
        ingest(open_store(str(zoo)), str(src))
    assert _prefixes(zoo, "ds") == []


@pytest.mark.parametrize("refused", ["/test/", "/train/", "datasets/"])
def test_a_zoo_that_refuses_a_write_stops_the_ingestion_and_keeps_nothing(tmp_path, monkeypatch, refused):
    """A shard (the last one of a split, written after the stream's end) or the dataset record
    refused by the zoo (a full disk): the error comes out, nothing hangs, nothing is left."""
    import threading

    from tans.zoo_schema.errors import StorageError

    src = jpeg_folder(tmp_path / "ds", {"a": 6, "b": 6})
    store = open_store(str(tmp_path / "zoo"))
    real = store.write_bytes

    def refuse(key, data, create_only=False):
        if refused in key:
            raise StorageError(f"write {key}: the disk is full (test)")
        return real(key, data, create_only)

    monkeypatch.setattr(store, "write_bytes", refuse)
    errors = []
    worker = threading.Thread(
        target=lambda: errors.append(pytest.raises(StorageError, ingest, store, str(src))), daemon=True
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "ingestion hung"
    assert "the disk is full" in str(errors[0].value)
    assert read_datasets(store) == [] and _prefixes(tmp_path / "zoo", "ds") == []
