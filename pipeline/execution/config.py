"""The build config: one small frozen dataclass per concern, loaded from TOML.

Unknown keys are errors that list the valid ones; every setting has a default, so a build
needs no file at all. Command-line flags override the file (see `pipeline/cli/`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tans.pipeline.acquisition.base import ParetoSettings
from tans.pipeline.datasets.ingest import IngestSettings
from tans.pipeline.execution.executor import ResourceSettings
from tans.pipeline.execution.tracking import MlflowSettings
from tans.retriever.train import RetrainSettings
from tans.workers.job import TrainSettings
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.store import S3Settings


@dataclass(frozen=True)
class ArchSettings:
    width: float = 1.0  # 1.0 (1280-d penultimate) or 1.2 (1536-d, the paper's)
    base_weights: str = "pretrained"  # the shipped pretrained supernet (workers/networks/weights.py),
    # "random", or a path/URI of an OFA supernet state_dict
    base_seed: int = 0  # seed of the random base weights
    noise_seed: int = 0  # functional-embedding noise (fixed in the manifest)
    noise_batch: int = 8
    pool_size: int = 100  # candidate architectures of the zoo (paper: 100 per dataset)
    pool_seed: int = 0


@dataclass(frozen=True)
class StopSettings:
    max_worker_hours: float = 0.0  # summed fine-tuning hours of the zoo's jobs; 0 = no limit
    min_hv_gain: float = 0.0  # stop when mean normalized hypervolume gains less than this
    hv_window: int = 32  # ... over the last this many results; 0 gain = never stop


@dataclass(frozen=True)
class FollowSettings:
    enabled: bool = False  # keep running: ingest datasets as they appear under `datasets`
    jobs_per_dataset: int = 0  # the job budget each new dataset adds
    poll_seconds: float = 30.0  # how often the dataset roots are listed


@dataclass(frozen=True)
class BuildConfig:
    zoo: str = "./zoo"  # or $TANS_ZOO when the file does not set it
    datasets: list[str] = field(default_factory=list)  # dirs whose sub-folders are datasets
    max_jobs: int = 64  # total jobs (finished + failed) the zoo should hold
    strategy: str = "pareto"  # "pareto" (paper Algorithm 1), "random", "nsga2", "tpe", "qnehvi"
    seed: int = 0
    address: str = ""  # Ray address; empty starts a local Ray
    executor: str = "ray"  # "ray", or "replay:ZOO_URI" to answer jobs from an evaluated zoo
    lease_seconds: float = 60.0  # a driver's lease on the zoo goes stale this long after its last heartbeat
    names: dict[str, str] = field(default_factory=dict)  # dataset folder/file name -> dataset name
    train: TrainSettings = TrainSettings()
    arch: ArchSettings = ArchSettings()
    resources: ResourceSettings = ResourceSettings()
    ingest: IngestSettings = IngestSettings()
    pareto: ParetoSettings = ParetoSettings()
    stop: StopSettings = StopSettings()
    retrain: RetrainSettings = RetrainSettings()
    s3: S3Settings = S3Settings()
    mlflow: MlflowSettings = MlflowSettings()
    follow: FollowSettings = FollowSettings()

    def __post_init__(self):
        checks = [
            (self.max_jobs >= 0, "max_jobs must be >= 0"),
            (self.lease_seconds >= 3, "lease_seconds must be at least 3 (seconds)"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (self.train.image_size >= 16, "train.image_size must be >= 16"),
            (self.train.batch_size >= 2, "train.batch_size must be >= 2"),
            (self.resources.max_in_flight >= 1, "resources.max_in_flight must be >= 1"),
            (self.resources.max_attempts >= 1, "resources.max_attempts must be >= 1"),
            (self.arch.width in (1.0, 1.2), "arch.width must be 1.0 or 1.2"),
            (self.arch.pool_size >= 1, "arch.pool_size must be >= 1"),
            (self.pareto.retrain_every >= 1, "pareto.retrain_every must be >= 1"),
            (self.pareto.mc_samples >= 1, "pareto.mc_samples must be >= 1"),
            (self.stop.hv_window >= 1, "stop.hv_window must be >= 1"),
            (self.retrain.positive in ("weighted", "uniform"), "retrain.positive must be 'weighted' or 'uniform'"),
            (0 < self.ingest.test_fraction < 1, "ingest.test_fraction must be between 0 and 1"),
            (2 <= self.ingest.max_classes, "ingest.max_classes must be >= 2"),
            (self.follow.poll_seconds > 0, "follow.poll_seconds must be > 0"),
            (
                not self.follow.enabled or (self.follow.jobs_per_dataset >= 1 and self.datasets),
                "a following build needs dataset roots to watch (--datasets DIR or s3:// prefix) and the jobs "
                "each new dataset adds (--add-jobs N, or follow.jobs_per_dataset)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _coerce(value, annotation: str, where: str):
    kinds = {
        "int": int,
        "float": (int, float),
        "str": str,
        "bool": bool,
        "list[str]": list,
        "str | None": (str, type(None)),
        "dict[str, str]": dict,
    }
    expected = kinds.get(annotation)
    if expected is None:
        return value
    if isinstance(value, bool) and annotation in ("int", "float"):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where} must be {annotation}, not {type(value).__name__} {value!r}")
    if annotation == "float":
        return float(value)
    if annotation == "list[str]" and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    if annotation == "dict[str, str]" and not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigError(f"{where} must map names to non-empty strings")
    return value


def build_dataclass(cls, data: dict, where: str = ""):
    """A dataclass from a nested dict; unknown keys raise ConfigError naming the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, not {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
            f"valid keys{' in [' + where + ']' if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        path = f"{where}.{name}" if where else name
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_dataclass(type(default), value, path)
        else:
            kwargs[name] = _coerce(value, f.type, path)
    return cls(**kwargs)


# Environment variables that fill config keys: they override the file, flags override them.
ENVIRONMENT = {
    "TANS_ZOO": "zoo",
    "RAY_ADDRESS": "address",
    "MLFLOW_TRACKING_URI": "mlflow.tracking_uri",
    "AWS_ENDPOINT_URL": "s3.endpoint_url",
}


def _set(data: dict, dotted: str, value) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, table by table."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | None, overrides: dict | None = None, environ=None, base: dict | None = None) -> BuildConfig:
    """The build config. Precedence: flags (`overrides`, dotted keys) > environment
    (`ENVIRONMENT`) > the TOML file > `base` (a zoo's recorded settings) > defaults."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:  # TOML; JSON is what `tans submit` ships to the cluster
            data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid {p.suffix[1:].upper() or 'TOML'}: {e}") from None
    data = _merge(base or {}, data)
    environ = os.environ if environ is None else environ
    for variable, dotted in ENVIRONMENT.items():
        if environ.get(variable):
            _set(data, dotted, environ[variable])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(data, dotted, value)
    return build_dataclass(BuildConfig, data)
