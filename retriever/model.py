"""The retriever's networks (paper A.2-A.4) and its loss (eq. 3-5).

- Query encoder: each sampled image's frozen backbone feature is projected; the set is
  mean-pooled and L2-normalized to 128-d.
- Model encoder: [45-int topology (inactive blocks zero), functional embedding],
  standardized, projected, L2-normalized to 128-d.
- Performance predictor: [q, m] -> 256 -> 1, sigmoid: the model's accuracy on the query.
- Loss: hinge contrastive loss in both directions (query->models, model->queries) with
  margin 0.2, summed over the batch's negatives, plus lambda * MSE of the predictor.
"""

from __future__ import annotations

import torch
from torch import nn

DIM = 128


class Retriever(nn.Module):
    def __init__(self, image_dim: int, func_dim: int, hidden: int = 512):
        super().__init__()
        self.query = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU(), nn.Linear(hidden, DIM))
        self.model = nn.Sequential(nn.Linear(45 + func_dim, hidden), nn.ReLU(), nn.Linear(hidden, DIM))
        self.predictor = nn.Sequential(nn.Linear(2 * DIM, 2 * DIM), nn.ReLU(), nn.Linear(2 * DIM, 1))
        for name, dim in (
            ("image_mean", image_dim),
            ("image_std", image_dim),
            ("func_mean", func_dim),
            ("func_std", func_dim),
        ):
            self.register_buffer(name, torch.zeros(dim) if "mean" in name else torch.ones(dim))

    def set_normalization(self, images: torch.Tensor, func: torch.Tensor) -> None:
        self.image_mean.copy_(images.mean(0))
        self.image_std.copy_(images.std(0, unbiased=False).clamp_min(1e-6))
        self.func_mean.copy_(func.mean(0))
        self.func_std.copy_(func.std(0, unbiased=False).clamp_min(1e-6))

    def encode_query(self, images: torch.Tensor) -> torch.Tensor:
        """One query set [n, image_dim] -> [128], or a batch of sets [B, n, image_dim] -> [B, 128]."""
        z = self.query((images - self.image_mean) / self.image_std).mean(-2)
        return nn.functional.normalize(z, dim=-1)

    def encode_models(self, topology: torch.Tensor, func: torch.Tensor) -> torch.Tensor:
        x = torch.cat([topology / 7.0, (func - self.func_mean) / self.func_std], dim=-1)
        return nn.functional.normalize(self.model(x), dim=-1)

    def predict(self, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The predicted accuracy of models `m` [N, 128] on queries `q` [N, 128] (pairs), or on
        one query `q` [128]: then its share of the first layer is computed once, not N times
        (a search over 100,000 networks)."""
        if q.dim() == 1:
            first = self.predictor[0]
            shared = first.weight[:, :DIM] @ q + first.bias
            hidden = torch.relu(m @ first.weight[:, DIM:].T + shared)
            return torch.sigmoid(self.predictor[2](hidden)).squeeze(-1)
        return torch.sigmoid(self.predictor(torch.cat([q, m], dim=-1))).squeeze(-1)


def contrastive_loss(q: torch.Tensor, m: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Bidirectional hinge loss: row i of q and m is a positive pair, every other row a negative.

    sum_i sum_{j != i} [margin - s(q_i, m_i) + s(q_i, m_j)]_+ + [margin - s(q_i, m_i) + s(q_j, m_i)]_+,
    averaged over the batch; s is the cosine (rows are unit vectors).
    """
    scores = q @ m.t()
    positive = scores.diag()
    off = ~torch.eye(len(q), dtype=torch.bool, device=q.device)
    to_models = (margin - positive[:, None] + scores).clamp_min(0)[off].sum()
    to_queries = (margin - positive[None, :] + scores).clamp_min(0)[off].sum()
    return (to_models + to_queries) / len(q)


def retriever_loss(model: Retriever, q, m, accuracy, margin: float = 0.2, lam: float = 1.0):
    contrastive = contrastive_loss(q, m, margin)
    mse = nn.functional.mse_loss(model.predict(q, m), accuracy)
    return contrastive + lam * mse, contrastive, mse
