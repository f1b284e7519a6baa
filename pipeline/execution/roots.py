"""A build's dataset roots (local folders or S3 prefixes): the dataset sources they hold, the
name each gets, and ingesting them into the zoo."""

from __future__ import annotations

from tans.pipeline.datasets.ingest import ingest
from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.runtime import start_ray
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.store import ZooStore, source_filesystem


def dataset_sources(root: str, s3=None, may_be_empty: bool = False) -> list[str]:
    """Every dataset below `root`: each sub-folder (ImageFolder) and each .parquet file. An
    empty (or, on S3, not yet existing) root is an error unless `may_be_empty` (a follower's)."""
    import pyarrow.fs as pafs

    fs, path = source_filesystem(root, s3)
    info = fs.get_file_info(path)
    if may_be_empty and info.type == pafs.FileType.NotFound and root.startswith("s3://"):
        return []  # a prefix with no object yet
    if info.type != pafs.FileType.Directory:
        raise DatasetError(f"--datasets {root} is not a directory; it should hold one folder per dataset")
    prefix = root.rstrip("/")
    out = []
    for f in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda f: f.path):
        name = f.path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if f.type == pafs.FileType.Directory or name.endswith(".parquet"):
            out.append(f"{prefix}/{name}")
    if not out and not may_be_empty:
        raise DatasetError(
            f"--datasets {root} holds no dataset folders; generate the built-in "
            "ones with `tans datasets synth --out DIR` or add ImageFolder directories"
        )
    return out


def dataset_name(config: BuildConfig, source: str) -> str:
    """A source's dataset name: the config's `[names]` entry for its folder or file, else that name."""
    base = source.rstrip("/").rsplit("/", 1)[-1]
    return config.names.get(base) or base.removesuffix(".parquet")


def ingest_source(store: ZooStore, config: BuildConfig, source: str, log=print):
    """Ingest one dataset source (a no-op for one already in the zoo); returns its report.
    With a Ray address, the cluster's nodes decode its images."""
    if config.address:
        start_ray(config.address)
    report = ingest(
        store,
        source,
        name=dataset_name(config, source),
        settings=config.ingest,
        s3=config.s3,
        on_ray=bool(config.address),  # on a cluster, its nodes decode
    )
    state = "already in the zoo" if report.already_present else f"{report.images} images"
    dupes = f" ({report.duplicates} duplicate images)" if report.duplicates else ""
    skipped = f", {len(report.skipped)} files skipped{dupes}" if report.skipped else ""
    log(f"dataset {report.name}: {state}{skipped} -> {', '.join(report.dataset_ids)}")
    return report


def ingest_all(store: ZooStore, config: BuildConfig, log=print) -> None:
    for root in config.datasets:
        for source in dataset_sources(root, config.s3):
            ingest_source(store, config, source, log)
