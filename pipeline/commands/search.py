"""`tans search`: read a dataset as ingestion would (validated, nothing written), then rank the
zoo's networks for it with the newest retriever version (see `retriever.search`)."""
from __future__ import annotations

from pipeline.datasets.ingest import IngestSettings, read_source, validate
from retriever.search import RECALL, Constraints, Searcher, SearchResult
from zoo_schema.results import read_results
from zoo_schema.store import ZooStore


def search_dataset(store: ZooStore, source: str, constraints: Constraints = Constraints(), top_k: int = 10,
                   per_class: int = 10, s3=None, rerank: str = "none", recall: int = RECALL) -> SearchResult:
    """Validate a dataset (as ingestion does, without writing it) and search the zoo for it."""
    items, _ = read_source(source, s3)
    by_class, _ = validate(source, items, IngestSettings(min_images_per_class=1))
    images, labels = [], []
    for label, cls in enumerate(sorted(by_class)):
        images += by_class[cls]
        labels += [label] * len(by_class[cls])
    results = {r.job_id: r for r in read_results(store)}
    searcher = Searcher(store, live_job_ids=set(results), results=results)
    return searcher.rank(images, labels, constraints, top_k, rerank, recall, per_class)
