"""Dataset ingestion: user data in, validated Parquet shards in the zoo out.

Accepted sources:
- an ImageFolder directory (one sub-folder per class, image files inside), local or s3://;
- a Parquet file with an `image` column (bytes, or a struct with a `bytes` field as written
  by Hugging Face datasets) and a `label` column (int or string), local or s3://.

Every image is decoded (`decode`) and converted to RGB; undecodable files are skipped and
counted. RGB JPEGs up to `keep_jpeg_side` are stored as they are (decoded only to check
them); other images are stored as PNG, downscaled to `max_side`.
Datasets with fewer than 2 classes or a class below the minimum size are refused.
Datasets of more than 20 classes are split into parts of at most 20 classes (paper D.2).
Each (part of a) dataset gets a stratified train/test split with a recorded seed, and is
written to `data/<id>/<write_id>/{train,test}/part-NNNNN.parquet`; its row in `datasets/<id>.parquet`
is written last and marks the dataset as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tans.pipeline.datasets.decode import SpoolReader, Stored
from tans.pipeline.datasets.on_ray import decode_on_ray, nodes_write, write_split_on_ray
from tans.pipeline.datasets.settings import IngestSettings
from tans.pipeline.datasets.sources import list_source
from tans.pipeline.datasets.validate import (  # noqa: F401 - re-exported: ingestion's public names
    DUPLICATE,
    check_classes,
    content_hash,
    read_images,
    split_classes,
    stratified_split,
    validate,
)
from tans.zoo_schema import layout
from tans.zoo_schema.errors import DatasetError, StorageError
from tans.zoo_schema.records import DatasetRecord, to_table
from tans.zoo_schema.shards import forget_datasets, read_dataset, read_datasets, shards_digest, write_split
from tans.zoo_schema.store import S3Settings, ZooStore


@dataclass(frozen=True)
class IngestReport:
    name: str
    dataset_ids: list[str]
    images: int
    skipped: list[tuple[str, str]]  # (file, reason), duplicates included
    already_present: bool
    decoded_on: dict[str, int] = field(default_factory=dict)  # Ray node id -> files it decoded
    written_on: dict[str, int] = field(default_factory=dict)  # Ray node id -> images it wrote into shards

    @property
    def duplicates(self) -> int:
        """Images dropped as byte-identical copies of an earlier image."""
        return sum(reason.startswith(DUPLICATE) for _, reason in self.skipped)


def slug(name: str) -> str:
    """The dataset id for a name: plain [a-z0-9-], since zoo keys are ASCII only.

    ASCII names keep their plain slug (existing zoos use those ids). A name with non-ASCII
    characters gets a hash of the whole name appended (or, with no ASCII letters or digits,
    in place of the slug), so `数据` and `图片`, or `café` and `cafe`, get distinct ids."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not any(ch.isalnum() for ch in name):
        raise DatasetError(f"dataset name {name!r} has no letters or digits; pass --name")
    if name.isascii():
        return s[:80]
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{s[:73].rstrip('-')}-{digest[:6]}" if s else f"ds-{digest[:10]}"


# -- writing to the zoo -------------------------------------------------------------------


def absolute(source: str) -> str:
    """A source as its record keeps it: local paths made absolute, so that repair hints work
    from any folder."""
    return source if "://" in source else os.path.abspath(source)


def ingest(
    store: ZooStore,
    source: str,
    name: str | None = None,
    settings: IngestSettings = IngestSettings(),
    s3: S3Settings | None = None,
    on_ray: bool = False,
) -> IngestReport:
    """Validate one dataset source and write it (split if large) into the zoo.

    With `on_ray`, the files are decoded by Ray tasks on the nodes of the cluster this process
    is connected to, which also write the shards to a zoo on S3 (`on_ray`: the same shards and
    ids as a local ingestion); the report says how many files each node decoded and how many
    images it wrote.

    Images stream from the source through the decoding processes; what is not stored as the
    source file itself waits in a spool folder under TMPDIR (removed at the end). A dataset
    of at most `max_classes` classes, listed class by class (an ImageFolder), is written to
    its shards while it decodes (`ShardStream`); others are written from the spool once all
    is decoded. Either way memory holds a few chunks of images and a small record per
    image, whatever the dataset's size, and the zoo gets the same shards."""
    name = name or source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
    base_id = slug(name)
    listed = list_source(source, s3)
    existing = {r.dataset_id: r for r in read_datasets(store)}
    listed_classes = sorted({f.cls for f in listed.files})
    decoded_on: dict[str, int] = {}
    written_on: dict[str, int] = {}
    there = on_ray and nodes_write(store, listed)
    with tempfile.TemporaryDirectory(prefix="tans-ingest-") as spool_dir:
        stream = None
        if not there and base_id not in existing and 2 <= len(listed_classes) <= settings.max_classes:
            stream = ShardStream(
                store, layout.data_prefix(base_id, uuid.uuid4().hex[:16]), listed_classes, settings, spool_dir
            )
        try:
            decoded = None
            if on_ray:
                decoded = decode_on_ray(listed, settings, s3, decoded_on, None if there else spool_dir)
            with contextlib.closing(decoded) if decoded else contextlib.nullcontext():
                by_class, skipped = validate(
                    name, listed, settings, spool_dir, on_class=stream.feed if stream else None, decoded=decoded
                )
            shards = stream.finish(list(by_class)) if stream else None
        except BaseException:
            if stream:
                stream.abandon()
            raise
        reader = SpoolReader(spool_dir)

        def write(prefix: str, split: str, rows: list) -> list[tuple[str, str]]:
            if there:
                return write_split_on_ray(store, prefix, split, rows, listed, settings, s3, written_on)
            return write_split(store, prefix, split, ((reader.read(s), y) for s, y in rows))

        try:
            ids, present = _write_parts(
                store,
                source,
                name,
                base_id,
                by_class,
                skipped,
                settings,
                write,
                existing,
                (stream, shards) if shards else None,
            )
        finally:
            reader.close()
    images = sum(len(v) for v in by_class.values())
    return IngestReport(name, ids, images, skipped, present == len(ids), decoded_on, written_on)


class ShardStream:
    """Writes a one-part dataset's shards while it is being decoded. As soon as the last file
    of a class is decoded, the class is split and its rows are queued; two threads write the
    train and the test shards. The rows, labels and shard boundaries are exactly those of
    writing after decoding, provided every listed class turns out readable and the source
    lists them in sorted order, one after the other; when that does not hold, the stream
    stops, deletes what it wrote, and the caller writes from the spool instead."""

    def __init__(self, store: ZooStore, prefix: str, classes: list[str], settings: IngestSettings, spool_dir: str):
        import queue
        import threading

        self.store, self.prefix, self.classes, self.settings = store, prefix, classes, settings
        self.spool_dir, self.fed, self.live = spool_dir, 0, True
        self.counts = {"train": 0, "test": 0}
        self.results: dict[str, object] = {}
        self.queues = {split: queue.SimpleQueue() for split in self.counts}
        self.threads = [
            threading.Thread(target=self._write, args=(split,), daemon=True, name=f"tans-ingest-{split}")
            for split in self.counts
        ]
        for t in self.threads:
            t.start()

    @property
    def write_id(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    def _write(self, split: str) -> None:
        reader = SpoolReader(self.spool_dir)
        q, ended = self.queues[split], []

        def rows():
            while (batch := q.get()) is not None:
                for stored, label in batch:
                    yield reader.read(stored), label
            ended.append(True)

        try:
            self.results[split] = write_split(self.store, self.prefix, split, rows())
        except BaseException as e:  # noqa: BLE001 - handed to finish()
            self.results[split] = e
            while not ended and q.get() is not None:  # the end marker, unless rows() took it
                pass
        finally:
            reader.close()

    def feed(self, cls: str, images: list[Stored]) -> None:
        """Class `cls` is decoded completely: queue its split."""
        if not self.live:
            return
        if self.fed >= len(self.classes) or self.classes[self.fed] != cls or not images:
            self.abandon()
            return
        train, test = stratified_split({cls: images}, [cls], self.settings)
        for split, rows in (("train", train), ("test", test)):
            self.queues[split].put([(stored, self.fed) for stored, _ in rows])
            self.counts[split] += len(rows)
        self.fed += 1

    def _join(self) -> None:
        for q in self.queues.values():
            q.put(None)
        for t in self.threads:
            t.join()

    def finish(self, readable: list[str]) -> list[tuple[str, str]] | None:
        """The shards written, or None when the stream stopped (nothing of it is left)."""
        if not self.live:
            return None
        self.live = False
        self._join()
        errors = [r for r in self.results.values() if isinstance(r, BaseException)]
        if errors or self.fed != len(self.classes) or sorted(readable) != self.classes:
            self._delete()
            if errors and not isinstance(errors[0], Exception):
                raise errors[0]
            if errors and isinstance(errors[0], (DatasetError, StorageError)):
                raise errors[0]
            return None
        return self.results["train"] + self.results["test"]

    def abandon(self) -> None:
        if self.live:
            self.live = False
            self._join()
        self._delete()

    def _delete(self) -> None:
        for key in self.store.list(self.prefix):
            self.store.delete(key)


def _write_shards(store, dataset_id, by_class, classes, settings, write):
    """A part's split written under a fresh prefix by `write(prefix, split, rows)`: (write id,
    train rows, test rows, shards). A failure (a source file changed, the zoo's disk is full, a
    signal) leaves nothing."""
    train, test = stratified_split(by_class, classes, settings)
    write_id = uuid.uuid4().hex[:16]
    prefix = layout.data_prefix(dataset_id, write_id)
    shards = []
    try:
        for split, rows in (("train", train), ("test", test)):
            shards += write(prefix, split, rows)
    except BaseException:
        for key in store.list(prefix):
            store.delete(key)
        raise
    return write_id, len(train), len(test), shards


def _write_parts(store, source, name, base_id, by_class, skipped, settings, write, existing, streamed):
    """Write each part's shards (unless `streamed` holds them) and commit its record."""
    groups = split_classes(list(by_class), settings.max_classes, settings.split_seed)
    ids, present = [], 0
    for part, classes in enumerate(groups):
        dataset_id = base_id if len(groups) == 1 else f"{base_id}-part{part}"
        digest = content_hash(by_class, classes)
        ids.append(dataset_id)
        if dataset_id in existing:
            if existing[dataset_id].content_sha256 != digest:
                raise DatasetError(
                    f"the zoo already has a dataset {dataset_id!r} with other content; ingest "
                    "this one under another name (--name)"
                )
            present += 1
            continue
        # Shards go under a fresh prefix and become visible only through the create-only
        # record naming it: a crash leaves an unreferenced prefix (`tans verify` lists it),
        # never a mix of two ingestions.
        if streamed:
            stream, shards = streamed
            write_id, num_train, num_test = stream.write_id, stream.counts["train"], stream.counts["test"]
        else:
            write_id, num_train, num_test, shards = _write_shards(store, dataset_id, by_class, classes, settings, write)
        record = DatasetRecord(
            dataset_id=dataset_id,
            name=name,
            num_classes=len(classes),
            class_names=classes,
            num_train=num_train,
            num_test=num_test,
            source=absolute(source),
            content_sha256=digest,
            split_seed=settings.split_seed,
            skipped_files=len(skipped),
            created_at=datetime.now(UTC).isoformat(),
            write_id=write_id,
            data_sha256=shards_digest(shards),
        )
        try:
            committed = store.write_table(layout.dataset_key(dataset_id), to_table([record]), create_only=True)
        except BaseException:  # the record did not make it (full disk, a signal): nothing is left
            for key, _ in shards:
                store.delete(key)
            raise
        if committed:
            forget_datasets(store)  # a cached record of an earlier dataset of this id would outvote it
        if not committed:
            for key, _ in shards:  # another ingestion of this dataset committed first: keep theirs
                store.delete(key)
            if read_dataset(store, dataset_id).content_sha256 != digest:
                raise DatasetError(
                    f"the zoo already has a dataset {dataset_id!r} with other content; "
                    "ingest this one under another name (--name)"
                )
    return ids, present
