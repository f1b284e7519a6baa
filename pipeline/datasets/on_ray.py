"""Ingestion on a Ray cluster: the cluster's nodes decode a source's files and write the
dataset's shards straight to the zoo's store. The caller lists the source, validates what the
nodes report (the sha256 and length of each kept image; no image comes back) and commits the
dataset record, as a local ingestion does.

Two passes over the files. The first (`decode_on_ray`) decodes every file, a chunk per task,
to learn which files are kept and the sha256 (the duplicate check, the content hash) and
length (the shard boundaries) of what the zoo will store. Once the split is known, the second
(`write_split_on_ray`) gives each shard to a task, which reads and decodes its files again,
checks each image against the first pass (a file changed in between refuses the dataset) and
writes the shard. Shards, keys and sha256 are exactly those of a local ingestion: the same
decoding, the same split, the same boundaries (`shard_ranges`).

Who reads the source: for a source on S3 the tasks read their files themselves; a source on
the caller's disk (which the nodes may not see) is read by the caller and sent with each task,
so the caller reads, but never decodes or writes."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

import pyarrow.fs as pafs

from tans.pipeline.datasets.decode import CHUNK, WINDOW, decode_one
from tans.pipeline.datasets.settings import IngestSettings
from tans.pipeline.datasets.sources import Source, SourceFile
from tans.zoo_schema.errors import DatasetError, TansError
from tans.zoo_schema.shards import shard_ranges, write_shard
from tans.zoo_schema.store import S3Settings, ZooStore, open_store, source_filesystem


@dataclass(frozen=True, slots=True)
class Decoded:
    """An image kept by the first pass: its file (the index in the source's listing) and the
    sha256 and length of the bytes the zoo stores for it."""

    index: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Where:
    """A source on S3, as a task opens it to read its own files."""

    uri: str
    parquet_path: str | None
    s3: S3Settings | None

    def read(self, files: list[SourceFile]) -> list[bytes]:
        fs, _ = source_filesystem(self.uri, self.s3)
        return Source(self.uri, fs, [], [], self.parquet_path).read(files)


def _where(source: Source, s3: S3Settings | None) -> Where | None:
    """Where the tasks read the source themselves; None: the caller reads it (its own disk)."""
    if isinstance(source.fs, pafs.LocalFileSystem):
        return None
    return Where(source.uri, source.parquet_path, s3)


def _read_here(source: Source, chunk: list[SourceFile]) -> tuple[list[bytes | None], dict[int, str]]:
    """A chunk's bytes read on this machine (None where unreadable), and why for those."""
    if not source.local:
        return source.read(chunk), {}
    raws, why = [], {}
    for i, f in enumerate(chunk):
        try:
            with open(f.ref, "rb") as fh:
                raws.append(fh.read())
        except OSError as e:
            raws.append(None)
            why[i] = f"cannot read file ({e.strerror})"
    return raws, why


def _raws(source: Source, where: Where | None, chunk: list[SourceFile]):
    """(raw bytes to send, or None when the task reads them itself; why unreadable files are)."""
    return (None, {}) if where else _read_here(source, chunk)


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def decode_task(
    where: Where | None, files: list[SourceFile], raws: list[bytes | None] | None, settings: IngestSettings
) -> tuple[str, list[tuple[int, str, str]]]:
    """What a first-pass task runs: (its node, (length, sha256, "") or (0, "", why skipped) per file)."""
    if raws is None:
        raws = where.read(files)
    out = []
    for raw in raws:
        kept, why = decode_one(raw, settings)
        out.append((len(kept), hashlib.sha256(kept).hexdigest(), "") if kept is not None else (0, "", why))
    return _node(), out


def shard_task(
    zoo_uri: str,
    s3: S3Settings | None,
    key: str,
    where: Where | None,
    files: list[SourceFile],
    raws: list[bytes | None] | None,
    expected: list[tuple[int, str]],
    settings: IngestSettings,
) -> tuple[str, tuple[str, str] | str]:
    """What a second-pass task runs: decode the shard's files again and write the shard.
    (its node, (key, sha256)), or (its node, the name of a file that is no longer what the
    first pass decoded)."""
    if raws is None:
        raws = where.read(files)
    rows = []
    for f, raw, (label, sha256) in zip(files, raws, expected):
        kept, _ = decode_one(raw, settings)
        if kept is None or hashlib.sha256(kept).hexdigest() != sha256:
            return _node(), f.name
        rows.append((kept, label))
    return _node(), write_shard(open_store(zoo_uri, s3), key, rows)


def _get(ref):
    """A task's result; a tans error raised in the task is raised here as itself."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        if isinstance(e.cause, TansError):
            raise e.cause from None
        raise


def _window() -> int:
    import ray

    # tasks in flight: WINDOW per cluster CPU, at most what local decoding holds (16 processes)
    return min(WINDOW * max(1, int(ray.cluster_resources().get("CPU", 1))), WINDOW * 16)


def _settle(pending: deque) -> None:
    """Stopped early (a refused dataset, a signal): the tasks in flight are cancelled and waited
    for, so that none writes after the caller cleans up."""
    import ray

    refs = [item[-1] for item in pending]
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled or failed: either way it is over
            pass
    pending.clear()


def decode_on_ray(source: Source, settings: IngestSettings, s3: S3Settings | None, nodes: dict):
    """(SourceFile, Decoded or None, why skipped) for every file of the source, in order,
    decoded by Ray tasks (WINDOW chunks per cluster CPU in flight). `nodes` counts the files
    decoded on each node."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(decode_task)
    where, window = _where(source, s3), _window()
    chunks = [(i, source.files[i : i + CHUNK]) for i in range(0, len(source.files), CHUNK)]
    pending: deque = deque()
    try:
        for item in chunks + [None] * window:
            if item is not None:
                first, chunk = item
                raws, unread = _raws(source, where, chunk)
                pending.append((first, chunk, unread, task.remote(where, chunk, raws, settings)))
            if pending and (item is None or len(pending) > window):
                first, done, unread, ref = pending[0]
                node, decoded = _get(ref)
                pending.popleft()
                nodes[node] = nodes.get(node, 0) + len(done)
                for i, (f, (length, sha256, why)) in enumerate(zip(done, decoded)):
                    kept = Decoded(first + i, length, sha256) if sha256 else None
                    yield f, kept, unread.get(i, why)
    finally:
        _settle(pending)


def write_split_on_ray(
    store: ZooStore,
    prefix: str,
    split: str,
    rows: list[tuple[Decoded, int]],
    source: Source,
    settings: IngestSettings,
    s3: S3Settings | None,
    nodes: dict,
) -> list[tuple[str, str]]:
    """Write (Decoded image, label) rows as the shards `write_split` writes, each by a Ray task;
    returns each shard's key and sha256. `nodes` counts the images written on each node. The
    caller deletes the prefix when this raises."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(shard_task)
    where, window = _where(source, s3), max(2, _window() // WINDOW)
    pending: deque = deque()
    shards = []
    ranges = list(enumerate(shard_ranges([d.length for d, _ in rows])))
    try:
        for item in ranges + [None] * window:
            if item is not None:
                n, (start, end) = item
                part = rows[start:end]
                files = [source.files[d.index] for d, _ in part]
                raws, unread = _raws(source, where, files)
                if unread:
                    raise _changed(source, files[min(unread)].name)
                key = f"{prefix}/{split}/part-{n:05d}.parquet"
                expected = [(label, d.sha256) for d, label in part]
                ref = task.remote(store.uri, s3, key, where, files, raws, expected, settings)
                pending.append((len(part), ref))
            if pending and (item is None or len(pending) > window):
                count, ref = pending[0]
                node, written = _get(ref)
                pending.popleft()
                if isinstance(written, str):
                    raise _changed(source, written)
                nodes[node] = nodes.get(node, 0) + count
                shards.append(written)
    finally:
        _settle(pending)
    return shards


def _changed(source: Source, name: str) -> DatasetError:
    return DatasetError(
        f"{name} in {source.uri} changed or went away while it was being ingested; "
        "add the dataset again once nothing writes to it (the zoo is unchanged)"
    )
