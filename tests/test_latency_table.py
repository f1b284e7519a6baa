"""The pool profile's CPU latency lookup table (workers/measure_archs.py): each piece of a forward
timed where it runs, one entry per block choice keyed as ofa orders the blocks, an arch's
latency the fixed part plus its active blocks, used for every chunk of a pool large enough
to pay for it. (How well the table agrees with direct measurements is a timing question,
answered by bench/latency_table.py, not here.)"""

from __future__ import annotations

from dataclasses import replace

import torch

from tans.workers import measure_archs as profile
from tans.workers.networks.ofa_space import EXPANDS, KERNELS, MAX_DEPTH, SLOTS, UNITS, Arch, arch_pool, build_supernet
from tans.zoo_schema.manifest import BaseWeights, Manifest
from tans.zoo_schema.store import open_store

MANIFEST = Manifest(
    width=1.0,
    kernels=list(KERNELS),
    expands=list(EXPANDS),
    depths=[2, 3, 4],
    noise_seed=0,
    noise_shape=[2, 3, 32, 32],
    base_weights=BaseWeights("random", "random-seed0", seed=0),
    pool_size=profile.TABLE_MIN_ARCHS,
)


class _Clock:
    now = 0.0


class _Tick(torch.nn.Module):
    """A layer that takes `seconds` of a fake clock and passes its input through."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        _Clock.now += self.seconds
        return x


def test_each_piece_of_the_forward_is_timed_where_it_runs(monkeypatch):
    """Stem and first block, then every later block alone, then the head: an off-by-one or a
    head left out would show here (the clock only moves while a layer runs)."""
    net = torch.nn.Module()
    net.first_conv, net.final_expand_layer, net.global_avg_pool = _Tick(1), _Tick(1000), _Tick(2000)
    net.feature_mix_layer, net.classifier = _Tick(4000), _Tick(8000)
    net.blocks = torch.nn.ModuleList([_Tick(10), *(_Tick(100 + i) for i in range(SLOTS))])
    monkeypatch.setattr(profile.time, "perf_counter", lambda: _Clock.now)
    times = profile._block_times_ms(net, 8, repeats=3)
    assert times == [11_000, *(1000 * (100 + i) for i in range(SLOTS)), 15_000_000]


def test_the_table_is_keyed_by_slot_kernel_and_expand_as_ofa_orders_the_blocks(monkeypatch):
    """The 9 full-depth subnets' blocks land under (slot, kernel, expand) read from the block
    itself; the stem and head are the fixed part."""

    def coded_times(subnet, image_size, repeats):
        return [
            1.0,
            *(slot * 100 + b.conv.kernel_size * 10 + b.conv.expand_ratio for slot, b in enumerate(subnet.blocks[1:])),
            2.0,
        ]

    monkeypatch.setattr(profile, "_block_times_ms", coded_times)
    table = profile.latency_table(build_supernet(1.0), 32)
    assert table.fixed_ms == 3.0
    assert table.block_ms == {(s, k, e): s * 100 + k * 10 + e for s in range(SLOTS) for k in KERNELS for e in EXPANDS}
    arch = arch_pool(0, 1)[0]
    assert table.estimate_ms(arch) == 3.0 + sum(
        s * 100 + k * 10 + e for s, (k, e) in enumerate(zip(arch.kernels, arch.expands)) if k
    )


def test_a_measured_table_ranks_the_largest_arch_above_the_smallest():
    table = profile.latency_table(build_supernet(1.0), 32, repeats=3)
    assert table.fixed_ms > 0 and all(ms > 0 for ms in table.block_ms.values())
    largest = Arch.from_config([7] * SLOTS, [6] * SLOTS, [MAX_DEPTH] * UNITS)
    smallest = Arch.from_config([3] * SLOTS, [3] * SLOTS, [2] * UNITS)
    assert table.estimate_ms(largest) > 1.5 * table.estimate_ms(smallest)  # 20 wide blocks vs 10 narrow


def test_every_chunk_of_a_large_pool_takes_the_table_and_a_small_pool_is_measured_whole(tmp_path, monkeypatch):
    """Decided per pool, so the chunks of one pool agree: a chunk of 2 archs of a 16-arch pool
    gets the table's estimates; a 2-arch pool's archs are measured whole (no table is made)."""
    made = []

    def fake_table(supernet, image_size, repeats=profile.LATENCY_REPEATS):
        made.append(image_size)
        return profile.LatencyTable(
            image_size, 1.0, {(s, k, e): 0.25 for s in range(SLOTS) for k in KERNELS for e in EXPANDS}
        )

    monkeypatch.setattr(profile, "latency_table", fake_table)
    store, supernet = open_store(str(tmp_path / "zoo")), build_supernet(1.0)
    archs = [a.id for a in arch_pool(0, 2)]
    got = profile.profile_archs(store, MANIFEST, archs, 32, supernet=supernet)
    assert made == [32]
    assert [p.latency_ms for p in got] == [1.0 + 0.25 * sum(Arch.parse(a).depths) for a in archs]
    small = profile.profile_archs(store, replace(MANIFEST, pool_size=2), archs, 32, supernet=supernet)
    assert made == [32]  # no table for a pool of two
    assert [p.params for p in small] == [p.params for p in got]
    assert all(p.latency_ms > 0 and p.latency_ms not in (1.0 + 0.25 * n for n in range(21)) for p in small)
