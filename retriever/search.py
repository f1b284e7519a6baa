"""Search: a dataset and constraints in, ranked pretrained networks of the zoo out.

Sample `per_class` images per class of the query dataset, embed them with the zoo's
frozen backbone, encode the query, recall the models of the newest retriever version
nearest by cosine among those meeting the constraints, and order them by the predicted
accuracy or by evidence from the query's images (LogME, k-NN, a short fine-tune; see
`Searcher`). Models
whose result has since been quarantined are excluded.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import torch

from tans.retriever import proxy
from tans.retriever.features import embed_images, load_backbone, sample_per_class
from tans.retriever.rerank import (
    DEFAULT_IMAGELESS,
    DEFAULT_RERANK,
    RERANK_CHOICES,
    SCORERS,
    mean_rank,
    source_over_chance,
)
from tans.retriever.train import load_version
from tans.workers.networks.images import decode_images
from tans.workers.networks.nets import checkpoint_features, checkpoint_network
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.layout import checkpoint_uri
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.records import string_array
from tans.zoo_schema.store import ZooStore, open_store


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


def load_candidate(store: ZooStore, record, load):
    """`load(store, record)` of a recalled network; a checkpoint that is missing or unreadable
    is a TansError naming it and the fix."""
    try:
        return load(store, record)
    except TansError:
        raise
    except Exception as e:  # a missing file, a truncated or foreign safetensors file
        raise TansError(
            f"the checkpoint of job {record.job_id} ({record.checkpoint_uri}) could not be loaded "
            f"({type(e).__name__}: {e}); run `tans verify {store.uri}`, or search with "
            f"--rerank source, which loads no network"
        ) from e


def checkpoint_of(uri: str, s3, record):
    """A recalled network to fine-tune (`checkpoint_network`: plain torch, no ofa), loaded from
    the zoo at `uri` wherever this runs (a Ray worker opens the zoo itself: only the URI, its
    S3 settings and the record travel)."""
    return load_candidate(open_store(uri, s3), record, checkpoint_network)


def top_by_cosine(embeddings: np.ndarray, q: np.ndarray, ok: np.ndarray, top_k: int):
    """(indices of the top_k allowed rows by cosine with q, all scores); rows are unit vectors."""
    scores = embeddings @ q
    idx = np.flatnonzero(ok)
    k = min(top_k, len(idx))
    return idx[np.argpartition(-scores[idx], k - 1)[:k]], scores


NUMPY = {pa.float32(): np.dtype(np.float32), pa.float64(): np.dtype(np.float64), pa.int64(): np.dtype(np.int64)}


def numbers(array: pa.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as numpy, read from its buffer (`to_numpy` would
    import pandas: see `tans.zoo_schema.records.string_array`)."""
    dtype = NUMPY.get(array.type)
    if dtype is None or array.null_count:
        raise TansError(
            f"the retriever's table holds a column of {array.type}"
            f"{' with nulls' if array.null_count else ''}, not numbers; run `tans retrain`"
        )
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)


def live_mask(table: pa.Table, live: Collection[str] | pa.Array) -> pa.Array | None:
    """Which rows of `table` have their job_id in `live` (job ids, or an Arrow array of them),
    as an Arrow boolean array; None when all do."""
    import pyarrow.compute as pc

    if not isinstance(live, pa.Array):
        live = string_array([j for j in table["job_id"].to_pylist() if j in live])
    kept = pc.is_in(table["job_id"], value_set=live)
    return None if pc.all(kept).as_py() is not False else kept.combine_chunks()


PREDICT_CHUNK = 65536  # networks scored at once
RANK_SAMPLE = 65536  # above this many networks, predicted-accuracy ranks are taken in a seeded sample
RECALL = 20  # candidates recalled by cosine before ranking; fixed, so --top-k never reorders


def ranked(top, cosine: np.ndarray, rank_score) -> list[int]:
    """Positions in `top` by `rank_score` (per position), highest first; ties by cosine."""
    return sorted(range(len(top)), key=lambda j: (-rank_score[j], -cosine[int(top[j])]))


def imageless_score(rerank: str, predicted: np.ndarray, source_fit: np.ndarray) -> tuple[np.ndarray, str]:
    """(score, its name) of the orderings that need no query images, for every network of the
    retriever's table (`predicted` and `source_fit` cover all of them): the predicted accuracy
    ("none"), or the mean of its rank and the rank of the network's accuracy on its own zoo
    dataset over chance ("source"), both ranks taken over the whole table, so that a network's
    score does not depend on which others were recalled or met the constraints. Search and the
    MLflow pyfunc model both order by this (search, above RANK_SAMPLE networks, by its sampled
    estimate: `Searcher._scores_at`)."""
    if rerank == "none":
        return predicted, "predicted_accuracy"
    if rerank == "source":
        return mean_rank(predicted, source_fit), "predicted_accuracy+source_over_chance"
    if rerank in RERANK_CHOICES:
        raise TansError(
            f"ordering {rerank!r} loads recalled networks and runs them on the query's images, "
            f"which only `tans search` does; here choose none or source"
        )
    raise TansError(
        f"unknown ordering {rerank!r}; choose none or source (or, in `tans search`, "
        f"{' or '.join(c for c in RERANK_CHOICES if c not in ('none', 'source'))})"
    )


@dataclass(frozen=True)
class Hit:
    """One ranked zoo network: which it is, what it costs, and why it ranks where it does."""

    job_id: str
    dataset_id: str  # the zoo dataset it was fine-tuned on
    arch: str
    params: int
    flops: int
    latency_ms: float
    checkpoint_uri: str  # where its weights are, in the zoo the search was given
    score: float  # cosine of query and model in the retriever's latent space
    predicted_accuracy: float
    source_accuracy: float  # its test accuracy on the zoo dataset it was fine-tuned on
    rank_score: float  # the score that ordered the hits (see `ranked_by`)
    ranked_by: str  # "predicted_accuracy", "predicted_accuracy+source_over_chance" (the
    # mean of the two's ranks in the zoo), "logme", "knn" or "finetune"
    # (the source order, its fine-tuned networks re-ordered by held-out loss among their places)
    weak_match: bool  # negative cosine: the zoo holds nothing close to the query
    proxy_loss: float | None = None  # held-out loss of the short fine-tune ("finetune" only; see `cross_fitted`)


@dataclass(frozen=True)
class SearchResult:
    """Ranked networks for a query: `hits` best first, `ranked_by` names the score that
    ordered them, `seconds` where the time went."""

    hits: list[Hit]
    ranked_by: str
    recalled: int
    seconds: dict
    warnings: tuple[str, ...] = ()  # e.g. the retriever is stale and does not know some datasets
    reranked: int | None = None  # finetune: how many were fine-tuned within the budget ...
    finetune_candidates: int | None = None  # ... of how many it would fine-tune without one
    cross_fitted: bool | None = None  # finetune: each loss over every image (both halves), else each
    # network's first fine-tune's loss on the second half

    def as_dict(self) -> dict:
        return {
            "warnings": list(self.warnings),
            "ranked_by": self.ranked_by,
            "recalled": self.recalled,
            "reranked": self.reranked,
            "finetune_candidates": self.finetune_candidates,
            "cross_fitted": self.cross_fitted,
            "seconds": self.seconds,
            "hits": [asdict(h) for h in self.hits],
        }


class Searcher:
    """A retriever version held in memory, ready to answer queries.

    Two stages: recall the `recall` models nearest to the query in the learned latent space
    (among those meeting the constraints), then order them by a score: the retriever's
    predicted accuracy (`rerank="none"`), that and each network's accuracy on its own zoo
    dataset (`"source"`), or evidence computed on the query's own images with each candidate's
    penultimate features (`"logme"`, `"knn"`; see tans.retriever.rerank), or `"source"` with as
    many networks as the budget allows (cheapest first) re-ordered by a one-epoch fine-tune on
    the query's images (`"finetune"`; see tans.retriever.proxy). The recalled set does not depend on `top_k` while it is
    at most `recall`, so asking for more hits never reorders the first.
    """

    def __init__(
        self,
        store: ZooStore,
        version: int | None = None,
        live_job_ids: Collection[str] | None = None,
        results: dict | None = None,
    ):
        self.store = store
        loaded = load_version(store, version, embeddings_apart=True)
        self.model, self.meta, table, embeddings = loaded.model, loaded.meta, loaded.models, loaded.embeddings
        if live_job_ids is not None and (keep := live_mask(table, live_job_ids)) is not None:
            import pyarrow.compute as pc

            rows = pc.indices_nonzero(keep)
            table = table.take(rows)
            embeddings = embeddings[np.frombuffer(rows.buffers()[1], np.uint64, len(rows), rows.offset * 8)]
        self.table, self.embeddings = table, embeddings

        def column(name: str) -> np.ndarray:
            return numbers(table[name].combine_chunks()).astype(np.float64)

        self.params, self.flops = column("params"), column("flops")
        self.latency, self.source_accuracy = column("latency_ms"), column("accuracy")
        self.source_fit = source_over_chance(self.source_accuracy, table["num_classes"].to_pylist())
        self.image_size = self.meta["image_size"]
        self.results = results or {}  # job_id -> ResultRecord, for loading candidate networks
        self._backbone = None
        self._sample = self._source_rank = None  # see `_scores_at`

    def query_features(
        self, images: list[bytes], labels: list[int], per_class: int = 10, chosen: list[int] | None = None
    ) -> np.ndarray:
        """The query's backbone features of `chosen` images (default: `per_class` of each class, seeded)."""
        if self._backbone is None:
            self._backbone = load_backbone(self.store, read_manifest(self.store), self.meta.get("backbone_key", ""))
        if chosen is None:
            chosen = sample_per_class(labels, per_class, "search")
        return embed_images(self._backbone, [images[i] for i in chosen], self.image_size)

    def _recall(self, features: np.ndarray, constraints: Constraints, recall: int):
        """(query embedding, indices of the recalled models, cosine of every model)."""
        with torch.no_grad():
            q = self.model.encode_query(torch.from_numpy(features))
        ok = constraints.mask(self.params, self.flops, self.latency)
        if not ok.any():
            v = constraints.violation(self.params, self.flops, self.latency)
            i = int(np.argmin(v))
            raise NoModelFits(
                f"no model in the zoo meets the constraints; the closest is {self.table['job_id'][i].as_py()} "
                f"({self.table['arch'][i].as_py()}: {self.params[i] / 1e6:.2f}M params, "
                f"{self.flops[i] / 1e6:.1f}M FLOPs, {self.latency[i]:.1f} ms)"
            )
        top, scores = top_by_cosine(self.embeddings, q.numpy(), ok, recall)
        return q, top, scores

    def _predicted(self, q, top=None) -> np.ndarray:
        """The predicted accuracy on the query of the networks `top` (all when None), in
        chunks (a million networks are never one [n, 256] hidden layer)."""
        m = self.embeddings if top is None else self.embeddings[top]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Arrow's read-only memory: only read
            parts = [
                self.model.predict(q, torch.from_numpy(m[i : i + PREDICT_CHUNK])).numpy()
                for i in range(0, len(m), PREDICT_CHUNK)
            ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _scores_at(self, q, top, rerank: str) -> tuple[np.ndarray, np.ndarray, str]:
        """(predicted accuracy, `imageless_score`, its name) of the networks `top`. Up to
        RANK_SAMPLE networks the ranks are taken over the whole table; above, a network's rank
        by predicted accuracy is its place among a fixed seeded sample of RANK_SAMPLE of them
        (within about 0.4 % of its rank in the table) and its source rank is exact, so a search
        over a million networks scores 65,536 of them, not all."""
        n = len(self.embeddings)
        if n <= RANK_SAMPLE:
            predicted = self._predicted(q)
            rank_score, ranked_by = imageless_score(rerank, predicted, self.source_fit)
            return predicted[top], rank_score[top], ranked_by
        predicted = self._predicted(q, top)
        if rerank != "source":
            return predicted, *imageless_score(rerank, predicted, self.source_fit[top])
        if self._sample is None:
            self._sample = np.sort(np.random.default_rng(0).choice(n, RANK_SAMPLE, replace=False))
            self._source_rank = mean_rank(self.source_fit)
        reference = np.sort(np.nan_to_num(self._predicted(q, self._sample), nan=-np.inf))  # NaN lowest
        predicted_for_rank = np.nan_to_num(predicted, nan=-np.inf)
        below = (
            np.searchsorted(reference, predicted_for_rank, "left")
            + np.searchsorted(reference, predicted_for_rank, "right")
        ) / 2
        predicted_rank = np.clip(below / (RANK_SAMPLE - 1), 0.0, 1.0)
        return predicted, (predicted_rank + self._source_rank[top]) / 2, "predicted_accuracy+source_over_chance"

    def _imageless(self, q, top, scores, rerank: str) -> list[Hit]:
        predicted, rank_score, ranked_by = self._scores_at(q, top, rerank)
        return self._hits(top, scores, predicted, rank_score, ranked_by)

    def search(
        self,
        features: np.ndarray,
        constraints: Constraints = Constraints(),
        top_k: int = 10,
        recall: int = RECALL,
        rerank: str = DEFAULT_IMAGELESS,
    ) -> list[Hit]:
        """Without the query's images (its backbone features only): recall by cosine, order by
        `rerank` "none" or "source" (see `imageless_score`)."""
        if top_k < 1:
            raise TansError(f"top_k must be at least 1, not {top_k}")
        q, top, scores = self._recall(features, constraints, max(recall, top_k))
        return self._imageless(q, top, scores, rerank)[:top_k]

    def rank(
        self,
        images: list[bytes],
        labels: list[int],
        constraints: Constraints = Constraints(),
        top_k: int = 10,
        rerank: str = DEFAULT_RERANK,
        recall: int = RECALL,
        per_class: int = 10,
        finetune_top: int = proxy.FINETUNE_TOP,
        feature_images: list[int] | None = None,
        budget: float | None = proxy.SECONDS,
        losses_of=None,
    ) -> SearchResult:
        """Search with the query's images: recall, then order by `rerank`'s score. The query is
        embedded from `feature_images` (indices; default: `per_class` of each class, seeded).
        The finetune ordering's fine-tunes stop `budget` seconds after the search began (None
        or 0: no bound); those not finished keep the source order (`SearchResult.reranked`).
        `losses_of` runs them (see `_finetuned`)."""
        if top_k < 1 or finetune_top < 0:
            raise TansError(
                f"top_k must be at least 1 and finetune_top at least 0 (0: every recalled network), "
                f"not {top_k} and {finetune_top}"
            )
        if rerank not in RERANK_CHOICES:
            raise TansError(f"unknown re-ranking {rerank!r}; choose one of {', '.join(RERANK_CHOICES)}")
        t0 = time.perf_counter()
        deadline = time.monotonic() + budget if budget else None
        features = self.query_features(images, labels, per_class, feature_images)
        t1 = time.perf_counter()
        q, top, scores = self._recall(features, constraints, max(recall, top_k))
        t2 = time.perf_counter()
        reranked = candidates = crossed = None
        if rerank == "finetune":
            hits, reranked, candidates, crossed = self._finetuned(
                images, labels, q, top, scores, finetune_top, deadline, losses_of
            )
        elif rerank not in SCORERS:
            hits = self._imageless(q, top, scores, rerank)
        else:
            predicted = self._predicted(q, top)
            chosen = sample_per_class(labels, per_class, "search")
            evidence = self.evidence(
                [images[i] for i in chosen], np.asarray([labels[i] for i in chosen]), top, SCORERS[rerank]
            )
            hits = self._hits(top, scores, predicted, evidence, rerank)
        t3 = time.perf_counter()
        return SearchResult(
            hits[:top_k],
            hits[0].ranked_by,
            len(top),
            {
                "query_features": round(t1 - t0, 3),
                "recall": round(t2 - t1, 3),
                "rerank": round(t3 - t2, 3),
                "total": round(t3 - t0, 3),
            },
            reranked=reranked,
            finetune_candidates=candidates,
            cross_fitted=crossed,
        )

    def _record(self, i: int):
        """The result of the recalled network in table row `i`."""
        job_id = self.table["job_id"][int(i)].as_py()
        if job_id not in self.results:
            raise TansError(
                f"job {job_id} of the retriever has no result in {self.store.uri}; run `tans retrain {self.store.uri}`"
            )
        return self.results[job_id]

    def _network(self, i: int, load):
        """`load(store, record)` of the recalled network in table row `i` (see `load_candidate`)."""
        return load_candidate(self.store, self._record(i), load)

    def _finetuned(self, images, labels, q, top, scores, finetune_top: int, deadline, losses_of=None):
        """(The `source` order with as many recalled networks as `deadline` allows re-ordered by
        the held-out loss of a short fine-tune on the query's images, cheapest first among the
        first `finetune_top` (0: all; tans.retriever.proxy), how many were fine-tuned, how many
        could have been, whether the losses are cross-fitted). `losses_of` runs the fine-tunes
        and gives their summed losses (`proxy.local_losses` by default;
        tans.pipeline.commands.search has one of Ray tasks)."""
        folds = proxy.proxy_folds(labels)  # checks the query before any fine-tune
        predicted, source, _ = self._scores_at(q, top, "source")
        order = ranked(top, scores, source)  # the source order, as `_hits` shows it
        used = sorted(set(folds[0]) | set(folds[1]))
        at = {i: k for k, i in enumerate(used)}
        x = torch.from_numpy(decode_images([images[i] for i in used], self.image_size))
        x = x.contiguous(memory_format=torch.channels_last)  # as proxy.fold_loss trains: converted once
        y = torch.as_tensor([labels[i] for i in used])
        classes = len(set(labels))
        chosen = proxy.cheapest_first(self.flops[top], order, finetune_top)
        halves = ([at[i] for i in folds[0]], [at[i] for i in folds[1]])
        s3 = getattr(self.store, "settings", None)
        loaders = [partial(checkpoint_of, self.store.uri, s3, self._record(top[j])) for j in chosen]
        sums = (losses_of or proxy.local_losses)(loaders, classes, x, y, halves, self.image_size, deadline)
        found = proxy.scores(sums, halves)
        losses = {j: loss for j, loss in zip(chosen, found) if loss is not None}  # the rest keep their places
        rank_score = proxy.slot_score(order, losses)
        hits = self._hits(top, scores, predicted, rank_score, "finetune", losses)
        return hits, len(losses), len(chosen), proxy.cross_fitted(sums) if losses else None

    def evidence(self, images: list[bytes], labels: np.ndarray, top, scorer) -> np.ndarray:
        """`scorer` of each recalled network's penultimate features of the query images."""
        x = torch.from_numpy(decode_images(images, self.image_size))
        out = []
        for i in top:
            net = self._network(i, checkpoint_features)
            with torch.no_grad():
                feats = torch.cat([net(x[j : j + 256]) for j in range(0, len(x), 256)]).numpy()
            out.append(scorer(feats, labels))
        return np.asarray(out, dtype=np.float64)

    def _hits(self, top, cosine, predicted, rank_score, ranked_by: str, losses: dict | None = None) -> list[Hit]:
        order = ranked(top, cosine, rank_score)
        cols = ["job_id", "dataset_id", "arch", "params", "flops", "latency_ms"]
        hits = []
        for j in order:
            i = int(top[j])
            hits.append(
                Hit(
                    **{c: self.table[c][i].as_py() for c in cols},
                    checkpoint_uri=checkpoint_uri(self.store, self.table["checkpoint_uri"][i].as_py()),
                    score=float(cosine[i]),
                    predicted_accuracy=float(predicted[j]),
                    source_accuracy=float(self.source_accuracy[i]),
                    rank_score=float(rank_score[j]),
                    ranked_by=ranked_by,
                    weak_match=bool(cosine[i] < 0),
                    proxy_loss=(losses or {}).get(j),
                )
            )
        return hits
