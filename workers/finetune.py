"""The worker's job: fine-tune one (dataset, arch) pair and commit it to the zoo.

Order of writes: the checkpoint (content-addressed, so a retried or concurrent attempt
never overwrites a committed one), then the result row, create-only. The row is the
commit: a job whose row exists is done, and a second writer of the same job is a no-op
that returns the committed record.
"""
from __future__ import annotations

import hashlib
import io
import platform
import statistics
import time
from datetime import datetime, timezone

import numpy as np

from pipeline.ingest import load_split
from workers.job import JobSpec, TrainSettings
from workers.ofa_space import Arch, build_subnet, build_supernet, penultimate
from zoo_schema.layout import checkpoint_location
from zoo_schema.records import ResultRecord, to_table
from zoo_schema.store import S3Settings, ZooStore, open_store

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


# -- data ---------------------------------------------------------------------------------

def decode_images(images: list[bytes], size: int, workers: int = 1) -> np.ndarray:
    """PNG bytes to a normalized float32 array [N, 3, size, size]; `workers` threads decode
    (PIL releases the GIL while decoding and resizing)."""
    from PIL import Image
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        with Image.open(io.BytesIO(images[i])) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    if workers > 1 and len(images) > 256:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(decode, range(len(images)), chunksize=64))
    else:
        for i in range(len(images)):
            decode(i)
    x = out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return (x - MEAN) / STD


def load_tensors(store: ZooStore, dataset_id: str, split: str, size: int, workers: int = 1):
    import torch
    images, labels = load_split(store, dataset_id, split)
    return torch.from_numpy(decode_images(images, size, workers)), torch.tensor(labels, dtype=torch.long)


GPU_RESIDENT_BYTES = 2 << 30


def stage_on(device, x, y):
    """On CUDA, the split moves to the GPU once when it is under 2 GiB (the built-in datasets
    are ~100 MB at 64 px), else into pinned memory so batch copies are asynchronous."""
    if device.type != "cuda":
        return x, y
    if x.element_size() * x.nelement() < GPU_RESIDENT_BYTES:
        return x.to(device), y.to(device)
    return x.pin_memory(), y.pin_memory()


# -- model --------------------------------------------------------------------------------

def load_base_supernet(store: ZooStore, width: float, base_weights: dict):
    """The OFA supernet with the zoo's base weights (random with a seed, or a stored file)."""
    import torch
    from safetensors.torch import load as load_safetensors

    if base_weights["kind"] == "random":
        torch.manual_seed(base_weights["seed"])
        return build_supernet(width)
    supernet = build_supernet(width)
    data = store.read_bytes(base_weights["key"])
    if hashlib.sha256(data).hexdigest() != base_weights["sha256"]:
        from pipeline.errors import StorageError
        raise StorageError(f"base weights {base_weights['key']} in {store.uri} do not match their "
                           "recorded sha256; the zoo's copy is corrupt: restore that file from the weights "
                           "the zoo was built with (its name is its sha256)")
    supernet.load_state_dict(load_safetensors(data))
    return supernet


def model_for(arch_id: str, num_classes: int, width: float, supernet=None):
    """An OFA subnet of `arch_id` with a classifier for `num_classes` (weights from supernet)."""
    return build_subnet(supernet if supernet is not None else build_supernet(width),
                        Arch.parse(arch_id), num_classes)


def load_checkpoint(store: ZooStore, record: ResultRecord, width: float):
    """The fine-tuned network of a result row, its sha256 verified."""
    from safetensors.torch import load as load_safetensors
    from pipeline.errors import StorageError

    holder, key = checkpoint_location(store, record.checkpoint_uri)
    data = holder.read_bytes(key)
    if hashlib.sha256(data).hexdigest() != record.checkpoint_sha256:
        raise StorageError(f"checkpoint {holder.uri_of(key)} does not match its recorded sha256; "
                           f"it is corrupt: run `tans verify {store.uri}`")
    model = model_for(record.arch, record.num_classes, width)
    model.load_state_dict(load_safetensors(data))
    return model.eval()


def recalibrate_bn(model, x, device, max_images: int = 512, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm statistics at the final weights (OFA's set_running_statistics).

    After a short fine-tune the running averages lag far behind the weights; evaluating
    with them leaves most networks near chance. A forward pass over (a fixed slice of) the
    training images in train mode with a cumulative average fixes the statistics.
    """
    import torch
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    sample = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_images]]
    model.train()
    with torch.no_grad():
        for i in range(0, len(sample), batch_size):
            model(sample[i:i + batch_size].to(device))
    model.eval()


def evaluate(model, x, y, device="cpu", batch_size: int = 256) -> float:
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / len(x)


# -- measurements -------------------------------------------------------------------------

def count_flops(model, image_size: int) -> int:
    from ofa.utils.pytorch_utils import count_net_flops
    return int(count_net_flops(model, (1, 3, image_size, image_size)))


def measure_latency_ms(model, image_size: int, device, repeats: int) -> float:
    """Median wall time of a batch-1 forward on `device`, after warm-up."""
    import torch
    model.eval()
    x = torch.randn(1, 3, image_size, image_size, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - t) * 1000)
    return float(statistics.median(times))


def functional_embedding(model, noise_seed: int, noise_shape, device) -> list[float]:
    """Penultimate output, averaged over the manifest's fixed Gaussian noise batch."""
    import torch
    g = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(*noise_shape, generator=g).to(device)
    model.eval()
    with torch.no_grad():
        return penultimate(model, noise).mean(0).float().cpu().tolist()


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.machine()}:{torch.get_num_threads()}t"


# -- training -----------------------------------------------------------------------------

def train(model, x, y, xt, yt, settings: TrainSettings, device, seed: int, on_epoch=None):
    """SGD + cosine schedule (paper B.2); returns per-epoch (loss, test accuracy)."""
    import torch
    torch.manual_seed(seed)
    model.to(device)
    x, y = stage_on(device, x, y)
    use_amp = settings.mixed_precision and device.type == "cuda"
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay, nesterov=True)
    steps_per_epoch = max(1, (len(x) + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    g = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g).to(x.device)
        total, n = 0.0, 0
        for i in range(0, len(x), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        losses.append(total / max(n, 1))
        recalibrate_bn(model, x, device)
        accs.append(evaluate(model, xt, yt, device))
        if on_epoch:
            on_epoch(epoch, losses[-1], accs[-1])
    return losses, accs


def committed_result(store: ZooStore, spec: JobSpec) -> ResultRecord:
    """The row committed under a job's result key, refused unless it is that job's."""
    from pipeline.errors import StorageError
    from pipeline.state import read_result
    record = read_result(store, spec.result_key)
    if (record.job_id, record.dataset_id, record.arch) != (spec.job_id, spec.dataset_id, spec.arch):
        raise StorageError(f"{spec.result_key} in {store.uri} holds the row of job {record.job_id} "
                           f"({record.dataset_id}, {record.arch}), not of its own job: run `tans verify "
                           f"{store.uri}` (it sets the file aside), then build again to re-train the job")
    return record


def run_job(spec: JobSpec, zoo_uri: str, s3: S3Settings | None = None, threads: int | None = None) -> ResultRecord:
    """Fine-tune, evaluate, profile and embed one pair; commit checkpoint and result row."""
    import torch
    from safetensors.torch import save as save_safetensors

    from pipeline.state import find_result, record_start
    store = open_store(zoo_uri, s3)
    if store.exists(spec.result_key):  # already committed: writing it again is a no-op
        return committed_result(store, spec)
    record_start(store, spec.job_id)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = spec.train
    seed = settings.seed ^ int(spec.job_id[:8], 16)
    x, y = load_tensors(store, spec.dataset_id, "train", settings.image_size, workers=threads or 1)
    xt, yt = load_tensors(store, spec.dataset_id, "test", settings.image_size, workers=threads or 1)
    torch.manual_seed(seed)
    if spec.init_job:  # fine-tune a retrieved zoo network: its weights, a new classifier
        source = find_result(store, spec.init_job)
        if source is None:
            from pipeline.errors import TansError
            raise TansError(f"job {spec.init_job} has no result in {store.uri}; pick one from `tans search`")
        model = load_checkpoint(store, source, spec.width)
        model.classifier = torch.nn.Linear(model.classifier.in_features, spec.num_classes)
    else:
        model = model_for(spec.arch, spec.num_classes, spec.width,
                          load_base_supernet(store, spec.width, spec.base_weights))
    started = time.perf_counter()
    losses, accs = train(model, x, y, xt, yt, settings, device, seed)
    train_seconds = time.perf_counter() - started

    model.eval()
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model.cpu(), settings.image_size)
    model.to(device)
    latency = measure_latency_ms(model, settings.image_size, device, settings.latency_repeats)
    embedding = functional_embedding(model, spec.noise_seed, spec.noise_shape, device)

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save_safetensors(state, metadata={"job_id": spec.job_id, "arch": spec.arch})
    sha = hashlib.sha256(blob).hexdigest()
    ckpt_key = spec.checkpoint_key(sha)
    store.write_bytes(ckpt_key, blob, create_only=True)
    record = ResultRecord(
        job_id=spec.job_id, dataset_id=spec.dataset_id, arch=spec.arch,
        topology=Arch.parse(spec.arch).topology(), accuracy=float(accs[-1]), params=int(params),
        flops=flops, latency_ms=latency, latency_device=device_name(device),
        functional_embedding=embedding, checkpoint_uri=ckpt_key, checkpoint_sha256=sha,
        num_classes=spec.num_classes, epochs=settings.epochs, image_size=settings.image_size,
        train_seconds=train_seconds, epoch_losses=losses, epoch_accuracies=accs,
        base_weights=f"job:{spec.init_job}" if spec.init_job else spec.base_weights["id"],
        created_at=datetime.now(timezone.utc).isoformat())
    if not store.write_table(spec.result_key, to_table([record]), create_only=True):
        committed = committed_result(store, spec)
        if committed.checkpoint_sha256 != sha:  # another attempt won: drop our copy, keep theirs
            store.delete(ckpt_key)
        return committed
    return record
