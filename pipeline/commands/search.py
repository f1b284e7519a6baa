"""`tans search`: read a dataset as ingestion would (validated, nothing written), then rank the
zoo's networks for it with the newest retriever version (see `tans.retriever.search`)."""

from __future__ import annotations

import random
import time

from tans.pipeline.datasets.decode import decode_one
from tans.pipeline.datasets.ingest import IngestSettings, check_classes
from tans.pipeline.datasets.sources import list_source
from tans.retriever import proxy
from tans.retriever.query import rank_query
from tans.retriever.rerank import DEFAULT_RERANK
from tans.retriever.search import RECALL, Constraints, SearchResult
from tans.zoo_schema.store import ZooStore


def query_images(
    source: str, per_class: int = 10, s3=None, for_finetune: bool = False
) -> tuple[list[bytes], list[int]]:
    """Up to `per_class` validated images of each class of a dataset source (labels in sorted
    class order). The source is listed, files are sampled per class (seeded), and only the
    sampled files are read and decoded; a file that does not decode is replaced by the next
    one of its class, so a query of 100,000 images reads about `per_class` per class. A class's
    first k images are the same for any `per_class` >= k. `for_finetune`: at least as many as
    the finetune ordering uses (`tans.retriever.proxy.per_class`). A dataset that is not one (one
    class, no readable image) gets ingestion's error."""
    listed = list_source(source, s3)
    by_class: dict[str, list] = {}
    for f in sorted(listed.files, key=lambda f: (f.cls, f.name)):
        by_class.setdefault(f.cls, []).append(f)
    if for_finetune:
        per_class = max(per_class, proxy.per_class(len(by_class)))
    decoded: dict[str, list[bytes]] = {}
    settings = IngestSettings(min_images_per_class=1)
    skipped = 0
    for cls, members in by_class.items():
        random.Random(f"search:{cls}").shuffle(members)
        kept = decoded.setdefault(cls, [])
        start = 0
        while len(kept) < per_class and start < len(members):
            batch = members[start : start + per_class - len(kept)]
            start += len(batch)
            for raw in listed.read(batch):
                image, _ = decode_one(raw, settings)
                if image is None:
                    skipped += 1
                else:
                    kept.append(image)
    check_classes(source, {c: len(v) for c, v in decoded.items()}, skipped, settings)
    images, labels = [], []
    for label, cls in enumerate(sorted(c for c in decoded if decoded[c])):  # a class none of whose files
        images += decoded[cls]  # decodes is left out
        labels += [label] * len(decoded[cls])
    return images, labels


def search_dataset(
    store: ZooStore,
    source: str,
    constraints: Constraints = Constraints(),
    top_k: int = 10,
    per_class: int = 10,
    s3=None,
    rerank: str = DEFAULT_RERANK,
    recall: int = RECALL,
    finetune_top: int = proxy.FINETUNE_TOP,
    budget: float | None = proxy.SECONDS,
    address: str | None = None,
) -> SearchResult:
    """Validate a sample of a dataset (as ingestion does, without writing it) and search the zoo
    for it. The finetune ordering reads more images per class (`proxy.per_class`) for its
    fine-tunes; the query is embedded from the `per_class` of each class every ordering reads.
    With a Ray `address` the fine-tunes run as Ray tasks there (`ray_losses`)."""
    images, labels = query_images(source, per_class, s3, for_finetune=rerank == "finetune")
    ray = ray_losses(address) if address and rerank == "finetune" else None
    return rank_query(
        store, images, labels, constraints, top_k, rerank, recall, per_class, finetune_top, budget=budget, losses_of=ray
    )


GRACE = 2.0  # seconds past the budget a Ray task may take to report before it is cancelled


def ray_losses(address: str):
    """The finetune ordering's fine-tunes as Ray tasks on the cluster at `address`: two tasks per
    network (its first fine-tune, then its swapped one: `proxy.scores`), all submitted at once,
    the first ones first, each on a GPU when the cluster has one (else a CPU); the images travel
    once through the object store and each task opens the zoo itself. A task still running when
    the budget ends (plus `GRACE`) is cancelled; a network without its first fine-tune keeps the
    source order."""
    from tans.pipeline.execution.runtime import start_ray

    ray = start_ray(address)
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)(proxy.remote_loss)

    def losses(loaders, classes, x, y, folds, image_size, deadline) -> list[tuple[float | None, float | None]]:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        until = None if left is None else time.time() + left
        xs, ys = ray.put(x), ray.put(y)
        refs = [
            [task.remote(load, classes, xs, ys, folds, image_size, until, which) for load in loaders]
            for which in (0, 1)
        ]
        flat = refs[0] + refs[1]
        done, late = ray.wait(flat, num_returns=len(flat), timeout=None if left is None else left + GRACE)
        for ref in late:
            ray.cancel(ref, force=True)
        return [tuple(ray.get(ref) if ref in done else None for ref in pair) for pair in zip(*refs)]

    return losses
