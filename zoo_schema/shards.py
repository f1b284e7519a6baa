"""A dataset's images in the zoo: Parquet shards under `data/<id>/<write_id>/{train,test}/`,
published by the create-only dataset record that names the prefix, the row counts and the
shards' sha256 (see `layout`). Reading a split checks it against its record."""
from __future__ import annotations

import hashlib
import io
import shlex

import pyarrow as pa
import pyarrow.parquet as pq

from zoo_schema import layout
from zoo_schema.errors import DatasetError
from zoo_schema.records import DatasetRecord, from_table
from zoo_schema.store import ZooStore

SHARD_ROWS = 2048
DATA_SCHEMA = pa.schema([pa.field("image", pa.binary()), pa.field("label", pa.int32())])


def read_datasets(store: ZooStore) -> list[DatasetRecord]:
    """Every complete dataset of the zoo, sorted by id."""
    records = []
    for key in store.list(layout.DATASETS):
        if key.endswith(".parquet"):
            records += from_table(DatasetRecord, store.read_table(key))
    return sorted(records, key=lambda r: r.dataset_id)


def read_dataset(store: ZooStore, dataset_id: str) -> DatasetRecord:
    try:
        (record,) = from_table(DatasetRecord, store.read_table(layout.dataset_key(dataset_id)))
    except FileNotFoundError:
        raise DatasetError(f"the zoo at {store.uri} has no dataset {dataset_id!r}; add it with "
                           "`tans datasets add SOURCE --zoo ZOO`") from None
    return record


def shard_keys(store: ZooStore, record: DatasetRecord, split: str) -> list[str]:
    """The shards of one split of a dataset record, in order."""
    prefix = f"{layout.data_prefix(record.dataset_id, record.write_id)}/{split}/"
    return [k for k in store.list(prefix.rstrip("/")) if k.startswith(prefix) and k.endswith(".parquet")]


def shards_digest(keys_and_bytes) -> str:
    """The sha256 a dataset record holds of its shards: over each shard's name and sha256."""
    h = hashlib.sha256()
    for key, data in sorted(keys_and_bytes):
        h.update(f"{key.rsplit('/', 2)[-2]}/{key.rsplit('/', 1)[-1]} {hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


def write_split(store: ZooStore, prefix: str, split: str, rows) -> list[tuple[str, bytes]]:
    written = []
    for i in range(0, max(len(rows), 1), SHARD_ROWS):
        chunk = rows[i:i + SHARD_ROWS]
        table = pa.table({"image": [r[0] for r in chunk], "label": [r[1] for r in chunk]},
                         schema=DATA_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        key = f"{prefix}/{split}/part-{i // SHARD_ROWS:05d}.parquet"
        store.write_bytes(key, sink.getvalue(), create_only=True)
        written.append((key, sink.getvalue()))
    return written


def load_split(store: ZooStore, dataset_id: str, split: str) -> tuple[list[bytes], list[int]]:
    """The encoded images and labels of one split, as its dataset record names them; a split
    whose rows do not match the record is refused (the zoo's copy is damaged)."""
    record = read_dataset(store, dataset_id)
    keys = shard_keys(store, record, split)
    expected = record.num_train if split == "train" else record.num_test
    table = pa.concat_tables([store.read_table(k) for k in keys]) if keys else None
    if table is None or table.num_rows != expected:
        raise DatasetError(
            f"the {split} split of dataset {dataset_id!r} in {store.uri} holds "
            f"{0 if table is None else table.num_rows} images, its record says {expected}: the zoo's copy "
            f"is damaged; run `tans verify {store.uri}` (it sets the dataset aside), then "
            f"{reingest_command(store, record)}")
    return table.column("image").to_pylist(), table.column("label").to_pylist()


def reingest_command(store: ZooStore, record: DatasetRecord) -> str:
    """The command that ingests a dataset again from its recorded source."""
    seed = f" --split-seed {record.split_seed}" if record.split_seed else ""
    q = shlex.quote
    return f"`tans datasets add {q(record.source)} --zoo {q(store.uri)} --name {q(record.name)}{seed}`"
