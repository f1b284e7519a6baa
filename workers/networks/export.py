"""Zoo networks outside tans: a network with its preprocessing and class names, and an export
in the layout the Hugging Face / timm world expects.

`export_network` writes, into one folder:
- `model.safetensors`: the fine-tuned weights (its metadata holds `config.json` too);
- `config.json`: architecture, width, input size, mean/std, classes and class names, the
  source dataset, accuracy, params, FLOPs, latency (the `NetworkConfig` fields);
- `README.md`: a model card with the metrics and how the network was trained;
- `model.pt2`: a `torch.export` program, loadable with torch alone
  (`torch.export.load("model.pt2").module()(x)` for x of shape [N, 3, S, S], normalized
  with the config's mean and std), batch size free.

Every checkpoint tans writes carries the same config in its safetensors metadata
(`tans.config`), so a checkpoint copied out of the zoo describes itself.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from tans.workers.networks.images import MEAN, STD, decode_images
from tans.workers.networks.nets import load_checkpoint
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.outfiles import output_folder, write_file
from tans.zoo_schema.records import DatasetRecord, ResultRecord
from tans.zoo_schema.results import find_result
from tans.zoo_schema.shards import read_dataset
from tans.zoo_schema.store import ZooStore

FORMAT = "tans-network/1"


@dataclass(frozen=True)
class NetworkConfig:
    """What a user needs to run a zoo network: its input, its outputs, where it came from."""

    job_id: str
    architecture: str  # OFA MobileNetV3 subnet: ks/e/d per block (tans.workers.networks.ofa_space.Arch)
    family: str  # "ofa_mobilenetv3"
    width: float  # width multiplier of the supernet
    image_size: int  # the input is [N, 3, image_size, image_size]
    mean: list[float]  # per-channel normalization of RGB in [0, 1]: (x - mean) / std
    std: list[float]
    num_classes: int
    class_names: list[str]  # output index -> class name
    dataset_id: str  # the zoo dataset it was fine-tuned on
    dataset_name: str
    accuracy: float  # top-1 on that dataset's held-out test split
    params: int
    flops: int  # at image_size
    latency_ms: float  # batch-1 median on latency_device
    latency_device: str
    epochs: int
    base_weights: str  # what the fine-tune started from
    format: str = FORMAT


def network_config(record: ResultRecord, dataset: DatasetRecord, width: float) -> NetworkConfig:
    return NetworkConfig(
        job_id=record.job_id,
        architecture=record.arch,
        family="ofa_mobilenetv3",
        width=width,
        image_size=record.image_size,
        mean=[float(v) for v in MEAN.ravel()],
        std=[float(v) for v in STD.ravel()],
        num_classes=record.num_classes,
        class_names=list(dataset.class_names),
        dataset_id=dataset.dataset_id,
        dataset_name=dataset.name,
        accuracy=record.accuracy,
        params=record.params,
        flops=record.flops,
        latency_ms=record.latency_ms,
        latency_device=record.latency_device,
        epochs=record.epochs,
        base_weights=record.base_weights,
    )


class Network(torch.nn.Module):
    """A zoo network ready to use: `net(x)` gives logits for a normalized batch,
    `net.preprocess(images)` makes that batch from encoded images (PNG/JPEG bytes, a path, or
    a PIL image), `net.predict(images)` gives class names; `net.config` says the rest."""

    def __init__(self, model: torch.nn.Module, config: NetworkConfig):
        super().__init__()
        self.model = model.eval()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def preprocess(self, images) -> torch.Tensor:
        blobs = []
        for image in images:
            if isinstance(image, (str, Path)):
                blobs.append(Path(image).read_bytes())
            elif isinstance(image, bytes):
                blobs.append(image)
            else:  # a PIL image
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                blobs.append(buffer.getvalue())
        return torch.from_numpy(decode_images(blobs, self.config.image_size))

    @torch.no_grad()
    def predict(self, images) -> list[str]:
        logits = self(self.preprocess(images))
        return [self.config.class_names[i] for i in logits.argmax(1).tolist()]


def load_network(store: ZooStore, job_id: str) -> Network:
    """The fine-tuned network of a zoo job (its checkpoint's sha256 verified)."""
    record = find_result(store, job_id)
    if record is None:
        raise TansError(
            f"job {job_id!r} has no result in {store.uri}; list them with `tans status {store.uri}` "
            f"or find one with `tans search`"
        )
    manifest = read_manifest(store)
    if manifest is None:
        raise TansError(f"{store.uri} has no manifest.json; is it a tans zoo?")
    config = network_config(record, read_dataset(store, record.dataset_id), manifest.width)
    return Network(load_checkpoint(store, record, manifest.width), config)


@dataclass(frozen=True)
class ExportReport:
    folder: str
    files: list[str]
    config: NetworkConfig


def export_network(store: ZooStore, job_id: str, out: str | Path) -> ExportReport:
    """Write a zoo network as model.safetensors, config.json, README.md and model.pt2 into
    `out` (created; existing files of these names are replaced, each whole or not at all,
    never written through a link: see `tans.zoo_schema.outfiles`)."""
    net = load_network(store, job_id)
    config = net.config
    folder = output_folder(out)
    state = {k: v.detach().cpu().contiguous() for k, v in net.model.state_dict().items()}
    files = {
        "model.safetensors": save_safetensors(state, metadata=checkpoint_metadata(config)),
        "config.json": (json.dumps(asdict(config), indent=1) + "\n").encode(),
        "README.md": model_card(config, store.uri).encode(),
        "model.pt2": exported_program(net.model, config.image_size),
    }
    for name, data in files.items():
        write_file(folder, name, data)
    return ExportReport(str(folder), sorted(files), config)


def checkpoint_metadata(config: NetworkConfig) -> dict[str, str]:
    """Safetensors metadata (string values only) of a checkpoint or an exported model."""
    return {
        "job_id": config.job_id,
        "arch": config.architecture,
        "format": FORMAT,
        "tans.config": json.dumps(asdict(config), sort_keys=True),
    }


def exported_program(model: torch.nn.Module, image_size: int) -> bytes:
    """`torch.export` of the network for [N, 3, S, S] inputs, any N >= 1, serialized."""
    model = model.eval().cpu()
    example = (torch.zeros(2, 3, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def model_card(config: NetworkConfig, zoo: str) -> str:
    classes = ", ".join(config.class_names[:20]) + (" …" if len(config.class_names) > 20 else "")
    mean = ", ".join(f"{v:.3f}" for v in config.mean)
    std = ", ".join(f"{v:.3f}" for v in config.std)
    return f"""---
library_name: pytorch
tags: [image-classification, ofa, mobilenetv3, tans]
---
# {config.dataset_name}: OFA MobileNetV3 subnet `{config.job_id}`

A network of the tans model zoo at `{zoo}`, fine-tuned on the zoo dataset
`{config.dataset_id}` ({config.num_classes} classes: {classes}).

| | |
| --- | --- |
| test accuracy (held-out split of `{config.dataset_id}`) | {config.accuracy:.4f} |
| parameters | {config.params:,} |
| FLOPs at {config.image_size}×{config.image_size} | {config.flops:,} |
| latency, batch 1 | {config.latency_ms:.2f} ms on {config.latency_device} |

**Architecture.** OFA MobileNetV3 (width {config.width}) subnet `{config.architecture}`
(kernel size / expand ratio per block, depth per stage), with a linear classifier.

**Training.** Started from `{config.base_weights}`, fine-tuned {config.epochs} epoch(s) by tans
(SGD with Nesterov momentum, cosine schedule, BatchNorm statistics re-estimated before
evaluation).

**Input.** RGB images resized to {config.image_size}×{config.image_size}, scaled to [0, 1], then
normalized per channel with mean ({mean}) and std ({std}); shape [N, 3, {config.image_size}, {config.image_size}].
The output is {config.num_classes} logits in the order of `class_names` in `config.json`.

**Use with torch alone:**

```python
import torch
net = torch.export.load("model.pt2").module()
logits = net(x)  # x: float32 [N, 3, {config.image_size}, {config.image_size}], normalized as above
```

The weights are also in `model.safetensors` (state_dict of the tans/OFA module; its
metadata holds `config.json`); with tans installed, `tans.load_network(ZOO, "{config.job_id}")`
gives the module with its preprocessing.
"""
