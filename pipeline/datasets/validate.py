"""Validating a decoded dataset source: enough classes and images, byte-identical copies
dropped, the stratified train/test split, the content hash that is the dataset's identity."""

from __future__ import annotations

import hashlib
import math
import random
import tempfile

from tans.pipeline.datasets.decode import SpoolReader, Stored, decode_source
from tans.pipeline.datasets.settings import IngestSettings
from tans.pipeline.datasets.sources import Source, list_source
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.store import S3Settings

# -- validation ---------------------------------------------------------------------------

DUPLICATE = "duplicate image, dropped: the same bytes as"  # how a dropped copy is listed in `skipped`


def check_classes(name: str, counts: dict[str, int], skipped: int, settings: IngestSettings) -> None:
    """Refuse a dataset whose readable images do not make a classification dataset."""
    counts = {c: n for c, n in counts.items() if n}
    if not counts:
        raise DatasetError(
            f"dataset {name!r} holds no readable images ({skipped} files skipped); expected "
            "one folder per class with image files inside (ImageFolder layout), or a Parquet "
            "file with image and label columns"
        )
    if len(counts) < 2:
        only = next(iter(counts))
        raise DatasetError(
            f"dataset {name!r} has only 1 class ({only!r}) with readable images; a "
            "classification dataset needs at least 2 classes: add a folder per class"
        )
    small = {c: n for c, n in counts.items() if n < settings.min_images_per_class}
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(small.items()))
        raise DatasetError(
            f"dataset {name!r}: class(es) {listed} have fewer than "
            f"{settings.min_images_per_class} readable images; add images to them or remove "
            "those class folders"
        )


def validate(
    name: str,
    source: Source,
    settings: IngestSettings,
    spool_dir: str,
    processes: int | None = None,
    on_class=None,
    decoded=None,
) -> tuple[dict[str, list[Stored]], list[tuple[str, str]]]:
    """Decode everything into the spool; return ({class: [Stored]}, skipped) or raise DatasetError.
    `on_class(class, [Stored])` is called whenever the source moves on from a class. `decoded`:
    the source decoded elsewhere ((file, image or None, why) in order: `on_ray.decode_on_ray`),
    in place of decoding here.

    An image whose stored bytes are identical to an earlier one's (in the source's order) is
    dropped and listed as skipped with DUPLICATE: two copies could land on both sides of
    the train/test split and inflate every accuracy measured on the dataset."""
    by_class: dict[str, list[Stored]] = {}
    skipped = []
    current = None
    first_of: dict[str, tuple[str, str]] = {}  # sha256 -> (file name, class) of its first copy
    for f, s, why in decoded or decode_source(source, settings, spool_dir, processes):
        if on_class and f.cls != current:
            if current is not None:
                on_class(current, by_class.get(current, []))
            current = f.cls
        if s is not None and s.sha256 in first_of:
            name_, cls_ = first_of[s.sha256]
            other = "" if cls_ == f.cls else f" of class {cls_!r}"
            skipped.append((f.name, f"{DUPLICATE} {name_}{other}"))
            continue
        if s is not None:
            first_of[s.sha256] = (f.name, f.cls)
        if s is None:
            skipped.append((f.name, why))
        else:
            by_class.setdefault(f.cls, []).append(s)
    if on_class and current is not None:
        on_class(current, by_class.get(current, []))
    check_classes(name, {c: len(v) for c, v in by_class.items()}, len(skipped), settings)
    return by_class, source.skipped + skipped


def read_images(
    uri: str, settings: IngestSettings = IngestSettings(), s3: S3Settings | None = None, name: str | None = None
) -> tuple[dict[str, list[bytes]], list[tuple[str, str]]]:
    """A dataset source validated and decoded as ingestion does, into memory, nothing written to
    a zoo: ({class: [stored image bytes]}, skipped). For small datasets (benchmarks, tests)."""
    with tempfile.TemporaryDirectory(prefix="tans-read-") as spool_dir:
        by_class, skipped = validate(name or uri, list_source(uri, s3), settings, spool_dir)
        reader = SpoolReader(spool_dir)
        try:
            return {c: [reader.read(s) for s in v] for c, v in by_class.items()}, skipped
        finally:
            reader.close()


def split_classes(classes: list[str], max_classes: int, seed: int) -> list[list[str]]:
    """Classes into ceil(n / max) balanced groups, shuffled with the seed; one group if small."""
    if len(classes) <= max_classes:
        return [sorted(classes)]
    shuffled = sorted(classes)
    random.Random(seed).shuffle(shuffled)
    parts = math.ceil(len(shuffled) / max_classes)
    return [sorted(shuffled[i::parts]) for i in range(parts)]


def stratified_split(by_class: dict[str, list], classes: list[str], settings: IngestSettings):
    """(train, test) lists of (image, label index), a fixed fraction of every class in test."""
    train, test = [], []
    for label, cls in enumerate(classes):
        images = list(by_class[cls])
        rng = random.Random(f"{settings.split_seed}:{cls}")
        rng.shuffle(images)
        n_test = max(1, round(settings.test_fraction * len(images)))
        test += [(img, label) for img in images[:n_test]]
        train += [(img, label) for img in images[n_test:]]
    return train, test


def content_hash(by_class: dict[str, list[Stored]], classes: list[str]) -> str:
    """The dataset's identity: its class names and the sha256 of every stored image."""
    h = hashlib.sha256()
    for cls in classes:
        h.update(cls.encode() + b"\0")
        for digest in sorted(s.sha256 for s in by_class[cls]):
            h.update(digest.encode())
    return h.hexdigest()
