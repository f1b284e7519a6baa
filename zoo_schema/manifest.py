"""The zoo manifest: what every job of the zoo shares, fixed when the zoo is created.

A build whose settings contradict the manifest (another arch space, other base weights,
another functional-embedding noise) is refused with the differences named, because its
results would not be comparable with the ones already in the zoo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tans.zoo_schema import layout
from tans.zoo_schema.errors import StorageError, ZooConflictError
from tans.zoo_schema.records import SCHEMA_VERSION
from tans.zoo_schema.store import ZooStore

MANIFEST_KEY = layout.MANIFEST


@dataclass(frozen=True)
class BaseWeights:
    """The weights every zoo network starts from: a seeded random supernet (`kind="random"`)
    or a supernet file copied into the zoo (`kind="file"`, its key and sha256). `id` names
    them in result rows and MLflow."""

    kind: str  # "random" | "file"
    id: str
    seed: int = 0  # random only
    key: str = ""  # file only: the zoo key of the safetensors copy
    sha256: str = ""  # file only

    def to_json(self) -> dict:
        """The manifest's JSON entry (and what job ids hash): only the fields of its kind."""
        if self.kind == "random":
            return {"kind": self.kind, "seed": self.seed, "id": self.id}
        return {"kind": self.kind, "key": self.key, "sha256": self.sha256, "id": self.id}

    @classmethod
    def from_json(cls, data: dict) -> BaseWeights:
        if data.get("kind") not in ("random", "file"):
            raise ValueError(f"base_weights kind {data.get('kind')!r} is not 'random' or 'file'")
        return cls(**data)


@dataclass(frozen=True)
class Manifest:
    width: float
    kernels: list[int]
    expands: list[int]
    depths: list[int]
    noise_seed: int
    noise_shape: list[int]
    base_weights: BaseWeights
    pool_seed: int = 0  # the candidate architectures: tans.workers.networks.ofa_space.arch_pool(seed, size)
    pool_size: int = 100
    schema_version: int = field(default=SCHEMA_VERSION, compare=False)  # checked by ensure_manifest
    created_at: str = field(default="", compare=False)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "base_weights": self.base_weights.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        return cls(**{**data, "base_weights": BaseWeights.from_json(data["base_weights"])})


def differences(have: Manifest, want: Manifest) -> list[str]:
    out = []
    for f in dataclasses.fields(Manifest):
        if f.compare and getattr(have, f.name) != getattr(want, f.name):
            out.append(f"{f.name}: zoo has {getattr(have, f.name)!r}, build asks {getattr(want, f.name)!r}")
    return out


def read_manifest(store: ZooStore) -> Manifest | None:
    if not store.exists(MANIFEST_KEY):
        return None
    try:
        return Manifest.from_json(store.read_json(MANIFEST_KEY))
    except (ValueError, TypeError, KeyError) as e:
        raise StorageError(
            f"{MANIFEST_KEY} of the zoo at {store.uri} is unreadable ({type(e).__name__}: "
            f"{str(e)[:200]}); restore it from a copy of the zoo"
        ) from None


def require_zoo(store: ZooStore) -> Manifest | None:
    """The manifest of an existing zoo (None for a zoo that holds only datasets so far).

    Commands that only read call this first, so a mistyped path is an error instead of an
    empty zoo (and nothing is created there).
    """
    manifest = read_manifest(store)
    if manifest is None and not store.list(layout.DATASETS):
        raise StorageError(
            f"there is no zoo at {store.uri} (no manifest.json, no datasets); check the "
            "path, or create one with `tans build --zoo ...` or `tans datasets add`"
        )
    if manifest is not None and manifest.schema_version > SCHEMA_VERSION:
        raise ZooConflictError(
            f"the zoo at {store.uri} has schema version {manifest.schema_version}, "
            f"newer than this tans understands ({SCHEMA_VERSION}); upgrade tans"
        )
    return manifest


def ensure_manifest(store: ZooStore, want: Manifest) -> Manifest:
    """The zoo's manifest, created from `want` if the zoo has none; conflicts are refused."""
    have = read_manifest(store)
    if have is not None:
        require_zoo(store)  # a zoo of a newer schema is refused, an older one is read as it is
    if have is None:
        want = dataclasses.replace(want, created_at=datetime.now(UTC).isoformat())
        if store.write_json(MANIFEST_KEY, want.to_json(), create_only=True):
            return want
        have = read_manifest(store)  # another driver created it first
    diff = differences(have, want)
    if diff:
        raise ZooConflictError(
            f"the zoo at {store.uri} was built with other settings:\n  "
            + "\n  ".join(diff)
            + "\nuse the zoo's settings for this build, or pass another --zoo to start a new zoo"
        )
    return have
