"""Ingestion on a Ray cluster: the cluster's nodes decode a source's files and, for a zoo on S3,
write the dataset's shards straight to the zoo's store. The caller lists the source, validates
what the nodes report and commits the dataset record, as a local ingestion does.

With a zoo on S3 and a source of image files, two passes. The first (`decode_on_ray`) decodes
every file, a chunk per task, and sends back only the sha256 (the duplicate check, the content
hash) and length (the shard boundaries) of what the zoo will store. Once the split is known,
the second (`write_split_on_ray`) gives each shard to a task, which reads and decodes its files
again, checks each image against the first pass (a file changed in between refuses the
dataset) and writes the shard. Shards, keys and sha256 are exactly those of a local
ingestion: the same decoding (the nodes must run this machine's Pillow: checked), the same
split, the same boundaries (`shard_ranges`).

Otherwise the decoded images come back from the first pass to a spool here, and this machine
writes the shards: a zoo on local disk (the nodes may not see it), and a Parquet source (the
split's order would read each of its row groups once per shard).

Who reads the source: for a source on S3 the tasks read their files themselves; a source on
the caller's disk (which the nodes may not see) is read by the caller and sent with each
task."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import deque
from dataclasses import dataclass

import pyarrow.fs as pafs

from tans.pipeline.datasets.decode import CHUNK, WINDOW, _spool, decode_one
from tans.pipeline.datasets.settings import IngestSettings
from tans.pipeline.datasets.sources import Source, SourceFile
from tans.zoo_schema.errors import DatasetError, StorageError, TansError
from tans.zoo_schema.shards import shard_ranges, write_shard
from tans.zoo_schema.store import S3Settings, ZooStore, open_store, source_filesystem

MAX_RAW_IN_FLIGHT = 256 << 20  # source bytes sent with the shard tasks in flight, beyond the first


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

    def read(self, files: list[SourceFile]) -> tuple[list[bytes | None], dict[int, str]]:
        """The files' bytes (None where unreadable) and why for those, as `_read_here` gives them."""
        fs, _ = source_filesystem(self.uri, self.s3)
        source = Source(self.uri, fs, [], [], self.parquet_path)
        if self.parquet_path is not None:
            return source.read(files), {}  # a damaged file raises DatasetError
        raws, why = [], {}
        for i, f in enumerate(files):
            try:
                raws.append(source.read([f])[0])
            except OSError as e:
                raws.append(None)
                why[i] = f"cannot read file ({e})"
        return raws, why


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


def nodes_write(store: ZooStore, source: Source) -> bool:
    """Whether the nodes write the shards: a zoo they can reach (S3) and a source of files."""
    return "://" in store.uri and source.parquet_path is None


def _node() -> tuple[str, str]:
    """This task's node id, and the Pillow it decodes with."""
    import PIL
    import ray

    return ray.get_runtime_context().get_node_id(), PIL.__version__


def decode_task(
    where: Where | None,
    files: list[SourceFile],
    raws: list[bytes | None] | None,
    settings: IngestSettings,
    keep: bool,
) -> tuple[tuple[str, str], list[tuple[int, str, str]], list[bytes | None] | None]:
    """What a first-pass task runs: (its node, (length, sha256, "") or (0, "", why skipped) per
    file, and the stored bytes of each when `keep`)."""
    unread = {}
    if raws is None:
        raws, unread = where.read(files)
    out, kept_bytes = [], []
    for i, raw in enumerate(raws):
        kept, why = decode_one(raw, settings)
        why = unread.get(i, why)
        out.append((len(kept), hashlib.sha256(kept).hexdigest(), "") if kept is not None else (0, "", why))
        kept_bytes.append(kept)
    return _node(), out, kept_bytes if keep else None


def shard_task(
    zoo_uri: str,
    s3: S3Settings | None,
    key: str,
    where: Where | None,
    files: list[SourceFile],
    raws: list[bytes | None] | None,
    expected: list[tuple[int, str]],
    settings: IngestSettings,
) -> tuple[tuple[str, str], tuple[str, str] | str]:
    """What a second-pass task runs: decode the shard's files again and write the shard.
    (its node, (key, sha256)), or (its node, the name of a file that is no longer what the
    first pass decoded)."""
    if raws is None:
        raws, _ = where.read(files)
    rows = []
    for f, raw, (label, sha256) in zip(files, raws, expected):
        kept, _ = decode_one(raw, settings)
        if kept is None or hashlib.sha256(kept).hexdigest() != sha256:
            return _node(), f.name
        rows.append((kept, label))
    return _node(), write_shard(open_store(zoo_uri, s3), key, rows)


def _get(ref, source: Source):
    """A task's result; a tans error raised in the task is raised here as itself, any other
    failure (a node lost, a task out of memory, an error of the storage) as a StorageError."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        if isinstance(e.cause, TansError):
            raise e.cause from None
        cause = e.cause if e.cause is not None else e
        raise _failed(source, f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
    except RayError as e:
        raise _failed(source, type(e).__name__) from None


def _failed(source: Source, what: str) -> StorageError:
    return StorageError(
        f"a Ray task ingesting {source.uri} failed ({what}); the zoo is unchanged: "
        "add the dataset again (with -v for the task's log, or without --address to ingest here)"
    )


def _pillow(source: Source, node: tuple[str, str]) -> str:
    """The node's id, once its Pillow is this machine's (else the stored bytes could differ)."""
    import PIL

    node_id, version = node
    if version != PIL.__version__:
        raise StorageError(
            f"Ray node {node_id[:8]} decodes with Pillow {version}, this machine with {PIL.__version__}: "
            f"the images of {source.uri} would be stored differently; install the same tans environment "
            "on every node (the zoo is unchanged)"
        )
    return node_id


def _window() -> int:
    import ray

    # tasks in flight: WINDOW per cluster CPU, at most what local decoding holds (16 processes)
    return min(WINDOW * max(1, int(ray.cluster_resources().get("CPU", 1))), WINDOW * 16)


def _settle(pending: deque) -> None:
    """Stopped early (a refused dataset, a signal): the tasks in flight are cancelled and waited
    for, so that none writes after the caller cleans up; a second signal meanwhile is raised
    once they are over."""
    import ray

    refs = [item[-1] for item in pending]
    for ref in refs:
        ray.cancel(ref)
    interrupted = None
    for ref in refs:
        while True:
            try:
                ray.get(ref)
            except BaseException as e:  # noqa: BLE001 - cancelled or failed: either way it is over
                if not isinstance(e, Exception):
                    interrupted = interrupted or e
                    continue  # wait on: it may still be writing
            break
    pending.clear()
    if interrupted is not None:
        raise interrupted


def decode_on_ray(
    source: Source, settings: IngestSettings, s3: S3Settings | None, nodes: dict, spool_dir: str | None = None
):
    """(SourceFile, image or None, why skipped) for every file of the source, in order, decoded
    by Ray tasks (WINDOW chunks per cluster CPU in flight). The image is a `Decoded`, or with
    `spool_dir`, a `Stored` in a spool file there (the stored bytes came back). `nodes` counts
    the files decoded on each node."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(decode_task)
    where, window = _where(source, s3), _window()
    chunks = [(i, source.files[i : i + CHUNK]) for i in range(0, len(source.files), CHUNK)]
    pending: deque = deque()
    spool = open(os.path.join(spool_dir, f"ray-{uuid.uuid4().hex[:8]}"), "wb") if spool_dir else None
    try:
        for item in chunks + [None] * window:
            if item is not None:
                first, chunk = item
                raws, unread = _raws(source, where, chunk)
                pending.append((first, chunk, unread, task.remote(where, chunk, raws, settings, spool is not None)))
            if pending and (item is None or len(pending) > window):
                first, done, unread, ref = pending[0]
                node, decoded, kept = _get(ref, source)
                pending.popleft()
                node = _pillow(source, node)
                nodes[node] = nodes.get(node, 0) + len(done)
                images = [Decoded(first + i, n, sha256) if sha256 else None for i, (n, sha256, _) in enumerate(decoded)]
                if spool:
                    images = [_spool(spool, b) if b is not None else None for b in kept]
                    spool.flush()  # readable before the caller sees it
                for i, (f, image, (_, _, why)) in enumerate(zip(done, images, decoded)):
                    yield f, image, unread.get(i, why)
    finally:
        _settle(pending)
        if spool:
            spool.close()


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
    """Write (Decoded image, label) rows as the shards `write_split` writes, each by a Ray task
    (for a zoo on S3: `nodes_write`); returns each shard's key and sha256. In flight: a shard
    per cluster CPU, and at most MAX_RAW_IN_FLIGHT of source bytes sent along beyond the first.
    `nodes` counts the images written on each node. The caller deletes the prefix when this
    raises."""
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
                pending.append((len(part), sum(map(len, raws or ())), ref))
            while pending and (
                item is None
                or len(pending) > window
                or (len(pending) > 1 and sum(sent for _, sent, _ in pending) > MAX_RAW_IN_FLIGHT)
            ):
                count, _, ref = pending[0]
                node, written = _get(ref, source)
                pending.popleft()
                if isinstance(written, str):
                    raise _changed(source, written)
                node = _pillow(source, node)
                nodes[node] = nodes.get(node, 0) + count
                shards.append(written)
                if item is None:
                    break
    finally:
        _settle(pending)
    return shards


def _changed(source: Source, name: str) -> DatasetError:
    return DatasetError(
        f"{name} in {source.uri} changed or went away while it was being ingested; "
        "add the dataset again once nothing writes to it (the zoo is unchanged)"
    )
