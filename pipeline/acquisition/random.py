"""The paper's baseline zoo: random pool architectures, spread evenly over the datasets."""

from __future__ import annotations

import random
from collections.abc import Iterator

from tans.pipeline.acquisition.base import Pair, PolicyContext, first_allowed, taken_pairs
from tans.zoo_schema.results import ZooState


class RandomPolicy:
    """The paper's baseline zoo: random pool architectures, spread evenly over the datasets.

    Each dataset walks its own seeded permutation of the arch pool; round r gives every
    dataset (in a seeded order) its r-th arch. The sequence is fixed by the seed and
    visits every (dataset, pool arch) pair once; pairs already done, pending, given up or
    outside `universe` are skipped, so an interrupted build proposes exactly what an
    uninterrupted one would have.
    """

    def __init__(self, context: PolicyContext):
        self.seed = context.seed
        self.pool = list(context.pool)

    def permutation(self, dataset_id: str) -> list[str]:
        """The dataset's seeded order of the pool (its initial design in every policy)."""
        perm = list(self.pool)
        random.Random(f"{self.seed}:perm:{dataset_id}").shuffle(perm)
        return perm

    def sequence(self, dataset_ids: list[str]) -> Iterator[Pair]:
        perms = {d: self.permutation(d) for d in dataset_ids}
        for r in range(len(self.pool)):
            order = list(dataset_ids)
            random.Random(f"{self.seed}:round:{r}").shuffle(order)
            for d in order:
                yield Pair(d, perms[d][r])

    def propose(
        self, state: ZooState, n: int, pending: frozenset[Pair] = frozenset(), universe: frozenset[Pair] | None = None
    ) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets)
        return first_allowed(self.sequence(dataset_ids), n, taken_pairs(state, pending), universe)
