"""`tans build`: ingest the configured datasets, fix the manifest, run the driver on Ray."""

from __future__ import annotations

import hashlib

from tans.pipeline.acquisition.compute_priors import profile_pool
from tans.pipeline.acquisition.registry import check_strategy
from tans.pipeline.datasets.ingest import slug
from tans.pipeline.execution.config import BuildConfig
from tans.pipeline.execution.driver import BuildSummary, Driver, journal_config
from tans.pipeline.execution.follow import follow
from tans.pipeline.execution.lease import Lease
from tans.pipeline.execution.ray_executor import ray_executor
from tans.pipeline.execution.replay import ReplayExecutor
from tans.pipeline.execution.retrain import run_retrain
from tans.pipeline.execution.roots import dataset_name, dataset_sources, ingest_all
from tans.pipeline.execution.runtime import start_ray
from tans.pipeline.execution.signals import interruption
from tans.pipeline.execution.tracking import Tracker, flat_params
from tans.workers.networks import weights
from tans.workers.networks.ofa_space import DEPTHS, EXPANDS, KERNELS, build_supernet
from tans.workers.networks.weights import read_state_dict
from tans.zoo_schema import layout
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.manifest import MANIFEST_KEY, BaseWeights, Manifest, ensure_manifest, read_manifest
from tans.zoo_schema.redact import redact
from tans.zoo_schema.store import ZooStore, open_store


def base_weights_entry(store: ZooStore, config: BuildConfig) -> BaseWeights:
    """The manifest's base-weights entry; a weights file is copied into the zoo as safetensors."""
    spec = config.arch.base_weights
    if spec == "random":
        return BaseWeights("random", f"random-seed{config.arch.base_seed}", seed=config.arch.base_seed)
    if spec == "pretrained":
        if config.arch.width != weights.WIDTH:
            raise ConfigError(
                f"the shipped pretrained base weights are width {weights.WIDTH}; set arch.width = "
                f"{weights.WIDTH}, or arch.base_weights to 'random' or to a supernet file of width "
                f"{config.arch.width} (OFA's published ofa_mbv3_d234_e346_k357_w1.2 for 1.2)"
            )
        have = read_manifest(store)
        if have is not None and have.base_weights.sha256 in weights.EARLIER.values():
            return have.base_weights  # started from a base tans shipped before: its copy is in the zoo
        spec = str(weights.shipped()[0])
    from safetensors.torch import save as st_save

    state = read_state_dict(spec, config.s3, "arch.base_weights (an OFA supernet or 'random')")
    try:
        build_supernet(config.arch.width).load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:  # OFA raises ValueError on unknown keys
        raise ConfigError(
            f"arch.base_weights {spec} does not fit the OFA MobileNetV3 supernet at "
            f"width {config.arch.width}: {str(e).splitlines()[0]}"
        ) from None
    blob = st_save({k: v.contiguous() for k, v in state.items()})
    sha = hashlib.sha256(blob).hexdigest()
    key = layout.base_weights_key(sha)
    if not store.exists(key):  # content-addressed: what is there has this sha256 (`tans verify` checks it)
        store.write_bytes(key, blob, create_only=True)
    return BaseWeights("file", f"sha256:{sha[:16]}", key=key, sha256=sha)


def wanted_manifest(store: ZooStore, config: BuildConfig) -> Manifest:
    size = config.train.image_size
    return Manifest(
        width=config.arch.width,
        kernels=list(KERNELS),
        expands=list(EXPANDS),
        depths=list(DEPTHS),
        noise_seed=config.arch.noise_seed,
        noise_shape=[config.arch.noise_batch, 3, size, size],
        base_weights=base_weights_entry(store, config),
        pool_seed=config.arch.pool_seed,
        pool_size=config.arch.pool_size,
    )


REPLAY_COPIES = ("datasets", "query_features", "pool", "base")  # base: the weights the manifest names


def seed_replay_zoo(target: ZooStore, source: ZooStore) -> Manifest:
    """A replay target starts with the source's manifest, datasets, features and profiles."""
    manifest = read_manifest(source)
    if manifest is None:
        raise ConfigError(f"replay source {source.uri} has no manifest; is it a tans zoo?")
    target.write_bytes(MANIFEST_KEY, source.read_bytes(MANIFEST_KEY), create_only=True)
    for prefix in REPLAY_COPIES:
        for key in source.list(prefix):
            if not target.exists(key):
                target.write_bytes(key, source.read_bytes(key))
    return ensure_manifest(target, manifest)


def prepare_zoo(config: BuildConfig, store: ZooStore, log=print) -> Manifest:
    """Everything a build writes before its first job: the configured datasets ingested and
    the manifest fixed (or, for a replay, the source zoo's manifest, datasets and profiles)."""
    if config.executor.startswith("replay:"):
        return seed_replay_zoo(store, open_store(config.executor[len("replay:") :], config.s3))
    if config.executor != "ray":
        raise ConfigError(f"unknown executor {config.executor!r}; use 'ray' or 'replay:ZOO_URI'")
    if not config.follow.enabled:  # a follower ingests each dataset once it is complete (follow.py)
        ingest_all(store, config, log)
    return ensure_manifest(store, wanted_manifest(store, config))


def make_executor(config: BuildConfig, store: ZooStore, ray_num_cpus: int | None = None):
    """The build's executor: Ray (started or joined here) for real training, or replay of an
    evaluated zoo."""
    if config.executor.startswith("replay:"):
        return ReplayExecutor(open_store(config.executor[len("replay:") :], config.s3), store)
    start_ray(config.address, num_cpus=ray_num_cpus)
    return ray_executor(store.uri, config.s3, config.resources)


def validate_build(config: BuildConfig) -> list[str]:
    """Everything about a build that can be checked before anything starts (no ingestion, no
    Ray, no MLflow): the strategy, the executor, and the dataset sources with their names.
    Returns the dataset sources."""
    check_strategy(config.strategy)
    if config.executor != "ray" and not (config.executor.startswith("replay:") and len(config.executor) > 7):
        raise ConfigError(f"unknown executor {config.executor!r}; use 'ray' or 'replay:ZOO_URI'")
    if config.executor != "ray":
        return []
    sources = [s for root in config.datasets for s in dataset_sources(root, config.s3, config.follow.enabled)]
    by_id: dict[str, str] = {}
    for source in sources:
        name = dataset_name(config, source)
        dataset_id = slug(name)
        if dataset_id in by_id:
            raise ConfigError(
                f"datasets {by_id[dataset_id]} and {source} both get the id {dataset_id!r}; rename one "
                f'folder, or name it in the config: [names] "{source.rstrip("/").rsplit("/", 1)[-1]}" = "other-name"'
            )
        by_id[dataset_id] = source
    return sources


def run_build(
    config: BuildConfig,
    log=print,
    ray_num_cpus: int | None = None,
    tracking: bool = True,
    progress=None,
    wait: bool = False,
    command: str = "tans build",
) -> BuildSummary:
    """Build (or continue building) the zoo of `config`; one driver per zoo (a lease).
    `progress` (tans.pipeline.execution.progress.Progress) shows the live status line on a terminal.

    The config is validated whole before anything starts. However the build ends, the lease
    is released and the MLflow run ends FINISHED, FAILED (an error) or KILLED (a signal)."""
    validate_build(config)
    store = open_store(config.zoo, config.s3)
    lease = Lease(store, ttl=config.lease_seconds, log=log, command=command).acquire(wait)
    try:
        manifest = prepare_zoo(config, store, log)
        if config.follow.enabled:
            return follow(
                config,
                store,
                lease,
                log,
                lambda c: build_round(c, store, manifest, lease, log, ray_num_cpus, tracking, progress),
            )
        return build_round(config, store, manifest, lease, log, ray_num_cpus, tracking, progress)
    finally:
        lease.release()


def build_round(
    config: BuildConfig,
    store: ZooStore,
    manifest: Manifest,
    lease: Lease,
    log=print,
    ray_num_cpus: int | None = None,
    tracking: bool = True,
    progress=None,
) -> BuildSummary:
    """One build under a held lease: the driver until a stopper stops it (its MLflow run),
    then the retriever retrained when it is stale."""
    tracker = executor = None
    try:
        executor = make_executor(config, store, ray_num_cpus)
        profile_pool(store, manifest, config.train.image_size, log, executor)  # hypervolumes need it, any strategy
        tracker = build_tracker(config, store, manifest) if tracking else None
        log(
            f"building zoo {store.uri}: up to {config.max_jobs} jobs, strategy {config.strategy}, "
            f"executor {config.executor}, {config.resources.max_in_flight} in flight"
            + (f"; MLflow at {redact(tracker.uri)}" if tracker else "")
        )
        summary = Driver(config, store, manifest, executor, tracker, log, lease=lease, progress=progress).run()
        summary.mlflow_run = tracker.build_run.info.run_id if tracker else ""
        executor.close()  # the warm workers' memory is free for the retriever's training
        if config.retrain.after_build and summary.zoo_results:
            run_retrain(
                store,
                config.retrain,
                config.train.image_size,
                config.retrain.if_grown,
                config.mlflow if tracking else None,
                log,
            )
    except BaseException as e:
        stop = interruption(e)
        if tracker:
            end_run(tracker, "KILLED" if stop or isinstance(e, KeyboardInterrupt) else "FAILED", e, log)
        if stop is not None and stop is not e:
            raise stop from None  # a signal wrapped by a native call is still a stop, not a crash
        raise
    finally:
        if executor is not None:
            executor.close()
    log(
        f"build stopped ({summary.stop_reason}): {summary.finished} finished, {summary.failed} failed "
        f"in {summary.seconds:.0f}s; the zoo holds {summary.zoo_results} results"
    )
    if summary.per_dataset:
        spent = sorted(summary.per_dataset.items(), key=lambda kv: (-kv[1], kv[0]))
        log("this build's jobs per dataset: " + ", ".join(f"{d} {n}" for d, n in spent))
    return summary


def build_tracker(config: BuildConfig, store: ZooStore, manifest: Manifest) -> Tracker:
    """The build's MLflow run, named after the zoo and the strategy, with the whole config."""
    name = f"build {store.uri.rstrip('/').rsplit('/', 1)[-1]} ({config.strategy})"
    return Tracker(config.mlflow, flat_params(journal_config(config)), run_name=name, store=store, width=manifest.width)


def end_run(tracker: Tracker, status: str, error: BaseException, log) -> None:
    """End the build's MLflow run as KILLED or FAILED; a failure to do so is logged, not raised
    (the build's own error is the one to report)."""
    try:
        tracker.end(status, f"{type(error).__name__}: {error}")
    except Exception as end_error:  # noqa: BLE001
        log(f"could not end the MLflow run: {type(end_error).__name__}: {redact(str(end_error))[:300]}")
