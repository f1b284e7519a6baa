"""The Policy contract (pipeline/acquisition/base.py), tested over every registered strategy
on a small synthetic world (tests/test_acquisition.py): 4 datasets x 12 pool architectures
with a known pool profile, so the Pareto policy reaches its predictor phase."""

from __future__ import annotations

import pytest

from tans.pipeline.acquisition.base import Pair, ParetoSettings, PolicyContext
from tans.pipeline.acquisition.registry import POLICIES, create_policy
from tans.zoo_schema.journal import Failure
from tans.zoo_schema.results import ZooState
from tests.helpers import DATASETS, POOL, make_prior, make_state


def policy(name: str, seed: int = 0):
    return create_policy(
        name,
        PolicyContext(
            seed,
            tuple(POOL),
            prior=make_prior(),
            log=lambda *_: None,
            pareto=ParetoSettings(n_init_per_dataset=3, retrain_every=4),
        ),
    )


def world(n_per_dataset: int) -> ZooState:
    """The synthetic zoo, with one pair given up (failed once, max_attempts 1, no result)."""
    state = make_state(n_per_dataset)
    given_up = Failure("job-given-up", DATASETS[0], POOL[-1], "RuntimeError: boom", "t")
    return ZooState(state.datasets, state.results, [given_up], max_attempts=1)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("n_per_dataset", [1, 3])  # the Pareto policy's initial phase, then its predictor
def test_policy_contract(name, n_per_dataset):
    state = world(n_per_dataset)
    done = {Pair(r.dataset_id, r.arch) for r in state.results}
    given_up = state.given_up()
    assert given_up == {Pair(DATASETS[0], POOL[-1])}
    first = policy(name).propose(state, 6)
    # the same inputs give the same proposals (no hidden state: a resumed build agrees)
    assert policy(name).propose(state, 6) == first
    assert len(first) == 6 == len(set(first)) and all(isinstance(p, Pair) for p in first)
    pending = frozenset(first[:2])
    more = policy(name).propose(state, 40, pending=pending)
    allowed = {Pair(d, a) for d in DATASETS for a in POOL} - done - given_up - pending
    assert len(more) == len(set(more)) == min(40, len(allowed)) and set(more) <= allowed
    # everything left, and nothing outside a universe
    everything = policy(name).propose(state, 1000)
    assert set(everything) == allowed | pending
    universe = frozenset(sorted(allowed)[::3])
    inside = policy(name).propose(state, 1000, universe=universe)
    assert set(inside) == universe and len(inside) == len(universe)
    assert policy(name).propose(state, 0) == []
