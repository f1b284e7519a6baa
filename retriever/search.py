"""Search: a dataset and constraints in, ranked pretrained networks of the zoo out.

Sample `per_class` images per class of the query dataset, embed them with the zoo's
frozen backbone, encode the query, rank every model embedding of the newest retriever
version by cosine, keep those meeting the constraints, and re-rank the top K by the
predicted accuracy. Models whose result has since been quarantined are excluded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.errors import TansError
from retriever.features import embed_images, load_backbone, sample_per_class
from retriever.train import load_version
from zoo_schema.layout import checkpoint_uri
from zoo_schema.manifest import read_manifest
from zoo_schema.store import ZooStore


@dataclass(frozen=True)
class Constraints:
    max_params: float | None = None
    max_flops: float | None = None
    max_latency_ms: float | None = None

    def mask(self, params: np.ndarray, flops: np.ndarray, latency: np.ndarray) -> np.ndarray:
        ok = np.ones(len(params), dtype=bool)
        for limit, values in ((self.max_params, params), (self.max_flops, flops), (self.max_latency_ms, latency)):
            if limit is not None:
                ok &= values <= limit
        return ok

    def violation(self, params, flops, latency) -> np.ndarray:
        """How far each model is outside the constraints (relative, summed); 0 inside."""
        out = np.zeros(len(params))
        for limit, values in ((self.max_params, params), (self.max_flops, flops), (self.max_latency_ms, latency)):
            if limit is not None:
                out += np.clip(values / limit - 1.0, 0, None)
        return out


class NoModelFits(TansError):
    pass


def top_by_cosine(embeddings: np.ndarray, q: np.ndarray, ok: np.ndarray, top_k: int):
    """(indices of the top_k allowed rows by cosine with q, all scores); rows are unit vectors."""
    scores = embeddings @ q
    idx = np.flatnonzero(ok)
    k = min(top_k, len(idx))
    return idx[np.argpartition(-scores[idx], k - 1)[:k]], scores


class Searcher:
    """A retriever version held in memory, ready to answer queries."""

    def __init__(self, store: ZooStore, version: int | None = None, live_job_ids: set[str] | None = None):
        self.store = store
        self.model, self.meta, table = load_version(store, version)
        if live_job_ids is not None:
            table = table.filter(pc.is_in(table["job_id"], value_set=pa.array(sorted(live_job_ids))))
        self.table = table
        self.embeddings = np.asarray(table["embedding"].to_pylist(), dtype=np.float32).reshape(-1, 128)
        self.params = np.asarray(table["params"].to_pylist(), dtype=np.float64)
        self.flops = np.asarray(table["flops"].to_pylist(), dtype=np.float64)
        self.latency = np.asarray(table["latency_ms"].to_pylist(), dtype=np.float64)
        self.image_size = self.meta["image_size"]
        self._backbone = None

    def query_features(self, images: list[bytes], labels: list[int], per_class: int = 10) -> np.ndarray:
        if self._backbone is None:
            self._backbone = load_backbone(self.store, read_manifest(self.store), self.meta.get("backbone_key", ""))
        chosen = sample_per_class(labels, per_class, "search")
        return embed_images(self._backbone, [images[i] for i in chosen], self.image_size)

    def search(self, features: np.ndarray, constraints: Constraints = Constraints(), top_k: int = 10) -> list[dict]:
        if top_k < 1:
            raise TansError(f"top_k must be at least 1, not {top_k}")
        with torch.no_grad():
            q = self.model.encode_query(torch.from_numpy(features))
        ok = constraints.mask(self.params, self.flops, self.latency)
        if not ok.any():
            v = constraints.violation(self.params, self.flops, self.latency)
            i = int(np.argmin(v))
            raise NoModelFits(
                f"no model in the zoo meets the constraints; the closest is {self.table['job_id'][i].as_py()} "
                f"({self.table['arch'][i].as_py()}: {self.params[i] / 1e6:.2f}M params, "
                f"{self.flops[i] / 1e6:.1f}M FLOPs, {self.latency[i]:.1f} ms)")
        top, scores = top_by_cosine(self.embeddings, q.numpy(), ok, top_k)
        with torch.no_grad():
            predicted = self.model.predict(q.expand(len(top), -1), torch.from_numpy(self.embeddings[top])).numpy()
        order = np.argsort(-predicted, kind="stable")
        cols = ["job_id", "dataset_id", "arch", "params", "flops", "latency_ms", "checkpoint_uri"]
        hits = []
        for j in order:
            i = int(top[j])
            hit = {c: self.table[c][i].as_py() for c in cols}
            hit.update(score=float(scores[i]), predicted_accuracy=float(predicted[j]),
                       checkpoint_uri=checkpoint_uri(self.store, hit["checkpoint_uri"]))
            hits.append(hit)
        return hits


def search_dataset(store: ZooStore, source: str, constraints: Constraints = Constraints(), top_k: int = 10,
                   per_class: int = 10, s3=None) -> list[dict]:
    """Validate a dataset (as ingestion does, without writing it) and search the zoo for it."""
    from pipeline.ingest import IngestSettings, read_source, validate
    from pipeline.state import read_results
    items, _ = read_source(source, s3)
    by_class, _ = validate(source, items, IngestSettings(min_images_per_class=1))
    images, labels = [], []
    for label, cls in enumerate(sorted(by_class)):
        images += by_class[cls]
        labels += [label] * len(by_class[cls])
    searcher = Searcher(store, live_job_ids={r.job_id for r in read_results(store)})
    return searcher.search(searcher.query_features(images, labels, per_class), constraints, top_k)
