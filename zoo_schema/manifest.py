"""The zoo manifest: what every job of the zoo shares, fixed when the zoo is created.

A build whose settings contradict the manifest (another arch space, other base weights,
another functional-embedding noise) is refused with the differences named, because its
results would not be comparable with the ones already in the zoo.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.errors import ZooConflictError
from zoo_schema.records import SCHEMA_VERSION
from zoo_schema.store import ZooStore

MANIFEST_KEY = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    width: float
    kernels: list[int]
    expands: list[int]
    depths: list[int]
    noise_seed: int
    noise_shape: list[int]
    base_weights: dict  # {"id", "kind": "random"|"file", "seed" | "key", "sha256"}
    pool_seed: int = 0   # the candidate architectures: workers.ofa_space.arch_pool(seed, size)
    pool_size: int = 100
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default="", compare=False)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def differences(have: Manifest, want: Manifest) -> list[str]:
    out = []
    for f in dataclasses.fields(Manifest):
        if f.compare and getattr(have, f.name) != getattr(want, f.name):
            out.append(f"{f.name}: zoo has {getattr(have, f.name)!r}, build asks {getattr(want, f.name)!r}")
    return out


def read_manifest(store: ZooStore) -> Manifest | None:
    if not store.exists(MANIFEST_KEY):
        return None
    return Manifest(**store.read_json(MANIFEST_KEY))


def ensure_manifest(store: ZooStore, want: Manifest) -> Manifest:
    """The zoo's manifest, created from `want` if the zoo has none; conflicts are refused."""
    have = read_manifest(store)
    if have is None:
        want = dataclasses.replace(want, created_at=datetime.now(timezone.utc).isoformat())
        if store.write_json(MANIFEST_KEY, want.to_json(), create_only=True):
            return want
        have = read_manifest(store)  # another driver created it first
    diff = differences(have, want)
    if diff:
        raise ZooConflictError(
            f"the zoo at {store.uri} was built with other settings:\n  " + "\n  ".join(diff) +
            "\nuse the zoo's settings for this build, or pass another --zoo to start a new zoo")
    return have
