"""The settings a zoo was built with, read back from its build journal: what `tans resume`
continues with, and what `tans build` / `tans submit` on an existing zoo start from.

A zoo's identity is its architecture space and pool (`arch`), its training recipe (`train`,
the image size included) and its acquisition strategy: every network in it was made that way,
so a later build of the same zoo keeps them. Other settings (the budget, parallelism, MLflow,
the acquisition policy's knobs) follow the usual precedence over the recorded ones.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tans.pipeline.execution.config import BuildConfig, build_dataclass, load_config
from tans.zoo_schema import layout
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.manifest import require_zoo
from tans.zoo_schema.redact import is_redacted
from tans.zoo_schema.results import read_state
from tans.zoo_schema.store import ZooStore, open_store

IDENTITY = ("arch", "train", "strategy")  # config sections (or keys) a later build may not change


def recorded_config(store: ZooStore) -> dict | None:
    """The config of the zoo's most recent build as journaled (a dict), or None when no build
    has started on it."""
    starts = [store.read_json(k) for k in store.list(layout.BUILDS)]
    starts = [s for s in starts if s.get("event") == "start" and "config" in s]
    return max(starts, key=lambda s: s["at"])["config"] if starts else None


def _usable(data: dict, zoo: str, s3, log) -> dict:
    """A journaled config made runnable here: the zoo it is given, dataset folders that no
    longer exist left out, a masked MLflow URI replaced by $MLFLOW_TRACKING_URI."""
    data = dict(data, zoo=zoo)
    if s3 is not None and s3.endpoint_url:
        data["s3"] = dict(data.get("s3", {}), endpoint_url=s3.endpoint_url)
    kept = [d for d in data.get("datasets", []) if "://" in d or os.path.isdir(d)]
    for d in sorted(set(data.get("datasets", [])) - set(kept)):
        log(f"dataset folder {d} of the last build no longer exists; continuing with what the zoo holds")
    data["datasets"] = kept
    if is_redacted(data.get("mlflow", {}).get("tracking_uri", "")):
        log("the last build's MLflow URI held credentials, which are never journaled; using $MLFLOW_TRACKING_URI")
        data["mlflow"] = dict(data["mlflow"], tracking_uri="")
    return data


def last_build_config(zoo: str, s3=None, log=print) -> BuildConfig:
    """The config of the zoo's most recent build, for `tans resume ZOO`, building the zoo at
    `zoo` (wherever it was built, copied or moved from)."""
    store = open_store(zoo, s3)
    require_zoo(store)
    data = recorded_config(store)
    if data is None:
        raise ConfigError(
            f"the zoo at {zoo} has no recorded build to resume; start one with `tans build --zoo {zoo} ...`"
        )
    return build_dataclass(BuildConfig, _usable(data, zoo, s3, log))


def jobs_in_zoo(store: ZooStore, max_attempts: int) -> int:
    """What counts against a build's `max_jobs`: the zoo's results and its given-up pairs."""
    state = read_state(store, max_attempts, light=True)
    return len(state.results) + len(state.given_up())


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "names":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def contradictions(config: BuildConfig, recorded: BuildConfig) -> list[str]:
    """The identity settings (`IDENTITY`) where `config` differs from the recorded build's."""
    ours, theirs = (_flatten(json.loads(json.dumps(dataclasses.asdict(c)))) for c in (config, recorded))
    return [
        f"{key}: the zoo was built with {theirs[key]!r}, this build asks {ours[key]!r}"
        for key in sorted(ours)
        if key.split(".")[0] in IDENTITY and ours[key] != theirs.get(key)
    ]


def resolve_config(
    path: str | None, overrides: dict, environ=None, add_jobs: int | None = None, log=print
) -> BuildConfig:
    """The config of `tans build` / `tans submit`. On a zoo that has been built before, its
    recorded settings come first (then the file, the environment and the flags, as always);
    a file or flag that contradicts an identity setting is refused, naming it. `add_jobs` grows
    the budget by that many jobs over what the zoo holds (`max_jobs` stays the total)."""
    config = load_config(path, overrides, environ)
    if add_jobs is not None and overrides.get("max_jobs") is not None:
        raise ConfigError("pass --max-jobs (the zoo's total) or --add-jobs (jobs to add), not both")
    store = open_store(config.zoo, config.s3)
    data = recorded_config(store) if config.executor == "ray" else None
    if data is not None:
        data = {k: v for k, v in data.items() if k != "follow"}  # following is how a build runs, not the zoo's
        recorded = build_dataclass(BuildConfig, _usable(data, config.zoo, config.s3, log))
        given = {k: v for k, v in overrides.items() if v is not None}
        config = load_config(path, given, environ, base=_usable(data, config.zoo, config.s3, lambda *_: None))
        wrong = contradictions(config, recorded)
        if wrong:
            raise ConfigError(
                f"the zoo at {config.zoo} was built with other settings: {'; '.join(wrong)}. Drop the "
                "flag or config key (a later build keeps the zoo's architecture space, training recipe "
                "and strategy), or build another zoo"
            )
    if add_jobs is not None:
        held = jobs_in_zoo(store, config.resources.max_attempts) if data is not None else 0
        config = dataclasses.replace(config, max_jobs=held + add_jobs)
        log(f"budget: the zoo holds {held} jobs; {add_jobs} more make {held + add_jobs}")
    return config
