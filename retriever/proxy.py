"""A short fine-tune as evidence: how well a candidate network learns the query's own task.

`tans search --rerank finetune` orders the recalled networks by `source` (see
retriever.rerank), then fine-tunes each of the first `--finetune-top` on the query's images
for one epoch with the zoo's recipe (paper B.2: SGD with Nesterov momentum, cosine schedule;
a new head for the query's classes, seeded) and scores it by its cross-entropy on images of
the query it did not train on. Lower loss ranks first; those networks come first, the rest
keep the `source` order. The cascade keeps the cost fixed (`finetune_top` fine-tunes, however
many networks were recalled), so `--top-k` never reorders.

Why a fine-tune and not only features: on `bench/transfer.py --split validation` the
held-out loss after one epoch ranks the networks by their 3-epoch fine-tuned accuracy far
better than LogME or a k-NN probe on their frozen features (the README has the figures): what
is measured is the thing the user will do, only shorter. The images: up to `PER_CLASS` per
class of the query (seeded), of which the last `HELD_OUT_SHARE` of each class (at least one)
are held out; a class needs two images.
"""
from __future__ import annotations

import numpy as np

from zoo_schema.errors import TansError

PER_CLASS = 40          # query images per class the proxy uses (train + held out)
HELD_OUT_SHARE = 0.2    # of each class's images, scored and not trained on
EPOCHS = 1
FINETUNE_TOP = 3        # networks fine-tuned by default (the first of the `source` order): the most
                        # that keeps a 10-class search under 10 s on a 2-core CPU (bench/transfer.py)


def proxy_split(labels: list[int], per_class: int = PER_CLASS) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) of up to `per_class` images of every class, seeded;
    each class gives its last `HELD_OUT_SHARE` (at least one image) to the held-out part."""
    from retriever.features import sample_per_class  # torch; the CLI imports this module's constants
    chosen = sample_per_class(labels, per_class, "proxy")
    by_class: dict[int, list[int]] = {}
    for i in chosen:
        by_class.setdefault(labels[i], []).append(i)
    short = sorted(c for c, members in by_class.items() if len(members) < 2)
    if short:
        raise TansError(f"the finetune ordering needs at least 2 images in every class of the query; "
                        f"class(es) {short} (in sorted class order) have 1: add images, or choose "
                        f"--rerank source")
    train, held = [], []
    for members in by_class.values():
        n_held = max(1, round(HELD_OUT_SHARE * len(members)))
        train += members[:-n_held]
        held += members[-n_held:]
    return train, held


def proxy_loss(net, num_classes: int, x, y, train_idx: list[int], held_idx: list[int], image_size: int,
               seed: int = 0) -> float:
    """The held-out cross-entropy of `net` (a zoo network, modified in place) after `EPOCHS`
    of fine-tuning on the training part of (x [n, 3, s, s] float tensor, y [n] long tensor)."""
    import torch

    from workers.job import TrainSettings
    from workers.training import train
    torch.manual_seed(seed)  # the new head, as a zoo job seeds it
    net.classifier = torch.nn.Linear(net.classifier.in_features, num_classes)
    tr, ho = torch.as_tensor(train_idx), torch.as_tensor(held_idx)
    settings = TrainSettings(epochs=EPOCHS, image_size=image_size, evaluate_every_epoch=False)
    train(net, x[tr], y[tr], x[ho], y[ho], settings, torch.device("cpu"), seed=seed)  # ends in eval mode
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(x[ho]), y[ho]))


def cascade_score(source_score: np.ndarray, losses: dict[int, float]) -> np.ndarray:
    """The finetune ordering's score of the recalled networks: those fine-tuned (`losses`:
    position -> held-out loss) above all others, by their mean rank of the negative loss
    (ties share it), in [1, 2]; the others keep their `source` score, in [0, 1]."""
    from retriever.rerank import mean_rank
    out = np.asarray(source_score, dtype=np.float64).copy()
    if losses:
        positions = list(losses)
        out[positions] = 1.0 + mean_rank(-np.array([losses[p] for p in positions]))
    return out
