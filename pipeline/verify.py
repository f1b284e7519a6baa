"""`tans verify`: check a whole zoo, and quarantine what is corrupt.

Checked: every result row parses with the zoo schema; its checkpoint exists and matches
the recorded sha256; every dataset record and data shard parses. A corrupt result (or a
result whose checkpoint is corrupt or missing) is moved under `quarantine/` with the
reason: it is then excluded from acquisition and search, and a later build re-trains the
job. Checkpoints no result refers to (orphans of interrupted attempts) are listed, and
deleted with `--clean-orphans`.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

import pyarrow as pa

from zoo_schema.records import DatasetRecord, from_table
from zoo_schema.store import ZooStore

log = logging.getLogger("tans.verify")
CORRUPT = (ValueError, pa.ArrowException, OSError, KeyError)


def quarantine(store: ZooStore, key: str, reason: str) -> None:
    """Move a corrupt object under quarantine/ with its reason; the original key is freed."""
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return
    store.write_bytes(f"quarantine/{key}", data)
    store.write_json(f"quarantine/{key}.reason.json",
                     {"key": key, "reason": reason, "at": datetime.now(timezone.utc).isoformat()})
    store.delete(key)
    log.warning("quarantined %s: %s", key, reason)


def verify_zoo(store: ZooStore, clean_orphans: bool = False) -> dict:
    from pipeline.state import read_result
    problems: list[dict] = []
    referenced: set[str] = set()
    result_keys = [k for k in store.list("results") if k.endswith(".parquet")]
    for key in result_keys:
        try:
            record = read_result(store, key)
        except CORRUPT as e:
            problems.append({"key": key, "problem": f"unreadable result file ({type(e).__name__})"})
            quarantine(store, key, problems[-1]["problem"])
            continue
        if not record.checkpoint_uri.startswith(store.uri.rstrip("/") + "/"):
            continue  # a replayed result pointing into its source zoo: verify that zoo instead
        ckpt = store.key_of(record.checkpoint_uri)
        referenced.add(ckpt)
        try:
            digest = hashlib.sha256(store.read_bytes(ckpt)).hexdigest()
        except FileNotFoundError:
            digest = None
        if digest != record.checkpoint_sha256:
            problem = "checkpoint missing" if digest is None else "checkpoint sha256 mismatch"
            problems.append({"key": ckpt, "job_id": record.job_id, "problem": problem})
            quarantine(store, key, f"{problem}: {ckpt}")
            if digest is not None:
                quarantine(store, ckpt, problem)
    datasets = 0
    for key in [k for k in store.list("datasets") if k.endswith(".parquet")]:
        try:
            (record,) = from_table(DatasetRecord, store.read_table(key))
            datasets += 1
            for shard in store.list(f"data/{record.dataset_id}"):
                store.read_table(shard)
        except CORRUPT as e:
            problems.append({"key": key, "problem": f"unreadable dataset file ({type(e).__name__}); "
                             "ingest the dataset again with `tans datasets add`"})
    orphans = [k for k in store.list("checkpoints") if k not in referenced]
    if clean_orphans:
        for k in orphans:
            store.delete(k)
    return {"zoo": store.uri, "results_checked": len(result_keys), "datasets_checked": datasets,
            "problems": problems, "orphan_checkpoints": orphans, "orphans_deleted": clean_orphans}
