"""What is known about a (dataset, arch) pair before training it, cached in the zoo (the
records and reading them; `compute_priors` computes them).

- Dataset features: [mean, std] of the frozen backbone features of the dataset's sampled
  training images (retriever/features.py: cached in the zoo, so a dataset is embedded
  once, for the acquisition predictor and the retriever alike).
- Arch profiles: for every architecture of the zoo's pool, with the base weights:
  parameters, FLOPs, batch-1 latency on the workers' device (on a CPU from a per-block
  table measured there, see workers/measure_archs.py), and the functional embedding
  (penultimate output for the manifest's noise, paper A.1). Cached in
  `pool/profiles.parquet`, measured on the workers. Latency and parameters of a candidate are thus known without
  training, and one measurement serves every dataset, so hypervolumes are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tans.workers.networks.ofa_space import Arch
from tans.zoo_schema import layout
from tans.zoo_schema.records import ArchProfile  # noqa: F401 - the profiles' record, used with Prior
from tans.zoo_schema.store import ZooStore

PROFILES_KEY = layout.POOL_PROFILES


@dataclass
class Prior:
    """Dataset features and arch profiles, as arrays the acquisition policy can index."""

    features: dict[str, np.ndarray]
    profiles: dict[str, ArchProfile]

    def bounds(self) -> tuple[float, float, float, float]:
        lat = [p.latency_ms for p in self.profiles.values()]
        par = [p.params for p in self.profiles.values()]
        return min(lat), max(lat), min(par), max(par)


def cached_profiles(store: ZooStore) -> dict[str, ArchProfile] | None:
    """The arch profiles cached in the zoo, or None before a build has profiled the pool."""
    if not store.exists(PROFILES_KEY):
        return None
    return {r["arch"]: ArchProfile(**r) for r in store.read_table(PROFILES_KEY).to_pylist()}


def topology_of(arch_id: str) -> list[int]:
    return Arch.parse(arch_id).topology()
