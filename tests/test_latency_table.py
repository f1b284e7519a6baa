"""The pool profile's CPU latency lookup table (workers/profile.py): one entry per block choice,
an arch's latency the fixed part plus its active blocks, used for chunks large enough to pay
for it; a small chunk measures each network whole. (How well the table agrees with direct
measurements is a timing question, answered by bench/latency_table.py, not here.)"""
from __future__ import annotations

from workers import profile
from workers.ofa_space import EXPANDS, KERNELS, MAX_DEPTH, SLOTS, UNITS, Arch, arch_pool, build_supernet
from zoo_schema.manifest import BaseWeights, Manifest
from zoo_schema.store import open_store

MANIFEST = Manifest(width=1.0, kernels=list(KERNELS), expands=list(EXPANDS), depths=[2, 3, 4], noise_seed=0,
                    noise_shape=[2, 3, 32, 32], base_weights=BaseWeights("random", "random-seed0", seed=0),
                    pool_size=profile.TABLE_MIN_ARCHS)


def test_the_table_holds_every_block_choice_and_ranks_the_largest_arch_above_the_smallest():
    table = profile.latency_table(build_supernet(1.0), 32, repeats=2)
    assert set(table.block_ms) == {(slot, k, e) for slot in range(SLOTS) for k in KERNELS for e in EXPANDS}
    assert table.fixed_ms > 0 and all(ms > 0 for ms in table.block_ms.values())
    largest = Arch.from_config([7] * SLOTS, [6] * SLOTS, [MAX_DEPTH] * UNITS)
    smallest = Arch.from_config([3] * SLOTS, [3] * SLOTS, [2] * UNITS)
    assert table.estimate_ms(largest) > 1.5 * table.estimate_ms(smallest)  # 20 wide blocks vs 10 narrow


def test_profiles_take_latency_from_the_table_only_for_a_chunk_that_pays_for_it(tmp_path, monkeypatch):
    """A chunk of TABLE_MIN_ARCHS archs gets the table's estimates (fixed part + its active
    blocks); a smaller one is measured whole (no table is made)."""
    made = []

    def fake_table(supernet, image_size, repeats=profile.LATENCY_REPEATS):
        made.append(image_size)
        return profile.LatencyTable(image_size, 1.0, {(s, k, e): 0.25 for s in range(SLOTS)
                                                      for k in KERNELS for e in EXPANDS})

    monkeypatch.setattr(profile, "latency_table", fake_table)
    store, supernet = open_store(str(tmp_path / "zoo")), build_supernet(1.0)
    archs = [a.id for a in arch_pool(0, profile.TABLE_MIN_ARCHS)]
    got = profile.profile_archs(store, MANIFEST, archs, 32, supernet=supernet)
    assert made == [32]
    assert [p.latency_ms for p in got] == [1.0 + 0.25 * sum(Arch.parse(a).depths) for a in archs]
    small = profile.profile_archs(store, MANIFEST, archs[:2], 32, supernet=supernet)
    assert made == [32]  # no table for two archs
    assert [p.params for p in small] == [p.params for p in got[:2]]
    assert all(p.latency_ms > 0 and p.latency_ms not in (1.0 + 0.25 * n for n in range(21)) for p in small)

