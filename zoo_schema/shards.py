"""A dataset's images in the zoo: Parquet shards under `data/<id>/<write_id>/{train,test}/`,
published by the create-only dataset record that names the prefix, the row counts and the
shards' sha256 (see `layout`). Reading a split checks it against its record."""

from __future__ import annotations

import hashlib
import shlex
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from tans.zoo_schema import layout
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.records import DatasetRecord, arrow_schema, from_table, to_table
from tans.zoo_schema.store import ZooStore

SHARD_ROWS = 2048
SHARD_BYTES = 8 << 20
DATA_SCHEMA = pa.schema([pa.field("image", pa.binary()), pa.field("label", pa.int32())])


def read_datasets(store: ZooStore) -> list[DatasetRecord]:
    """Every complete dataset of the zoo, sorted by id: the records cached in
    `results_index/datasets.parquet` whose file is listed, and the others read as one threaded
    pyarrow dataset (or one by one when that fails: a damaged or older-schema record then
    raises as it does when read alone)."""
    keys = [k for k in store.list(layout.DATASETS) if k.endswith(".parquet")]
    records = {}
    try:
        listed = set(keys)
        cached = from_table(DatasetRecord, store.read_table(layout.DATASETS_SNAPSHOT))
        records = {key: r for r in cached if (key := layout.dataset_key(r.dataset_id)) in listed}
    except (FileNotFoundError, ValueError, KeyError, OSError, pa.ArrowException):
        pass  # no cache, or a damaged one: the records are read
    missing = [k for k in keys if k not in records]
    if not missing:  # all cached: no `pyarrow.dataset` (it imports pandas)
        return sorted(records.values(), key=lambda r: r.dataset_id)
    import pyarrow.dataset as pads

    try:
        fs, base = store.arrow_filesystem()
        schema = arrow_schema(DatasetRecord)
        table = pads.dataset([f"{base}/{k}" for k in missing], filesystem=fs, format="parquet", schema=schema)
        table = table.to_table()
        if table.num_rows != len(missing) or any(table[name].null_count for name in schema.names):
            raise ValueError("a dataset record of an older schema, or not one row")
        found = from_table(DatasetRecord, table)
    except (ValueError, KeyError, OSError, pa.ArrowException):
        found = [r for key in missing for r in from_table(DatasetRecord, store.read_table(key))]
    return sorted([*records.values(), *found], key=lambda r: r.dataset_id)


def cache_datasets(store: ZooStore, records: list[DatasetRecord]) -> None:
    """Cache these dataset records (the zoo's, as `read_datasets` gave them) in one object.
    Whoever adds or sets aside a dataset record deletes the cache (`forget_datasets`)."""
    if records:
        store.write_table(layout.DATASETS_SNAPSHOT, to_table(records))


def forget_datasets(store: ZooStore) -> None:
    store.delete(layout.DATASETS_SNAPSHOT)


def read_dataset(store: ZooStore, dataset_id: str) -> DatasetRecord:
    try:
        (record,) = from_table(DatasetRecord, store.read_table(layout.dataset_key(dataset_id)))
    except FileNotFoundError:
        raise DatasetError(
            f"the zoo at {store.uri} has no dataset {dataset_id!r}; add it with `tans datasets add SOURCE --zoo ZOO`"
        ) from None
    return record


def shard_keys(store: ZooStore, record: DatasetRecord, split: str) -> list[str]:
    """The shards of one split of a dataset record, in order."""
    prefix = f"{layout.data_prefix(record.dataset_id, record.write_id)}/{split}/"
    return [k for k in store.list(prefix.rstrip("/")) if k.startswith(prefix) and k.endswith(".parquet")]


def shards_digest(keys_and_digests) -> str:
    """The sha256 a dataset record holds of its shards: over each shard's name and sha256
    (pairs of key and hex digest)."""
    h = hashlib.sha256()
    for key, digest in sorted(keys_and_digests):
        h.update(f"{key.rsplit('/', 2)[-2]}/{key.rsplit('/', 1)[-1]} {digest}\n".encode())
    return h.hexdigest()


def _full(rows: int, size: int) -> bool:
    """Whether a shard of `rows` rows and `size` bytes of images is complete."""
    return rows == SHARD_ROWS or size >= SHARD_BYTES


def shard_ranges(lengths: list[int]) -> list[tuple[int, int]]:
    """The rows [start, end) of each shard `write_split` writes for rows of these image lengths
    (one empty shard when there are none): how a cluster ingestion plans the same shards."""
    ranges, start, size = [], 0, 0
    for i, length in enumerate(lengths):
        size += length
        if _full(i + 1 - start, size):
            ranges.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(lengths) or not ranges:
        ranges.append((start, len(lengths)))
    return ranges


def write_split(store: ZooStore, prefix: str, split: str, rows) -> list[tuple[str, str]]:
    """Write (image bytes, label) rows, an iterable read once, as shards of at most SHARD_ROWS
    rows and SHARD_BYTES of images (one empty shard when there are none); returns each
    shard's key and sha256. Shards are encoded and written by two threads while the next
    is gathered, so at most three shards' rows are in memory. The images are stored
    uncompressed: they are PNG or JPEG already, and zstd over them only costs time."""
    with ThreadPoolExecutor(2) as pool:
        futures, chunk, size = [], [], 0

        def flush():
            if len(futures) >= 2:
                futures[-2].result()  # at most two shards being written
            key = f"{prefix}/{split}/part-{len(futures):05d}.parquet"
            futures.append(pool.submit(write_shard, store, key, chunk))

        for row in rows:
            chunk.append(row)
            size += len(row[0])
            if _full(len(chunk), size):
                flush()
                chunk, size = [], 0
        if chunk or not futures:
            flush()
        return [f.result() for f in futures]


def write_shard(store: ZooStore, key: str, chunk: list) -> tuple[str, str]:
    """One shard of (image bytes, label) rows written create-only: (its key, its sha256)."""
    table = pa.table(
        {"image": pa.array([r[0] for r in chunk], pa.binary()), "label": pa.array([r[1] for r in chunk], pa.int32())},
        schema=DATA_SCHEMA,
    )
    sink = pa.BufferOutputStream()  # arrow's memory pool reuses its pages: no copy through Python bytes
    pq.write_table(table, sink, compression={"image": "none", "label": "zstd"})
    data = sink.getvalue()
    store.write_bytes(key, data, create_only=True)
    return key, hashlib.sha256(data).hexdigest()


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
            f"{reingest_command(store, record)}"
        )
    return table.column("image").to_pylist(), table.column("label").to_pylist()


def reingest_command(store: ZooStore, record: DatasetRecord) -> str:
    """The command that ingests a dataset again from its recorded source."""
    seed = f" --split-seed {record.split_seed}" if record.split_seed else ""
    q = shlex.quote
    command = f"`tans datasets add {q(record.source)} --zoo {q(store.uri)} --name {q(record.name)}{seed}`"
    if "://" not in record.source and not record.source.startswith("/"):  # recorded before sources were absolute
        command += " (from the folder the dataset was first added from: its recorded source path is relative)"
    return command
