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
from zoo_schema.records import DatasetRecord, ResultRecord, from_table
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

    @property
    def done_ids(self) -> set[str]:
        return {r.job_id for r in self.results}

    def failed_attempts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.job_id] = counts.get(f.job_id, 0) + 1
        return counts


def read_results(store: ZooStore) -> list[ResultRecord]:
    records = []
    for key in store.list("results"):
        if key.endswith(".parquet"):
            records += from_table(ResultRecord, store.read_table(key))
    return sorted(records, key=lambda r: (r.dataset_id, r.job_id))


def read_failures(store: ZooStore) -> list[Failure]:
    return [Failure(**store.read_json(k)) for k in store.list("journal/failures") if k.endswith(".json")]


def read_state(store: ZooStore) -> ZooState:
    return ZooState(read_datasets(store), read_results(store), read_failures(store))


def record_failure(store: ZooStore, job_id: str, dataset_id: str, arch: str, error: BaseException) -> Failure:
    """Append one failed attempt to the journal (its own file: appends never collide)."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    failure = Failure(job_id, dataset_id, arch, text[-4000:], datetime.now(timezone.utc).isoformat())
    store.write_json(f"journal/failures/{job_id}/{uuid.uuid4().hex}.json", failure.__dict__, create_only=True)
    return failure


def write_journal(store: ZooStore, kind: str, payload: dict) -> None:
    """An append-only journal entry (build starts and stops, with reasons)."""
    payload = {"at": datetime.now(timezone.utc).isoformat(), **payload}
    store.write_bytes(f"journal/{kind}/{payload['at'].replace(':', '-')}-{uuid.uuid4().hex[:8]}.json",
                      json.dumps(payload, sort_keys=True).encode(), create_only=True)
