"""What a Ray worker runs: `run_job` fine-tunes one (dataset, arch) pair and commits it.

Order of writes: the checkpoint (content-addressed, so a retried or concurrent attempt
never overwrites a committed one), then the result row, create-only. The row is the
commit: a job whose row exists is done, and a second writer of the same job is a no-op
that returns the committed record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from datetime import UTC, datetime

import torch
from safetensors.torch import save as save_safetensors

from tans.workers.cache import JobCache
from tans.workers.job import JobSpec
from tans.workers.networks.export import checkpoint_metadata, network_config
from tans.workers.networks.images import load_tensors
from tans.workers.networks.measure import count_flops, device_name, functional_embedding, measure_latency_ms
from tans.workers.networks.nets import load_base_supernet, load_checkpoint, model_for
from tans.workers.networks.ofa_space import Arch
from tans.workers.networks.training import train
from tans.zoo_schema.errors import StorageError, TansError
from tans.zoo_schema.journal import record_start
from tans.zoo_schema.records import ResultRecord, from_table, to_table
from tans.zoo_schema.results import find_result, read_result
from tans.zoo_schema.sealed import find_row
from tans.zoo_schema.shards import read_dataset
from tans.zoo_schema.store import S3Settings, ZooStore, open_store


def committed_result(store: ZooStore, spec: JobSpec) -> ResultRecord:
    """The row committed under a job's result key, refused unless it is that job's."""
    record = read_result(store, spec.result_key)
    if (record.job_id, record.dataset_id, record.arch) != (spec.job_id, spec.dataset_id, spec.arch):
        raise StorageError(
            f"{spec.result_key} in {store.uri} holds the row of job {record.job_id} "
            f"({record.dataset_id}, {record.arch}), not of its own job: run `tans verify "
            f"{store.uri}` (it sets the file aside), then build again to re-train the job"
        )
    return record


def prefetch_data(spec: JobSpec, zoo_uri: str, s3: S3Settings | None, cache: JobCache, threads: int = 1) -> bool:
    """Decode a queued job's splits into a warm worker's cache while the worker's current job
    trains, so the job finds them held. True when both are held. It never raises: a job whose
    data cannot be read meets that error itself when it runs, and reports it there."""
    try:
        store = open_store(zoo_uri, s3)
        if store.exists(spec.result_key):
            return False  # committed already: the job will not read its data
        for split in ("train", "test"):
            cache.split(store, spec.dataset_id, spec.dataset_sha256, split, spec.train.image_size, threads)
        return True
    except Exception:  # noqa: BLE001 - a hint only; the job reports its own errors
        return False


def run_job(
    spec: JobSpec, zoo_uri: str, s3: S3Settings | None = None, threads: int | None = None, cache: JobCache | None = None
) -> ResultRecord:
    """Fine-tune, evaluate, profile and embed one pair; commit checkpoint and result row. A warm
    worker passes its `cache` (the base supernet and decoded splits it already holds); the
    result is the same with or without it."""

    store = open_store(zoo_uri, s3)
    if store.exists(spec.result_key):  # already committed: writing it again is a no-op
        return committed_result(store, spec)
    if (row := find_row(store, spec.job_id)) is not None:  # committed, and sealed by `tans compact` since
        (record,) = from_table(ResultRecord, row)
        return record
    record_start(store, spec.job_id)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed = spec.train.seed ^ int(spec.job_id[:8], 16)
    clock = time.perf_counter()
    x, y, xt, yt = _splits(store, spec, cache, threads or 1)
    seconds = {"data_seconds": time.perf_counter() - clock}
    clock = time.perf_counter()
    model = _start_model(store, spec, cache, seed)
    seconds["setup_seconds"] = time.perf_counter() - clock
    started, timings = time.perf_counter(), {}
    losses, accs = train(model, x, y, xt, yt, spec.train, device, seed, timings=timings)
    train_seconds = time.perf_counter() - started
    clock = time.perf_counter()
    measured = _measure(model, spec, device, cache)
    seconds.update(eval_seconds=timings.get("eval", 0.0), profile_seconds=time.perf_counter() - clock)
    record = ResultRecord(
        job_id=spec.job_id,
        dataset_id=spec.dataset_id,
        arch=spec.arch,
        topology=Arch.parse(spec.arch).topology(),
        accuracy=float(accs[-1]),
        **measured,
        latency_device=device_name(device),
        checkpoint_uri="",
        checkpoint_sha256="",
        num_classes=spec.num_classes,
        epochs=spec.train.epochs,
        image_size=spec.train.image_size,
        train_seconds=train_seconds,
        epoch_losses=losses,
        epoch_accuracies=accs,
        base_weights=f"job:{spec.init_job}" if spec.init_job else spec.base_weights.id,
        created_at=datetime.now(UTC).isoformat(),
        **seconds,
    )
    return _commit(store, spec, model, record)


def _splits(store: ZooStore, spec: JobSpec, cache: JobCache | None, threads: int):
    """(x, y, x_test, y_test) of the job's dataset, from the warm worker's cache when it has one."""
    size = spec.train.image_size
    if cache is not None:
        x, y = cache.split(store, spec.dataset_id, spec.dataset_sha256, "train", size, threads)
        xt, yt = cache.split(store, spec.dataset_id, spec.dataset_sha256, "test", size, threads)
    else:
        x, y = load_tensors(store, spec.dataset_id, "train", size, workers=threads)
        xt, yt = load_tensors(store, spec.dataset_id, "test", size, workers=threads)
    return x, y, xt, yt


def _start_model(store: ZooStore, spec: JobSpec, cache: JobCache | None, seed: int) -> torch.nn.Module:
    """The network the job fine-tunes: its arch from the base weights with a new classifier, or
    (`tans finetune`) a zoo network's weights with a new classifier."""
    torch.manual_seed(seed)
    if spec.init_job:  # fine-tune a retrieved zoo network: its weights, a new classifier
        source = find_result(store, spec.init_job)
        if source is None:
            raise TansError(f"job {spec.init_job} has no result in {store.uri}; pick one from `tans search`")
        model = load_checkpoint(store, source, spec.width)
        model.classifier = torch.nn.Linear(model.classifier.in_features, spec.num_classes)
        return model
    supernet = (
        cache.supernet(store, spec.width, spec.base_weights)
        if cache is not None
        else load_base_supernet(store, spec.width, spec.base_weights)
    )
    torch.manual_seed(seed)  # the new classifier's init depends on the job alone, warm or cold
    return model_for(spec.arch, spec.num_classes, spec.width, supernet)


def _measure(model: torch.nn.Module, spec: JobSpec, device, cache: JobCache | None) -> dict:
    """The trained network's params, FLOPs, latency and functional embedding."""
    settings = spec.train
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model.cpu(), settings.image_size)
    model.to(device)
    with cache.timing if cache is not None else contextlib.nullcontext():  # no prefetch decodes beside it
        latency = measure_latency_ms(model, settings.image_size, device, settings.latency_repeats)
    embedding = functional_embedding(model, spec.noise_seed, spec.noise_shape, device)
    return {"params": int(params), "flops": flops, "latency_ms": latency, "functional_embedding": embedding}


def _commit(store: ZooStore, spec: JobSpec, model: torch.nn.Module, record: ResultRecord) -> ResultRecord:
    """Write the checkpoint (content-addressed), then the result row create-only: the commit.
    A second attempt that lost the race returns the committed row and drops its checkpoint."""
    # the checkpoint describes itself: its metadata holds what `tans export` writes as config.json
    config = network_config(record, read_dataset(store, spec.dataset_id), spec.width)
    clock = time.perf_counter()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save_safetensors(state, metadata=checkpoint_metadata(config))
    sha = hashlib.sha256(blob).hexdigest()
    ckpt_key = spec.checkpoint_key(sha)
    store.write_bytes(ckpt_key, blob, create_only=True)
    record = dataclasses.replace(
        record, checkpoint_uri=ckpt_key, checkpoint_sha256=sha, checkpoint_seconds=time.perf_counter() - clock
    )
    if not store.write_table(spec.result_key, to_table([record]), create_only=True):
        committed = committed_result(store, spec)
        if committed.checkpoint_sha256 != sha:  # another attempt won: drop our copy, keep theirs
            store.delete(ckpt_key)
        return committed
    return record
