"""Evidence from the query's own images: how well each candidate network's penultimate
features fit the query's labels, without training the network.

- **LogME** (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model
  from features to each one-hot label column, maximised over its two precisions (prior
  alpha, noise beta) by the fixed-point updates of MacKay's evidence framework, averaged
  over classes and divided by the number of images. Higher is better. Written from the
  paper's equations; one SVD of the feature matrix serves every class.
- **k-NN probe**: leave-one-out accuracy of a k-nearest-neighbour vote (cosine) on the
  features. Cheap and, on small data, often as good as published transferability scores.

Besides the query's evidence, the zoo's own: **source** orders the recalled networks by the
mean of two normalised ranks among all the zoo's networks, the retriever's predicted accuracy
and the network's accuracy on the zoo dataset it was fine-tuned on, as a share of the way from
chance to 1 (how well it learned its own task). It needs no images and no network loaded.

`SCORERS` is the registry of evidence scorers on features `tans search --rerank` chooses from;
"none" keeps the retriever's predicted accuracy, "source" is the rank mean above, and
"finetune" re-orders as many networks of "source" as its budget allows by a one-epoch fine-tune on the query's
images (tans.retriever.proxy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 20, tol: float = 1e-3) -> float:
    """LogME of features [n, d] for integer labels [n]."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, sv, vt = np.linalg.svd(f, full_matrices=False)  # f = u diag(sv) vt
    s = sv**2  # eigenvalues of f^T f (rank r)
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        uty = u.T @ y  # projections of y on f's left vectors
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            gamma = float((beta * s / (alpha + beta * s)).sum())
            m_coef = beta * sv * uty / (alpha + beta * s)  # posterior mean m = vt.T @ m_coef
            m2 = float((m_coef**2).sum())
            fitted = u @ (sv * m_coef)
            residual = float(((y - fitted) ** 2).sum())
            new_alpha = gamma / (m2 + 1e-10)
            new_beta = max(n - gamma, 1e-10) / (residual + 1e-10)
            done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if done:
                break
        # log p(y | alpha, beta) with the posterior at the final precisions
        m_coef = beta * sv * uty / (alpha + beta * s)
        m2 = float((m_coef**2).sum())
        residual = float(((y - u @ (sv * m_coef)) ** 2).sum())
        log_det = float(np.log(alpha + beta * s).sum()) + (d - len(s)) * np.log(alpha)
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * log_det
            - beta / 2 * residual
            - alpha / 2 * m2
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def knn_probe(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a k-NN (cosine) vote on the features."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    k = max(1, min(k, len(f) - 1))
    neighbours = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    classes = np.unique(labels)
    votes = np.stack(
        [
            (labels[neighbours] == c).sum(1)
            + 1e-3 * (sim[np.arange(len(f))[:, None], neighbours] * (labels[neighbours] == c)).sum(1)
            for c in classes
        ],
        axis=1,
    )
    return float((classes[votes.argmax(1)] == labels).mean())


def source_over_chance(accuracy: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A network's accuracy on its own zoo dataset as a share of the way from chance to 1."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    classes = np.maximum(np.asarray(classes, dtype=np.float64), 2)  # a zoo dataset has at least 2 classes
    return (accuracy - 1 / classes) / (1 - 1 / classes)


def mean_rank(*scores: np.ndarray) -> np.ndarray:
    """The mean of each score's normalised rank (0 for the lowest, 1 for the highest; ties share
    their average rank; NaN ranks lowest)."""
    n = len(scores[0])
    out = np.zeros(n)
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        _, tie = np.unique(np.where(np.isnan(s), -np.inf, s), return_inverse=True)
        ranks = np.empty(n)
        ranks[np.argsort(tie, kind="stable")] = np.arange(n)
        average = np.bincount(tie, ranks) / np.bincount(tie)  # ties share their mean rank
        out += average[tie] / max(n - 1, 1)
    return out / len(scores)


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"logme": logme, "knn": knn_probe}
RERANK_CHOICES = ("none", "source", *SCORERS, "finetune")
DEFAULT_RERANK = (
    "finetune"  # what `tans search` orders by unless told: the best on bench/transfer.py --split validation
)
DEFAULT_IMAGELESS = "source"  # the best of the orderings that need no images: the MLflow model's default
