"""`tans verify`: check a whole zoo, set aside what is damaged, and say how to repair it.

Checked, wherever the zoo lives (it may have been copied or moved):
- every result file parses with the zoo schema and holds its own key's job; its checkpoint
  (a zoo-relative key, an older absolute URI, or a replayed row's source zoo) exists and
  matches the recorded sha256;
- every dataset record parses, and the shards it names hold the recorded row counts and
  sha256 (records of schema 1 carry no sha256: only the counts are checked);
- every retriever version's meta parses and names files that exist with their sha256 and
  a models table of the recorded size;
- temp files left by interrupted writes.

A damaged result (or one whose checkpoint is damaged) is moved under `quarantine/` with
its reason: it leaves acquisition and search, and a later build re-trains the job. A
damaged dataset record is quarantined too, so `tans datasets add` (the command is in the
message) ingests it again; a damaged retriever version is quarantined and `tans retrain`
builds a new one. `--dry-run` only reports.

Orphans are objects that nothing references: checkpoints of jobs without a result, data of
interrupted or replaced ingestions, files of interrupted retriever versions, and temp
files older than ten minutes. `--clean-orphans` deletes exactly the listed orphans, and
refuses while a build holds the zoo's lease (it may be about to commit one of them).
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq

from zoo_schema import layout
from zoo_schema.errors import ZooConflictError
from zoo_schema.records import DatasetRecord, from_table
from zoo_schema.results import CORRUPT, check_result, quarantine, read_result
from zoo_schema.shards import reingest_command, shard_keys, shards_digest
from zoo_schema.store import ZooStore

log = logging.getLogger("tans.verify")
TEMP_MIN_AGE_S = 600.0  # a temp file younger than this may belong to a write in progress


@dataclass(frozen=True)
class Problem:
    key: str
    problem: str
    repair: str
    job_id: str = ""


@dataclass
class VerifyReport:
    zoo: str
    results_checked: int = 0
    datasets_checked: int = 0
    retriever_versions_checked: int = 0
    legacy_checkpoint_refs: int = 0       # rows of schema 1 holding an absolute checkpoint URI
    problems: list[Problem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    quarantined: bool = False
    orphans_deleted: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def verify_zoo(store: ZooStore, clean_orphans: bool = False, dry_run: bool = False) -> VerifyReport:
    report = VerifyReport(zoo=store.uri, quarantined=not dry_run)
    damaged: list[tuple[str, str]] = []  # (key, reason) to quarantine
    build_again = f"a later build re-trains the job (`tans resume {store.uri}`)"

    def problem(key: str, text: str, repair: str, job_id: str = "", aside: tuple[str, ...] = ()):
        report.problems.append(Problem(key, text, repair, job_id))
        damaged.extend((k, text) for k in aside)

    # -- results and their checkpoints
    referenced: set[str] = set()
    jobs_with_results: set[str] = set()
    for key in [k for k in store.list(layout.RESULTS) if k.endswith(".parquet")]:
        report.results_checked += 1
        try:
            record = read_result(store, key)
        except CORRUPT as e:
            problem(key, f"unreadable result file ({type(e).__name__})", build_again, aside=(key,))
            continue
        wrong = check_result(key, record)
        if wrong:
            problem(key, f"result file {wrong}", build_again, aside=(key,))
            continue
        jobs_with_results.add(record.job_id)
        if not layout.is_relative_ref(record.checkpoint_uri):
            report.legacy_checkpoint_refs += 1
        holder, ckpt = layout.checkpoint_location(store, record.checkpoint_uri)
        if holder is store:
            referenced.add(ckpt)
        try:
            digest = hashlib.sha256(holder.read_bytes(ckpt)).hexdigest()
        except FileNotFoundError:
            digest = None
        if digest != record.checkpoint_sha256:
            text = "checkpoint missing" if digest is None else "checkpoint sha256 mismatch"
            aside = (key, ckpt) if digest is not None and holder is store else (key,)
            problem(holder.uri_of(ckpt), text, build_again, record.job_id, aside)

    # -- datasets and their shards
    data_in_use: set[str] = set()
    for key in [k for k in store.list(layout.DATASETS) if k.endswith(".parquet")]:
        report.datasets_checked += 1
        try:
            (record,) = from_table(DatasetRecord, store.read_table(key))
        except CORRUPT as e:
            problem(key, f"unreadable dataset record ({type(e).__name__})",
                    "ingest the dataset again with `tans datasets add SOURCE --zoo ZOO`", aside=(key,))
            continue
        text = _check_dataset(store, record, data_in_use)
        if text:
            problem(key, text, f"ingest it again: {reingest_command(store, record)}", aside=(key,))

    # -- retriever versions
    retriever_in_use: set[str] = set()
    for key in [k for k in store.list("retriever") if _is_meta(k)]:
        report.retriever_versions_checked += 1
        text = _check_version(store, key, retriever_in_use)
        if text:
            problem(key, text, f"train a new version with `tans retrain {store.uri}`", aside=(key,))

    # -- orphans and temp files
    report.orphans = sorted(
        [k for k in store.list("checkpoints") if k not in referenced and k.split("/")[1] not in jobs_with_results]
        + [k for k in store.list("data") if k not in data_in_use]
        + [k for k in store.list("retriever") if k not in retriever_in_use and not _is_meta(k)])
    temps = store.stray_temps()
    report.temp_files = [p for p, _ in temps]
    if not dry_run:
        for key, reason in damaged:
            quarantine(store, key, reason)
    if clean_orphans and not dry_run:
        if store.exists(layout.LEASE):
            raise ZooConflictError(
                f"a build holds the lease of {store.uri} ({layout.LEASE}) and may be about to commit "
                "one of these objects; nothing was deleted. Run --clean-orphans when no build runs "
                f"(`tans lease show {store.uri}`)")
        for k in report.orphans:
            store.delete(k)
        for path, age in temps:
            if age >= TEMP_MIN_AGE_S:
                store.delete_stray_temp(path)
        report.orphans_deleted = True
    return report


def _is_meta(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[1].startswith("v") and parts[1][1:].isdigit() and parts[2] == "meta.json"


def _check_dataset(store: ZooStore, record: DatasetRecord, in_use: set[str]) -> str | None:
    """Why a dataset's shards do not match its record (None when they do)."""
    shards = []
    for split, expected in (("train", record.num_train), ("test", record.num_test)):
        keys = shard_keys(store, record, split)
        in_use.update(keys)
        rows = 0
        for k in keys:
            try:
                data = store.read_bytes(k)
                rows += _rows(data)
            except CORRUPT as e:
                return f"unreadable shard {k} ({type(e).__name__})"
            shards.append((k, hashlib.sha256(data).hexdigest()))
        if rows != expected:
            return f"the {split} split holds {rows} images, its record says {expected}"
    if record.data_sha256 and shards_digest(shards) != record.data_sha256:
        return "its shards do not match the recorded sha256 (a shard was replaced or altered)"
    return None


def _rows(data: bytes) -> int:
    return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows


def _check_version(store: ZooStore, meta_key: str, in_use: set[str]) -> str | None:
    """Why a retriever version is not whole (None when it is)."""
    try:
        meta = store.read_json(meta_key)
        files = layout.retriever_files(meta_key, meta)
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable retriever meta ({type(e).__name__})"
    in_use.update(f["key"] for f in files.values())
    for name, f in files.items():
        try:
            data = store.read_bytes(f["key"])
        except FileNotFoundError:
            return f"its {name} file {f['key']} is missing"
        if f.get("sha256") and hashlib.sha256(data).hexdigest() != f["sha256"]:
            return f"its {name} file {f['key']} does not match the recorded sha256"
        if name == "models":
            try:
                rows = _rows(data)
            except CORRUPT as e:
                return f"unreadable models table ({type(e).__name__})"
            if rows != meta.get("results"):
                return f"its models table holds {rows} models, its meta says {meta.get('results')}"
    return None
