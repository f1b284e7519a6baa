"""The build's state, derived from the zoo alone (so any machine can resume a build).

Results are the committed rows; failures are journal entries, one file per failed attempt.
"""
from __future__ import annotations

import json
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from pipeline.ingest import read_datasets
from zoo_schema.records import DatasetRecord, ResultRecord
from zoo_schema.store import ZooStore


@dataclass(frozen=True)
class Failure:
    job_id: str
    dataset_id: str
    arch: str
    error: str
    at: str


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
        return {(f.dataset_id, f.arch) for f in self.failures
                if attempts[f.job_id] >= self.max_attempts and f.job_id not in done}


SNAPSHOT_KEY = "results_index/snapshot.parquet"
SNAPSHOT_MIN_NEW = 64


def result_key(r: ResultRecord) -> str:
    return f"results/dataset={r.dataset_id}/{r.job_id}.parquet"


def read_result(store: ZooStore, key: str) -> ResultRecord:
    """The one committed row of a result file."""
    from zoo_schema.records import from_table
    (record,) = from_table(ResultRecord, store.read_table(key))
    return record


def find_result(store: ZooStore, job_id: str) -> ResultRecord | None:
    """A job's committed result, wherever its dataset partition is; None if it has none."""
    keys = [k for k in store.list("results") if k.endswith(f"/{job_id}.parquet")]
    return read_result(store, keys[0]) if keys else None


def read_results(store: ZooStore, refresh_snapshot: bool = True) -> list[ResultRecord]:
    """Every committed result; an unreadable result file is quarantined, never used.

    The per-job files are the commits; `results_index/snapshot.parquet` is a cache of
    their rows, so a resume reads one object plus the files committed since, not one
    object per result. Rows of the snapshot count only while their file is still listed
    (a quarantined result never comes back from the cache). The snapshot is rewritten
    when at least SNAPSHOT_MIN_NEW files were read outside it.
    """
    keys = [k for k in store.list("results") if k.endswith(".parquet")]
    if not keys:
        return []
    listed = set(keys)
    rows = {k: r for k, r in _read_snapshot(store).items() if k in listed}
    missing = [k for k in keys if k not in rows]
    rows.update(_read_files(store, missing))
    if refresh_snapshot and len(missing) >= SNAPSHOT_MIN_NEW:
        write_snapshot(store, list(rows.values()))
    return sorted(rows.values(), key=lambda r: (r.dataset_id, r.job_id))


def write_snapshot(store: ZooStore, results: list[ResultRecord]) -> None:
    """Cache these committed results' rows in one object (atomic replace)."""
    from zoo_schema.records import to_table
    if results:
        store.write_table(SNAPSHOT_KEY, to_table(results))


def _read_snapshot(store: ZooStore) -> dict[str, ResultRecord]:
    from pipeline.verify import CORRUPT
    from zoo_schema.records import from_table
    try:
        return {result_key(r): r for r in from_table(ResultRecord, store.read_table(SNAPSHOT_KEY))}
    except FileNotFoundError:
        return {}
    except CORRUPT:
        return {}  # a damaged cache is rebuilt from the commits


def _read_files(store: ZooStore, keys: list[str]) -> dict[str, ResultRecord]:
    """Result files by key: as one threaded pyarrow dataset, or one by one if one is bad."""
    import pyarrow.dataset as pads
    from pipeline.verify import CORRUPT, quarantine
    from zoo_schema.records import arrow_schema, from_table
    if not keys:
        return {}
    fs, base = store.arrow_filesystem()
    try:
        table = pads.dataset([f"{base}/{k}" for k in keys], filesystem=fs, format="parquet",
                             schema=arrow_schema(ResultRecord)).to_table()
        return {result_key(r): r for r in from_table(ResultRecord, table)}
    except CORRUPT:
        pass
    out = {}
    for key in keys:
        try:
            out[key] = read_result(store, key)
        except FileNotFoundError:
            continue
        except CORRUPT as e:
            quarantine(store, key, f"unreadable result file ({type(e).__name__})")
    return out


def read_failures(store: ZooStore) -> list[Failure]:
    return [Failure(**store.read_json(k)) for k in store.list("journal/failures") if k.endswith(".json")]


def read_state(store: ZooStore, max_attempts: int = 1) -> ZooState:
    return ZooState(read_datasets(store), read_results(store), read_failures(store), max_attempts)


def record_failure(store: ZooStore, job_id: str, dataset_id: str, arch: str, error: BaseException) -> Failure:
    """Append one failed attempt to the journal (its own file: appends never collide)."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    failure = Failure(job_id, dataset_id, arch, text[-4000:], datetime.now(timezone.utc).isoformat())
    store.write_json(f"journal/failures/{job_id}/{uuid.uuid4().hex}.json", failure.__dict__, create_only=True)
    return failure


def record_start(store: ZooStore, job_id: str) -> None:
    """Journal that a worker starts fine-tuning a job: who (host, pid, Ray node) and when."""
    import os
    import socket
    node = None
    try:
        import ray
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - the node id is informative only
        node = None
    entry = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(), "node_id": node,
             "at": datetime.now(timezone.utc).isoformat()}
    store.write_json(f"journal/starts/{job_id}/{uuid.uuid4().hex}.json", entry, create_only=True)


def read_starts(store: ZooStore) -> list[dict]:
    return [store.read_json(k) for k in store.list("journal/starts") if k.endswith(".json")]


def write_journal(store: ZooStore, kind: str, payload: dict) -> None:
    """An append-only journal entry (build starts and stops, with reasons)."""
    payload = {"at": datetime.now(timezone.utc).isoformat(), **payload}
    store.write_bytes(f"journal/{kind}/{payload['at'].replace(':', '-')}-{uuid.uuid4().hex[:8]}.json",
                      json.dumps(payload, sort_keys=True).encode(), create_only=True)
