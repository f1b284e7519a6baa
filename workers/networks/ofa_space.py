"""The OFA MobileNetV3 architecture space (paper D.1): arch ids, topology vectors, subnets.

An architecture is 5 units of depth {2,3,4}; each of the 20 block slots has a kernel size
{3,5,7} and an expand ratio {3,4,6}. Its canonical id lists the depths, then the kernel
and expand ratio of the *active* blocks only, so two configs that differ only in inactive
slots share one id:  ``d23423-k35735...-e34634...``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tans.zoo_schema.errors import ConfigError

UNITS = 5
MAX_DEPTH = 4
SLOTS = UNITS * MAX_DEPTH
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (1.0, 1.2)
_ID = re.compile(r"^d([234]{5})-k([357]+)-e([346]+)$")


@dataclass(frozen=True)
class Arch:
    """One subnet: depth per unit, and kernel/expand for each of the 20 slots (0 if inactive)."""

    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]

    def __post_init__(self):
        if len(self.depths) != UNITS or any(d not in DEPTHS for d in self.depths):
            raise ConfigError(f"arch depths {self.depths} must be {UNITS} values in {DEPTHS}")
        if len(self.kernels) != SLOTS or len(self.expands) != SLOTS:
            raise ConfigError(f"arch needs {SLOTS} kernels and expands")
        for slot, (k, e) in enumerate(zip(self.kernels, self.expands)):
            active = slot % MAX_DEPTH < self.depths[slot // MAX_DEPTH]
            if active and (k not in KERNELS or e not in EXPANDS):
                raise ConfigError(f"arch slot {slot}: kernel {k} / expand {e} not in {KERNELS}/{EXPANDS}")
            if not active and (k, e) != (0, 0):
                raise ConfigError(f"arch slot {slot} is inactive and must hold kernel=expand=0")

    @classmethod
    def from_config(cls, ks, e, d) -> Arch:
        """From OFA's set_active_subnet arguments; inactive slots are zeroed."""
        ks, e, d = list(ks), list(e), list(d)
        kernels, expands = [], []
        for slot in range(SLOTS):
            active = slot % MAX_DEPTH < d[slot // MAX_DEPTH]
            kernels.append(ks[slot] if active else 0)
            expands.append(e[slot] if active else 0)
        return cls(tuple(d), tuple(kernels), tuple(expands))

    @classmethod
    def parse(cls, arch_id: str) -> Arch:
        m = _ID.match(arch_id)
        if not m:
            raise ConfigError(f"not an arch id: {arch_id!r} (expected like d23423-k357...-e346...)")
        depths = [int(c) for c in m.group(1)]
        ks, es = iter(int(c) for c in m.group(2)), iter(int(c) for c in m.group(3))
        if len(m.group(2)) != sum(depths) or len(m.group(3)) != sum(depths):
            raise ConfigError(f"arch id {arch_id!r}: need {sum(depths)} kernels and expands")
        kernels, expands = [], []
        for slot in range(SLOTS):
            active = slot % MAX_DEPTH < depths[slot // MAX_DEPTH]
            kernels.append(next(ks) if active else 0)
            expands.append(next(es) if active else 0)
        return cls(tuple(depths), tuple(kernels), tuple(expands))

    @property
    def id(self) -> str:
        ks = "".join(str(k) for k in self.kernels if k)
        es = "".join(str(e) for e in self.expands if e)
        return f"d{''.join(map(str, self.depths))}-k{ks}-e{es}"

    def topology(self) -> list[int]:
        """The paper's 45-int flat topology: 20 kernels, 20 expands, 5 depths (inactive = 0)."""
        return list(self.kernels) + list(self.expands) + list(self.depths)

    def ofa_config(self) -> dict:
        """Arguments for OFAMobileNetV3.set_active_subnet (inactive slots filled, then ignored)."""
        return {"ks": [k or 3 for k in self.kernels], "e": [e or 3 for e in self.expands], "d": list(self.depths)}


def sample_arch(rng: random.Random) -> Arch:
    """A uniformly random architecture of the space."""
    ks = [rng.choice(KERNELS) for _ in range(SLOTS)]
    es = [rng.choice(EXPANDS) for _ in range(SLOTS)]
    ds = [rng.choice(DEPTHS) for _ in range(UNITS)]
    return Arch.from_config(ks, es, ds)


def arch_pool(seed: int, size: int) -> list[Arch]:
    """The zoo's candidate architectures: `size` distinct seeded random archs.

    Prefix-stable: the pool of size 30 is the first 30 of the pool of size 100 (same seed).
    """
    pool: list[Arch] = []
    seen: set[str] = set()
    i = 0
    while len(pool) < size:
        arch = sample_arch(random.Random(f"{seed}:pool:{i}"))
        i += 1
        if arch.id not in seen:
            seen.add(arch.id)
            pool.append(arch)
    return pool


def ofa_module(name: str):
    """`import ofa.<name>` without ofa's ImageNet data loader. The package init of `ofa.utils`
    imports `ofa.utils.my_dataloader`, which imports torchvision and through it torch._dynamo:
    1.2 s of CPU in every process that touches ofa (the build driver, which trains nothing,
    pays it at start-up). tans trains with its own loop and never uses that loader; it can
    still be imported by its full name, which loads it then."""
    import importlib
    import sys
    import types

    if "ofa.utils" not in sys.modules:
        placeholder = types.ModuleType("ofa.utils.my_dataloader")  # `from .my_dataloader import *`: nothing
        sys.modules["ofa.utils.my_dataloader"] = placeholder
        try:
            importlib.import_module("ofa.utils")
        finally:
            if sys.modules.get("ofa.utils.my_dataloader") is placeholder:
                del sys.modules["ofa.utils.my_dataloader"]
            utils = sys.modules.get("ofa.utils")
            if utils is not None and getattr(utils, "my_dataloader", None) is placeholder:
                del utils.my_dataloader
    return importlib.import_module(f"ofa.{name}")


def build_supernet(width: float):
    """The full OFA MobileNetV3 supernet of the paper's space at a width multiplier."""
    OFAMobileNetV3 = ofa_module("imagenet_classification.elastic_nn.networks").OFAMobileNetV3

    if width not in WIDTHS:
        raise ConfigError(f"width {width} is not one of {WIDTHS}")
    return OFAMobileNetV3(
        n_classes=1000,
        dropout_rate=0.0,
        width_mult=width,
        ks_list=list(KERNELS),
        expand_ratio_list=list(EXPANDS),
        depth_list=list(DEPTHS),
    )


def feature_dim(width: float) -> int:
    """Penultimate (feature_mix_layer) width: 1280 at width 1.0, 1536 at 1.2."""
    return {1.0: 1280, 1.2: 1536}[width]


def build_subnet(supernet, arch: Arch, num_classes: int):
    """Extract `arch` from a supernet with its weights, with a fresh classifier for the task."""
    import torch

    supernet.set_active_subnet(**arch.ofa_config())
    subnet = supernet.get_active_subnet(preserve_weight=True)
    in_features = subnet.feature_mix_layer.conv.out_channels
    subnet.classifier = torch.nn.Linear(in_features, num_classes)
    return subnet


def penultimate(subnet, x):
    """The feature_mix_layer output (the functional embedding's layer) for a batch."""
    x = subnet.first_conv(x)
    for block in subnet.blocks:
        x = block(x)
    x = subnet.final_expand_layer(x)
    x = subnet.global_avg_pool(x)
    x = subnet.feature_mix_layer(x)
    return x.flatten(1)
