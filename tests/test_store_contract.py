"""The zoo store contract, run against every backend: local disk and a real S3 endpoint."""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.store import S3Settings, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "zoo"))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/some/prefix", S3Settings(endpoint_url=server.url))


def test_write_read_list_delete(store):
    assert store.write_bytes("a/b/c.bin", b"hello") is True
    assert store.read_bytes("a/b/c.bin") == b"hello"
    store.write_bytes("a/b/c.bin", b"again")
    assert store.read_bytes("a/b/c.bin") == b"again"
    store.write_bytes("a/b/buffer.bin", pa.py_buffer(b"a pyarrow buffer"))  # any bytes-like object
    assert store.read_bytes("a/b/buffer.bin") == b"a pyarrow buffer"
    store.delete("a/b/buffer.bin")
    store.write_json("a/d.json", {"x": 1})
    assert store.read_json("a/d.json") == {"x": 1}
    assert store.list("a") == ["a/b/c.bin", "a/d.json"]
    assert store.list("nothing") == []
    assert store.exists("a/d.json") and not store.exists("a/e.json")
    store.delete("a/d.json")
    assert not store.exists("a/d.json")
    with pytest.raises(FileNotFoundError, match="a/d.json"):
        store.read_bytes("a/d.json")


def test_create_only_is_exactly_once(store):
    assert store.write_bytes("results/x.parquet", b"first", create_only=True) is True
    assert store.write_bytes("results/x.parquet", b"second", create_only=True) is False
    assert store.read_bytes("results/x.parquet") == b"first"


def test_concurrent_create_only_has_one_winner(store):
    wins = []

    def writer(i):
        if store.write_bytes("race/commit", f"writer {i}".encode(), create_only=True):
            wins.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read_bytes("race/commit") == f"writer {wins[0]}".encode()


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a//b", "a/./b", "sp ace", ""])
def test_keys_cannot_escape_the_zoo(store, key):
    with pytest.raises(StorageError, match="refusing zoo key"):
        store.write_bytes(key, b"x")


def test_uri_round_trip_and_hive_dataset(store):
    assert store.uri_of("checkpoints/j/abc.safetensors") == f"{store.uri.rstrip('/')}/checkpoints/j/abc.safetensors"
    for ds_id, v in [("d1", 1), ("d2", 2)]:
        store.write_table(f"results/dataset={ds_id}/j{v}.parquet", pa.table({"job_id": [f"j{v}"], "v": [v]}))
    fs, base = store.arrow_filesystem()
    table = pads.dataset(f"{base}/results", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert sorted(zip(table["dataset"].to_pylist(), table["v"].to_pylist())) == [("d1", 1), ("d2", 2)]


def test_s3_missing_bucket_and_unreachable_endpoint(s3_server, s3_bucket):
    with pytest.raises(StorageError, match="does not exist"):
        open_store("s3://no-such-bucket-here/zoo", S3Settings(endpoint_url=s3_server.url))
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        open_store(f"s3://{s3_bucket}/zoo", S3Settings(endpoint_url="http://127.0.0.1:9"))


def test_unsupported_uri():
    with pytest.raises(StorageError, match="unsupported zoo URI"):
        open_store("gs://bucket/zoo")


def test_s3_wrong_credentials_are_named_not_leaked(monkeypatch):
    """A moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0) refuses ours."""
    from tests.conftest import MotoServer

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    server = MotoServer().start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-do-not-print")
        with pytest.raises(StorageError, match="refused our credentials") as info:
            open_store("s3://any-bucket/zoo", S3Settings(endpoint_url=server.url))
        assert "very-secret-do-not-print" not in str(info.value)
        assert "AKIAWRONGWRONGWRONG1" not in str(info.value)
    finally:
        server.stop()


def test_age_and_links_out_of_the_zoo(store, tmp_path):
    store.write_bytes("checkpoints/j/a.bin", b"x")
    assert -5 < store.age("checkpoints/j/a.bin") < 60  # S3's clock is the endpoint's: a little slack
    with pytest.raises(FileNotFoundError):
        store.age("checkpoints/j/none.bin")
    assert store.leaves_zoo("checkpoints/j/a.bin") is False
    if store.uri.startswith("s3://"):
        return  # object stores have no links
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.bin").write_bytes(b"y")
    (store.root / "linked").symlink_to(outside)
    assert store.leaves_zoo("linked/b.bin") is True
    old = time.time() - 3600
    os.utime(store.root / "checkpoints/j/a.bin", (old, old))
    assert store.age("checkpoints/j/a.bin") >= 3600
