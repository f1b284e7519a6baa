"""Acquisition policies: which (dataset, arch) pairs to train next.

Ask/tell without hidden state: a policy derives everything from the zoo state and the
pending jobs it is shown, so a resumed build needs no pickled policy. Policies are
registered by name; `create_policy` fails on an unknown name with the valid list.
"""
from __future__ import annotations

import random
from typing import Callable

from pipeline.errors import ConfigError
from pipeline.state import ZooState
from workers.ofa_space import sample_arch

Pair = tuple[str, str]  # (dataset_id, arch id)
POLICIES: dict[str, Callable] = {}


def register(name: str):
    def wrap(cls):
        POLICIES[name] = cls
        return cls
    return wrap


def create_policy(name: str, seed: int, **kwargs):
    if name not in POLICIES:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](seed=seed, **kwargs)


@register("random")
class RandomPolicy:
    """The paper's baseline zoo: random architectures, spread evenly over the datasets.

    Proposal k goes to the k-th dataset of a seeded shuffle of the datasets (reshuffled
    every round), with an arch drawn from a generator seeded by (seed, k). The sequence is
    fixed by the seed, and pairs already done, pending or given up on are skipped, so an
    interrupted build proposes exactly what an uninterrupted one would have.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def propose(self, state: ZooState, n: int, exclude: set[Pair]) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets)
        if not dataset_ids or n <= 0:
            return []
        taken = set(exclude)
        out: list[Pair] = []
        k = 0
        limit = len(exclude) + 50 * (n + len(dataset_ids))  # random pairs rarely collide
        order: list[str] = []
        while len(out) < n and k < limit:
            if k % len(dataset_ids) == 0:
                order = list(dataset_ids)
                random.Random(f"{self.seed}:round:{k // len(dataset_ids)}").shuffle(order)
            pair = (order[k % len(dataset_ids)], sample_arch(random.Random(f"{self.seed}:arch:{k}")).id)
            if pair not in taken:
                taken.add(pair)
                out.append(pair)
            k += 1
        return out
