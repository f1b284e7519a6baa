"""The public API behind `import tans` (see tans/__init__.py for what is stable)."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from tans.zoo_schema.manifest import require_zoo
from tans.zoo_schema.records import DatasetRecord
from tans.zoo_schema.results import results_table
from tans.zoo_schema.shards import read_datasets
from tans.zoo_schema.store import S3Settings, ZooStore, open_store

if TYPE_CHECKING:  # torch is imported only by what needs it: networks, export, search
    from tans.retriever.search import SearchResult
    from tans.workers.networks.export import ExportReport, Network

_TORCH_TYPES = ("ExportReport", "Network", "NetworkConfig")


def __getattr__(name: str):
    """`tans.Network`, `tans.NetworkConfig`, `tans.ExportReport` come from tans.workers.networks.export, which
    imports torch: only when asked for, so `import tans` and reading the zoo's tables stay light."""
    if name in _TORCH_TYPES:
        import tans.workers.networks.export
        return getattr(tans.workers.networks.export, name)
    raise AttributeError(f"module 'tans' has no attribute {name!r}")


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
        return results_table(self.store)

    def datasets(self) -> list[DatasetRecord]:
        return read_datasets(self.store)

    def network(self, job_id: str) -> Network:
        """The fine-tuned network of a job: a torch module with `preprocess`, `predict`, `config`."""
        from tans.workers.networks.export import load_network
        return load_network(self.store, job_id)

    def export(self, job_id: str, out: str | Path) -> ExportReport:
        """model.safetensors, config.json, README.md and model.pt2 of a job, into `out`."""
        from tans.workers.networks.export import export_network
        return export_network(self.store, job_id, out)

    def search(self, dataset: str, top_k: int = 10, max_params: float | None = None,
               max_flops: float | None = None, max_latency_ms: float | None = None,
               rerank: str = "finetune", finetune_top: int = 2) -> SearchResult:
        """Rank the zoo's networks for a dataset (an ImageFolder directory or a Parquet file);
        `rerank` and `finetune_top` as `tans search --rerank` (its default: finetune) and
        `--finetune-top` (its default: 2)."""
        from tans.pipeline.commands.search import search_dataset
        from tans.retriever.search import Constraints
        return search_dataset(self.store, dataset, Constraints(max_params, max_flops, max_latency_ms),
                              top_k=top_k, rerank=rerank, finetune_top=finetune_top)


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
