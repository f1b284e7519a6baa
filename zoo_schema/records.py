"""The zoo's records, declared once as frozen dataclasses; the Parquet schemas derive from them.

Files written from these schemas carry `tans.schema_version` in their key-value metadata
and are plain Parquet, readable by pandas, DuckDB and Polars without tans installed.
"""

from __future__ import annotations

import dataclasses
import gc
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: zoo-relative checkpoint keys, per-ingestion data prefixes (v1 still read)


@dataclass(frozen=True)
class DatasetRecord:
    """One ingested dataset (after splitting datasets of more than 20 classes)."""

    dataset_id: str
    name: str
    num_classes: int
    class_names: list[str]
    num_train: int
    num_test: int
    source: str
    content_sha256: str
    split_seed: int
    skipped_files: int
    created_at: str
    # Since schema 2: the ingestion's shard prefix below data/<dataset_id>/ ('' = version 1,
    # shards directly below it) and the sha256 of its shards (see zoo_schema.datasets).
    write_id: str = ""
    data_sha256: str = ""


@dataclass(frozen=True)
class ResultRecord:
    """One finished fine-tuning job. Writing its row is the job's commit."""

    job_id: str
    dataset_id: str
    arch: str
    topology: list[int]
    accuracy: float
    params: int
    flops: int
    latency_ms: float
    latency_device: str
    functional_embedding: list[float]
    checkpoint_uri: str  # a zoo-relative key (schema 2); absolute in older or replayed rows
    checkpoint_sha256: str
    num_classes: int
    epochs: int
    image_size: int
    train_seconds: float
    epoch_losses: list[float]
    epoch_accuracies: list[float]
    base_weights: str
    created_at: str
    # where the job's time went, in seconds (0 in rows written before these columns): reading
    # and decoding its data, building the network, evaluating (inside train_seconds, which
    # covers the epochs with their evaluations), profiling, writing the checkpoint
    data_seconds: float = 0.0
    setup_seconds: float = 0.0
    eval_seconds: float = 0.0
    profile_seconds: float = 0.0
    checkpoint_seconds: float = 0.0


_ARROW_TYPES: dict[str, pa.DataType] = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "list[str]": pa.list_(pa.string()),
    "list[float]": pa.list_(pa.float64()),
}
# Public columns with a narrower type than the default mapping (DESIGN.md).
_OVERRIDES: dict[str, pa.DataType] = {
    "topology": pa.list_(pa.int32()),
    "functional_embedding": pa.list_(pa.float32()),
}


@dataclass(frozen=True)
class ArchProfile:
    """One architecture of the zoo's candidate pool, measured with the base weights before any
    training (a row of `pool/profiles.parquet`): batch-1 latency on a worker's device, and the
    functional embedding (penultimate output on the manifest's noise batch, paper A.1)."""

    arch: str
    params: int
    flops: int
    latency_ms: float
    functional_embedding: list[float]


def arrow_schema(record_type: type) -> pa.Schema:
    """The Parquet schema of a record type, with the schema version in its metadata."""
    fields = [
        pa.field(f.name, _OVERRIDES.get(f.name) or _ARROW_TYPES[f.type], nullable=False)
        for f in dataclasses.fields(record_type)
    ]  # f.type is the annotation's text
    return pa.schema(fields, metadata={"tans.schema_version": str(SCHEMA_VERSION), "tans.record": record_type.__name__})


def to_table(records: list) -> pa.Table:
    """Records of one type as an Arrow table with that type's schema."""
    if not records:
        raise ValueError("to_table needs at least one record")
    schema = arrow_schema(type(records[0]))
    columns = {f.name: [getattr(r, f.name) for r in records] for f in dataclasses.fields(records[0])}
    return pa.table(columns, schema=schema)


def from_table(record_type: type, table: pa.Table) -> list:
    """Rows of a table as records; columns the record does not know are ignored, and
    columns added later (fields with a default) may be absent in older files. Built column
    by column, and each record's fields set at once (what its __init__ would set, without
    its 25 frozen-attribute calls), with the garbage collector paused: a resume of a million
    sealed rows spent 12 of its 22 s in __init__, and half the rest in collections."""
    fields = dataclasses.fields(record_type)
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing} of {record_type.__name__}")
    present = [f.name for f in fields if f.name in table.column_names]
    absent = {f.name: f.default for f in fields if f.name not in table.column_names}
    new = object.__new__

    def record(values):
        r = new(record_type)
        r.__dict__.update(zip(present, values))
        r.__dict__.update(absent)
        return r

    with gc_paused():
        columns = [_pylist(table[name]) for name in present]  # column by column: no dict per row from Arrow
        rows = zip(*columns) if columns else iter([()] * table.num_rows)
        if hasattr(record_type, "__post_init__") or hasattr(record_type, "__slots__"):
            return [record_type(**dict(zip(present, values)), **absent) for values in rows]
        return [record(values) for values in rows]


@contextmanager
def gc_paused():
    """The cycle collector paused while millions of objects without cycles among them are
    made (records, their lists, keys to sort them by): each collection would only rescan
    them, half of the time it takes to make a million records."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _pylist(column) -> list:
    """A column as Python values; a list column whose every list is empty (the driver's light
    rows) as fresh empty lists, without walking it through Arrow (1.7 s a million)."""
    if pa.types.is_list(column.type) and not column.null_count:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if all(len(c.flatten()) == 0 for c in chunks):
            return [[] for _ in range(len(column))]
    return column.to_pylist()


def string_array(values: list[str]) -> pa.Array:
    """Python strings as an Arrow string array, built from its buffers: `pa.array` imports
    pandas (half a second of a read-only command) whenever it is installed."""
    import numpy as np

    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    if offsets[-1] >= 2**31:  # past 2 GiB of text: 64-bit offsets
        return pa.Array.from_buffers(
            pa.large_string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
        ).cast(pa.string())
    offsets = offsets.astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def int_array(values) -> pa.Array:
    """A numpy int32 array as Arrow, without `pa.array` (see `string_array`)."""
    import numpy as np

    values = np.asarray(values)
    if values.size and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
        raise ValueError("int_array holds int32 values only")
    values = np.ascontiguousarray(values, np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def numpy_of(array, fill=None):
    """A numeric Arrow array (or chunked array) as numpy, nulls as `fill`, read from its
    buffer: `to_numpy` imports pandas (see `string_array`)."""
    import numpy as np
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.nulls(0, array.type)
    dtype = np.dtype({"int32": "int32", "int64": "int64", "float": "float32", "double": "float64"}[str(array.type)])
    if array.null_count:
        if fill is None:
            raise ValueError(f"a column of {array.type} with nulls and nothing to fill them with")
        filled = np.full(len(array), fill, dtype)
        array = pc.coalesce(array, pa.Array.from_buffers(array.type, len(array), [None, pa.py_buffer(filled)]))
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)
