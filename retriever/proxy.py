"""A short fine-tune as evidence: how well a candidate network learns the query's own task.

`tans search --rerank finetune` orders the recalled networks by `source` (see
tans.retriever.rerank), then scores as many of them as the search's `--budget` allows by a
short fine-tune on the query's images, the cheapest (fewest FLOPs) first, so that the budget
covers as many networks as it can: the query's images are split in two folds (half of each
class in each); each network is fine-tuned for one epoch with the zoo's recipe (paper B.2: SGD
with Nesterov momentum, cosine schedule; a new head for the query's classes, seeded) on the
first fold and scored by its cross-entropy on the second. Once every candidate has that score,
the budget goes on to the swapped fine-tunes (on the second fold from a fresh copy, scored on
the first); when each network scored so far has both, the score is cross-fitted: the mean loss
over every image (`scores`). The fine-tuned networks are re-ordered by that loss (lower first)
among the places they held in the `source` order; the others keep their places
(`slot_score`). With every recalled network fine-tuned the order is the loss's alone; with
none it is `source`. `--finetune-top N` fine-tunes only among the first N of the source order;
`--top-k` never reorders. Why one fold first: on `bench/transfer.py`'s test split the first
fold's loss alone ranked a whole set nearly as well as the cross-fitted one (weighted tau
0.409 against 0.430 then; 0.418 against 0.455 on the sets since) at half the cost: the 10 s
budget scored 12.6 of 20 recalled networks where it scored 6.6 both ways, and the default
ordering went from 0.40 to 0.83 of two seeds' agreement.
How many networks the budget scores is what limits the ordering (the unscored ones keep the
`source` order, which anti-correlates on both splits), so each network is built in plain torch
from its checkpoint (tans.workers.networks.mbv3.Network: no ofa supernet to build) and
fine-tuned channels-last (oneDNN's convolutions are a third faster so): the same losses, 1.4x
as many fine-tunes in the budget (17.25 of 20 networks on the test split; the default ordering
at 0.90 of the seeds' agreement there).

Why a fine-tune and not only features: on `bench/transfer.py --split validation` the
held-out loss after one epoch ranks the networks by their 3-epoch fine-tuned accuracy far
better than LogME or a k-NN probe on their frozen features (the README has the figures): what
is measured is the thing the user will do, only shorter. The images: up to `PER_CLASS` per
class of the query and about `IMAGES` in all (seeded), so a search's cost does not grow with
the number of classes. Cross-fitting scores every image once: with a single held-out fifth,
which fifth it was moved a set's tau by 0.41 on a validation dataset of bench/transfer.py
(textures-mixed-noisy: 0.47 with the last files of each class held out, 0.06 with a shuffled
fifth); every network of a search is scored on the same half."""

from __future__ import annotations

import numpy as np

from tans.zoo_schema.errors import TansError

PER_CLASS = 40  # at most this many query images per class (train + held out) ...
IMAGES = 400  # ... and about this many in all: a 20-class query uses 20 per class
EPOCHS = 1
SECONDS = 10.0  # `tans search --budget`: the fine-tunes stop when this much of the search has passed
FINETUNE_TOP = 0  # fine-tune among the first N of the `source` order; 0: among every recalled
# network, as many as the budget allows (cheapest first)


def per_class(num_classes: int) -> int:
    """Images per class the proxy uses for a query of `num_classes` classes (2 to PER_CLASS)."""
    return max(2, min(PER_CLASS, IMAGES // max(num_classes, 1)))


def proxy_folds(labels: list[int]) -> tuple[list[int], list[int]]:
    """Two disjoint folds of up to `per_class` images of every class, seeded and shuffled: half
    of each class in each, the odd image of a class of odd size going to the second and the
    first fold by turns (so one-image classes spread over both)."""
    import random

    from tans.retriever.features import sample_per_class  # torch; the CLI imports this module's constants

    chosen = sample_per_class(labels, per_class(len(set(labels))), "proxy")
    by_class: dict[int, list[int]] = {}
    for i in chosen:
        by_class.setdefault(labels[i], []).append(i)
    first, second = [], []
    odd_to_second = True
    for c, members in sorted(by_class.items()):
        random.Random(f"proxy-split:{c}").shuffle(members)
        half = len(members) // 2 + (len(members) % 2 and not odd_to_second)
        odd_to_second ^= bool(len(members) % 2)
        first += members[:half]
        second += members[half:]
    if min(len(first), len(second)) < 2:
        raise TansError(
            f"the finetune ordering fine-tunes each network on one half of the query's images and "
            f"scores it on the other, and needs at least 2 images in each half; this query has "
            f"{len(first) + len(second)} in {len(by_class)} classes: add images, or order by "
            f"source (`--rerank source`)"
        )
    return first, second


def fold_loss(
    net,
    num_classes: int,
    x,
    y,
    train_idx: list[int],
    held_idx: list[int],
    image_size: int,
    seed: int = 0,
    deadline: float | None = None,
    device: str = "cpu",
) -> float:
    """The summed cross-entropy on `held_idx` of `net` (a zoo network, modified in place) after
    `EPOCHS` of fine-tuning on `train_idx` of (x [n, 3, s, s] float tensor, y [n] long tensor).
    The fine-tune draws nothing from torch's global random state (fine-tunes run side by side
    on threads: see `local_losses`), and that state is left as it was (the training loop seeds
    it, as a zoo job's does). Past `deadline` (`time.monotonic()`) raises
    tans.workers.networks.training.DeadlineReached."""
    import torch

    from tans.workers.job import TrainSettings
    from tans.workers.networks.training import train

    tr, ho = torch.as_tensor(train_idx), torch.as_tensor(held_idx)
    settings = TrainSettings(epochs=EPOCHS, image_size=image_size, evaluate_every_epoch=False)
    net.classifier = new_head(net.classifier.in_features, num_classes, seed)
    on = torch.device(device)
    # channels-last: oneDNN's convolutions (and cuDNN's) run a third faster in it than in
    # torch's default layout; the same sums up to float rounding. The network is a throwaway;
    # images the caller already gave channels-last are not copied.
    net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):
        train(net, x[tr], y[tr], None, None, settings, on, seed=seed, deadline=deadline)  # ends in eval mode
    with torch.no_grad():
        xh, yh = x[ho].to(on), y[ho].to(on)
        return sum(
            float(torch.nn.functional.cross_entropy(net(xh[i : i + 256]), yh[i : i + 256], reduction="sum"))
            for i in range(0, len(ho), 256)
        )


def new_head(features: int, num_classes: int, seed: int):
    """The new classifier, as a zoo job seeds it: torch.nn.Linear's own initialisation drawn
    from a generator seeded with `seed` (the same numbers `torch.manual_seed(seed)` then
    `Linear` give), without drawing from the global random state."""
    import math

    import torch

    head = torch.nn.Linear(features, num_classes, device="meta").to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=g)
        bound = 1 / math.sqrt(features)
        torch.nn.init.uniform_(head.bias, -bound, bound, generator=g)
    return head


def proxy_loss(
    make_net, num_classes: int, x, y, folds: tuple[list[int], list[int]], image_size: int, deadline=None, device="cpu"
) -> float:
    """Cross-fitted held-out loss: a fresh `make_net()` fine-tuned on each fold and scored on the
    other; the mean cross-entropy over every image of both folds (DeadlineReached past `deadline`):
    the search's score of a network when it had both fine-tunes (`scores`)."""
    both = [fold_sum(make_net, num_classes, x, y, folds, k, image_size, deadline, device) for k in (0, 1)]
    return scores([tuple(both)], folds)[0]


def fold_sum(make_net, num_classes: int, x, y, folds, which: int, image_size: int, deadline=None, device="cpu"):
    """A network's fine-tune number `which`: 0, on the first fold scored on the second (the
    summed cross-entropy); 1, the swapped one (DeadlineReached past `deadline`)."""
    train_idx, held_idx = folds if which == 0 else folds[::-1]
    return fold_loss(make_net(), num_classes, x, y, train_idx, held_idx, image_size, deadline=deadline, device=device)


def scores(sums: list[tuple[float | None, float | None]], folds) -> list[float | None]:
    """Each network's score from its two fine-tunes' summed losses (None: not run): the mean
    loss over every image (cross-fitted) when every network with the first fine-tune has the
    second too, else the first's mean loss on the second fold, for each that has it; None for a
    network without the first. One kind of score for all, so the losses compare."""
    both = cross_fitted(sums)
    n1, n2 = len(folds[1]), len(folds[0])  # the images each fine-tune is scored on
    return [None if a is None else (a + b) / (n1 + n2) if both else a / n1 for a, b in sums]


def cross_fitted(sums: list[tuple[float | None, float | None]]) -> bool:
    """Whether `scores` cross-fits: some network has its first fine-tune, and each that has it
    has its second too."""
    started = [s for s in sums if s[0] is not None]
    return bool(started) and all(s[1] is not None for s in started)


def local_losses(
    loaders, num_classes: int, x, y, folds, image_size: int, deadline, workers: int | None = None
) -> list[tuple[float | None, float | None]]:
    """Each network's two fine-tunes' summed held-out losses (`loaders`: one callable per
    network, giving it; None where not run; `scores` makes them the networks' scores), in this
    process, on `workers` threads (default: torch's CPU threads, at most the cores this
    process may use) that take every network's first fine-tune in order, then every network's
    second, each fine-tune on one torch thread: networks this small keep one core busy each far
    better than they share two (the same losses up to float rounding, 1.7x as many networks in
    the same time on 2 cores). None for each fine-tune the `deadline` cut and each not started
    by then (a network without its first keeps the source order): with several threads those
    need not be the last ones. What `tans search` runs without a Ray address. A network is
    loaded for each of its fine-tunes (none is kept between them: memory holds one network per
    thread, however many are recalled). torch's thread count and global random state are as they were
    afterwards; after an interruption (Ctrl-C) each thread ends the fine-tune it is on and starts
    no other. A thread of the caller's that first uses torch while these run keeps one torch
    thread (torch sets a thread's count at its first use)."""
    import os
    import threading
    import time

    import torch

    from tans.workers.networks.training import DeadlineReached

    sums: list[list[float | None]] = [[None, None] for _ in loaders]
    todo = iter([(0, k) for k in range(len(loaders))] + [(1, k) for k in range(len(loaders))])
    lock, loading, stop = threading.Lock(), threading.Lock(), threading.Event()
    errors: list[BaseException] = []

    def late() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

    def work() -> None:
        while not stop.is_set():
            with lock:
                which, k = next(todo, (None, None))
            if k is None:
                return
            try:
                with loading:  # one at a time: a store's client is made and read here
                    if late():  # waited for the lock past the budget: load nothing more
                        stop.set()
                        return
                    net = loaders[k]()
                sums[k][which] = fold_sum(lambda: net, num_classes, x, y, folds, which, image_size, deadline)
            except DeadlineReached:
                stop.set()
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                errors.append(e)
                stop.set()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(2 * len(loaders), workers or min(torch.get_num_threads(), cores)))
    threads, random_state = torch.get_num_threads(), torch.random.get_rng_state()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        if workers == 1:
            work()
        else:
            running = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
            for t in running:
                t.start()
            for t in running:
                t.join()
    except BaseException:
        stop.set()  # Ctrl-C: no thread starts another fine-tune
        raise
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(random_state)  # the threads' seeding raced: the caller's state back
    if errors:
        raise errors[0]
    return [(a, b) for a, b in sums]


def remote_loss(
    load, num_classes: int, x, y, folds, image_size: int, until: float | None, which: int = 0
) -> float | None:
    """One network's fine-tune number `which` (see `fold_sum`) where it runs (a Ray task): on
    the GPU when there is one, stopped at `until` (a `time.time()` instant: the caller's budget,
    whatever the task waited in the queue; None: no bound); the summed held-out loss, None when
    that cut it."""
    import copy
    import time

    import torch

    from tans.workers.networks.training import DeadlineReached

    device = "cuda" if torch.cuda.is_available() else "cpu"
    deadline = time.monotonic() + (until - time.time()) if until is not None else None
    net = load()
    try:
        return fold_sum(lambda: copy.deepcopy(net), num_classes, x, y, folds, which, image_size, deadline, device)
    except DeadlineReached:
        return None


def cheapest_first(flops, order: list[int], finetune_top: int = FINETUNE_TOP) -> list[int]:
    """The networks to fine-tune, in the order they are: among the first `finetune_top` of
    `order` (positions in the source order; 0: all of them), fewest `flops` first (ties keep
    the source order), so a budget fine-tunes as many as it can."""
    pool = order[:finetune_top] if finetune_top else list(order)
    rank = {j: k for k, j in enumerate(order)}
    return sorted(pool, key=lambda j: (float(flops[j]), rank[j]))


def slot_score(order: list[int], losses: dict[int, float]) -> np.ndarray:
    """The finetune ordering's score of the recalled networks (`order`: their positions in the
    `source` order, best first): the fine-tuned ones (`losses`: position -> held-out loss) swap
    places so that, of the places they held, the lowest loss takes the first; every other
    network keeps its place. The score is 1 at the first place and falls by 1/len per place;
    ties in the loss keep the source order."""
    place = {j: k for k, j in enumerate(order)}
    slots = sorted(place[j] for j in losses)
    for j, slot in zip(sorted(losses, key=lambda j: (losses[j], place[j])), slots):
        place[j] = slot
    out = np.empty(len(order), dtype=np.float64)
    for j, k in place.items():
        out[j] = 1.0 - k / len(order)
    return out
