"""The zoo's journals: append-only entries, one object each (appends never collide).

- failures: one entry per failed attempt of a job (`journal/failures/<job>/<id>.json`);
- starts: a worker began a job (host, pid, Ray node);
- builds: a build started or stopped, with its config and reason.
The lease (`journal/lease.json`) is the build runtime's: see `tans.pipeline.execution.lease`.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from tans.zoo_schema import layout
from tans.zoo_schema.redact import redact, redact_obj
from tans.zoo_schema.store import ZooStore


@dataclass(frozen=True)
class Failure:
    job_id: str
    dataset_id: str
    arch: str
    error: str
    at: str


def read_failures(store: ZooStore) -> list[Failure]:
    return [Failure(**store.read_json(k)) for k in store.list(layout.FAILURES) if k.endswith(".json")]


def record_failure(store: ZooStore, job_id: str, dataset_id: str, arch: str, error: BaseException) -> Failure:
    """Append one failed attempt to the journal (its own file: appends never collide)."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    failure = Failure(job_id, dataset_id, arch, redact(text)[-4000:], datetime.now(UTC).isoformat())
    store.write_json(layout.failure_key(job_id, uuid.uuid4().hex), failure.__dict__, create_only=True)
    return failure


def record_start(store: ZooStore, job_id: str) -> None:
    """Journal that a worker starts fine-tuning a job: who (host, pid, Ray node) and when."""
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - the node id is informative only
        node = None
    entry = {
        "job_id": job_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "node_id": node,
        "at": datetime.now(UTC).isoformat(),
    }
    store.write_json(layout.start_key(job_id, uuid.uuid4().hex), entry, create_only=True)


def read_starts(store: ZooStore) -> list[dict]:
    return [store.read_json(k) for k in store.list(layout.STARTS) if k.endswith(".json")]


def write_journal(store: ZooStore, kind: str, payload: dict) -> None:
    """An append-only journal entry (build starts and stops, with reasons)."""
    payload = redact_obj({"at": datetime.now(UTC).isoformat(), **payload})
    store.write_bytes(
        layout.journal_key(kind, f"{payload['at'].replace(':', '-')}-{uuid.uuid4().hex[:8]}"),
        json.dumps(payload, sort_keys=True).encode(),
        create_only=True,
    )
