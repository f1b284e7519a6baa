"""The public API behind `import tans` (see tans/__init__.py for what is stable)."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from pipeline.commands.search import search_dataset
from retriever.search import Constraints, SearchResult
from workers.export import ExportReport, Network, export_network as _export, load_network as _load
from zoo_schema.manifest import require_zoo
from zoo_schema.records import DatasetRecord, ResultRecord, arrow_schema, to_table
from zoo_schema.results import read_results
from zoo_schema.shards import read_datasets
from zoo_schema.store import S3Settings, ZooStore, open_store

try:
    __version__ = version("tans")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


@dataclass(frozen=True)
class Zoo:
    """An existing zoo, opened for reading (nothing is ever written through it)."""

    store: ZooStore

    @property
    def uri(self) -> str:
        return self.store.uri

    def results(self) -> pa.Table:
        """Every committed result, one row per network (the columns of README "The zoo")."""
        rows = read_results(self.store)
        return to_table(rows) if rows else arrow_schema(ResultRecord).empty_table()

    def datasets(self) -> list[DatasetRecord]:
        return read_datasets(self.store)

    def network(self, job_id: str) -> Network:
        """The fine-tuned network of a job: a torch module with `preprocess`, `predict`, `config`."""
        return _load(self.store, job_id)

    def export(self, job_id: str, out: str | Path) -> ExportReport:
        """model.safetensors, config.json, README.md and model.pt2 of a job, into `out`."""
        return _export(self.store, job_id, out)

    def search(self, dataset: str, top_k: int = 10, max_params: float | None = None,
               max_flops: float | None = None, max_latency_ms: float | None = None,
               rerank: str = "none") -> SearchResult:
        """Rank the zoo's networks for a dataset (an ImageFolder directory or a Parquet file)."""
        return search_dataset(self.store, dataset, Constraints(max_params, max_flops, max_latency_ms),
                              top_k=top_k, rerank=rerank)


def open_zoo(uri: str, s3_endpoint: str | None = None) -> Zoo:
    """Open an existing zoo (a local directory or s3://bucket/prefix); a path that holds no
    zoo is an error, and nothing is created there."""
    store = open_store(str(uri), S3Settings(endpoint_url=s3_endpoint))
    require_zoo(store)
    return Zoo(store)


def load_network(zoo: str | Zoo, job_id: str) -> Network:
    """`open_zoo(zoo).network(job_id)`."""
    return (zoo if isinstance(zoo, Zoo) else open_zoo(zoo)).network(job_id)


def export_network(zoo: str | Zoo, job_id: str, out: str | Path) -> ExportReport:
    """`open_zoo(zoo).export(job_id, out)`."""
    return (zoo if isinstance(zoo, Zoo) else open_zoo(zoo)).export(job_id, out)
