"""The public API behind `import tans` (`tans/__init__.py` says what is stable)."""

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
    """An existing zoo, opened for reading: nothing is ever written through it. Make one with
    `open_zoo`.

    Attributes:
        store: the zoo's store (local directory or S3 prefix).
    """

    store: ZooStore

    @property
    def uri(self) -> str:
        """The zoo's location: an absolute local path or `s3://bucket/prefix`."""
        return self.store.uri

    def results(self, embeddings: bool = True) -> pa.Table:
        """Every committed result, one row per network.

        Args:
            embeddings: include `functional_embedding` (1,280 floats a row, nine tenths of
                the table); pass False for a table of the scalar columns, read in a tenth of
                the time and memory.

        Returns:
            A pyarrow Table with the public result columns (`job_id`, `dataset_id`, `arch`,
                `accuracy`, `params`, `flops`, `latency_ms`, `checkpoint_uri`, ...; see the zoo
                format). Reading it does not import torch.
        """
        return results_table(self.store, embeddings)

    def datasets(self) -> list[DatasetRecord]:
        """The zoo's datasets.

        Returns:
            One record per dataset (id, name, classes and class names, image counts, source),
                sorted by id.
        """
        return read_datasets(self.store)

    def network(self, job_id: str) -> Network:
        """The fine-tuned network of a job.

        Args:
            job_id: a `job_id` of `results()` or of a search hit.

        Returns:
            A torch module with `preprocess(images)`, `predict(images)` (class names) and
                `config` (architecture, input size, normalization, class names, source).

        Raises:
            TansError: the zoo has no result for `job_id`, or its checkpoint does not match
                the recorded sha256.
        """
        from tans.workers.networks.export import load_network

        return load_network(self.store, job_id)

    def export(self, job_id: str, out: str | Path) -> ExportReport:
        """Write a job's network for use without tans.

        Args:
            job_id: the network's job id.
            out: a folder (created when absent; an existing file, or another user's folder,
                is an error).

        Returns:
            What was written: `model.safetensors`, `config.json`, `README.md` (a model card)
                and `model.pt2` (a `torch.export` program), with the network's config.
        """
        from tans.workers.networks.export import export_network

        return export_network(self.store, job_id, out)

    def search(
        self,
        dataset: str,
        top_k: int = 10,
        max_params: float | None = None,
        max_flops: float | None = None,
        max_latency_ms: float | None = None,
        rerank: str = "finetune",
        finetune_top: int = 0,
        budget: float | None = 10.0,
        address: str | None = None,
    ) -> SearchResult:
        """Rank the zoo's networks for a dataset, as `tans search` does.

        Args:
            dataset: an ImageFolder directory or a Parquet file (`image`, `label`), local or
                `s3://`.
            top_k: how many networks to return.
            max_params: at most this many parameters (None: no limit).
            max_flops: at most this many FLOPs at the zoo's input size.
            max_latency_ms: at most this batch-1 latency, as measured on the zoo's workers.
            rerank: the ordering: `finetune` (default), `source`, `none`, `logme` or `knn`.
            finetune_top: with `finetune`, fine-tune only among the first this many of the
                `source` order (0: among every recalled network).
            budget: with `finetune`, seconds after which the fine-tunes stop (None or 0: no
                bound). The networks are fine-tuned briefly on the dataset's images, the
                cheapest first, and re-ordered by their held-out loss among the places they
                held; the others keep their `source` places (`SearchResult.reranked` says
                how many were fine-tuned).
            address: with `finetune`, a Ray cluster address: the fine-tunes run there as
                Ray tasks, at once, a GPU each when the cluster has them (None: here).

        Returns:
            The ranking: `hits` (job id, source dataset, predicted and source accuracy,
                cosine, costs, checkpoint), how it was ranked, and its timings.
        """
        from tans.pipeline.commands.search import search_dataset
        from tans.retriever.search import Constraints

        return search_dataset(
            self.store,
            dataset,
            Constraints(max_params, max_flops, max_latency_ms),
            top_k=top_k,
            rerank=rerank,
            finetune_top=finetune_top,
            budget=budget,
            address=address,
        )


def open_zoo(uri: str, s3_endpoint: str | None = None) -> Zoo:
    """Open an existing zoo for reading.

    Args:
        uri: a local directory or `s3://bucket/prefix`.
        s3_endpoint: the S3 endpoint URL (default: `$AWS_ENDPOINT_URL`, else AWS).

    Returns:
        The zoo.

    Raises:
        TansError: no zoo is there (nothing is created), or the store cannot be reached.
    """
    store = open_store(str(uri), S3Settings(endpoint_url=s3_endpoint))
    require_zoo(store)
    return Zoo(store)


def load_network(zoo: str | Zoo, job_id: str) -> Network:
    """A zoo network as a torch module: `open_zoo(zoo).network(job_id)`.

    Args:
        zoo: a zoo, or its location.
        job_id: the network's job id.

    Returns:
        The network (see `Zoo.network`).
    """
    return (zoo if isinstance(zoo, Zoo) else open_zoo(zoo)).network(job_id)


def export_network(zoo: str | Zoo, job_id: str, out: str | Path) -> ExportReport:
    """Write a zoo network for use without tans: `open_zoo(zoo).export(job_id, out)`.

    Args:
        zoo: a zoo, or its location.
        job_id: the network's job id.
        out: the folder to write into.

    Returns:
        What was written (see `Zoo.export`).
    """
    return (zoo if isinstance(zoo, Zoo) else open_zoo(zoo)).export(job_id, out)
