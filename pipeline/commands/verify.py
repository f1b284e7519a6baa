"""`tans verify`: check a whole zoo, set aside what is damaged, and say how to repair it.

Checked, wherever the zoo lives (it may have been copied or moved):
- every result file parses with the zoo schema and holds its own key's job; its checkpoint
  (a zoo-relative key, an older absolute URI, or a replayed row's source zoo) exists and
  matches the recorded sha256;
- every dataset record parses, and the shards it names hold the recorded row counts and
  sha256 (records of schema 1 carry no sha256: only the counts are checked);
- every retriever version's meta parses and names files that exist with their sha256 and
  a models table of the recorded size;
- every sealed segment (`tans compact`): its manifest, both files' sha256, and each row as a
  result file's row (its own job's checkpoint, present, with the recorded sha256);
- temp files left by interrupted writes.

A damaged result (or one whose checkpoint is damaged) is moved under `quarantine/` with
its reason: it leaves acquisition and search, and a later build re-trains the job. A
damaged dataset record is quarantined too, so `tans datasets add` (the command is in the
message) ingests it again; a damaged retriever version is quarantined and `tans retrain`
builds a new one. `--dry-run` only reports.

A row is checked before anything it names is touched: a row whose checkpoint reference is
not its own job's `checkpoints/<job_id>/<sha256>.safetensors` (another job's checkpoint, a
path out of the zoo) is set aside by itself, and the object it names is left alone. A bad
key is a problem of the record that holds it; the check carries on through the whole zoo.

Orphans are objects that nothing references: checkpoints of jobs without a result, data of
interrupted or replaced ingestions, files of interrupted retriever versions, segments of
the results snapshot that its index no longer names, files of a sealed segment that no
manifest names, and temp
files older than ten minutes. Only names tans writes count as orphans (`layout.OWN_OBJECTS`);
other files in the zoo's folders are listed as foreign and never deleted, and so are files
reached through a symlink out of the zoo. Unless --dry-run, verify holds the zoo's lease
(`tans.pipeline.execution.lease`), so it never runs while a build, an ingestion, a retraining or a
fine-tune writes; `--clean-orphans` also keeps orphans younger than the writers' time limit
(WRITER_TIME_LIMIT_S), in case a writer that lost its lease is about to commit one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq

from tans.pipeline.execution.lease import holding
from tans.zoo_schema import layout, sealed
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import DatasetRecord, ResultRecord, from_table
from tans.zoo_schema.results import (
    CORRUPT,
    check_result,
    light_rows,
    quarantine,
    read_result,
    read_segments,
    set_aside,
)
from tans.zoo_schema.shards import reingest_command, shard_keys, shards_digest
from tans.zoo_schema.store import ZooStore

log = logging.getLogger("tans.verify")
TEMP_MIN_AGE_S = 600.0  # a temp file younger than this may belong to a write in progress
# An orphan younger than this is kept by --clean-orphans even while we hold the lease: a
# writer that lost its lease (hung past its TTL) or wrote without one may still commit it.
WRITER_TIME_LIMIT_S = 600.0


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
    legacy_checkpoint_refs: int = 0  # rows of schema 1 holding an absolute checkpoint URI
    problems: list[Problem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    young: list[str] = field(default_factory=list)  # orphans kept: younger than min_age_s
    foreign: list[str] = field(default_factory=list)  # unreferenced files tans never writes: left alone
    outside: list[str] = field(default_factory=list)  # unreferenced, reached through a link out of the zoo
    temp_files: list[str] = field(default_factory=list)
    quarantined: bool = False
    orphans_deleted: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def verify_zoo(
    store: ZooStore,
    clean_orphans: bool = False,
    dry_run: bool = False,
    wait: bool = False,
    min_age_s: float = WRITER_TIME_LIMIT_S,
    log=print,
) -> VerifyReport:
    """Check the whole zoo (see the module docstring). Unless `dry_run`, holds the zoo's lease
    while it works (with `wait`, waits for the writer holding it), so no live writer's objects
    are quarantined or deleted; `min_age_s` keeps younger orphans all the same."""
    if dry_run:
        return _verify(store, VerifyReport(zoo=store.uri, quarantined=False), False, min_age_s)
    with holding(store, "tans verify" + (" --clean-orphans" if clean_orphans else ""), wait=wait, log=log):
        return _verify(store, VerifyReport(zoo=store.uri, quarantined=True), clean_orphans, min_age_s)


def _verify(store: ZooStore, report: VerifyReport, clean_orphans: bool, min_age_s: float) -> VerifyReport:
    check = _Check(store, report)
    in_use = check.results() | check.datasets() | check.versions() | snapshot_segments(store)
    check.base_weights()
    _sort_unreferenced(store, report, in_use, check.jobs_with_results)
    temps = store.stray_temps()
    report.temp_files = [p for p, _ in temps]
    if report.quarantined:
        for key, reason in check.damaged:
            quarantine(store, key, reason)
        for segment, reasons in check.sealed_rows.items():
            _take_out(store, segment, reasons)
        for segment in check.replaced:  # superseded by a segment that is whole: garbage
            for key in segment.keys:
                store.delete(key)
    if clean_orphans:
        for k in report.orphans:
            try:
                young = store.age(k) < min_age_s
            except FileNotFoundError:
                continue  # gone meanwhile
            if young:
                report.young.append(k)
            else:
                store.delete(k)
        for path, age in temps:
            if age >= TEMP_MIN_AGE_S:
                store.delete_stray_temp(path)
        report.orphans_deleted = True
    return report


class _Check:
    """One pass over a zoo: each part's check adds its problems to the report, collects what
    to set aside, and returns the keys it found in use."""

    def __init__(self, store: ZooStore, report: VerifyReport):
        self.store, self.report = store, report
        self.damaged: list[tuple[str, str]] = []  # (key, reason) to quarantine
        self.sealed_rows: dict = {}  # sealed segment -> {job_id: reason}: rows to take out of it
        self.replaced: list = []  # sealed segments another replaces, still there
        self.jobs_with_results: set[str] = set()
        self.build_again = f"a later build re-trains the job (`tans resume {store.uri}`)"
        self.build_all = f"a later build re-trains its jobs (`tans resume {store.uri}`)"

    def problem(self, key: str, text: str, repair: str, job_id: str = "", aside: tuple[str, ...] = ()) -> None:
        self.report.problems.append(Problem(key, text, repair, job_id))
        self.damaged.extend((k, text) for k in aside)

    def results(self) -> set[str]:
        """Every result row and its checkpoint; returns the checkpoints in use."""
        referenced: set[str] = set()
        in_use = self.sealed(referenced)
        for key in [k for k in self.store.list(layout.RESULTS) if k.endswith(".parquet")]:
            if (parts := layout.result_key_parts(key)) and parts[1] in self.jobs_with_results:
                continue  # a per-job file of a sealed job: the sealed row is the commit (compact deletes the file)
            self.report.results_checked += 1
            try:
                record = read_result(self.store, key)
            except CORRUPT as e:
                self.problem(key, f"unreadable result file ({type(e).__name__})", self.build_again, aside=(key,))
                continue
            wrong = check_result(key, record) or _foreign_checkpoint(record)
            if wrong:
                self.problem(key, f"result file {wrong}", self.build_again, record.job_id, aside=(key,))
                continue
            self.jobs_with_results.add(record.job_id)
            if not layout.is_relative_ref(record.checkpoint_uri):
                self.report.legacy_checkpoint_refs += 1
            self.checkpoint(key, record, referenced)
        return referenced | in_use

    def sealed(self, referenced: set[str]) -> set[str]:
        """Every sealed segment (its manifest, both files' sha256) and each of its rows as a
        result file's; returns the segments' files in use (and adds their checkpoints to
        `referenced`). A damaged segment is set aside whole, with the replaced segments that
        are still there (they must not come back in its place); a damaged row is taken out of
        its segment (`sealed_rows`); replaced segments are deleted (`replaced`)."""
        in_use: set[str] = set()
        parsed = []
        for key in self.store.list(layout.SEALED):
            if (token := layout.sealed_token(key)) is None:
                continue
            try:
                parsed.append(sealed.parse_manifest(key, self.store.read_json(key)))
            except (*CORRUPT, TypeError, json.JSONDecodeError) as e:
                files = layout.sealed_keys(token)
                in_use.update(files)
                text = f"unreadable sealed segment manifest ({type(e).__name__})"
                self.problem(key, text, self.build_all, aside=tuple(k for k in files if self.store.exists(k)))
        parsed.sort(key=lambda s: (s.created_at, s.token))
        in_use.update(k for s in parsed for k in s.keys)  # each is checked, set aside or deleted below
        present = {s.token: s for s in parsed}
        live = sealed.live(parsed)
        self.replaced = [s for s in parsed if s not in live]
        for segment in live:
            manifest = segment.keys[0]
            if segment.rows == 0 and not any(t in present for t in segment.replaces):
                self.replaced.append(segment)  # empty, and nothing it replaced is left: garbage too
                continue
            rows, text = self.segment_rows(segment)
            if text is not None:
                older = [present[t] for t in segment.replaces if t in present]
                aside = segment.keys + tuple(k for s in older for k in s.keys if self.store.exists(k))
                self.problem(manifest, f"sealed segment of {segment.rows} results: {text}", self.build_all, aside=aside)
                self.replaced = [s for s in self.replaced if s not in older]
                continue
            if rows is None:
                continue
            for record in from_table(ResultRecord, light_rows(rows)):
                key = layout.result_key(record.dataset_id, record.job_id)
                self.report.results_checked += 1
                if record.job_id in self.jobs_with_results:  # in an older segment too: that row is the commit
                    text, repair = "result row sealed in an older segment too", "none: the older row stays the commit"
                    self.sealed_row(segment, record.job_id, key, text, repair=repair)
                    continue
                if wrong := _foreign_checkpoint(record):
                    self.sealed_row(segment, record.job_id, key, f"result row {wrong}")
                    continue
                if not layout.is_relative_ref(record.checkpoint_uri):
                    self.report.legacy_checkpoint_refs += 1
                before = len(self.damaged)
                self.checkpoint(key, record, referenced)
                taken = [reason for k, reason in self.damaged[before:] if k == key]
                self.damaged[before:] = [(k, r) for k, r in self.damaged[before:] if k != key]
                if taken:  # its checkpoint is damaged: the row comes out (any file of the job is checked)
                    self.sealed_row(segment, record.job_id, key, taken[0], problem=False)
                else:
                    self.jobs_with_results.add(record.job_id)
        return in_use

    def segment_rows(self, segment):
        """(its rows' scalar columns, None) when both files match their sha256 and read; else
        (None, what is wrong); (None, None) when the storage could not be read (a problem
        with nothing set aside)."""
        for part, digest in zip(segment.keys[1:], (segment.scalars_sha256, segment.embeddings_sha256)):
            try:
                if sealed.file_sha256(self.store, part) != digest:
                    return None, f"its file {part} does not match the recorded sha256"
            except FileNotFoundError:
                return None, f"its file {part} is missing"
        try:
            return sealed.read_segment(self.store, segment, light=True), None
        except sealed.SealedError as e:
            return None, e.why
        except StorageError as e:
            self.problem(segment.keys[0], str(e), "check that the zoo is reachable, then verify again")
            return None, None

    def sealed_row(self, segment, job_id: str, key: str, reason: str, problem: bool = True, repair: str = "") -> None:
        """A sealed row to take out of its segment (set aside under the key its file had)."""
        if problem:
            self.report.problems.append(Problem(key, reason, repair or self.build_again, job_id))
        self.sealed_rows.setdefault(segment, {})[job_id] = reason

    def checkpoint(self, key: str, record, referenced: set[str]) -> None:
        """A row's checkpoint: its own job's, present, with the recorded sha256."""
        try:
            holder, ckpt = layout.checkpoint_location(self.store, record.checkpoint_uri)
            if holder is self.store and (wrong := _foreign_checkpoint(record, holder, ckpt)):
                self.problem(key, f"result file {wrong}", self.build_again, record.job_id, aside=(key,))
                return
            if holder is self.store:
                referenced.add(ckpt)
            digest = hashlib.sha256(holder.read_bytes(ckpt)).hexdigest()
        except FileNotFoundError:
            digest = None
        except StorageError as e:  # a replayed row's source zoo out of reach: nothing is set aside
            repair = "check that its zoo is reachable, then verify again"
            self.problem(key, f"cannot read its checkpoint: {e}", repair, record.job_id)
            return
        if digest != record.checkpoint_sha256:
            text = "checkpoint missing" if digest is None else "checkpoint sha256 mismatch"
            aside = (key, ckpt) if digest is not None and holder is self.store else (key,)
            self.problem(holder.uri_of(ckpt), text, self.build_again, record.job_id, aside)

    def datasets(self) -> set[str]:
        """Every dataset record and its shards; returns the shards in use."""
        in_use: set[str] = set()
        for key in [k for k in self.store.list(layout.DATASETS) if k.endswith(".parquet")]:
            self.report.datasets_checked += 1
            try:
                (record,) = from_table(DatasetRecord, self.store.read_table(key))
                text = _check_dataset(self.store, record, in_use)
            except (*CORRUPT, StorageError) as e:
                repair = "ingest the dataset again with `tans datasets add SOURCE --zoo ZOO`"
                self.problem(
                    key, f"unreadable dataset record ({type(e).__name__}: {str(e)[:200]})", repair, aside=(key,)
                )
                continue
            if text:
                self.problem(key, text, f"ingest it again: {reingest_command(self.store, record)}", aside=(key,))
        return in_use

    def base_weights(self) -> None:
        """The base weights the manifest names (written once, content-addressed)."""
        manifest = read_manifest(self.store)
        base = manifest.base_weights if manifest is not None else None
        if base is None or not base.key:
            return
        try:
            intact = hashlib.sha256(self.store.read_bytes(base.key)).hexdigest() == base.sha256
        except FileNotFoundError:
            intact = None
        if not intact:
            self.problem(
                base.key,
                "base weights missing" if intact is None else "base weights sha256 mismatch",
                f"the next build copies them again from arch.base_weights (`tans resume {self.store.uri}`)",
                aside=(base.key,) if intact is False else (),
            )

    def versions(self) -> set[str]:
        """Every retriever version and its files; returns the files in use."""
        in_use: set[str] = set()
        for key in [k for k in self.store.list("retriever") if _is_meta(k)]:
            self.report.retriever_versions_checked += 1
            text = _check_version(self.store, key, in_use)
            if text:
                self.problem(key, text, f"train a new version with `tans retrain {self.store.uri}`", aside=(key,))
        return in_use


def _take_out(store: ZooStore, segment, reasons: dict[str, str]) -> None:
    """Set damaged rows of a sealed segment aside: each under quarantine/ as the result file
    it was, then the segment replaced by one without them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = sealed.read_segment(store, segment, light=False)
    out = pc.is_in(table["job_id"], value_set=pa.array(sorted(reasons), pa.string()))
    for i in pc.indices_nonzero(out).to_pylist():
        row = table.slice(i, 1)
        job_id = row["job_id"][0].as_py()
        sink = io.BytesIO()
        pq.write_table(row, sink, compression="zstd")
        set_aside(store, layout.result_key(row["dataset_id"][0].as_py(), job_id), sink.getvalue(), reasons[job_id])
    sealed.replace(store, [segment], table.filter(pc.invert(out)))
    log.warning("took %d damaged row(s) out of sealed segment %s", len(reasons), segment.token)


def snapshot_segments(store: ZooStore) -> set[str]:
    """The files of the results snapshot's segments that its index names (the others are
    left over from a refresh cut short)."""
    return {key for segment in read_segments(store) or () for key in segment.keys}


def _sort_unreferenced(store: ZooStore, report: VerifyReport, in_use: set[str], jobs: set[str]) -> None:
    """What nothing references: orphans (names tans writes), foreign files and files reached
    through a link out of the zoo (both left alone)."""
    unreferenced = sorted(
        [k for k in store.list("checkpoints") if k not in in_use and k.split("/")[1] not in jobs]
        + [k for k in store.list("data") if k not in in_use]
        + [k for k in store.list("retriever") if k not in in_use and not _is_meta(k)]
        + [k for k in store.list(layout.SEGMENTS) if k not in in_use]
        + [k for k in store.list(layout.SEALED) if k not in in_use]
    )
    for k in unreferenced:
        if not layout.is_own_object(k):
            report.foreign.append(k)
        elif store.leaves_zoo(k):
            report.outside.append(k)
        else:
            report.orphans.append(k)


def _foreign_checkpoint(record, holder=None, key: str = "") -> str | None:
    """Why a row's checkpoint reference is not its own job's checkpoint (None when it is):
    such a row is set aside by itself, and the object it names is never touched. In this
    zoo a row's checkpoint is `checkpoints/<its job_id>/<its sha256>.safetensors`; a replayed
    row may name the checkpoint of the source zoo's job, with the same sha256."""
    own = layout.checkpoint_key(record.job_id, record.checkpoint_sha256)
    ref = record.checkpoint_uri
    if layout.is_relative_ref(ref) or holder is not None:
        wrong = (key or ref) != own
    else:
        tail = "checkpoints/" + ref.partition("/checkpoints/")[2]
        wrong = layout.OWN_OBJECTS.fullmatch(tail) is None or not tail.endswith(
            f"/{record.checkpoint_sha256}.safetensors"
        )
    return f"names a checkpoint that is not its own job's ({ref[:200]!r}; expected {own})" if wrong else None


def _is_meta(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[1].startswith("v") and parts[1][1:].isdigit() and parts[2] == "meta.json"


def _check_dataset(store: ZooStore, record: DatasetRecord, in_use: set[str]) -> str | None:
    """Why a dataset's shards do not match its record (None when they do). Every shard the
    record names is in use, damaged or not, while the record exists."""
    keys = {split: shard_keys(store, record, split) for split in ("train", "test")}
    for split_keys in keys.values():
        in_use.update(split_keys)
    shards = []
    for split, expected in (("train", record.num_train), ("test", record.num_test)):
        rows = 0
        for k in keys[split]:
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
    except (ValueError, KeyError, TypeError, StorageError) as e:
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
