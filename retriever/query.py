"""A query over the zoo as a whole: the query's labelled images in, the zoo's live networks
ranked out, with a warning when the retriever does not know some of them. `tans search`,
`tans.Zoo.search` and the registered MLflow model all run `rank_query`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from tans.retriever import proxy
from tans.retriever.rerank import DEFAULT_RERANK
from tans.retriever.search import RECALL, Constraints, Searcher, SearchResult
from tans.retriever.stale import staleness
from tans.zoo_schema.results import CommittedResults
from tans.zoo_schema.store import ZooStore


def rank_query(
    store: ZooStore,
    images: list[bytes],
    labels: list[int],
    constraints: Constraints = Constraints(),
    top_k: int = 10,
    rerank: str = DEFAULT_RERANK,
    recall: int = RECALL,
    per_class: int = 10,
    finetune_top: int = proxy.FINETUNE_TOP,
    version: int | None = None,
    budget: float | None = proxy.SECONDS,
    losses_of=None,
) -> SearchResult:
    """Rank the zoo's live networks (those whose results are in the zoo) for a query given as
    encoded images with their labels: what `tans search`, `tans.Zoo.search` and the registered
    MLflow model all run. The query is embedded from each class's first `per_class` images;
    the finetune ordering uses them all, its fine-tunes stopping `budget` seconds after the
    search began (None or 0: no bound), run by `losses_of` (default: in this process, side
    by side on threads: `proxy.local_losses`). The result warns when the retriever is stale."""
    first, counts = [], Counter()  # each class's first per_class: the images a smaller read returns
    for i, c in enumerate(labels):
        if counts[c] < per_class:
            first.append(i)
            counts[c] += 1
    results = CommittedResults.listed(store)  # the live networks; records read only of the hits
    searcher = Searcher(store, version, live_job_ids=results.job_ids(), results=results)
    found = searcher.rank(
        images, labels, constraints, top_k, rerank, recall, per_class, finetune_top, first, budget, losses_of
    )
    return replace(found, warnings=stale_warnings(store, results.dataset_counts()))


def stale_warnings(store: ZooStore, counts: dict[str, int]) -> tuple[str, ...]:
    """What a search cannot see: the networks of datasets the newest retriever version was
    not trained on (and how to fix it); `counts`: the live results of each dataset."""
    state = staleness(store, counts)
    if not state.unknown_datasets:
        return ()
    unknown = set(state.unknown_datasets)
    n = sum(counts[d] for d in unknown)
    return (
        f"the retriever (v{state.version}) is stale: it does not know {len(unknown)} dataset(s) of the zoo "
        f"({', '.join(state.unknown_datasets)}; {n} networks), which this search cannot return; "
        f"run `tans retrain {store.uri} --if-stale`",
    )
