"""The peer policies (pipeline/acquisition/peers.py) on the synthetic world of
tests/test_acquisition.py: NSGA-II's rebuilt generations, determinism across a resume,
the spread over datasets, and the snap to the pool."""

from __future__ import annotations

import numpy as np
import pytest

from tans.pipeline.acquisition import peers
from tans.pipeline.acquisition.base import Pair, PolicyContext
from tans.pipeline.acquisition.registry import create_policy
from tans.zoo_schema.results import ZooState
from tests.helpers import DATASETS, POOL, make_prior, make_state, result


def policy(name: str, seed: int = 0):
    return create_policy(name, PolicyContext(seed, tuple(POOL), prior=make_prior(), log=lambda *_: None))


def one_dataset_state(n: int) -> ZooState:
    """n results on DATASETS[0] only, committed in pool order."""
    state = make_state(0)
    return ZooState(state.datasets, [result(DATASETS[0], POOL[i], 0.3 + 0.04 * i, i) for i in range(n)], [])


def test_nsga2_study_rebuilds_the_generations():
    from optuna.samplers import NSGAIISampler

    assert peers.GENERATION_KEY == NSGAIISampler._get_generation_key()
    state = one_dataset_state(9)
    p = policy("nsga2")
    study = p.study(DATASETS[0], state.results, [], [9, 10, 11])
    assert [t.system_attrs[peers.GENERATION_KEY] for t in study.trials] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    with peers.quiet():
        study.ask(peers.distributions())
    assert study.trials[-1].system_attrs[peers.GENERATION_KEY] == 2  # the sampler continues generation 2
    # propose sorts the results in commit order (created_at, job_id)
    shuffled = ZooState(state.datasets, list(reversed(state.results)), [])
    assert p.propose(shuffled, 2) == p.propose(state, 2)


@pytest.mark.parametrize("name", ["nsga2", "tpe"])
def test_resume_proposes_the_same_and_the_seed_matters(name):
    state = make_state(3)  # every dataset past the random startup
    batch = policy(name).propose(state, 6)
    assert policy(name).propose(state, 6) == batch  # a fresh policy: a resumed build
    # one pair at a time, the earlier ones pending, gives the batch
    for k in range(1, 6):
        assert policy(name).propose(state, 1, pending=frozenset(batch[:k])) == [batch[k]]
    assert any(policy(name, seed).propose(state, 6) != batch for seed in (1, 2))


def test_qnehvi_resumes_and_picks_pool_genomes(monkeypatch):
    state = one_dataset_state(4)
    state = ZooState(state.datasets[:1], state.results, [])  # one dataset: two picks, one GP fit
    nearest = []
    snap = peers.snap

    def spy(genomes, free, x):
        nearest.append(float(((genomes[free] - x) ** 2).sum(1).min()))
        return snap(genomes, free, x)

    monkeypatch.setattr(peers, "snap", spy)
    batch = policy("qnehvi").propose(state, 2)
    assert len(set(batch)) == 2 and nearest == [0.0, 0.0]  # the acquisition's argmax is a pool genome
    assert policy("qnehvi").propose(state, 1, pending=frozenset(batch[:1])) == batch[1:]


def test_datasets_with_the_fewest_pairs_come_first():
    rows = [("d0", 3), ("d1", 1), ("d3", 2)]
    results = [result(d, POOL[i], 0.5, 10 * j + i) for j, (d, k) in enumerate(rows) for i in range(k)]
    state = ZooState(make_state(0).datasets, results, [])
    pending = frozenset({Pair("d2", POOL[0]), Pair("d2", POOL[1])})  # counts: d0 3, d1 1, d2 2, d3 2
    for name in ("nsga2", "tpe"):
        out = policy(name).propose(state, 4, pending=pending)
        assert out[0].dataset_id == "d1" and sorted(d for d, _ in out[1:]) == ["d1", "d2", "d3"]
        # a dataset with no allowed pair left is skipped
        universe = frozenset(Pair(d, a) for d in DATASETS if d != "d1" for a in POOL)
        out = policy(name).propose(state, 5, pending=pending, universe=universe)
        assert sorted(d for d, _ in out[:2]) == ["d2", "d3"] and sorted(d for d, _ in out[2:]) == ["d0", "d2", "d3"]
        assert set(out) <= universe


def test_snap_returns_the_nearest_allowed_pool_arch():
    genomes = np.array([[peers.genome(a)[k] for k in peers.NAMES] for a in POOL], dtype=float)
    x = genomes[5]
    assert peers.snap(genomes, list(range(12)), x) == 5  # a pool genome snaps to itself
    free = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    got = peers.snap(genomes, free, x)
    scaled = (genomes - x) / (peers.HIGH - peers.LOW)
    assert got in free and (scaled[got] ** 2).sum() == min((scaled[i] ** 2).sum() for i in free)
    assert peers.snap(np.stack([genomes[3], genomes[3]]), [0, 1], genomes[3]) == 0  # ties: pool order
    g = peers.genome(POOL[0])
    assert len(g) == 45 and all(g[k] in (3, 5, 7) for k in g if k[0] == "k")  # inactive slots filled with 3


@pytest.mark.parametrize("name", ["nsga2", "tpe", "qnehvi"])
def test_peers_start_from_the_same_initial_design_as_random_and_pareto(name):
    from tans.pipeline.acquisition.random import RandomPolicy

    empty = make_state(0)
    first = policy(name).propose(empty, peers.STARTUP * len(DATASETS))
    order = RandomPolicy(PolicyContext(0, tuple(POOL)))
    for d in DATASETS:
        assert [a for dd, a in first if dd == d] == order.permutation(d)[: peers.STARTUP]
    assert set(first) == set(policy("pareto").propose(empty, peers.STARTUP * len(DATASETS)))
