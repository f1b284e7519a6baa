"""Algorithm 1 pieces: hypervolume gain, MC-dropout predictor, pending jobs, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tans.pipeline.acquisition.base import ParetoSettings, PolicyContext
from tans.pipeline.acquisition.hypervolume import (
    REF,
    SMALL_FRONT,
    Normalizer,
    gains,
    hv_history,
    hypervolume,
    normalized_hypervolume,
)
from tans.pipeline.acquisition.pareto import ParetoPolicy, training_size
from tans.pipeline.acquisition.predictor import fit, mc_grid, mc_samples
from tans.zoo_schema.results import ZooState
from tests.helpers import DATASETS, POOL, make_prior, make_state, result


@pytest.mark.parametrize("size", [1, 2, 5, 12, SMALL_FRONT, SMALL_FRONT + 6])
def test_hypervolume_gains_equal_pygmos_volume_with_and_without_each_candidate(size):
    """The vectorized sweep (and, past SMALL_FRONT, the per-candidate path) against pygmo's
    HV(front + c) - HV(front) itself: random fronts, grid values with ties, candidates on the
    front, dominated and dominating ones."""
    import pygmo

    rng = np.random.default_rng(size)
    for trial in range(30):
        front = rng.uniform(0, 1, (size, 3))
        front[:, 2] = np.clip(1.1 - front[:, 0] - front[:, 1] + rng.normal(0, 0.1, size), 0, 1)  # mostly a front
        cands = rng.uniform(0, 1, (80, 3))
        if trial % 3 == 0:  # ties everywhere
            front, cands = np.round(front * 4) / 4, np.round(cands * 4) / 4
        cands[:size] = front[: len(cands)]
        front_hv = pygmo.hypervolume(front).compute(REF)
        expected = [pygmo.hypervolume(np.vstack([front, c])).compute(REF) - front_hv for c in cands]
        assert gains(front, cands) == pytest.approx(expected, abs=1e-12)


def test_hypervolume_gain_matches_hand_computation():
    assert REF.tolist() == [1.1, 1.1, 1.1]
    front = np.array([[0.1, 0.1, 0.1]])
    assert hypervolume(front) == pytest.approx(1.0)  # (1.1 - 0.1)^3
    cands = np.array(
        [
            [0.0, 0.5, 0.5],  # box 1.1*0.6*0.6 = 0.396, overlap with front 1.0*0.6*0.6 = 0.36
            [0.2, 0.2, 0.2],  # dominated: adds nothing
            [0.05, 0.05, 0.05],  # dominates the front: 1.05^3 - 1
            [0.1, 0.1, 0.1],  # equal to the front: adds nothing
        ]
    )
    assert gains(front, cands) == pytest.approx([0.036, 0.0, 1.05**3 - 1.0, 0.0])
    assert gains(np.zeros((0, 3)), cands[:1]) == pytest.approx([0.396])
    assert gains(front, [[1.5, 0.0, 0.0]]) == pytest.approx([0.0])  # past the reference point: nothing
    # two-point front: union of boxes by inclusion-exclusion
    two = np.array([[0.1, 0.6, 0.1], [0.6, 0.1, 0.1]])
    assert hypervolume(two) == pytest.approx(0.5 + 0.5 - 0.25)  # |A| + |B| - |A and B|
    assert normalized_hypervolume(front) == pytest.approx(1.0 / 1.331)


def test_normalizer_maps_pool_extremes_to_0_and_1():
    n = Normalizer(2.0, 12.0, 1e6, 5e6)
    assert n.objectives(0.9, 2.0, 5e6).tolist() == [pytest.approx([0.1, 0.0, 1.0])]
    assert n.objectives([0.5], [7.0], [3e6])[0] == pytest.approx([0.5, 0.5, 0.5])


def test_training_size_follows_retrain_cadence():
    assert training_size(10, 12, 64) == 10
    assert training_size(40, 36, 64) == 36
    assert training_size(100, 36, 64) == 64
    assert training_size(130, 36, 64) == 128
    # past 16 intervals the interval doubles as the zoo doubles: 40 fits from 420 results (140 datasets x 3) to 14,000
    assert training_size(1100, 60, 64) == 1024 and training_size(2100, 60, 64) == 2048
    assert training_size(14_000, 420, 64) == 13_312
    assert len({training_size(n, 420, 64) for n in range(420, 14_001)}) == 40


# -- a small synthetic world: 4 datasets x 12 pool archs, accuracy from a hidden rule ------


def policy(seed=0):
    return ParetoPolicy(
        PolicyContext(
            seed,
            tuple(POOL),
            prior=make_prior(),
            log=lambda *_: None,
            pareto=ParetoSettings(n_init_per_dataset=3, retrain_every=64),
        )
    )


def test_mc_dropout_samples_differ_and_are_seeded():
    rng = np.random.default_rng(0)
    data, topo, func = rng.normal(size=(40, 16)), rng.integers(0, 7, (40, 45)), rng.normal(size=(40, 8))
    y = rng.uniform(0.2, 0.9, 40)
    model = fit(data, topo, func, y, seed=1, max_epochs=30)
    s = mc_samples(model, data[:5], topo[:5], func[:5], samples=10, seed=3)
    assert s.shape == (10, 5) and ((s >= 0) & (s <= 1)).all()
    assert (s.std(0) > 1e-4).all()  # dropout kept on: samples disagree
    assert np.array_equal(s, mc_samples(model, data[:5], topo[:5], func[:5], samples=10, seed=3))


def test_mc_grid_equals_mc_samples_over_every_pair():
    rng = np.random.default_rng(1)
    data, topo, func = rng.normal(size=(4, 16)), rng.integers(0, 7, (5, 45)), rng.normal(size=(5, 8))
    rows = [(i, j) for i in range(4) for j in range(5)]
    d, t, f = data[[i for i, _ in rows]], topo[[j for _, j in rows]], func[[j for _, j in rows]]
    model = fit(d, t, f, rng.uniform(0.2, 0.9, len(rows)), seed=1, max_epochs=20)
    grid = mc_grid(model, data, topo, func, samples=6, seed=9)
    assert grid.shape == (6, 4, 5)
    assert np.allclose(grid.reshape(6, -1), mc_samples(model, d, t, f, samples=6, seed=9), atol=1e-6)


def test_a_policy_that_remembers_proposes_what_a_fresh_one_does():
    """The policy memoizes (MC grid per model, gains per dataset front): reusing it across
    steps must give exactly what a resumed build's fresh policy gives."""
    p = policy()
    state = make_state(n_per_dataset=3)
    first = p.propose(state, 2)
    grown = ZooState(state.datasets, state.results + [result(first[0][0], first[0][1], 0.95, 50)], [])
    fresh = policy()
    assert p.propose(grown, 3, pending=frozenset(first[1:])) == fresh.propose(grown, 3, pending=frozenset(first[1:]))
    assert p.last_scores == pytest.approx(fresh.last_scores)


def test_the_predictor_refits_off_the_loop_and_a_policy_pinned_to_a_fit_proposes_the_same():
    """A grown zoo's refit runs in the background while the last fit keeps proposing; the fit
    behind each proposal is recorded, and a fresh policy pinned to it (its fit made again from
    scratch) proposes exactly the same: what a resumed build relies on."""
    from tans.pipeline.acquisition.fitting import Fitter

    lines: list[str] = []

    def make():
        settings = ParetoSettings(n_init_per_dataset=3, retrain_every=4)
        return ParetoPolicy(PolicyContext(0, tuple(POOL), prior=make_prior(), log=lines.append, pareto=settings))

    state = make_state(n_per_dataset=3)  # 12 results: the predictor's first fit, waited for
    p = make()
    p.propose(state, 2)
    assert p._model_size == 12 and any("retrained on 12 results" in line for line in lines)
    new = [result(d, POOL[10], 0.5, 20 + k) for k, d in enumerate(DATASETS)]
    grown = ZooState(state.datasets, state.results + new, [])
    picks = p.propose(grown, 3)  # training_size is 16 now: that fit starts, the one on 12 proposes
    fitter = Fitter.shared()
    assert fitter.running is not None and fitter.running.size == 16
    assert p._model_size == 12 and p.last_fit_of == dict.fromkeys(picks, 12)
    fitter.done.clear()  # the pinned policy fits again from nothing, in the same background process
    pinned = make()
    pinned.fit_size = 12
    assert pinned.propose(grown, 3) == picks and pinned.last_scores == pytest.approx(p.last_scores)
    # once the refit is done the policy proposes with it, as a fresh policy does
    later = p.propose(grown, 3)
    assert p._model_size == 16 and set(p.last_fit_of.values()) == {16}
    assert any("retrained on 16 results" in line and "off the loop" in line for line in lines)
    assert make().propose(grown, 3) == later


def test_a_resumed_build_proposes_at_once_with_the_fit_its_interrupted_run_kept_in_the_zoo(tmp_path):
    """Each fit that takes over is kept in the zoo (safetensors, the newest few); a resumed
    build's fresh policy and fitting process find the one the interrupted run proposed with
    (its rows a prefix of the results, same seed) and propose exactly what it did without
    waiting, while the fit on all results starts. A damaged kept fit costs a fit, not the build."""
    from tans.pipeline.acquisition.fitting import Fitter
    from tans.zoo_schema.layout import PREDICTOR_FITS
    from tans.zoo_schema.store import open_store

    store = open_store(str(tmp_path / "zoo"))
    lines: list[str] = []

    def make(seed=0):
        settings = ParetoSettings(n_init_per_dataset=3, retrain_every=4)
        context = PolicyContext(seed, tuple(POOL), store=store, prior=make_prior(), log=lines.append, pareto=settings)
        return ParetoPolicy(context)

    def restart():  # the driver's process dies: its fitting process and its memo of fits with it
        fitter = Fitter.shared()
        fitter.close()
        fitter.done.clear()
        lines.clear()
        return fitter

    restart()  # no fit of an earlier test in the memo
    state = make_state(n_per_dataset=3)  # 12 results: the first fit, waited for, then kept
    p = make()
    p.propose(state, 2)
    assert [k.rsplit("/", 1)[1][:10] for k in store.list(PREDICTOR_FITS)] == ["000000012-"]
    new = [result(d, POOL[10], 0.5, 20 + k) for k, d in enumerate(DATASETS)]
    grown = ZooState(state.datasets, state.results + new, [])
    picks = p.propose(grown, 3)  # the fit on 16 starts; the one on 12 proposes
    assert p.last_fit_of == dict.fromkeys(picks, 12)
    fitter = restart()
    resumed = make()
    assert resumed.propose(grown, 3) == picks and resumed.last_fit_of == p.last_fit_of
    assert resumed.last_scores == pytest.approx(p.last_scores)
    assert any("on 12 results read from the zoo" in line for line in lines)
    assert fitter.running is not None and fitter.running.size == 16  # the fit on every result runs meanwhile
    # a damaged kept fit is named, deleted and fitted again
    (key,) = [k for k in store.list(PREDICTOR_FITS) if "/000000012-" in k]
    store.write_bytes(key, b"\x08" + bytes(40))
    restart()
    again = make()
    assert len(again.propose(grown, 3)) == 3
    assert any("does not load" in line and key in line for line in lines)
    assert not any("read from the zoo" in line for line in lines) and not store.exists(key)
    assert 1 <= len(store.list(PREDICTOR_FITS)) <= 3
    # another seed's fits are other rows' hashes: not used
    restart()
    make(seed=1).propose(grown, 3)
    assert not any("read from the zoo" in line for line in lines)
    # the fits are a cache: a store that cannot keep one is logged, and proposing goes on
    from tans.zoo_schema.errors import StorageError

    def full(*args, **kw):
        raise StorageError("no space left on device")

    restart()
    for k in store.list(PREDICTOR_FITS):
        store.delete(k)
    store.write_bytes = full
    assert len(make().propose(grown, 3)) == 3
    assert any("was not kept in the zoo (no space left on device)" in line for line in lines)


def test_the_first_fit_starts_during_the_initial_phase_so_the_first_pareto_step_does_not_wait():
    """A third of the way through the initial design the fit on those results starts in the
    background; the first predictor-driven step proposes with it (the fit on all initial
    results starting then), and a policy pinned to it proposes the same."""
    import time

    from tans.pipeline.acquisition.fitting import Fitter
    from tans.pipeline.acquisition.pareto import early_fit_size

    def make():
        settings = ParetoSettings(n_init_per_dataset=3, retrain_every=4)
        return ParetoPolicy(PolicyContext(0, tuple(POOL), prior=make_prior(), log=lambda line: None, pareto=settings))

    fitter = Fitter.shared()

    def settle():
        while fitter.running is not None:
            fitter.poll()
            time.sleep(0.02)

    settle()  # an earlier test's fit
    fitter.done.clear()
    full = make_state(n_per_dataset=3)  # 12 results, in dataset order
    assert early_fit_size(12) == 4
    p = make()
    three = ZooState(full.datasets, full.results[:3], [])
    assert len(p.propose(three, 2)) == 2 and fitter.running is None and not p._fits  # too early
    four = ZooState(full.datasets, full.results[:4], [])
    initial = p.propose(four, 2)
    assert {d for d, _ in initial} <= set(DATASETS[1:]) and p._model is None  # still the initial design ...
    assert fitter.running is not None and fitter.running.size == 4  # ... and the first fit runs
    settle()  # the rest of the initial design trains meanwhile
    picks = p.propose(full, 3)
    assert p._model_size == 4 and p.last_fit_of == dict.fromkeys(picks, 4)  # no wait for a fit on 12
    assert fitter.running is not None and fitter.running.size == 12
    fitter.done.clear()  # the pinned policy fits again from nothing
    pinned = make()
    pinned.fit_size = 4
    assert pinned.propose(full, 3) == picks


def test_a_build_on_a_zoo_past_its_initial_phase_fits_on_all_results_not_the_oldest():
    """Datasets added to a grown zoo restart the initial phase for them only: a new build's
    policy must not start an early fit on the zoo's oldest rows (it would propose with it)."""
    from tans.pipeline.acquisition.fitting import Fitter

    fitter = Fitter.shared()
    settings = ParetoSettings(n_init_per_dataset=3, retrain_every=4)
    p = ParetoPolicy(PolicyContext(0, tuple(POOL), prior=make_prior(), log=lambda line: None, pareto=settings))
    rows = [
        result(d, POOL[(i * 7 + j) % len(POOL)], 0.2 + 0.03 * i, j * 10 + i)
        for j, d in enumerate(DATASETS[:3])
        for i in range(10)
    ]
    datasets = make_state().datasets  # d3 has no results yet
    initial = p.propose(ZooState(datasets, rows, []), 2)
    assert {d for d, _ in initial} == {DATASETS[3]} and not p._fits
    rows += [
        result(DATASETS[3], a, 0.5, 40 + k) for k, a in enumerate(a for a in POOL if (DATASETS[3], a) not in initial)
    ][:3]
    p.propose(ZooState(datasets, rows, []), 2)
    assert p._model_size == training_size(33, 12, 4) == 32 and fitter.done
    # fewer results than the grown initial design, but some dataset past its initial pairs
    few = [result(d, POOL[i], 0.3 + 0.02 * i, j * 10 + i) for j, d in enumerate(DATASETS[:2]) for i in range(5)]
    fresh = ParetoPolicy(PolicyContext(0, tuple(POOL), prior=make_prior(), log=lambda line: None, pareto=settings))
    assert {d for d, _ in fresh.propose(ZooState(datasets, few, []), 2)} <= set(DATASETS[2:])
    assert not fresh._fits  # 10 results of the 12 an initial design of 4 datasets has, yet no early fit


def test_with_no_fit_finished_a_step_waits_for_the_running_one_not_a_queued_smaller_one():
    """An early fit whose rows changed (a result set aside) is queued again behind the stale
    one; the first predictor step then finds the fit on all results running and waits for it,
    not for the queued smaller one after it."""
    import time

    from tans.pipeline.acquisition.fitting import Fitter

    fitter = Fitter.shared()
    full = make_state(n_per_dataset=3)
    p = ParetoPolicy(
        PolicyContext(
            0,
            tuple(POOL),
            prior=make_prior(),
            log=lambda line: None,
            pareto=ParetoSettings(n_init_per_dataset=3, retrain_every=4),
        )
    )
    while fitter.running is not None:  # an earlier test's fit
        fitter.poll()
        time.sleep(0.02)
    fitter.done.clear()  # and its finished ones
    p.propose(ZooState(full.datasets, full.results[:4], []), 2)
    assert fitter.running.size == 4
    p.propose(ZooState(full.datasets, full.results[1:5], []), 2)  # the first result set aside: asked again
    while fitter.running is not None:  # the stale fit ends; the new early fit never started
        fitter.poll()
        time.sleep(0.02)
    grown = full.results[1:12] + [result(DATASETS[0], POOL[-1], 0.3, 40)]
    p.propose(ZooState(full.datasets, grown, []), 2)
    assert p._model_size == 12


def test_a_fitting_process_answers_pings_between_fits_and_times_its_own_fits():
    """`wait_ready` returns once the process has imported torch, at once while a fit runs, and
    never takes a fit's reply for its own (nor a fit a ping's); a fit's seconds are the
    process's, not the time until it was collected; a process killed mid-fit is replaced and
    the fit asked for again."""
    import select
    import time

    from tans.pipeline.acquisition.fitting import Fit, Fitter

    rng = np.random.default_rng(0)
    data, topo, func = rng.normal(size=(3, 16)), rng.normal(size=(4, 45)), rng.normal(size=(4, 8))
    rows = [(i % 3, i % 4) for i in range(24)]
    inputs = lambda: (data, topo, func, [d for d, _ in rows], [a for _, a in rows], rng.uniform(0.2, 0.9, len(rows)))  # noqa: E731
    fitter = Fitter(threads=1)
    try:
        fitter.wait_ready()
        assert fitter._process.poll() is None
        first = Fit(24, key=1, seed=1)
        started = time.monotonic()
        assert fitter.request(first, inputs)
        fitter.wait_ready()  # a fit runs: returns at once, nothing sent
        assert select.select([fitter._process.stdout], [], [], 120)[0]  # the fit's reply is there ...
        time.sleep(1.0)  # ... and collected a second later
        assert fitter.wait_for(first, inputs).model is not None
        assert first.seconds <= time.monotonic() - started - 1.0
        fitter.wait_ready()  # a ping after a fit ...
        second = fitter.wait_for(Fit(24, key=2, seed=2), inputs)  # ... and a fit after a ping
        assert second.model is not None and second.model.val_mse != first.model.val_mse
        third = Fit(24, key=3, seed=3)
        fitter.request(third, inputs)
        fitter._process.kill()  # killed mid-fit (out of memory)
        fitter._process.wait()
        fitter.warm()  # a new process; the lost fit is no longer running ...
        assert fitter.running is None and fitter.wait_for(third, inputs).model is not None  # ... and is fitted again
    finally:
        fitter.close()


def test_a_script_without_a_main_guard_builds_with_the_background_fitter(tmp_path):
    """A user's plain script (no `if __name__ == "__main__"`) proposes with the predictor: the
    fitting process does not re-run the caller's main module, and it ends with the script."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "plain.py"
    script.write_text(
        "from tans.pipeline.acquisition.base import ParetoSettings, PolicyContext\n"
        "from tans.pipeline.acquisition.pareto import ParetoPolicy\n"
        "from tests.helpers import POOL, make_prior, make_state\n"
        "settings = ParetoSettings(n_init_per_dataset=3, retrain_every=64)\n"
        "p = ParetoPolicy(PolicyContext(0, tuple(POOL), prior=make_prior(), log=print, pareto=settings))\n"
        "print(len(p.propose(make_state(n_per_dataset=3), 2)), p._model_size)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "retrained on 12 results" in out.stdout and out.stdout.strip().endswith("2 12")


def test_initial_phase_is_random_then_pareto():
    state = make_state(n_per_dataset=1)
    first = policy().propose(state, 8)
    assert sorted(d for d, _ in first) == sorted(DATASETS * 2)  # fills every dataset to n_init
    full = make_state(n_per_dataset=3)
    p = policy()
    proposal = p.propose(full, 1)
    assert len(proposal) == 1 and p.last_scores  # scored by the predictor
    assert max(p.last_scores.values()) == pytest.approx(p.last_scores[proposal[0]])


def test_same_state_and_seed_give_same_proposals():
    state = make_state()
    assert policy(0).propose(state, 4) == policy(0).propose(state, 4)


def test_pending_jobs_change_the_next_proposal():
    state = make_state()
    p = policy()
    best = p.propose(state, 1)[0]
    before = dict(p.last_scores)
    p.propose(state, 1, pending={best})
    after = p.last_scores
    same_dataset = [c for c in after if c[0] == best[0]]
    assert all(after[c] <= before[c] + 1e-12 for c in same_dataset)
    assert any(after[c] < before[c] - 1e-9 for c in same_dataset)
    # a batch of proposals also spreads: each pick is a believer for the next
    batch = policy().propose(state, 4)
    assert len(set(batch)) == 4 and batch[0] == best


def test_hv_history_grows_with_better_results():
    prior = make_prior()
    rs = [result("d0", POOL[0], 0.3, 0), result("d0", POOL[1], 0.9, 1), result("d1", POOL[0], 0.5, 2)]
    h = hv_history(rs, prior.profiles, DATASETS)
    assert len(h) == 3 and h[0] < h[1] < h[2]
    # at marks only (what `tans status` shows): the same values, datasets recomputed lazily
    assert hv_history(rs, prior.profiles, DATASETS, at=[0, 2]) == [h[0], h[2]]
    assert hv_history(rs, prior.profiles, DATASETS, at=[1]) == [h[1]]


@pytest.mark.parametrize("start", [0, 1, 30, 60])
def test_incremental_fronts_and_volumes_equal_recomputing_each_prefix(start):
    """`tans status`'s per-row summaries (front size and hypervolume after each result),
    computed from a first block at once and then point by point, equal recomputing every
    prefix; coarse values make ties and duplicate points."""
    from tans.pipeline.acquisition.hypervolume import front_after, front_indices, hypervolume_after

    rng = np.random.default_rng(3)
    costs, points = np.round(rng.uniform(size=(60, 3)), 1), np.round(rng.uniform(size=(60, 3)), 1)
    fronts, volumes = front_after(costs, start), hypervolume_after(points, start)
    for k in range(start, 60):
        assert fronts[k] == len(front_indices([tuple(c) for c in costs[: k + 1]]))
        assert volumes[k] == pytest.approx(normalized_hypervolume(points[: k + 1]), abs=1e-12)


def test_nondominated_keeps_exactly_the_points_no_other_dominates_once_each():
    from tans.pipeline.acquisition.hypervolume import nondominated

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 60):
        for _ in range(10):
            points = np.round(rng.random((n, 3)), 1)  # coarse: ties in some objectives, and duplicates
            if n > 2:
                points[1] = points[0]
            want = {
                tuple(p)
                for p in points
                if not any((q <= p).all() and (q < p).any() for q in points)  # by the definition, one pair at a time
            }
            got = nondominated(points)
            assert len(got) == len(want) and {tuple(p) for p in got} == want
