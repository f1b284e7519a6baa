"""Committed results and the build's state, derived from the zoo alone (so any machine can
resume a build). Reading never writes: setting a damaged file aside (`quarantine`) and
refreshing the snapshot (`write_snapshot`) are explicit calls of the driver and of verify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from tans.zoo_schema import layout
from tans.zoo_schema.journal import Failure, read_failures
from tans.zoo_schema.records import DatasetRecord, ResultRecord, arrow_schema, from_table, to_table
from tans.zoo_schema.shards import read_datasets
from tans.zoo_schema.store import ZooStore

log = logging.getLogger("tans.results")
# What reading a damaged file raises (bad bytes, a wrong schema). An I/O error is not damage:
# it propagates (a StorageError after the store's retries), so a file is never set aside
# because the storage was briefly unreachable.
CORRUPT = (ValueError, KeyError, NotImplementedError, pa.ArrowInvalid)


@dataclass(frozen=True)
class ZooState:
    datasets: list[DatasetRecord]
    results: list[ResultRecord]
    failures: list[Failure]
    max_attempts: int = 1  # a job with this many failed attempts and no result is given up

    @property
    def done_ids(self) -> set[str]:
        return {r.job_id for r in self.results}

    def failed_attempts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.job_id] = counts.get(f.job_id, 0) + 1
        return counts

    def given_up(self) -> set[tuple[str, str]]:
        """(dataset_id, arch) pairs that failed max_attempts times and have no result."""
        attempts = self.failed_attempts()
        done = self.done_ids
        return {
            (f.dataset_id, f.arch)
            for f in self.failures
            if attempts[f.job_id] >= self.max_attempts and f.job_id not in done
        }


SNAPSHOT_KEY = layout.SNAPSHOT
SNAPSHOT_MIN_NEW = 64


def result_key(r: ResultRecord) -> str:
    return layout.result_key(r.dataset_id, r.job_id)


def read_result(store: ZooStore, key: str) -> ResultRecord:
    """The one committed row of a result file."""
    (record,) = from_table(ResultRecord, store.read_table(key))
    return record


def find_result(store: ZooStore, job_id: str) -> ResultRecord | None:
    """A job's committed result, wherever its dataset partition is; None if it has none."""
    keys = [k for k in store.list(layout.RESULTS) if k.endswith(f"/{job_id}.parquet")]
    return read_result(store, keys[0]) if keys else None


@dataclass(frozen=True)
class ResultsRead:
    """What reading the committed results found."""

    results: list[ResultRecord]
    outside_snapshot: int  # files read one by one (the snapshot did not hold them)
    unusable: list[tuple[str, str]]  # (key, reason): unreadable, or not its key's job


# What summaries (`tans status`) do not need: 1,280 floats a row, nine tenths of a row's size.
HEAVY = ("functional_embedding",)


def read_results(store: ZooStore, light: bool = False) -> list[ResultRecord]:
    """Every usable committed result, sorted by (dataset, job). Reads only: see `scan_results`."""
    return scan_results(store, light).results


def _light(table: pa.Table) -> pa.Table:
    """A table read without HEAVY columns, with empty values in their place."""
    schema = arrow_schema(ResultRecord)
    for name in HEAVY:
        table = table.append_column(schema.field(name), pa.array([[]] * table.num_rows, schema.field(name).type))
    return table


def _columns(light: bool) -> list[str] | None:
    return [n for n in arrow_schema(ResultRecord).names if n not in HEAVY] if light else None


def scan_results(store: ZooStore, light: bool = False) -> ResultsRead:
    """Every committed result; unreadable files and files that hold another job's row are
    left out and reported (the driver and `tans verify` quarantine them; reading writes nothing).

    The per-job files are the commits; `results_index/snapshot.parquet` is a cache of
    their rows, so a resume reads one object plus the files committed since, not one
    object per result. Rows of the snapshot count only while their file is still listed
    (a quarantined result never comes back from the cache).

    With `light`, the HEAVY columns (the functional embeddings) are not read: the records
    hold an empty list there. That is for summaries (`tans status`): a tenth of the memory.
    """
    keys = [k for k in store.list(layout.RESULTS) if k.endswith(".parquet")]
    if not keys:
        return ResultsRead([], 0, [])
    listed = set(keys)
    rows = {k: r for k, r in _read_snapshot(store, light).items() if k in listed}
    missing = [k for k in keys if k not in rows]
    found, unusable = _read_files(store, missing, light)
    rows.update(found)
    return ResultsRead(sorted(rows.values(), key=lambda r: (r.dataset_id, r.job_id)), len(missing), unusable)


def results_table(store: ZooStore) -> pa.Table:
    """What `read_results` reads, as one Arrow table sorted by (dataset, job), without making a
    Python object of each value: the snapshot's rows whose file is still listed, plus the
    files committed since. When anything is off (a damaged or older-schema file, a row that
    is not its file's), the records are read and converted instead, with the same result."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    schema = arrow_schema(ResultRecord)
    keys = [k for k in store.list(layout.RESULTS) if k.endswith(".parquet")]
    if not keys:
        return schema.empty_table()

    def key_column(table: pa.Table):
        return pc.binary_join_element_wise(
            f"{layout.RESULTS}/dataset=", table["dataset_id"], "/", table["job_id"], ".parquet", ""
        )

    try:
        parts, listed = [], set(keys)
        try:
            snapshot = store.read_table(SNAPSHOT_KEY).select(schema.names).cast(schema)
            snapshot = snapshot.filter(pc.is_in(key_column(snapshot), pa.array(keys)))
            parts.append(snapshot)
            listed -= set(key_column(snapshot).to_pylist())
        except FileNotFoundError:
            pass
        if listed:
            fs, base = store.arrow_filesystem()
            files = pads.dataset(
                [f"{base}/{k}" for k in sorted(listed)], filesystem=fs, format="parquet", schema=schema
            ).to_table()
            if files.num_rows != len(listed) or set(key_column(files).to_pylist()) != listed:
                raise ValueError("a result file holds another job's row")
            parts.append(files)
        table = pa.concat_tables(parts)
        if any(table[name].null_count for name in schema.names):
            raise ValueError("a file of an older schema")
        return table.sort_by([("dataset_id", "ascending"), ("job_id", "ascending")])
    except (*CORRUPT, OSError, pa.ArrowException):
        rows = read_results(store)
        return to_table(rows) if rows else schema.empty_table()


def write_snapshot(store: ZooStore, results: list[ResultRecord]) -> None:
    """Cache these committed results' rows in one object (atomic replace)."""
    if results:
        store.write_table(SNAPSHOT_KEY, to_table(results))


def _read_snapshot(store: ZooStore, light: bool = False) -> dict[str, ResultRecord]:
    try:
        if light:  # only the columns wanted are read from the file
            import pyarrow.parquet as pq

            fs, base = store.arrow_filesystem()
            try:
                table = _light(pq.read_table(f"{base}/{SNAPSHOT_KEY}", filesystem=fs, columns=_columns(True)))
            except (FileNotFoundError, IsADirectoryError):
                raise FileNotFoundError(SNAPSHOT_KEY) from None
        else:
            table = store.read_table(SNAPSHOT_KEY)
        return {result_key(r): r for r in from_table(ResultRecord, table)}
    except FileNotFoundError:
        return {}
    except (*CORRUPT, OSError, pa.ArrowException):
        return {}  # a damaged or unreadable cache: the commits are read instead


def check_result(key: str, record: ResultRecord) -> str | None:
    """Why a result file's row is not its key's job (None when it is)."""
    if result_key(record) != key:
        return f"holds the row of job {record.job_id} (dataset {record.dataset_id}), not of the job its key names"
    return None


def _read_files(
    store: ZooStore, keys: list[str], light: bool = False
) -> tuple[dict[str, ResultRecord], list[tuple[str, str]]]:
    """Result files by key: as one threaded pyarrow dataset, or one by one if that fails or
    any row is not its file's (a dataset read cannot tell which file a row came from)."""
    import pyarrow.dataset as pads

    if not keys:
        return {}, []
    fs, base = store.arrow_filesystem()
    try:
        table = pads.dataset(
            [f"{base}/{k}" for k in keys], filesystem=fs, format="parquet", schema=arrow_schema(ResultRecord)
        ).to_table(columns=_columns(light))
        table = _light(table) if light else table
        rows = {result_key(r): r for r in from_table(ResultRecord, table)}
        if table.num_rows == len(keys) and set(rows) == set(keys):
            return rows, []
    except (*CORRUPT, OSError, pa.ArrowException):
        pass  # read them one by one: that tells a damaged file from an unreachable store
    out, unusable = {}, []
    for key in keys:
        try:
            record = read_result(store, key)
        except FileNotFoundError:
            continue
        except CORRUPT as e:
            unusable.append((key, f"unreadable result file ({type(e).__name__})"))
            continue
        problem = check_result(key, record)
        if problem:
            unusable.append((key, f"result file {problem}"))
        else:
            out[key] = record
    for key, reason in unusable:
        log.warning("%s in %s left out: %s; `tans verify` sets it aside", key, store.uri, reason)
    return out, unusable


def read_state(store: ZooStore, max_attempts: int = 1, light: bool = False) -> ZooState:
    return ZooState(read_datasets(store), read_results(store, light), read_failures(store), max_attempts)


def quarantine(store: ZooStore, key: str, reason: str) -> None:
    """Move a damaged object under quarantine/ with its reason; the original key is freed.
    A second object set aside under the same key keeps the first (its copy gets a suffix)."""
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return
    target, reason_key = layout.quarantine_keys(key)
    n = 1
    while store.exists(target):
        n += 1
        target, reason_key = layout.quarantine_keys(f"{key}.{n}")
    store.write_bytes(target, data)
    store.write_json(reason_key, {"key": key, "reason": reason, "at": datetime.now(UTC).isoformat()})
    store.delete(key)
    log.warning("quarantined %s: %s", key, reason)
