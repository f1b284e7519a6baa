"""Sealed segments: committed results moved out of their per-job files into a few large
Parquet files, so that a zoo of a million results is a few objects to list and read.

A sealed segment is three objects under `results_sealed/`:
- `<token>.parquet`: the records' scalar columns (and the status summaries), in row groups
  of `ROW_GROUP` rows, so one job's row is read with its job_id column and one row group;
- `<token>.embeddings.parquet`: `job_id` and the functional embeddings, in the same order;
- `<token>.json`: the manifest, written create-only after both, that makes the segment a
  commit: its row count and both files' sha256, and the tokens of the segments it replaces.

A sealed row is committed whether or not its per-job file exists: `tans compact` seals the
files' rows, then deletes the files. Where a per-job file and a sealed row hold the same job,
the sealed row is the commit (it was first; the file is a late duplicate or one that
compaction had not yet deleted). A segment named in another manifest's `replaces` no longer
counts (`tans compact` merging small segments, `tans verify` taking out a damaged row): while
both exist, readers take the replacing one only, so a crash between writing it and deleting
the replaced ones loses nothing and doubles nothing. A merged segment takes the age of its
oldest part, so "a job's oldest segment" names the same row before and after a merge.

Sealed segments are never refreshed or rewritten in place: unlike the snapshot's segments
(`results_index/`, a cache of the per-job files that may be lost), they are the only copy of
their rows. A sealed segment that cannot be read is an error that names it and sends the
user to `tans verify`, never a silent gap (a resume would train those jobs again).
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tans.zoo_schema import layout
from tans.zoo_schema.errors import StorageError, TansError
from tans.zoo_schema.records import int_array, string_array
from tans.zoo_schema.store import ZooStore

ROW_GROUP = 8192  # rows per row group: a job's row is read with ~8,000 others, not a million
HEAVY = ("functional_embedding",)
_CORRUPT = (ValueError, KeyError, TypeError, NotImplementedError, pa.ArrowInvalid)


@dataclass(frozen=True)
class Sealed:
    """One sealed segment, as its manifest names it."""

    token: str
    rows: int
    scalars_sha256: str
    embeddings_sha256: str
    replaces: tuple[str, ...] = ()
    created_at: str = ""

    @property
    def keys(self) -> tuple[str, str, str]:
        """(manifest, scalar columns, embeddings)."""
        return layout.sealed_keys(self.token)


class SealedError(TansError):
    """A sealed segment cannot be read: its rows are committed and have no other copy."""

    def __init__(self, message: str, why: str = "", missing: bool = False):
        super().__init__(message)
        self.why, self.missing = why, missing  # what is wrong; whether a file of it is gone


def _unreadable(store: ZooStore, key: str, why: str, missing: bool = False) -> SealedError:
    return SealedError(
        f"the sealed results segment {key} of {store.uri} is unreadable ({why}); its rows have no other copy: "
        f"run `tans verify {store.uri}`, which sets it aside (a later build trains those jobs again)",
        why,
        missing,
    )


def parse_manifest(key: str, meta: object) -> Sealed:
    """A manifest's record; ValueError when it is not one tans writes under this key."""
    token = layout.sealed_token(key)
    if not isinstance(meta, dict) or token is None or meta.get("token") != token:
        raise ValueError(f"{key} is not the manifest of segment {token}")
    replaces = meta.get("replaces", [])
    if not isinstance(replaces, list) or not all(isinstance(t, str) and layout.TOKEN.fullmatch(t) for t in replaces):
        raise ValueError(f"{key} replaces segments tans does not write")
    rows, digests = int(meta["rows"]), (str(meta["scalars_sha256"]), str(meta["embeddings_sha256"]))
    if rows < 0 or token in replaces or not all(len(d) == 64 for d in digests):
        raise ValueError(f"{key} holds impossible values")
    return Sealed(token, rows, *digests, tuple(replaces), str(meta.get("created_at", "")))


def manifests(store: ZooStore) -> list[Sealed]:
    """Every sealed segment manifest of the zoo, oldest first (replaced ones too); an
    unreadable manifest is a SealedError. One deleted since the listing is a SealedError
    with `missing` set: a merge or verify replaced it by a segment the listing may not hold,
    so the callers list again."""
    out = []
    for key in store.list(layout.SEALED):
        if layout.sealed_token(key) is None:
            continue
        try:
            out.append(parse_manifest(key, store.read_json(key)))
        except FileNotFoundError:
            raise _unreadable(store, key, "deleted since it was listed", missing=True) from None
        except (*_CORRUPT, json.JSONDecodeError) as e:
            raise _unreadable(store, key, f"{type(e).__name__}: {str(e)[:200]}") from None
    return sorted(out, key=lambda s: (s.created_at, s.token))


def live(segments: list[Sealed]) -> list[Sealed]:
    """The segments no other names in its `replaces`."""
    replaced = {t for s in segments for t in s.replaces}
    return [s for s in segments if s.token not in replaced]


@contextmanager
def _reading(store: ZooStore, key: str):
    """Say what a failed read of a sealed file means: a missing or damaged file is a
    SealedError; an I/O error (the storage out of reach, a permission) a StorageError."""
    try:
        yield
    except TansError:
        raise
    except (FileNotFoundError, IsADirectoryError):
        raise _unreadable(store, key, "a file of it is missing", missing=True) from None
    except OSError as e:
        if "NO_SUCH_KEY" in str(e).upper().replace("NOSUCHKEY", "NO_SUCH_KEY"):  # S3: deleted after it was opened
            raise _unreadable(store, key, "a file of it is missing", missing=True) from None
        raise StorageError(
            f"cannot read {key} of {store.uri} ({type(e).__name__}: {str(e)[:200]}); check that the storage "
            f"is reachable, then run the same command again (`tans verify {store.uri}` checks the segment)"
        ) from None
    except (*_CORRUPT, pa.ArrowException) as e:
        raise _unreadable(store, key, f"{type(e).__name__}: {str(e)[:200]}") from None


def file_sha256(store: ZooStore, key: str) -> str:
    """A file's sha256, read in chunks (a segment's embeddings may be gigabytes);
    FileNotFoundError when it is missing."""
    fs, base = store.arrow_filesystem()
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(f"{base}/{key}") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(key) from None
    return digest.hexdigest()


def intact(store: ZooStore, segment: Sealed) -> bool:
    """Whether both files of the segment are there and match its manifest's sha256."""
    _, scalars_key, embeddings_key = segment.keys
    try:
        return file_sha256(store, scalars_key) == segment.scalars_sha256 and (
            file_sha256(store, embeddings_key) == segment.embeddings_sha256
        )
    except FileNotFoundError:
        return False


def read_segment(store: ZooStore, segment: Sealed, light: bool, columns: list[str] | None = None) -> pa.Table:
    """A sealed segment's rows: the scalar columns (only `columns` when given; then light),
    with the embeddings beside them unless `light`. SealedError when it is missing or
    damaged, StorageError when the storage cannot be read."""
    _, scalars_key, embeddings_key = segment.keys
    fs, base = store.arrow_filesystem()
    with _reading(store, scalars_key):
        with fs.open_input_file(f"{base}/{scalars_key}") as fh:
            scalars = pq.ParquetFile(fh)
            if columns is not None:
                present = scalars.schema_arrow.names
                columns, light = [c for c in columns if c in present], True
            table = scalars.read(columns=columns)
        if not light:
            with fs.open_input_file(f"{base}/{embeddings_key}") as fh:
                heavy = pq.ParquetFile(fh).read()
            if not heavy["job_id"].equals(table["job_id"]):
                raise ValueError(f"{embeddings_key} is not aligned with {scalars_key}")
            for name in HEAVY:
                table = table.append_column(heavy.schema.field(name), heavy[name])
    if table.num_rows != segment.rows:
        raise _unreadable(store, scalars_key, f"{table.num_rows} rows, its manifest says {segment.rows}")
    return table


def _live_parts(store: ZooStore, read) -> tuple[list[Sealed], list[pa.Table]]:
    """`read(segment)` of every live segment. A manifest or file gone since the listing is
    read again from a fresh listing once (a compaction or verify replaced its segment
    meanwhile: a compaction deletes only after all its merges are written); gone again, it
    is the SealedError."""
    for attempt in (1, 2):
        try:
            segments = live(manifests(store))
            return segments, [read(s) for s in segments]
        except SealedError as e:
            if not e.missing or attempt == 2:
                raise
    raise AssertionError("unreachable")


def once(table: pa.Table) -> pa.Table:
    """The rows, each job once: its first row."""
    import pyarrow.compute as pc

    if pc.count_distinct(table["job_id"]).as_py() == table.num_rows:
        return table
    first: dict[str, int] = {}
    for i, job in enumerate(table["job_id"].to_pylist()):
        first.setdefault(job, i)
    return table.take(int_array(sorted(first.values())))


def sealed_table(store: ZooStore, light: bool, columns: list[str] | None = None) -> pa.Table | None:
    """The rows of every live sealed segment, each job once (its oldest segment's row), or
    None where the zoo has none. A job is in two segments only when two compactions ran at
    once (a lease broken by hand); `tans verify` then takes it out of the newer one."""
    segments, parts = _live_parts(store, lambda s: read_segment(store, s, light, columns))
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="default")
    return once(table) if len(segments) > 1 else table


@dataclass(frozen=True)
class SealedIndex:
    """Which jobs are sealed and where, as Arrow arrays (a million rows are no million Python
    objects), oldest segment first. A job sealed twice (two compactions that ran at once,
    which the lease prevents) is listed twice; `token_of` gives its oldest segment."""

    job_ids: pa.Array
    dataset_ids: pa.Array
    segment: pa.Array  # per row: its segment's position in `tokens`
    tokens: tuple[str, ...]

    @classmethod
    def empty(cls) -> SealedIndex:
        return cls(string_array([]), string_array([]), int_array([]), ())

    def __len__(self) -> int:
        return len(self.job_ids)

    def token_of(self, job_id: str) -> str | None:
        import pyarrow.compute as pc

        at = pc.index(self.job_ids, job_id).as_py() if len(self.job_ids) else -1
        return None if at < 0 else self.tokens[self.segment[at].as_py()]

    def ids(self) -> set[str]:
        return set(self.job_ids.to_pylist())


def sealed_index(store: ZooStore) -> SealedIndex:
    """The sealed jobs of the zoo: two columns of each live segment are read."""
    segments, parts = _live_parts(store, lambda s: read_segment(store, s, light=True, columns=["dataset_id", "job_id"]))
    if not parts:
        return SealedIndex.empty()
    table = pa.concat_tables(
        [t.append_column("segment", int_array(np.full(t.num_rows, k, np.int32))) for k, t in enumerate(parts)]
    )
    column = lambda name: table[name].combine_chunks()  # noqa: E731
    return SealedIndex(column("job_id"), column("dataset_id"), column("segment"), tuple(s.token for s in segments))


def read_row(store: ZooStore, token: str, job_id: str) -> pa.Table | None:
    """One job's row (with its embeddings) of a sealed segment, or None when the segment does
    not hold it: its job_id column is read, then the one row group that holds the job."""
    _, scalars_key, embeddings_key = layout.sealed_keys(token)
    fs, base = store.arrow_filesystem()
    with _reading(store, scalars_key):
        with fs.open_input_file(f"{base}/{scalars_key}") as s, fs.open_input_file(f"{base}/{embeddings_key}") as e:
            scalars, heavy = pq.ParquetFile(s), pq.ParquetFile(e)
            found = _locate(scalars, job_id)
            if found is None:
                return None
            group, row = found
            table, embeddings = scalars.read_row_group(group), heavy.read_row_group(group)
        if not embeddings["job_id"].equals(table["job_id"]):
            raise ValueError(f"{embeddings_key} is not aligned with {scalars_key}")
    table = table.slice(row, 1)
    for name in HEAVY:
        table = table.append_column(embeddings.schema.field(name), embeddings[name].slice(row, 1))
    return table


def find_row(store: ZooStore, job_id: str) -> pa.Table | None:
    """A sealed job's row (the oldest live segment's), or None where it is not sealed."""
    for attempt in (1, 2):
        try:
            for segment in live(manifests(store)):
                if (row := read_row(store, segment.token, job_id)) is not None:
                    return row
            return None
        except SealedError as e:
            if not e.missing or attempt == 2:
                raise
    return None


def _locate(f: pq.ParquetFile, job_id: str) -> tuple[int, int] | None:
    """(row group, row within it) of the job's first row, from the job_id column alone."""
    import pyarrow.compute as pc

    ids = f.read(columns=["job_id"])["job_id"]
    at = pc.index(ids, job_id).as_py()
    if at < 0:
        return None
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if at < n:
            return g, at
        at -= n
    return None


def write_sealed(
    store: ZooStore, table: pa.Table, replaces: tuple[str, ...] = (), created_at: str | None = None
) -> Sealed:
    """Seal these rows (a table of result records, SUMMARY columns allowed): both files
    under a fresh token, then the create-only manifest, the commit. A crash before the
    manifest leaves two orphans (`tans verify --clean-orphans`), never a partial segment.
    `created_at` (default: now) orders segments, oldest first."""
    import uuid

    token = uuid.uuid4().hex
    manifest_key, scalars_key, embeddings_key = layout.sealed_keys(token)
    digests = []
    for key, part in (
        (embeddings_key, table.select(["job_id", *HEAVY])),
        (scalars_key, table.drop_columns(list(HEAVY))),
    ):
        sink = io.BytesIO()
        pq.write_table(part, sink, compression="zstd", row_group_size=ROW_GROUP)
        data = sink.getvalue()
        store.write_bytes(key, data, create_only=True)
        digests.append(hashlib.sha256(data).hexdigest())
    created_at = datetime.now(UTC).isoformat() if created_at is None else created_at
    segment = Sealed(token, table.num_rows, digests[1], digests[0], tuple(replaces), created_at)
    meta = {
        "token": token,
        "rows": segment.rows,
        "scalars_sha256": segment.scalars_sha256,
        "embeddings_sha256": segment.embeddings_sha256,
        "replaces": list(segment.replaces),
        "created_at": segment.created_at,
    }
    if not store.write_bytes(manifest_key, json.dumps(meta, indent=1).encode(), create_only=True):
        raise StorageError(f"{manifest_key} exists already in {store.uri}")  # a fresh uuid: never
    return segment


def replace(store: ZooStore, old: list[Sealed], table: pa.Table, delete: bool = True) -> Sealed | None:
    """Replace sealed segments by one of these rows (a merge, or the same rows less some):
    the new segment takes the age of the oldest it replaces and names every segment the old
    ones replaced too (a replaced segment must never come back when its replacer is
    deleted), then the old ones are deleted (unless not `delete`: the caller `drop`s them
    later), each manifest before its files. None (and nothing deleted) when `table` is empty
    and there is nothing to replace, or when it is empty and the old ones replaced nothing
    still present (they are deleted: an empty segment is needed only to keep those out)."""
    if not old and not table.num_rows:
        return None
    present = {s.token for s in manifests(store)}  # a deleted segment cannot come back
    replaced = tuple(sorted(({s.token for s in old} | {t for s in old for t in s.replaces}) & present))
    if not table.num_rows and set(replaced) <= {s.token for s in old}:
        if delete:
            drop(store, old)
        return None
    new = write_sealed(store, table, replaced, min((s.created_at for s in old), default=None))
    if delete:
        drop(store, old)
    return new


def drop(store: ZooStore, segments: list[Sealed]) -> None:
    """Delete replaced segments, each manifest before its files."""
    for segment in segments:
        for key in segment.keys:
            store.delete(key)
