"""`tans search`: read a dataset as ingestion would (validated, nothing written), then rank the
zoo's networks for it with the newest retriever version (see `retriever.search`)."""
from __future__ import annotations

import random

from pipeline.datasets.ingest import IngestSettings, decode_rgb_png, read_source, validate
from retriever.search import RECALL, Constraints, Searcher, SearchResult
from zoo_schema.results import read_results
from zoo_schema.store import ZooStore


def query_images(source: str, per_class: int = 10, s3=None) -> tuple[list[bytes], list[int]]:
    """Up to `per_class` validated images of each class of a dataset source (labels in sorted
    class order). Files are sampled per class (seeded) before anything is decoded, and a file
    that does not decode is replaced by the next one of its class, so a query of 100,000
    images decodes about `per_class` per class. A dataset that is not one (one class, no
    readable image) gets ingestion's error."""
    items, _ = read_source(source, s3)
    by_class: dict[str, list] = {}
    for item in sorted(items, key=lambda it: (it[0], it[1])):
        by_class.setdefault(item[0], []).append(item)
    decoded: dict[str, list[bytes]] = {}
    settings = IngestSettings(min_images_per_class=1)
    for cls, members in by_class.items():
        random.Random(f"search:{cls}").shuffle(members)
        for _, _, raw in members:
            if len(decoded.get(cls, [])) >= per_class:
                break
            try:
                decoded.setdefault(cls, []).append(decode_rgb_png(raw, settings.max_side, settings.max_pixels))
            except Exception:  # noqa: BLE001 - an undecodable file is skipped, as ingestion does
                continue
    if len(decoded) < 2:
        validate(source, items, settings)  # raises the error that names the problem
    images, labels = [], []
    for label, cls in enumerate(sorted(decoded)):
        images += decoded[cls]
        labels += [label] * len(decoded[cls])
    return images, labels


def search_dataset(store: ZooStore, source: str, constraints: Constraints = Constraints(), top_k: int = 10,
                   per_class: int = 10, s3=None, rerank: str = "none", recall: int = RECALL) -> SearchResult:
    """Validate a sample of a dataset (as ingestion does, without writing it) and search the zoo for it."""
    images, labels = query_images(source, per_class, s3)
    results = {r.job_id: r for r in read_results(store)}
    searcher = Searcher(store, live_job_ids=set(results), results=results)
    return searcher.rank(images, labels, constraints, top_k, rerank, recall, per_class)
