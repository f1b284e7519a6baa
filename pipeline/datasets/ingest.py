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
import multiprocessing
import os
import random
import re
import stat
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from zoo_schema import layout
from zoo_schema.errors import DatasetError, StorageError
from zoo_schema.records import DatasetRecord, to_table
from zoo_schema.shards import read_dataset, read_datasets, shards_digest, write_split
from zoo_schema.store import S3Settings, ZooStore, source_filesystem

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class IngestSettings:
    max_classes: int = 20          # larger datasets are split (paper D.2)
    min_images_per_class: int = 5  # below this a class cannot be split 80/20 meaningfully
    test_fraction: float = 0.2
    split_seed: int = 0
    max_side: int = 256            # images are stored downscaled to at most this side
    max_pixels: int = 40_000_000   # larger images are skipped undecoded (decompression bombs)


class ImageTooLarge(ValueError):
    """An image refused before decoding because of its pixel count; the message is the reason."""


@dataclass(frozen=True)
class IngestReport:
    name: str
    dataset_ids: list[str]
    images: int
    skipped: list[tuple[str, str]]  # (file, reason)
    already_present: bool


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


# -- reading sources ----------------------------------------------------------------------

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
        return _read_parquet(fs, path, uri)
    if isinstance(fs, pafs.LocalFileSystem):
        files, skipped = _local_files(path)
    else:  # object stores have no symlinks; hidden names are skipped as on disk
        files, skipped = [], []
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            rel = f.path[len(path):].lstrip("/")
            if f.type != pafs.FileType.File or _hidden(rel):
                continue
            if reason := _name_skip(rel):
                skipped.append((rel, reason))
            else:
                files.append((rel, f.path))
    items = []
    for rel, full in files:
        with fs.open_input_stream(full) as fh:
            items.append((rel.split("/")[0], rel, fh.read()))
    return items, skipped


def _hidden(rel: str) -> bool:
    """Hidden files and folders (`.ipynb_checkpoints`, `.DS_Store`) are tool debris, not classes."""
    return any(part.startswith(".") for part in rel.split("/"))


def _name_skip(rel: str) -> str | None:
    """Why a file is not a candidate image by its path alone, or None."""
    if "/" not in rel:
        return "not inside a class folder"
    if "." + rel.rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES:
        return "not an image file name"
    return None


def _local_files(root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(relative name, path) of each candidate image below a local folder, plus skipped files.

    Symlinks are followed only while they stay inside the folder: pyarrow's recursive listing
    follows every link, so `up -> ..` multiplied the images and a link to `/` would have copied
    host files into the zoo. Each folder is walked once (link cycles) and each file read once
    (by device and inode, so hard links count as the same file too)."""
    real_root = os.path.realpath(root)
    files, skipped, seen_dirs, seen_files = [], [], {real_root}, {}

    def inside(real: str) -> bool:
        return os.path.commonpath([real_root, real]) == real_root

    def file_skip(path: str, rel: str) -> str | None:
        if not inside(os.path.realpath(path)):
            return "symlink leaves the dataset folder"
        if reason := _name_skip(rel):
            return reason
        try:
            st = os.stat(path)
        except OSError as e:  # a dangling symlink, no permission
            return f"cannot read file ({e.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"  # reading a FIFO or device would block or never end
        first = seen_files.setdefault((st.st_dev, st.st_ino), rel)
        return None if first == rel else f"same file as {first}"

    for top, dirs, names in os.walk(root, followlinks=True):
        here = os.path.relpath(top, root).replace(os.sep, "/")
        prefix = "" if here == "." else here + "/"
        walk = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(top, d))
            if d.startswith(".") or real in seen_dirs:
                continue
            if inside(real):
                seen_dirs.add(real)
                walk.append(d)
            else:
                skipped.append((prefix + d, "symlink leaves the dataset folder"))
        dirs[:] = walk
        for name in sorted(n for n in names if not n.startswith(".")):
            if reason := file_skip(os.path.join(top, name), prefix + name):
                skipped.append((prefix + name, reason))
            else:
                files.append((prefix + name, os.path.join(top, name)))
    return files, skipped


def _read_parquet(fs, path, uri) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]]]:
    """Rows as (label, "row i", image bytes), plus rows without image bytes as skipped.

    Null labels are refused rather than guessed: str(None) made them a class "None"."""
    with fs.open_input_file(path) as fh:
        table = pq.read_table(fh)
    missing = {"image", "label"} - set(table.column_names)
    if missing:
        raise DatasetError(f"Parquet dataset {uri} lacks column(s) {sorted(missing)}; it needs "
                           "'image' (bytes) and 'label' (int or string)")
    nulls = table.column("label").null_count
    if nulls:
        raise DatasetError(f"Parquet dataset {uri}: {nulls} of {table.num_rows} rows have a null "
                           "label; drop those rows or fill in their label, then add it again")
    items, skipped = [], []
    for i, (img, label) in enumerate(zip(table.column("image").to_pylist(),
                                         table.column("label").to_pylist())):
        if isinstance(img, dict):
            img = img.get("bytes")
        if img:
            items.append((str(label), f"row {i}", img))
        else:
            skipped.append((f"row {i}", "no image bytes"))
    return items, skipped


# -- validation ---------------------------------------------------------------------------

def _open_limited(raw: bytes, max_side: int, max_pixels: int):
    """The image opened lazily, its size checked before anything is decoded.

    A few hundred KB of PNG can decode to gigabytes (a decompression bomb). JPEGs are set to
    decode at 1/2..1/8 scale (they are downscaled anyway), so the limit counts that size. PIL's
    own bomb warning at open is superseded by max_pixels; its errors raise ImageTooLarge."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused by PIL: {e}") from None
    width, height = im.size
    im.draft("RGB", (max_side, max_side))  # no-op except for JPEG
    if im.width * im.height > max_pixels:
        im.close()
        raise ImageTooLarge(f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over "
                            f"ingest.max_pixels ({max_pixels / 1e6:.1f} MP)")
    return im


def _to_8bit(im):
    """16-bit, 32-bit and float images scaled to 8-bit 'L': convert('RGB') clips their values,
    so a 16-bit scan became all white. Values above 255 are taken as 16-bit, floats up to 1 as
    fractions."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return im
    f = im.convert("F")
    high = f.getextrema()[1]
    scale = 255.0 if im.mode == "F" and high <= 1 else 1 / 257 if high > 255 else 1.0
    return f.point(lambda v: v * scale).convert("L")


def decode_rgb_png(raw: bytes, max_side: int, max_pixels: int) -> bytes:
    """Decode any PIL-readable image, convert to RGB, downscale, re-encode as PNG.

    Raises ImageTooLarge, without decoding, for images over max_pixels."""
    from PIL import Image

    with _open_limited(raw, max_side, max_pixels) as im, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # e.g. a GIF frame larger than its header
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageTooLarge(f"image refused by PIL: {e}") from None
        im = _to_8bit(im)
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


def decode_one(raw: bytes, max_side: int, max_pixels: int) -> tuple[bytes | None, str]:
    """(png, "") or (None, why it is skipped): one file, for a pool of decoding processes."""
    try:
        return decode_rgb_png(raw, max_side, max_pixels), ""
    except ImageTooLarge as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt file
        return None, f"cannot decode image ({type(e).__name__})"


PARALLEL_MIN_BYTES = 16 << 20  # below this, starting decoding processes costs more than it saves


def decode_all(raws: list[bytes], settings: IngestSettings, processes: int | None = None):
    """`decode_one` of every file, in order; on all cores when the files hold 16 MB or more.
    Processes, not threads: decoding checks PIL's bomb warnings, whose filters are per process."""
    processes = processes or min(os.cpu_count() or 1, 16)
    args = (repeat(settings.max_side), repeat(settings.max_pixels))
    if processes == 1 or sum(len(raw) for raw in raws) < PARALLEL_MIN_BYTES:
        return list(map(decode_one, raws, *args))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(decode_one, raws, *args, chunksize=64))


def validate(name: str, items, settings: IngestSettings):
    """Decode everything; return ({class: [png bytes]}, skipped) or raise DatasetError."""
    by_class: dict[str, list[bytes]] = {}
    skipped = []
    for (cls, fname, _), (png, why) in zip(items, decode_all([raw for _, _, raw in items], settings)):
        if png is None:
            skipped.append((fname, why))
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
        # Shards go under a fresh prefix and become visible only through the create-only
        # record naming it: a crash leaves an unreferenced prefix (`tans verify` lists it),
        # never a mix of two ingestions.
        write_id = uuid.uuid4().hex[:16]
        prefix = layout.data_prefix(dataset_id, write_id)
        shards = write_split(store, prefix, "train", train) + write_split(store, prefix, "test", test)
        record = DatasetRecord(
            dataset_id=dataset_id, name=name, num_classes=len(classes), class_names=classes,
            num_train=len(train), num_test=len(test), source=source, content_sha256=digest,
            split_seed=settings.split_seed, skipped_files=len(skipped),
            created_at=datetime.now(timezone.utc).isoformat(), write_id=write_id,
            data_sha256=shards_digest(shards))
        if not store.write_table(layout.dataset_key(dataset_id), to_table([record]), create_only=True):
            for key, _ in shards:  # another ingestion of this dataset committed first: keep theirs
                store.delete(key)
            if read_dataset(store, dataset_id).content_sha256 != digest:
                raise DatasetError(f"the zoo already has a dataset {dataset_id!r} with other content; "
                                   "ingest this one under another name (--name)")
    images = sum(len(v) for v in by_class.values())
    return IngestReport(name, ids, images, skipped, already_present=present == len(groups))


