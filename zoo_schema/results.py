"""Committed results and the build's state, derived from the zoo alone (so any machine can
resume a build). Reading never writes: setting a damaged file aside (`quarantine`) and
refreshing the snapshot (`write_snapshot`) are explicit calls of the driver and of verify.

The per-job files under `results/` and the rows of the sealed segments (`results_sealed/`,
see `tans.zoo_schema.sealed`: what `tans compact` moves the files' rows into) are the
commits; a sealed row is the commit of its job even where a file of it is still listed. The
snapshot is a cache of their rows in
a few large Parquet segments (`results_index/segments/<token>.parquet`, the scalar columns,
beside `<token>.embeddings.parquet`, the functional embeddings), named by
`results_index/index.json`. A refresh appends one segment of the rows not yet in it and
merges the newest segments while the last is at least half the size of the one before, so
a zoo of n results has O(log n) segments and each row is rewritten O(log n) times. Readers
take a snapshot row only while its file is listed; a segment that is missing or damaged is
skipped and its rows are read from their files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from tans.zoo_schema import layout, sealed
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.journal import Failure, read_failures
from tans.zoo_schema.records import (
    DatasetRecord,
    ResultRecord,
    arrow_schema,
    from_table,
    gc_paused,
    string_array,
    to_table,
)
from tans.zoo_schema.shards import read_datasets
from tans.zoo_schema.store import ZooStore, parquet_table

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
        if not self.failures:
            return set()
        attempts = self.failed_attempts()
        done = self.done_ids
        return {
            (f.dataset_id, f.arch)
            for f in self.failures
            if attempts[f.job_id] >= self.max_attempts and f.job_id not in done
        }


SNAPSHOT_KEY = layout.SNAPSHOT  # the one-file snapshot of older zoos: read, replaced by segments
SNAPSHOT_MIN_NEW = 64


def result_key(r: ResultRecord) -> str:
    return layout.result_key(r.dataset_id, r.job_id)


def read_result(store: ZooStore, key: str) -> ResultRecord:
    """The one committed row of a result file."""
    (record,) = from_table(ResultRecord, store.read_table(key))
    return record


def find_result(store: ZooStore, job_id: str) -> ResultRecord | None:
    """A job's committed result, wherever its dataset partition is (a sealed row first); None
    if it has none."""
    if (row := sealed.find_row(store, job_id)) is not None:
        (record,) = from_table(ResultRecord, row)
        return record
    keys = [k for k in store.list(layout.RESULTS) if k.endswith(f"/{job_id}.parquet")]
    return read_result(store, keys[0]) if keys else None


class CommittedResults(Mapping):
    """job_id -> ResultRecord over the committed results: the files whose keys are given, and
    the sealed rows of `sealed_rows`; each record is read from its file (or its sealed
    segment's row group) when asked for (a search loads a few of a million)."""

    def __init__(self, store: ZooStore, keys: dict[str, str], sealed_rows: sealed.SealedIndex | None = None):
        self.store, self.keys = store, keys
        self.sealed = sealed_rows if sealed_rows is not None else sealed.SealedIndex.empty()

    def __getitem__(self, job_id: str) -> ResultRecord:
        if job_id not in self.keys:
            token = self.sealed.token_of(job_id)
            if token is None:
                raise KeyError(job_id)
            try:
                row = sealed.read_row(self.store, token, job_id)
            except sealed.SealedError as e:
                if not e.missing:
                    raise
                row = None
            if row is None:  # its segment replaced since it was listed
                row = sealed.find_row(self.store, job_id)
            if row is None:
                raise TansError(f"the sealed result of job {job_id} is no longer in {self.store.uri}")
            (record,) = from_table(ResultRecord, row)
            return record
        key = self.keys[job_id]
        try:
            record = read_result(self.store, key)
        except FileNotFoundError as e:
            if (row := sealed.find_row(self.store, job_id)) is not None:  # `tans compact` sealed it since
                (record,) = from_table(ResultRecord, row)
                return record
            raise TansError(
                f"the result of job {job_id} ({key}) cannot be read from {self.store.uri} ({type(e).__name__}); "
                f"run `tans verify {self.store.uri}`"
            ) from None
        except CORRUPT as e:
            raise TansError(
                f"the result of job {job_id} ({key}) cannot be read from {self.store.uri} ({type(e).__name__}); "
                f"run `tans verify {self.store.uri}`"
            ) from None
        if problem := check_result(key, record):
            raise TansError(f"{key} {problem}; run `tans verify {self.store.uri}`")
        return record

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.keys or (isinstance(job_id, str) and self.sealed.token_of(job_id) is not None)

    def __iter__(self):
        yield from self.keys
        yield from self.sealed.job_ids.to_pylist()

    def __len__(self) -> int:
        return len(self.keys) + len(self.sealed)

    def job_ids(self) -> pa.Array:
        """Every committed job id, as one Arrow array (what a search keeps of its table)."""
        return pa.concat_arrays([string_array(list(self.keys)), self.sealed.job_ids])

    def dataset_counts(self) -> dict[str, int]:
        """{dataset: how many of its results are committed}."""
        import pyarrow.compute as pc

        counts: dict[str, int] = {}
        for key in self.keys.values():
            dataset = layout.result_key_parts(key)[0]
            counts[dataset] = counts.get(dataset, 0) + 1
        for pair in pc.value_counts(self.sealed.dataset_ids).to_pylist() if len(self.sealed) else ():
            counts[pair["values"]] = counts.get(pair["values"], 0) + pair["counts"]
        return counts

    @classmethod
    def listed(cls, store: ZooStore) -> CommittedResults:
        """Over the committed results as the listing and the sealed segments' job ids show
        them (no record is read: a search over a million results reads the few it loads); a
        listed key that is not a result's is left out, and a record is checked against its
        key when read. A job id listed under two datasets (a planted or misplaced file: a
        job's id hashes its dataset) is the file that holds its own row, or left out. A
        sealed job is its sealed row, whatever file of it is listed."""
        keys: dict[str, str] = {}
        doubled: dict[str, list[str]] = {}
        import pyarrow.compute as pc

        index = sealed.sealed_index(store)
        listed = [(key, parts) for key in result_keys(store) if (parts := layout.result_key_parts(key))]
        held = pc.is_in(string_array([p[1] for _, p in listed]), value_set=index.job_ids).to_pylist()
        for (key, parts), is_sealed in zip(listed, held):
            if not is_sealed:
                if parts[1] in keys:
                    doubled.setdefault(parts[1], [keys[parts[1]]]).append(key)
                keys[parts[1]] = key
        for job_id, candidates in doubled.items():
            del keys[job_id]
            for key in candidates:
                try:
                    if not check_result(key, read_result(store, key)):
                        keys[job_id] = key
                        break
                except (FileNotFoundError, *CORRUPT):
                    pass
        return cls(store, keys, index)


@dataclass(frozen=True)
class ResultsRead:
    """What reading the committed results found."""

    results: list[ResultRecord]
    outside_snapshot: int  # files read one by one (the snapshot did not hold them)
    unusable: list[tuple[str, str]]  # (key, reason): unreadable, or not its key's job
    vanished: int = 0  # listed files gone when read


# What summaries (`tans status`) do not need: 1,280 floats a row, nine tenths of a row's size.
HEAVY = ("functional_embedding",)


def read_results(store: ZooStore, light: bool = False) -> list[ResultRecord]:
    """Every usable committed result, sorted by (dataset, job). Reads only: see `scan_results`."""
    return scan_results(store, light).results


# What the driver never reads of a sealed row, beside its embeddings: a million rows' lists
# of numbers made Python lists took 6 of a resume's 20 s.
DRIVER_SKIPS = ("topology", "epoch_losses", "epoch_accuracies")


def light_rows(table: pa.Table, empty: tuple[str, ...] = HEAVY) -> pa.Table:
    """A table read without HEAVY columns (or the `empty` ones), with empty lists in their place."""
    import numpy as np

    schema = arrow_schema(ResultRecord)
    table = table.drop_columns([n for n in empty if n in table.column_names])
    offsets = pa.py_buffer(np.zeros(table.num_rows + 1, np.int32))
    for name in empty:
        kind = schema.field(name).type
        values = pa.Array.from_buffers(kind.value_type, 0, [None, pa.py_buffer(b"")])  # pa.array imports pandas
        table = table.append_column(
            schema.field(name), pa.ListArray.from_buffers(kind, table.num_rows, [None, offsets], children=[values])
        )
    return table


def _columns(light: bool) -> list[str] | None:
    return [n for n in arrow_schema(ResultRecord).names if n not in HEAVY] if light else None


def scan_results(store: ZooStore, light: bool = False, sealed_light: bool = False) -> ResultsRead:
    """Every committed result (see `_scan`). A listed file gone when it is read (a `tans
    compact` sealed it meanwhile) means reading again from a fresh listing, once."""
    with gc_paused():
        scan = _scan(store, light, sealed_light)
        return _scan(store, light, sealed_light) if scan.vanished else scan


def _scan(store: ZooStore, light: bool = False, sealed_light: bool = False) -> ResultsRead:
    """Every committed result; unreadable files and files that hold another job's row are
    left out and reported (the driver and `tans verify` quarantine them; reading writes nothing).

    The per-job files are the commits; the snapshot's segments cache their rows, so a resume
    reads a few objects plus the files committed since, not one object per result. Rows of
    the snapshot count only while their file is still listed (a quarantined result never
    comes back from the cache).

    With `light`, the HEAVY columns (the functional embeddings) are not read: the records
    hold an empty list there. That is for summaries (`tans status`): a tenth of the memory.
    With `sealed_light`, only the sealed rows come so, and without their DRIVER_SKIPS lists
    too: the driver's (it never reads a result's embeddings, topology or epoch curves, and
    writes the files' rows to the snapshot, which caches no sealed row), for which a million
    sealed rows in full would be ~40 GB of Python floats.
    """
    keys, rows = result_keys(store), {}
    if (held := sealed.sealed_table(store, light or sealed_light)) is not None:
        rows = {}
        empty = HEAVY + DRIVER_SKIPS if sealed_light and not light else HEAVY
        for r in from_table(ResultRecord, light_rows(held, empty) if light or sealed_light else held):
            rows.setdefault(result_key(r), r)  # a job sealed twice: the older segment's row
        keys = _unsealed(keys, held)
    if not keys:
        return ResultsRead(sorted(rows.values(), key=lambda r: (r.dataset_id, r.job_id)), 0, [])
    snapshot = _snapshot_rows(store, keys, light)
    if snapshot is not None:
        table = snapshot[0]
        rows.update({result_key(r): r for r in from_table(ResultRecord, light_rows(table) if light else table)})
    missing = [k for k in keys if k not in rows]
    found, unusable = _read_files(store, missing, light)
    rows.update(found)
    vanished = len(missing) - len(found) - len(unusable)
    return ResultsRead(sorted(rows.values(), key=lambda r: (r.dataset_id, r.job_id)), len(missing), unusable, vanished)


def result_keys(store: ZooStore) -> list[str]:
    """The keys of the committed result files."""
    return [k for k in store.list(layout.RESULTS) if k.endswith(".parquet")]


def _key_column(table: pa.Table):
    import pyarrow.compute as pc

    def text(value: str):  # a scalar made without pa.scalar, which imports pandas
        return string_array([value])[0]

    return pc.binary_join_element_wise(
        text(f"{layout.RESULTS}/dataset="), table["dataset_id"], text("/"), table["job_id"], text(".parquet"), text("")
    )


def results_table(store: ZooStore, embeddings: bool = True) -> pa.Table:
    """What `read_results` reads, as one Arrow table sorted by (dataset, job), without making a
    Python object of each value: the snapshot's rows whose file is still listed, plus the
    files committed since. When anything is off (a damaged or older-schema file, a row that
    is not its file's), the records are read and converted instead, with the same result.
    Without `embeddings`, the table lacks the functional embeddings (nine tenths of its size)."""
    schema = arrow_schema(ResultRecord)
    wanted = pa.schema([f for f in schema if embeddings or f.name not in HEAVY], metadata=schema.metadata)
    keys, parts = result_keys(store), []
    if (held := sealed.sealed_table(store, light=not embeddings)) is not None:
        parts.append(held.select(wanted.names).cast(wanted))
        keys = _unsealed(keys, held)
    if not keys and not parts:
        return wanted.empty_table()
    try:
        listed = set(keys)
        snapshot = _snapshot_rows(store, keys, light=not embeddings) if keys else None
        if snapshot is not None:
            parts.append(snapshot[0].select(wanted.names).cast(wanted))
            listed = _not_in(keys, snapshot[1])
        if listed:
            parts.append(_files_table(store, listed, wanted))
        table = pa.concat_tables(parts)
        if any(table[name].null_count for name in wanted.names):
            raise ValueError("a file of an older schema")
        return table.sort_by([("dataset_id", "ascending"), ("job_id", "ascending")])
    except (*CORRUPT, OSError, pa.ArrowException):
        rows = read_results(store, light=not embeddings)  # older files: the records' defaults fill in
        return to_table(rows).select(wanted.names) if rows else wanted.empty_table()


def result_columns(store: ZooStore, names: list[str]) -> pa.Table:
    """These scalar columns of every committed result (as `results_table(store, False)`, in no
    particular order), with the SUMMARY columns where the snapshot holds them (null for rows
    read from their files): what `tans status` summarizes."""
    keys, parts = result_keys(store), []
    names = list(dict.fromkeys(["dataset_id", "job_id", *names]))
    summary = pa.schema([pa.field(n, t) for n, t in SUMMARY.items()])
    if (held := sealed.sealed_table(store, light=True, columns=names + summary.names)) is not None:
        parts.append(_with_summary(held).select(names + summary.names))
        keys = _unsealed(keys, held)
    try:
        snapshot = _snapshot_rows(store, keys, light=True, columns=names + summary.names) if keys else None
        listed = set(keys)
        if snapshot is not None:
            table, cached = snapshot
            parts.append(_with_summary(table).select(names + summary.names))
            listed = _not_in(keys, cached)
        if listed:
            files = _files_table(store, listed, pa.schema([arrow_schema(ResultRecord).field(n) for n in names]))
            parts.append(_with_summary(files))
        if not parts:
            raise FileNotFoundError
        return pa.concat_tables([p.cast(parts[0].schema) for p in parts])
    except (*CORRUPT, OSError, pa.ArrowException):
        return _with_summary(results_table(store, embeddings=False).select(names))


def files_rows(store: ZooStore, keys: list[str]) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The rows of these result files, with embeddings, as one table read from the files (one
    threaded read), and the files left out as unusable (key, reason): what `tans compact`
    seals. A file of an older schema is read through its record (its defaults fill in)."""
    schema = arrow_schema(ResultRecord)
    if not keys:
        return schema.empty_table(), []
    try:
        table = _files_table(store, set(keys), schema)
        if any(table[name].null_count for name in schema.names):
            raise ValueError("a file of an older schema: its record's defaults fill in")
        return table, []
    except (*CORRUPT, OSError, pa.ArrowException):  # one by one: which file is unusable
        found, unusable = _read_files(store, sorted(keys))
        return (to_table(list(found.values())) if found else schema.empty_table()), unusable


def _with_summary(table: pa.Table) -> pa.Table:
    """The table with the SUMMARY columns it lacks, as nulls."""
    for name, kind in SUMMARY.items():
        if name not in table.column_names:
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table


FEW_FILES = 1024  # up to this many result files are read by a thread pool, more by a pyarrow dataset


def _files_table(store: ZooStore, keys: set[str], schema: pa.Schema) -> pa.Table:
    """The rows of these result files, one threaded read (a few, the commits since the last
    snapshot, without importing `pyarrow.dataset`, which imports pandas); raises ValueError
    when a file does not hold its own key's row (then the records are read one by one)."""
    fs, base = store.arrow_filesystem()
    full = arrow_schema(ResultRecord)
    if len(keys) <= FEW_FILES:
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        wanted = pa.schema([full.field(name) for name in schema.names])

        def one(key: str) -> pa.Table:
            with fs.open_input_file(f"{base}/{key}") as fh:
                f = pq.ParquetFile(fh)
                table = f.read(columns=[n for n in wanted.names if n in f.schema_arrow.names])
            for field in wanted:  # older files: nulls, as the dataset read gives them
                if field.name not in table.column_names:
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            return table.select(wanted.names).cast(wanted)

        with ThreadPoolExecutor(16) as pool:
            parts = list(pool.map(one, sorted(keys)))
        files = pa.concat_tables(parts) if parts else wanted.empty_table()
    else:
        import pyarrow.dataset as pads

        files = pads.dataset(
            [f"{base}/{k}" for k in sorted(keys)], filesystem=fs, format="parquet", schema=full
        ).to_table(columns=schema.names)
    if files.num_rows != len(keys) or set(_key_column(files).to_pylist()) != keys:
        raise ValueError("a result file holds another job's row")
    return files.cast(schema)


@dataclass(frozen=True)
class Segment:
    """One segment of the results snapshot: `rows` rows under a random token."""

    token: str
    rows: int

    @property
    def keys(self) -> tuple[str, str]:
        return layout.segment_keys(self.token)


def read_segments(store: ZooStore) -> list[Segment] | None:
    """The snapshot's segments, oldest first; None where the zoo has no (readable) index."""
    try:
        meta = store.read_json(layout.SNAPSHOT_INDEX)
        segments = [Segment(str(s["token"]), int(s["rows"])) for s in meta["segments"]]
        if not all(layout.TOKEN.fullmatch(s.token) for s in segments):
            raise ValueError("a segment token that tans does not write")
        return segments
    except FileNotFoundError:
        return None
    except (*CORRUPT, TypeError, OSError):
        log.warning("%s in %s is unreadable: the results are read from their files", layout.SNAPSHOT_INDEX, store.uri)
        return None


def _read_segment(store: ZooStore, segment: Segment, light: bool, columns: list[str] | None = None) -> pa.Table:
    """A segment's rows: the scalar columns (only `columns`, when given: a light read), with
    the embeddings beside them unless `light`."""
    import pyarrow.parquet as pq

    scalars_key, embeddings_key = segment.keys
    fs, base = store.arrow_filesystem()
    try:
        with fs.open_input_file(f"{base}/{scalars_key}") as fh:
            scalars = pq.ParquetFile(fh)
            if columns is not None:
                present = scalars.schema_arrow.names
                columns, light = [c for c in columns if c in present], True  # SUMMARY columns: some segments only
            table = scalars.read(columns=columns)
        if not light:
            heavy = parquet_table(f"{base}/{embeddings_key}", filesystem=fs)
            if not heavy["job_id"].equals(table["job_id"]):
                raise ValueError(f"{embeddings_key} is not aligned with {scalars_key}")
            for name in HEAVY:
                table = table.append_column(heavy.schema.field(name), heavy[name])
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(scalars_key) from None
    if table.num_rows != segment.rows:
        raise ValueError(f"{scalars_key} holds {table.num_rows} rows, the index says {segment.rows}")
    return table


def _snapshot_rows(
    store: ZooStore, keys: list[str], light: bool, columns: list[str] | None = None
) -> tuple[pa.Table, pa.Array] | None:
    """The snapshot's rows whose file is among `keys` (each once), without the HEAVY columns
    when `light`, and their keys; None when nothing of it is readable. Segments that are missing or damaged
    are left out: their rows are read from the files."""
    import pyarrow.compute as pc

    segments = read_segments(store)
    parts = []
    if segments is None:  # a zoo written before segments: its one-file snapshot
        try:
            legacy = _read_legacy(store, light or columns is not None)
            parts.append(legacy if columns is None else legacy.select([c for c in columns if c in legacy.column_names]))
        except FileNotFoundError:
            return None
        except (*CORRUPT, OSError, pa.ArrowException):
            return None  # a damaged or unreadable cache: the commits are read instead
    for segment in segments or ():
        try:
            parts.append(_read_segment(store, segment, light, columns))
        except (*CORRUPT, OSError, pa.ArrowException) as e:
            log.warning(
                "snapshot segment %s of %s left out (%s): its rows are read from their files",
                segment.token,
                store.uri,
                e,
            )
    if not parts:
        return None
    try:
        table = pa.concat_tables(parts, promote_options="default")  # SUMMARY columns in some segments only
    except (*CORRUPT, pa.ArrowException):
        return None
    key = _key_column(table)
    listed = pc.is_in(key, value_set=string_array(keys))
    table, key = table.filter(listed), key.filter(listed)
    if pc.count_distinct(key).as_py() != table.num_rows:  # a row committed again since: the newest segment's
        last = {k: i for i, k in enumerate(key.to_pylist())}
        take = pa.array(sorted(last.values()))
        table, key = table.take(take), key.take(take)
    return table, key


def _unsealed(keys: list[str], held: pa.Table) -> list[str]:
    """The listed result keys whose job is not among the sealed rows `held` (compared by job
    id: no key is built for a million sealed rows)."""
    import pyarrow.compute as pc

    jobs = [parts[1] if (parts := layout.result_key_parts(k)) else "" for k in keys]
    if not jobs:
        return []
    sealed_ = pc.is_in(string_array(jobs), value_set=held["job_id"].combine_chunks()).to_pylist()
    return [k for k, s in zip(keys, sealed_) if not s]


def _not_in(keys: list[str], held) -> set[str]:
    """The keys that are not among `held` (an Arrow array of keys)."""
    import pyarrow.compute as pc

    if not keys:
        return set()
    listed = string_array(keys)
    return set(listed.filter(pc.invert(pc.is_in(listed, held))).to_pylist())


def _read_legacy(store: ZooStore, light: bool) -> pa.Table:
    fs, base = store.arrow_filesystem()
    try:
        return parquet_table(f"{base}/{SNAPSHOT_KEY}", _columns(light), fs)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(SNAPSHOT_KEY) from None


# Columns a snapshot segment may carry beside the record's: per-dataset summaries computed by
# the writer (`tans.pipeline.acquisition.hypervolume.summarize_rows`), so that `tans status`
# does not recompute every dataset's Pareto front. Readers check them (see `status_table`).
SUMMARY = {"rank_in_dataset": pa.int64(), "hypervolume_after": pa.float64(), "front_after": pa.int64()}


def _current(table: pa.Table, wanted: dict[str, ResultRecord]) -> set[str]:
    """The keys of a segment's rows that are the committed rows of `wanted` (same commit time:
    a result set aside and trained again has a new row under the same key)."""
    return {
        k
        for k, t in zip(_key_column(table).to_pylist(), table["created_at"].to_pylist())
        if k in wanted and wanted[k].created_at == t
    }


_SEALED_IDS: dict[tuple[str, tuple[str, ...]], set[str]] = {}


def _sealed_ids(store: ZooStore) -> set[str]:
    """The sealed job ids, read again only when the live segments change (the driver
    refreshes the snapshot every 64 commits; a compaction never runs during a build)."""
    tokens = tuple(s.token for s in sealed.live(sealed.manifests(store)))
    if not tokens:
        return set()
    if (store.uri, tokens) not in _SEALED_IDS:
        _SEALED_IDS.clear()
        _SEALED_IDS[store.uri, tokens] = sealed.sealed_index(store).ids()
    return _SEALED_IDS[store.uri, tokens]


def write_snapshot(
    store: ZooStore, results: list[ResultRecord], summarize: Callable[[list[ResultRecord]], dict] | None = None
) -> None:
    """Refresh the snapshot with these committed results (the driver's, in full): append a
    segment of those it does not hold yet, merge the newest segments while the last is at
    least half the size of the one before (rows of results not among `results` are dropped
    on the way), then replace the index and delete the segments it no longer names.
    `summarize(new rows)` gives the SUMMARY columns of the new segment's rows. Sealed rows
    are commits of their own, not cached."""
    import uuid

    import pyarrow.compute as pc

    jobs = _sealed_ids(store) if results else set()
    wanted = {result_key(r): r for r in results if r.job_id not in jobs}  # sealed rows are not cached
    if not wanted:
        return
    if any(not r.functional_embedding for r in wanted.values()):  # a light record: the cache must be whole
        raise ValueError("write_snapshot takes records in full; one without its functional embedding was given")
    held: list[tuple[Segment, set[str]]] = []
    old = read_segments(store) or []
    for segment in old:
        try:
            keys = _read_segment(store, segment, light=True, columns=["dataset_id", "job_id", "created_at"])
            held.append((segment, _current(keys, wanted)))
        except (*CORRUPT, OSError, pa.ArrowException):
            continue  # damaged or missing: its rows are written again below
    covered = set().union(*(keys for _, keys in held))
    new = [r for k, r in wanted.items() if k not in covered]
    written: list[Segment] = []

    def with_summary(rows: list[ResultRecord]) -> pa.Table:
        table = to_table(rows)
        columns = summarize(rows) if summarize else {}
        for name, kind in SUMMARY.items():
            if name in columns:
                table = table.append_column(pa.field(name, kind), pa.array(columns[name], kind))
        return table

    def write(table: pa.Table) -> tuple[Segment, set[str]]:
        segment = Segment(uuid.uuid4().hex, table.num_rows)
        written.append(segment)
        scalars_key, embeddings_key = segment.keys
        store.write_table(embeddings_key, table.select(["job_id", *HEAVY]))
        store.write_table(scalars_key, table.drop_columns(list(HEAVY)))
        return segment, set(_key_column(table).to_pylist())

    if new:
        held.append(write(with_summary(new)))
    while len(held) >= 2 and held[-1][0].rows * 2 >= held[-2][0].rows:
        (a, keys_a), (b, keys_b) = held[-2], held[-1]
        try:
            parts = [_read_segment(store, a, light=False), _read_segment(store, b, light=False)]
            table = pa.concat_tables(parts, promote_options="default")
            table = table.filter(pc.is_in(_key_column(table), pa.array(sorted(keys_a | keys_b))))
        except (*CORRUPT, OSError, pa.ArrowException):  # an embeddings file damaged: the rows from memory
            rows = [wanted[k] for k in sorted(keys_a | keys_b) if k in wanted]
            table = to_table(rows) if rows else pa.table({})
        held[-2:] = [write(table)] if table.num_rows else []
    segments = [segment for segment, _ in held]
    if segments == old and not store.exists(SNAPSHOT_KEY):
        return
    store.write_json(layout.SNAPSHOT_INDEX, {"segments": [{"token": s.token, "rows": s.rows} for s in segments]})
    for segment in old + written:  # merged away, or written and merged within this refresh
        if segment not in segments:
            for key in segment.keys:
                store.delete(key)
    store.delete(SNAPSHOT_KEY)  # the one-file snapshot of an older zoo, now in the segments


def clear_snapshot(store: ZooStore) -> None:
    """Empty the snapshot's cache (`tans compact` sealed its rows): an index of no segments
    first, then the segment files it named."""
    old = read_segments(store) or []
    store.write_json(layout.SNAPSHOT_INDEX, {"segments": []})
    for segment in old:
        for key in segment.keys:
            store.delete(key)
    store.delete(SNAPSHOT_KEY)


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
        table = light_rows(table) if light else table
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


def set_aside(store: ZooStore, key: str, data: bytes, reason: str) -> None:
    """Write `data` under quarantine/ as `key` with its reason, after any copy set aside
    under that key before (a suffix: nothing set aside is overwritten)."""
    target, reason_key = layout.quarantine_keys(key)
    n = 1
    while store.exists(target):
        n += 1
        target, reason_key = layout.quarantine_keys(f"{key}.{n}")
    store.write_bytes(target, data)
    store.write_json(reason_key, {"key": key, "reason": reason, "at": datetime.now(UTC).isoformat()})


def quarantine(store: ZooStore, key: str, reason: str) -> None:
    """Move a damaged object under quarantine/ with its reason; the original key is freed.
    A second object set aside under the same key keeps the first (its copy gets a suffix)."""
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return
    set_aside(store, key, data, reason)
    if key.startswith(f"{layout.DATASETS}/"):
        store.delete(layout.DATASETS_SNAPSHOT)  # the cache must not bring the record back
    if key.startswith(f"{layout.RESULTS}/"):  # nor outvote the job's next commit under this key
        store.delete(layout.SNAPSHOT_INDEX)  # until the next refresh: the rows are read from their files
    store.delete(key)
    log.warning("quarantined %s: %s", key, reason)
