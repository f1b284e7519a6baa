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
counts (a merge, or `tans verify` taking out a damaged row): while both exist, readers take
the replacing one only, so a crash between writing it and deleting the replaced one loses
nothing and doubles nothing.

Sealed segments are never refreshed or rewritten in place: unlike the snapshot's segments
(`results_index/`, a cache of the per-job files that may be lost), they are the only copy of
their rows. A sealed segment that cannot be read is an error that names it and sends the
user to `tans verify`, never a silent gap (a resume would train those jobs again).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from tans.zoo_schema import layout
from tans.zoo_schema.errors import StorageError, TansError
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


def _unreadable(store: ZooStore, key: str, why: str) -> SealedError:
    return SealedError(
        f"the sealed results segment {key} of {store.uri} is unreadable ({why}); its rows have no other copy: "
        f"run `tans verify {store.uri}`, which sets it aside (a later build trains those jobs again)"
    )


def parse_manifest(key: str, meta: dict) -> Sealed:
    """A manifest's record; ValueError when it is not one tans writes under this key."""
    token = layout.sealed_token(key)
    if token is None or meta.get("token") != token:
        raise ValueError(f"{key} is not the manifest of segment {token}")
    replaces = tuple(str(t) for t in meta.get("replaces", ()))
    if not all(layout.TOKEN.fullmatch(t) for t in replaces) or token in replaces:
        raise ValueError(f"{key} replaces segments tans does not write")
    rows, digests = int(meta["rows"]), (str(meta["scalars_sha256"]), str(meta["embeddings_sha256"]))
    if rows < 0 or not all(len(d) == 64 for d in digests):
        raise ValueError(f"{key} holds impossible values")
    return Sealed(token, rows, *digests, replaces, str(meta.get("created_at", "")))


def manifests(store: ZooStore) -> list[Sealed]:
    """Every sealed segment manifest of the zoo, oldest first (replaced ones too); an
    unreadable manifest is a SealedError."""
    out = []
    for key in store.list(layout.SEALED):
        if layout.sealed_token(key) is None:
            continue
        try:
            out.append(parse_manifest(key, store.read_json(key)))
        except FileNotFoundError:
            continue  # deleted since the listing: replaced by a merge
        except (*_CORRUPT, json.JSONDecodeError) as e:
            raise _unreadable(store, key, f"{type(e).__name__}: {str(e)[:200]}") from None
    return sorted(out, key=lambda s: (s.created_at, s.token))


def live(segments: list[Sealed]) -> list[Sealed]:
    """The segments no other names in its `replaces`."""
    replaced = {t for s in segments for t in s.replaces}
    return [s for s in segments if s.token not in replaced]


def read_segment(store: ZooStore, segment: Sealed, light: bool, columns: list[str] | None = None) -> pa.Table:
    """A sealed segment's rows: the scalar columns (only `columns` when given; then light),
    with the embeddings beside them unless `light`. SealedError when it cannot be read."""
    _, scalars_key, embeddings_key = segment.keys
    fs, base = store.arrow_filesystem()
    try:
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
    except (FileNotFoundError, IsADirectoryError):
        raise _unreadable(store, scalars_key, "a file of it is missing") from None
    except (*_CORRUPT, OSError, pa.ArrowException) as e:
        if isinstance(e, StorageError):
            raise
        raise _unreadable(store, scalars_key, f"{type(e).__name__}: {str(e)[:200]}") from None
    if table.num_rows != segment.rows:
        raise _unreadable(store, scalars_key, f"{table.num_rows} rows, its manifest says {segment.rows}")
    return table


def sealed_table(store: ZooStore, light: bool, columns: list[str] | None = None) -> pa.Table | None:
    """The rows of every live sealed segment (each job once: the oldest segment's), or None
    where the zoo has none."""
    import pyarrow.compute as pc

    parts = [read_segment(store, s, light, columns) for s in live(manifests(store))]
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="default")
    if pc.count_distinct(table["job_id"]).as_py() != table.num_rows:  # two compactions sealed a file each
        first: dict[str, int] = {}
        for i, job in enumerate(table["job_id"].to_pylist()):
            first.setdefault(job, i)
        table = table.take(pa.array(sorted(first.values()), pa.int64()))
    return table


def sealed_jobs(store: ZooStore) -> dict[str, tuple[str, str]]:
    """{job_id: (dataset_id, token)} of every sealed row (the oldest segment's)."""
    out: dict[str, tuple[str, str]] = {}
    for s in live(manifests(store)):
        t = read_segment(store, s, light=True, columns=["dataset_id", "job_id"])
        for d, j in zip(t["dataset_id"].to_pylist(), t["job_id"].to_pylist()):
            out.setdefault(j, (d, s.token))
    return out


def read_row(store: ZooStore, token: str, job_id: str) -> pa.Table:
    """One job's row (with its embeddings) of a sealed segment: its job_id column, then the
    one row group that holds the job, not the whole segment."""
    segment = next((s for s in manifests(store) if s.token == token), None)
    if segment is None:
        raise FileNotFoundError(f"sealed segment {token} is not in {store.uri}")
    _, scalars_key, embeddings_key = segment.keys
    fs, base = store.arrow_filesystem()
    try:
        with fs.open_input_file(f"{base}/{scalars_key}") as s, fs.open_input_file(f"{base}/{embeddings_key}") as e:
            scalars, heavy = pq.ParquetFile(s), pq.ParquetFile(e)
            found = _locate(scalars, job_id)
            if found is None:
                raise FileNotFoundError(f"job {job_id} is not in sealed segment {token} of {store.uri}")
            group, row = found
            table, embeddings = scalars.read_row_group(group), heavy.read_row_group(group)
    except (FileNotFoundError, IsADirectoryError) as e:
        if str(e).startswith("job "):
            raise
        raise _unreadable(store, scalars_key, "a file of it is missing") from None
    except (*_CORRUPT, OSError, pa.ArrowException) as e:
        if isinstance(e, StorageError):
            raise
        raise _unreadable(store, scalars_key, f"{type(e).__name__}: {str(e)[:200]}") from None
    if not embeddings["job_id"].equals(table["job_id"]):
        raise _unreadable(store, scalars_key, "its embeddings are not aligned with it")
    table = table.slice(row, 1)
    for name in HEAVY:
        table = table.append_column(embeddings.schema.field(name), embeddings[name].slice(row, 1))
    return table


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


def write_sealed(store: ZooStore, table: pa.Table, replaces: tuple[str, ...] = ()) -> Sealed:
    """Seal these rows (a table of result records, SUMMARY columns allowed): both files
    under a fresh token, then the create-only manifest, the commit. A crash before the
    manifest leaves two orphans (`tans verify --clean-orphans`), never a partial segment."""
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
    segment = Sealed(token, table.num_rows, digests[1], digests[0], tuple(replaces), datetime.now(UTC).isoformat())
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


def replace(store: ZooStore, old: list[Sealed], table: pa.Table) -> Sealed | None:
    """Replace sealed segments by one of these rows (a merge, or the same rows less some):
    the new segment names every segment the old ones replaced too (a replaced segment must
    never come back when its replacer is deleted), then the old ones are deleted, each
    manifest before its files. None (and nothing deleted) when `table` is empty and there is
    nothing to replace."""
    if not old and not table.num_rows:
        return None
    present = {s.token for s in manifests(store)}  # a deleted segment cannot come back
    replaced = tuple(sorted(({s.token for s in old} | {t for s in old for t in s.replaces}) & present))
    new = write_sealed(store, table, replaced)
    for segment in old:
        for key in segment.keys:
            store.delete(key)
    return new
