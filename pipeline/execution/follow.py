"""`tans build ZOO --datasets ROOT --follow --add-jobs N`: a build that keeps running as data
arrives. Every `follow.poll_seconds` it lists the dataset roots (local folders or S3 prefixes);
a dataset is ingested once its listing (names and sizes) is the same on two polls in a row, so
a folder still being uploaded is never ingested half-written. Each dataset new to the zoo
grows the job budget by `follow.jobs_per_dataset`; a round of the build spends it (the new
datasets get their initial jobs first, then acquisition goes on over all datasets) and
retrains the retriever when it is stale.

It stops on SIGINT/SIGTERM like any build (the lease released, the MLflow run KILLED). Each
round journals its config with the grown budget, so the same command (or `tans resume`) goes
on where it stopped: datasets already in the zoo add nothing again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pyarrow.fs as pafs

from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.driver import BuildSummary
from tans.pipeline.execution.lease import Lease
from tans.pipeline.execution.recorded import jobs_in_zoo
from tans.pipeline.execution.roots import dataset_sources, ingest_source
from tans.zoo_schema.store import ZooStore, source_filesystem


def listing(source: str, s3=None) -> tuple:
    """A dataset source's files with their sizes: what must stay the same between two polls."""
    fs, path = source_filesystem(source, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return ((path, info.size),)
    return tuple(sorted((f.path, f.size) for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))))


class Watcher:
    """The dataset sources under the config's roots, and which of them are complete."""

    def __init__(self, config: BuildConfig):
        self.config = config
        self.last: dict[str, tuple] = {}  # source -> its listing at the previous poll
        self.done: set[str] = set()  # sources ingested (or found in the zoo) by this process

    def ready(self) -> list[str]:
        """Sources not yet ingested whose listing did not change since the previous poll."""
        out = []
        for root in self.config.datasets:
            for source in dataset_sources(root, self.config.s3, may_be_empty=True):
                if source in self.done:
                    continue
                now = listing(source, self.config.s3)
                if now and self.last.get(source) == now:
                    out.append(source)
                self.last[source] = now
        return out


def follow(
    config: BuildConfig, store: ZooStore, lease: Lease, log, build_round: Callable[[BuildConfig], BuildSummary]
) -> BuildSummary:
    """Poll, ingest, and run `build_round` (a build under the held lease, then the retriever
    retrained when stale) with the grown budget, until a signal stops it (it returns only by
    raising)."""
    settings = config.follow
    watcher = Watcher(config)
    max_jobs = config.max_jobs
    log(
        f"following {', '.join(config.datasets)}: every new dataset adds {settings.jobs_per_dataset} jobs; "
        f"listing every {settings.poll_seconds:g}s; stop with Ctrl-C or SIGTERM (the same command goes on)"
    )
    while True:
        new = 0
        for source in watcher.ready():
            report = ingest_source(store, config, source, log)
            watcher.done.add(source)
            new += 0 if report.already_present else 1
        if new:
            max_jobs += new * settings.jobs_per_dataset
            log(f"{new} new dataset(s): the budget is now {max_jobs} jobs")
        if jobs_in_zoo(store, config.resources.max_attempts) < max_jobs:
            build_round(dataclasses.replace(config, max_jobs=max_jobs))
        idle(settings.poll_seconds, lease)


def idle(seconds: float, lease: Lease) -> None:
    """Wait, keeping the lease alive (a signal ends the wait)."""
    deadline = time.monotonic() + seconds
    while True:
        lease.heartbeat()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, lease.ttl / 3, 1.0))
