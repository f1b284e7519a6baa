"""What every acquisition policy is: the `Policy` interface, the context it is built from,
and the pairs it proposes.

Contract (tested over every registered policy in tests/test_policy_contract.py):
- ask without hidden state: `propose` derives everything from the zoo state, the pending
  pairs and the seed, so a resumed build (no pickled policy) proposes exactly what an
  uninterrupted one would have, and the same inputs give the same proposals;
- it never proposes a pair that is finished, pending, given up, or outside `universe`
  (the pairs an executor can run; None: any), nor one pair twice;
- it proposes at most `n` pairs, and fewer only when fewer are allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.results import ZooState
from tans.zoo_schema.store import ZooStore


class Pair(NamedTuple):
    """One (dataset, architecture) job of the zoo."""

    dataset_id: str
    arch: str


@dataclass(frozen=True)
class ParetoSettings:
    """The Pareto-hypervolume policy (paper Algorithm 1)."""

    n_init_per_dataset: int = 3  # random pairs per dataset before the predictor (paper: 5-6)
    retrain_every: int = 64  # N_train: retrain S_zoo every this many results
    mc_samples: int = 10  # MC-dropout samples per candidate
    max_candidates: int = 1000  # |C_t|: a seeded subset of the untrained pairs is scored


@dataclass(frozen=True)
class PolicyContext:
    """What a policy is built from. `store` and `manifest` are needed by policies that read
    the zoo (the Pareto policy's dataset features and pool profiles); a policy given a
    `prior` (bench, tests) reads nothing."""

    seed: int
    pool: tuple[str, ...]  # the candidate architectures' ids
    store: ZooStore | None = None
    manifest: Manifest | None = None
    image_size: int = 32
    pareto: ParetoSettings = ParetoSettings()
    prior: object | None = None  # a tans.pipeline.acquisition.priors.Prior
    log: Callable[[str], None] = field(default=print, compare=False)


class Policy(Protocol):
    """Which (dataset, arch) pairs to train next."""

    def propose(
        self, state: ZooState, n: int, pending: frozenset[Pair] = frozenset(), universe: frozenset[Pair] | None = None
    ) -> list[Pair]: ...


def taken_pairs(state: ZooState, pending: Iterable[Pair]) -> set[Pair]:
    """Pairs not to propose again: finished, in flight, or given up after failing. Plain
    tuples, equal to the Pairs they stand for: making a million Pairs took 3 s of a step."""
    return {(r.dataset_id, r.arch) for r in state.results} | set(pending) | state.given_up()


def first_allowed(
    sequence: Iterable[Pair],
    n: int,
    taken: set[Pair],
    universe: frozenset[Pair] | None,
    limit: Callable[[Pair], bool] | None = None,
) -> list[Pair]:
    """The first `n` pairs of `sequence` that are not taken, are in `universe` (None: any)
    and pass `limit`; each pair once."""
    out: list[Pair] = []
    seen = set(taken)
    for pair in sequence:
        if len(out) >= n:
            break
        if pair not in seen and (universe is None or pair in universe) and (limit is None or limit(pair)):
            out.append(Pair(*pair))
            seen.add(pair)
    return out
