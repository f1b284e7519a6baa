"""The acquisition's accuracy predictor S_zoo (paper A.1), with MC dropout.

Input for a pair (D, M): the dataset's features, M's 45-int topology and M's functional
embedding with the *base* weights (training M on D to get its embedding would defeat the
purpose). Output: a sigmoid accuracy. Dropout (p=0.5) stays on at prediction time, and
the spread of samples is the predictor's uncertainty. It is retrained from scratch, with
early stopping on a held-out fifth, whenever the acquisition policy asks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FIT_VERSION = 1  # part of a fit's name in the zoo: change it with the model or its training recipe


class AccuracyPredictor(nn.Module):
    def __init__(self, data_dim: int, func_dim: int, hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        self.p = dropout
        self.data = nn.Linear(data_dim, hidden)
        self.arch = nn.Linear(45 + func_dim, hidden)
        self.fc1 = nn.Linear(2 * hidden, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        for name, dim in (
            ("data_mean", data_dim),
            ("data_std", data_dim),
            ("func_mean", func_dim),
            ("func_std", func_dim),
        ):
            self.register_buffer(name, torch.zeros(dim) if "mean" in name else torch.ones(dim))

    def set_normalization(self, data: torch.Tensor, func: torch.Tensor) -> None:
        self.data_mean.copy_(data.mean(0))
        self.data_std.copy_(data.std(0, unbiased=False).clamp_min(1e-6))
        self.func_mean.copy_(func.mean(0))
        self.func_std.copy_(func.std(0, unbiased=False).clamp_min(1e-6))

    def forward(
        self,
        data: torch.Tensor,
        topology: torch.Tensor,
        func: torch.Tensor,
        masks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predicted accuracy; dropout as in training, or with the given fixed masks."""
        d = self.data((data - self.data_mean) / self.data_std)
        a = self.arch(torch.cat([topology / 7.0, (func - self.func_mean) / self.func_std], dim=1))
        h = torch.relu(torch.cat([d, a], dim=1))
        h = h * masks[0] if masks else nn.functional.dropout(h, self.p, self.training)
        h = torch.relu(self.fc1(h))
        h = h * masks[1] if masks else nn.functional.dropout(h, self.p, self.training)
        return torch.sigmoid(self.fc2(h)).squeeze(1)


def fit(
    data: np.ndarray,
    topology: np.ndarray,
    func: np.ndarray,
    accuracy: np.ndarray,
    seed: int,
    max_epochs: int = 300,
    patience: int = 25,
    lr: float = 1e-3,
    max_steps: int = 2000,
) -> AccuracyPredictor:
    """Train from scratch on the given rows; early stopping on a seeded held-out fifth, and at
    most `max_steps` minibatch updates, so that a fit on a 14,000-result zoo costs what one on
    2,000 does (below that, 300 epochs of early stopping end first)."""
    torch.manual_seed(seed)
    d, t, f, y = (torch.as_tensor(a, dtype=torch.float32) for a in (data, topology, func, accuracy))
    model = AccuracyPredictor(d.shape[1], f.shape[1])
    model.set_normalization(d, f)
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = n // 5 if n >= 10 else 0
    val, train = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state, since = float("inf"), None, 0
    batch = 256
    steps = 0
    for _ in range(max_epochs):
        if steps >= max_steps:
            break
        model.train()
        order = train[torch.randperm(len(train))]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = nn.functional.mse_loss(model(d[idx], t[idx], f[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        if n_val:
            model.eval()
            with torch.no_grad():
                v = float(nn.functional.mse_loss(model(d[val], t[val], f[val]), y[val]))
            if v < best - 1e-6:
                best, since = v, 0
                best_state = {k: x.clone() for k, x in model.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.val_mse = best if n_val else float("nan")
    return model


def mc_samples(
    model: AccuracyPredictor, data: np.ndarray, topology: np.ndarray, func: np.ndarray, samples: int = 10, seed: int = 0
) -> np.ndarray:
    """[samples, n] accuracy predictions under MC dropout (p kept at training's), seeded.

    Sample s applies one dropout mask, drawn from the seed, to every row: each row's
    samples are plain MC-dropout draws, and they do not depend on which other rows are
    in the batch, so adding or removing candidates never changes another's predictions.
    """
    d, t, f = (torch.as_tensor(a, dtype=torch.float32) for a in (data, topology, func))
    with torch.no_grad():
        return np.stack([model(d, t, f, masks=m).numpy() for m in dropout_masks(model, samples, seed)])


def dropout_masks(model: AccuracyPredictor, samples: int, seed: int):
    """The seeded (first, second) layer dropout masks of each MC sample, scaled by 1/keep."""
    g = torch.Generator().manual_seed(seed)
    keep = 1.0 - model.p
    hidden = model.fc1.out_features
    for _ in range(samples):
        m1 = (torch.rand(2 * hidden, generator=g) < keep).float() / keep
        m2 = (torch.rand(hidden, generator=g) < keep).float() / keep
        yield m1, m2


def mc_grid(
    model: AccuracyPredictor, data: np.ndarray, topology: np.ndarray, func: np.ndarray, samples: int = 10, seed: int = 0
) -> np.ndarray:
    """[samples, D, A] MC-dropout predictions for every (dataset, arch) pair of D datasets'
    features and A archs' topologies/embeddings: the same masks, hence the same numbers, as
    `mc_samples` on the D*A stacked rows, but each input branch runs once per dataset or
    arch instead of once per pair (a 140 x 100 grid costs about what 240 rows do)."""
    d, t, f = (torch.as_tensor(a, dtype=torch.float32) for a in (data, topology, func))
    out = []
    with torch.no_grad():
        dh = model.data((d - model.data_mean) / model.data_std)  # [D, h]
        ah = model.arch(torch.cat([t / 7.0, (f - model.func_mean) / model.func_std], dim=1))  # [A, h]
        h0 = torch.relu(
            torch.cat([dh[:, None, :].expand(-1, len(ah), -1), ah[None, :, :].expand(len(dh), -1, -1)], dim=2)
        )  # [D, A, 2h]
        for m1, m2 in dropout_masks(model, samples, seed):
            h = torch.relu(model.fc1(h0 * m1)) * m2
            out.append(torch.sigmoid(model.fc2(h)).squeeze(2).numpy())
    return np.stack(out)
