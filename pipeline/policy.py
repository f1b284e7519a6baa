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

Pair = tuple[str, str]  # (dataset_id, arch id)
POLICIES: dict[str, Callable] = {}


def register(name: str):
    def wrap(cls):
        POLICIES[name] = cls
        return cls
    return wrap


def check_strategy(name: str) -> None:
    """Refuse an unknown strategy name, listing the valid ones."""
    import pipeline.acquisition  # noqa: F401 (registers "pareto")
    if name not in POLICIES:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(POLICIES))}")


def create_policy(name: str, seed: int, pool: list[str], **kwargs):
    check_strategy(name)
    return POLICIES[name](seed=seed, pool=pool, **kwargs)


def taken_pairs(state: ZooState, pending: set[Pair]) -> set[Pair]:
    """Pairs not to propose again: finished, in flight, or given up after failing."""
    return {(r.dataset_id, r.arch) for r in state.results} | set(pending) | state.given_up()


@register("random")
class RandomPolicy:
    """The paper's baseline zoo: random pool architectures, spread evenly over the datasets.

    Each dataset walks its own seeded permutation of the arch pool; round r gives every
    dataset (in a seeded order) its r-th arch. The sequence is fixed by the seed and
    visits every (dataset, pool arch) pair once; pairs already done, pending, given up or
    outside `universe` are skipped, so an interrupted build proposes exactly what an
    uninterrupted one would have.
    """

    def __init__(self, seed: int, pool: list[str], **_):
        self.seed = seed
        self.pool = list(pool)

    def sequence(self, dataset_ids: list[str]):
        perms = {}
        for d in dataset_ids:
            perms[d] = list(self.pool)
            random.Random(f"{self.seed}:perm:{d}").shuffle(perms[d])
        for r in range(len(self.pool)):
            order = list(dataset_ids)
            random.Random(f"{self.seed}:round:{r}").shuffle(order)
            for d in order:
                yield d, perms[d][r]

    def propose(self, state: ZooState, n: int, pending: set[Pair] = frozenset(),
                universe: set[Pair] | None = None) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets)
        taken = taken_pairs(state, pending)
        out: list[Pair] = []
        for pair in self.sequence(dataset_ids):
            if len(out) >= n:
                break
            if pair not in taken and (universe is None or pair in universe):
                out.append(pair)
        return out
