"""Images to tensors: decoding a dataset's stored images (PNG, or JPEG kept as ingested) at a
size, ImageNet normalisation, and
placing a split on the training device."""

from __future__ import annotations

import io

import numpy as np

from tans.zoo_schema.shards import load_split
from tans.zoo_schema.store import ZooStore

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def decode_images(images: list[bytes], size: int, workers: int = 1) -> np.ndarray:
    """Stored image bytes to a normalized float32 array [N, 3, size, size]; `workers` threads
    decode (PIL releases the GIL while decoding and resizing). JPEGs decode at the smallest of
    libjpeg's 1/1..1/8 scales that is still at least `size` on each side."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        with Image.open(io.BytesIO(images[i])) as im:
            im.draft("RGB", (size, size))  # no-op except for JPEG
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
