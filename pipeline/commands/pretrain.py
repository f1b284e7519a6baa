"""`tans pretrain-base`: train the OFA supernet on the union of the zoo's datasets.

The paper starts from an ImageNet-pretrained OFA supernet and an ImageNet ResNet18; neither
can be downloaded here, so this is the offline way to a pretrained start. Every ingested
dataset's classes get their own slots of the supernet's 1000-way classifier (so the union
must hold at most 1000 classes), and each step follows the sandwich rule: the largest
subnet, the smallest, and `random_subnets` uniformly sampled ones each see the same batch,
their gradients are summed, and one SGD step is taken. The smaller subnets also learn
from the largest one's predictions (in-place distillation, as in OFA and BigNAS).

At the end the BatchNorm statistics are re-estimated for the largest subnet, the largest
and the smallest subnets are evaluated on the union of the test splits, each convolution that
a BatchNorm follows is scaled back to its norm at initialisation (the same function; see
`weights.rescaled_to_init`: unscaled, a short fine-tune barely moves the pretrained start), and
the supernet's state_dict is written as one safetensors file (local or s3://). That file is both:
- base weights for a new zoo: `arch.base_weights = FILE` (then the default query backbone
  of that zoo is this pretrained network too), and
- a query backbone for the retriever of any zoo: `tans retrain ZOO --backbone FILE`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tans.workers.networks.images import decode_images
from tans.workers.networks.nets import load_base_supernet
from tans.workers.networks.ofa_space import DEPTHS, EXPANDS, KERNELS, build_supernet, sample_arch
from tans.workers.networks.training import evaluate, recalibrate_bn
from tans.workers.networks.weights import read_state_dict, rescaled_to_init
from tans.zoo_schema.errors import ConfigError, DatasetError, StorageError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.outfiles import output_folder, write_file
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import S3Settings, ZooStore, source_filesystem

N_CLASSES = 1000  # the supernet's classifier


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-5
    image_size: int = 32  # the images are decoded at this side, and evaluated at it
    resolutions: tuple[int, ...] = ()  # sides each step draws one from (OFA's elastic resolution); () = image_size
    random_subnets: int = 2  # sampled subnets per step, besides the largest and smallest
    distill: float = 1.0  # weight of the largest subnet's soft targets for the others
    max_images_per_dataset: int = 2000
    width: float = 1.0  # used when the zoo has no manifest yet
    seed: int = 0
    init: str = ""  # a supernet file (from pretrain-base) to continue from; "" = the zoo's base


def union_data(store: ZooStore, split: str, size: int, cap: int, seed: int):
    """(images [N,3,s,s], global labels [N], dataset ids): every dataset's classes offset."""
    import torch

    datasets = read_datasets(store)
    if not datasets:
        raise DatasetError(
            f"the zoo at {store.uri} holds no datasets; add some with "
            "`tans datasets add --zoo ZOO DIR...` or build it first"
        )
    total = sum(d.num_classes for d in datasets)
    if total > N_CLASSES:
        raise DatasetError(
            f"the zoo's datasets hold {total} classes together, more than the supernet's "
            f"{N_CLASSES}-way classifier; pretrain on a zoo with fewer datasets"
        )
    xs, ys, offset = [], [], 0
    for d in datasets:
        images, labels = load_split(store, d.dataset_id, split)
        order = list(range(len(images)))
        random.Random(f"{seed}:{d.dataset_id}:{split}").shuffle(order)
        order = sorted(order[:cap])
        xs.append(torch.from_numpy(decode_images([images[i] for i in order], size)))
        ys.append(torch.tensor([labels[i] + offset for i in order], dtype=torch.long))
        offset += d.num_classes
    return torch.cat(xs), torch.cat(ys), [d.dataset_id for d in datasets]


def start_supernet(store: ZooStore, settings: PretrainSettings, s3: S3Settings | None = None):
    """The supernet of `settings.init` when given (a longer pretraining in stages), else the
    zoo's base supernet when it has a manifest, else a seeded random one."""
    import torch

    manifest = read_manifest(store)
    if settings.init:
        supernet = build_supernet(manifest.width if manifest is not None else settings.width)
        state = read_state_dict(settings.init, s3, "--init")
        try:
            supernet.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as e:  # OFA raises ValueError for a key it lacks
            raise ConfigError(
                f"--init {settings.init} is not a supernet of this zoo's width ({str(e).splitlines()[0]}); "
                "pass a file written by `tans pretrain-base` for the same width"
            ) from None
        return supernet, settings.init
    if manifest is not None:
        return load_base_supernet(store, manifest.width, manifest.base_weights), manifest.base_weights.id
    torch.manual_seed(settings.seed)
    return build_supernet(settings.width), f"random-seed{settings.seed}"


def sandwich_configs(rng: random.Random, n_random: int) -> list[dict | None]:
    """Largest (None = set_max_net), smallest, then n random subnet configs."""
    smallest = {"ks": min(KERNELS), "e": min(EXPANDS), "d": min(DEPTHS)}
    return [None, smallest] + [sample_arch(rng).ofa_config() for _ in range(n_random)]


def _activate(supernet, config: dict | None) -> None:
    if config is None:
        supernet.set_max_net()
    else:
        supernet.set_active_subnet(**config)


def pretrain_base(
    store: ZooStore,
    out: str,
    settings: PretrainSettings = PretrainSettings(),
    s3: S3Settings | None = None,
    log=print,
    device: str = "cpu",
) -> dict:
    """Train, evaluate and write the supernet (on `device`: "cpu", "cuda"); returns the summary
    also stored in the file."""
    import torch
    from safetensors.torch import save

    if settings.steps < 1 or settings.batch_size < 2:
        raise ConfigError("pretrain-base needs --steps >= 1 and --batch-size >= 2")
    if any(r < 16 or r > settings.image_size for r in settings.resolutions):
        raise ConfigError(
            f"--resolutions {list(settings.resolutions)} must lie between 16 and --image-size {settings.image_size}"
        )
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no GPU here; leave --device out to train on the CPU")
    on = torch.device(device)
    if not out.startswith("s3://"):
        local_out(out)  # a bad --out fails now, not after the training
    supernet, start = start_supernet(store, settings, s3)  # a bad --init fails before the images are decoded
    x, y, dataset_ids = union_data(store, "train", settings.image_size, settings.max_images_per_dataset, settings.seed)
    xt, yt, _ = union_data(store, "test", settings.image_size, settings.max_images_per_dataset, settings.seed)
    log(
        f"pretraining the supernet ({start}) on {len(dataset_ids)} datasets, {len(x)} images, "
        f"{int(y.max()) + 1} classes: {settings.steps} sandwich steps of {2 + settings.random_subnets} subnets"
    )
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    supernet.to(on)
    started = time.perf_counter()
    losses = train_sandwich(supernet, x.to(on), y.to(on), settings, rng, log)
    seconds = time.perf_counter() - started
    accuracy = {}
    for name, config in (("smallest", sandwich_configs(rng, 0)[1]), ("largest", None)):
        _activate(supernet, config)
        recalibrate_bn(supernet, x, on)  # the largest last: its statistics are saved
        accuracy[name] = evaluate(supernet, xt, yt, on)
    supernet.cpu()
    summary = {
        "datasets": dataset_ids,
        "classes": int(y.max()) + 1,
        "train_images": len(x),
        "test_images": len(xt),
        "start": start,
        "seconds": round(seconds, 1),
        "device": torch.cuda.get_device_name(on) if on.type == "cuda" else "cpu",
        "final_loss": float(np.mean(losses[-10:])),
        "first_loss": float(np.mean(losses[:10])),
        "test_accuracy_largest": accuracy["largest"],
        "test_accuracy_smallest": accuracy["smallest"],
        "settings": asdict(settings),
    }
    manifest = read_manifest(store)
    state, grown = rescaled_to_init(supernet.state_dict(), manifest.width if manifest is not None else settings.width)
    summary["rescaled"] = dict(convolutions=len(grown), largest=round(max(grown), 3), smallest=round(min(grown), 3))
    state = {k: v.detach().contiguous() for k, v in state.items()}
    blob = save(state, metadata={"tans": json.dumps(summary)})
    write_weights(out, blob, s3)
    log(
        f"pretrained supernet written to {out}: test accuracy {accuracy['largest']:.3f} (largest), "
        f"{accuracy['smallest']:.3f} (smallest) over {summary['classes']} classes in {seconds:.0f}s"
    )
    return summary


def train_sandwich(supernet, x, y, settings: PretrainSettings, rng: random.Random, log) -> list[float]:
    """`settings.steps` sandwich-rule steps (the largest subnet, the smallest and random ones,
    the largest teaching the others), each at one of `settings.resolutions` (drawn by `rng`;
    the batch resized bilinearly); returns each step's mean loss."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(
        supernet.parameters(), lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.steps)
    g = torch.Generator().manual_seed(settings.seed)
    started, losses = time.perf_counter(), []
    supernet.train()
    for step in range(settings.steps):
        idx = torch.randint(len(x), (settings.batch_size,), generator=g).to(x.device)
        xb, yb = x[idx], y[idx]
        side = rng.choice(settings.resolutions) if settings.resolutions else settings.image_size
        if side != xb.shape[-1]:
            xb = F.interpolate(xb, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        opt.zero_grad(set_to_none=True)
        teacher, step_loss = None, 0.0
        for config in sandwich_configs(rng, settings.random_subnets):
            _activate(supernet, config)
            logits = supernet(xb)
            loss = F.cross_entropy(logits, yb)
            if teacher is not None and settings.distill > 0:
                loss = loss + settings.distill * F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
            loss.backward()
            if teacher is None:
                teacher = F.softmax(logits.detach(), 1)
            step_loss += float(loss.detach())
        opt.step()
        sched.step()
        losses.append(step_loss / (2 + settings.random_subnets))
        if (step + 1) % max(1, settings.steps // 10) == 0 or step + 1 == settings.steps:
            took = time.perf_counter() - started
            log(f"  step {step + 1}/{settings.steps}: loss {np.mean(losses[-10:]):.3f} ({took:.0f}s)")
    return losses


def write_weights(uri: str, blob: bytes, s3: S3Settings | None) -> None:
    """Write the weights whole or not at all: on S3 an upload becomes visible only when it
    completes; a local file is written next to its place, flushed, then renamed over it."""
    if uri.startswith("s3://"):
        fs, path = source_filesystem(uri, s3)
        try:
            with fs.open_output_stream(path) as fh:
                fh.write(blob)
        except OSError as e:
            raise ConfigError(f"cannot write {uri}: {e}") from None
        return
    folder, name = local_out(uri)
    write_file(folder, name, blob)


def local_out(uri: str) -> tuple[Path, str]:
    """(folder, name) of a local --out file, checked before the training starts."""
    target = Path(uri.removeprefix("file://")).expanduser()
    if target.is_dir() or not target.name:
        raise StorageError(f"--out {uri} is a folder; pass the path of the .safetensors file to write")
    return output_folder(target.parent), target.name
