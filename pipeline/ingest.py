"""Dataset ingestion: user data in, validated Parquet shards in the zoo out.

Accepted sources:
- an ImageFolder directory (one sub-folder per class, image files inside), local or s3://;
- a Parquet file with an `image` column (bytes, or a struct with a `bytes` field as written
  by Hugging Face datasets) and a `label` column (int or string), local or s3://.

Every image is decoded and converted to RGB; undecodable files are skipped and counted.
Datasets with fewer than 2 classes or a class below the minimum size are refused.
Datasets of more than 20 classes are split into parts of at most 20 classes (paper D.2).
Each (part of a) dataset gets a stratified train/test split with a recorded seed, and is
written to `data/<id>/{train,test}/part-NNNNN.parquet`; its row in `datasets/<id>.parquet`
is written last and marks the dataset as complete.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import DatasetError, StorageError
from zoo_schema.records import DatasetRecord, from_table, to_table
from zoo_schema.store import S3Settings, ZooStore

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
SHARD_ROWS = 2048
_DATA_SCHEMA = pa.schema([pa.field("image", pa.binary()), pa.field("label", pa.int32())])


@dataclass(frozen=True)
class IngestSettings:
    max_classes: int = 20          # larger datasets are split (paper D.2)
    min_images_per_class: int = 5  # below this a class cannot be split 80/20 meaningfully
    test_fraction: float = 0.2
    split_seed: int = 0
    max_side: int = 256            # images are stored downscaled to at most this side


@dataclass(frozen=True)
class IngestReport:
    name: str
    dataset_ids: list[str]
    images: int
    skipped: list[tuple[str, str]]  # (file, reason)
    already_present: bool


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not s:
        raise DatasetError(f"dataset name {name!r} has no letters or digits; pass --name")
    return s[:80]


# -- reading sources ----------------------------------------------------------------------

def source_filesystem(uri: str, s3: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    if uri.startswith("s3://"):
        import os
        s3 = s3 or S3Settings()
        endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        scheme, host = "https", None
        if endpoint:
            scheme, _, host = endpoint.partition("://")
        fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme,
                               region=s3.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        return fs, uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), str(uri).rstrip("/")


def _info(fs, path, uri):
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"cannot read dataset source {uri}: {e}; check the path, endpoint "
                           "and credentials") from None


def read_source(uri: str, s3: S3Settings | None = None) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]]]:
    """(class name, file name, raw bytes) for every candidate image, plus files skipped early."""
    fs, path = source_filesystem(uri, s3)
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"dataset source {uri} does not exist; pass an ImageFolder directory "
                           "(one folder per class) or a Parquet file")
    if info.type == pafs.FileType.File:
        if not path.endswith(".parquet"):
            raise DatasetError(f"dataset source {uri} is a file but not .parquet; pass an ImageFolder "
                               "directory or a Parquet file with image and label columns")
        return _read_parquet(fs, path, uri), []
    items, skipped = [], []
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if f.type != pafs.FileType.File:
            continue
        rel = f.path[len(path):].lstrip("/")
        parts = rel.split("/")
        if parts[-1].startswith("."):
            continue
        if len(parts) < 2:
            skipped.append((rel, "not inside a class folder"))
            continue
        if "." + parts[-1].rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES:
            skipped.append((rel, "not an image file name"))
            continue
        with fs.open_input_stream(f.path) as fh:
            items.append((parts[0], rel, fh.read()))
    return items, skipped


def _read_parquet(fs, path, uri) -> list[tuple[str, str, bytes]]:
    with fs.open_input_file(path) as fh:
        table = pq.read_table(fh)
    missing = {"image", "label"} - set(table.column_names)
    if missing:
        raise DatasetError(f"Parquet dataset {uri} lacks column(s) {sorted(missing)}; it needs "
                           "'image' (bytes) and 'label' (int or string)")
    images = table.column("image").to_pylist()
    labels = table.column("label").to_pylist()
    items = []
    for i, (img, label) in enumerate(zip(images, labels)):
        if isinstance(img, dict):
            img = img.get("bytes")
        items.append((str(label), f"row {i}", img or b""))
    return items


# -- validation ---------------------------------------------------------------------------

def decode_rgb_png(raw: bytes, max_side: int) -> bytes:
    """Decode any PIL-readable image, convert to RGB, downscale, re-encode as PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.BILINEAR)
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def validate(name: str, items, settings: IngestSettings):
    """Decode everything; return ({class: [png bytes]}, skipped) or raise DatasetError."""
    by_class: dict[str, list[bytes]] = {}
    skipped = []
    for cls, fname, raw in items:
        try:
            png = decode_rgb_png(raw, settings.max_side)
        except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt file
            skipped.append((fname, f"cannot decode image ({type(e).__name__})"))
            continue
        by_class.setdefault(cls, []).append(png)
    if not by_class:
        raise DatasetError(
            f"dataset {name!r} holds no readable images ({len(skipped)} files skipped); expected "
            "one folder per class with image files inside (ImageFolder layout), or a Parquet "
            "file with image and label columns")
    if len(by_class) < 2:
        only = next(iter(by_class))
        raise DatasetError(
            f"dataset {name!r} has only 1 class ({only!r}) with readable images; a "
            "classification dataset needs at least 2 classes: add a folder per class")
    small = {c: len(v) for c, v in by_class.items() if len(v) < settings.min_images_per_class}
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(small.items()))
        raise DatasetError(
            f"dataset {name!r}: class(es) {listed} have fewer than "
            f"{settings.min_images_per_class} readable images; add images to them or remove "
            "those class folders")
    return by_class, skipped


def split_classes(classes: list[str], max_classes: int, seed: int) -> list[list[str]]:
    """Classes into ceil(n / max) balanced groups, shuffled with the seed; one group if small."""
    if len(classes) <= max_classes:
        return [sorted(classes)]
    shuffled = sorted(classes)
    random.Random(seed).shuffle(shuffled)
    parts = math.ceil(len(shuffled) / max_classes)
    return [sorted(shuffled[i::parts]) for i in range(parts)]


def stratified_split(by_class: dict[str, list[bytes]], classes: list[str], settings: IngestSettings):
    """(train, test) lists of (png, label index), a fixed fraction of every class in test."""
    train, test = [], []
    for label, cls in enumerate(classes):
        images = list(by_class[cls])
        rng = random.Random(f"{settings.split_seed}:{cls}")
        rng.shuffle(images)
        n_test = max(1, round(settings.test_fraction * len(images)))
        test += [(img, label) for img in images[:n_test]]
        train += [(img, label) for img in images[n_test:]]
    return train, test


def content_hash(by_class: dict[str, list[bytes]], classes: list[str]) -> str:
    h = hashlib.sha256()
    for cls in classes:
        h.update(cls.encode() + b"\0")
        for digest in sorted(hashlib.sha256(img).hexdigest() for img in by_class[cls]):
            h.update(digest.encode())
    return h.hexdigest()


# -- writing to the zoo -------------------------------------------------------------------

def read_datasets(store: ZooStore) -> list[DatasetRecord]:
    """Every complete dataset of the zoo, sorted by id."""
    records = []
    for key in store.list("datasets"):
        if key.endswith(".parquet"):
            records += from_table(DatasetRecord, store.read_table(key))
    return sorted(records, key=lambda r: r.dataset_id)


def _write_split(store: ZooStore, dataset_id: str, split: str, rows) -> None:
    for i in range(0, max(len(rows), 1), SHARD_ROWS):
        chunk = rows[i:i + SHARD_ROWS]
        table = pa.table({"image": [r[0] for r in chunk], "label": [r[1] for r in chunk]},
                         schema=_DATA_SCHEMA)
        store.write_table(f"data/{dataset_id}/{split}/part-{i // SHARD_ROWS:05d}.parquet", table)


def ingest(store: ZooStore, source: str, name: str | None = None,
           settings: IngestSettings = IngestSettings(), s3: S3Settings | None = None) -> IngestReport:
    """Validate one dataset source and write it (split if large) into the zoo."""
    name = name or source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
    base_id = slug(name)
    items, early_skips = read_source(source, s3)
    by_class, skipped = validate(name, items, settings)
    skipped = early_skips + skipped
    groups = split_classes(list(by_class), settings.max_classes, settings.split_seed)
    ids, present = [], 0
    existing = {r.dataset_id: r for r in read_datasets(store)}
    for part, classes in enumerate(groups):
        dataset_id = base_id if len(groups) == 1 else f"{base_id}-part{part}"
        digest = content_hash(by_class, classes)
        ids.append(dataset_id)
        if dataset_id in existing:
            if existing[dataset_id].content_sha256 != digest:
                raise DatasetError(
                    f"the zoo already has a dataset {dataset_id!r} with other content; ingest "
                    "this one under another name (--name)")
            present += 1
            continue
        train, test = stratified_split(by_class, classes, settings)
        _write_split(store, dataset_id, "train", train)
        _write_split(store, dataset_id, "test", test)
        record = DatasetRecord(
            dataset_id=dataset_id, name=name, num_classes=len(classes), class_names=classes,
            num_train=len(train), num_test=len(test), source=source, content_sha256=digest,
            split_seed=settings.split_seed, skipped_files=len(skipped),
            created_at=datetime.now(timezone.utc).isoformat())
        store.write_table(f"datasets/{dataset_id}.parquet", to_table([record]), create_only=True)
    images = sum(len(v) for v in by_class.values())
    return IngestReport(name, ids, images, skipped, already_present=present == len(groups))


def load_split(store: ZooStore, dataset_id: str, split: str) -> tuple[list[bytes], list[int]]:
    """The encoded images and labels of one split, as written by `ingest`."""
    keys = [k for k in store.list(f"data/{dataset_id}/{split}") if k.endswith(".parquet")]
    if not keys:
        raise DatasetError(f"the zoo has no {split} data for dataset {dataset_id!r}; "
                           "ingest it again with `tans datasets add`")
    tables = [store.read_table(k) for k in keys]
    table = pa.concat_tables(tables)
    return table.column("image").to_pylist(), table.column("label").to_pylist()
