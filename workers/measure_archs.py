"""Profiling candidate architectures before any training: parameters, FLOPs, batch-1
latency and functional embedding of each pool arch with the base weights. The driver has
them computed once per zoo, in parallel chunks on the workers (`RayJobs.profile` in pipeline/execution/ray_executor.py).

Latency on a CPU comes from a lookup table, as OFA's search does (its `LatencyTable`, which
it downloads; here it is measured on the worker itself): the batch-1 time of every block
choice (slot x kernel x expand) and of the fixed stem and head, timed block by block in 9
full-depth subnets (one per kernel x expand). An arch's latency is the fixed part plus its
active blocks. On a CPU a forward is the sum of its blocks, and the table's
estimate agrees with a direct measurement as well as a second direct measurement does
(`bench/latency_table.py` prints both agreements); it costs 9 measured networks instead of
one per arch. On a GPU the blocks run asynchronously and do not add up, so each arch is measured
whole there, as a job measures its network; so is each arch of a pool of fewer than
`TABLE_MIN_ARCHS` archs (the table costs about what measuring 16 archs whole does). The choice
is made per pool (`manifest.pool_size`), not per chunk, so one pool's latencies on one kind of
device all come the same way."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from tans.workers.networks.measure import WARMUP, count_flops, functional_embedding, measure_latency_ms
from tans.workers.networks.nets import load_base_supernet
from tans.workers.networks.ofa_space import EXPANDS, KERNELS, MAX_DEPTH, SLOTS, UNITS, Arch, build_subnet
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile
from tans.zoo_schema.store import S3Settings, ZooStore, open_store

LATENCY_REPEATS = 10
TABLE_MIN_ARCHS = 16


@dataclass(frozen=True)
class LatencyTable:
    """Batch-1 milliseconds of the stem and head (`fixed_ms`) and of each block choice
    (`block_ms[(slot, kernel, expand)]`) at one image size on one device."""

    image_size: int
    fixed_ms: float
    block_ms: dict

    def estimate_ms(self, arch: Arch) -> float:
        return self.fixed_ms + sum(
            self.block_ms[(slot, k, e)] for slot, (k, e) in enumerate(zip(arch.kernels, arch.expands)) if k
        )


def _block_times_ms(subnet, image_size: int, repeats: int) -> list[float]:
    """Median batch-1 ms of [stem + first block, each later block, head] of a subnet (its
    forward, timed piece by piece; CPU)."""
    import torch

    subnet.eval()
    x0 = torch.randn(1, 3, image_size, image_size)
    runs = []
    with torch.no_grad():
        for i in range(repeats + WARMUP):
            times, clock = [], time.perf_counter()
            x = subnet.blocks[0](subnet.first_conv(x0))
            for block in subnet.blocks[1:]:
                now = time.perf_counter()
                times.append(now - clock)
                clock = now
                x = block(x)
            now = time.perf_counter()
            times.append(now - clock)
            x = subnet.feature_mix_layer(subnet.global_avg_pool(subnet.final_expand_layer(x)))
            subnet.classifier(x.view(x.size(0), -1))
            times.append(time.perf_counter() - now)
            if i >= WARMUP:
                runs.append(times)
    return [statistics.median(run[j] for run in runs) * 1000 for j in range(len(runs[0]))]


def latency_table(supernet, image_size: int, repeats: int = LATENCY_REPEATS) -> LatencyTable:
    """Measure the table on this CPU (the supernet's weights are not changed; its active subnet
    is left at the last one measured, as `build_subnet` leaves it at each arch's)."""
    fixed, block_ms = [], {}
    for k in KERNELS:
        for e in EXPANDS:
            arch = Arch.from_config([k] * SLOTS, [e] * SLOTS, [MAX_DEPTH] * UNITS)
            times = _block_times_ms(build_subnet(supernet, arch, num_classes=10), image_size, repeats)
            fixed.append(times[0] + times[-1])
            block_ms.update({(slot, k, e): times[1 + slot] for slot in range(SLOTS)})
    return LatencyTable(image_size, statistics.median(fixed), block_ms)


def profile_archs(
    store: ZooStore, manifest: Manifest, arch_ids: list[str], image_size: int, device=None, supernet=None
) -> list[ArchProfile]:
    """The profiles of `arch_ids`, in order, measured on `device` (default: CPU), with the
    zoo's base supernet (`supernet` when the caller holds it already; it is not modified)."""
    import torch

    device = device or torch.device("cpu")
    if supernet is None:
        supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
    table = (
        latency_table(supernet, image_size)
        if device.type == "cpu" and arch_ids and manifest.pool_size >= TABLE_MIN_ARCHS
        else None
    )
    profiles = []
    for arch_id in arch_ids:
        arch = Arch.parse(arch_id)
        model = build_subnet(supernet, arch, num_classes=10).eval()
        params, flops = sum(p.numel() for p in model.parameters()), count_flops(model, image_size)
        model.to(device)
        latency = (
            table.estimate_ms(arch)
            if table is not None
            else measure_latency_ms(model, image_size, device, repeats=LATENCY_REPEATS)
        )
        profiles.append(
            ArchProfile(
                arch=arch_id,
                params=params,
                flops=flops,
                latency_ms=latency,
                functional_embedding=functional_embedding(model, manifest.noise_seed, manifest.noise_shape, device),
            )
        )
    return profiles


def profile_remote(
    zoo_uri: str,
    s3: S3Settings | None,
    manifest: Manifest,
    arch_ids: list[str],
    image_size: int,
    threads: int,
    cache=None,
) -> list[ArchProfile]:
    """`profile_archs` on a worker: on its GPU when it has one, like its jobs. A warm worker
    passes its `JobCache`, so the base supernet it loads here serves its jobs afterwards."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = open_store(zoo_uri, s3)
    supernet = cache.supernet(store, manifest.width, manifest.base_weights) if cache is not None else None
    return profile_archs(store, manifest, arch_ids, image_size, device, supernet)
