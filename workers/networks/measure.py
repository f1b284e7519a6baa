"""What a job measures of its network: FLOPs, batch-1 latency on its device, and the
functional embedding (the penultimate output on the manifest's fixed noise batch)."""

from __future__ import annotations

import platform
import statistics
import time

from tans.workers.networks.ofa_space import ofa_module, penultimate

WARMUP = 3  # forwards before a latency measurement's timed ones


def count_flops(model, image_size: int) -> int:
    """Multiply-accumulates of a batch-1 forward, exactly as ofa's `count_net_flops` counts
    them (convolutions and linear layers; each layer's count and the running total rounded to
    float32 as its counters hold them), without its deep copy of the model: 6x faster."""
    import numpy as np
    import torch
    from torch import nn

    MyConv2d = ofa_module("utils.my_modules").MyConv2d

    counted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, MyConv2d, nn.Linear)  # ofa's register_hooks, by exact type
    ops: dict = {}

    def hook(m, _, y):
        if type(m) is nn.Linear:
            ops[m] = m.in_features * m.out_features
        else:
            ops[m] = m.in_channels * y.nelement() * m.weight.shape[2] * m.weight.shape[3] // m.groups

    leaves = [m for m in model.modules() if type(m) in counted and not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    total = np.float32(0)
    for m in leaves:
        total = np.float32(total + np.float32(ops.get(m, 0)))
    return int(float(total))


def measure_latency_ms(model, image_size: int, device, repeats: int) -> float:
    """Median wall time of a batch-1 forward on `device`, after warm-up."""
    import torch

    model.eval()
    x = torch.randn(1, 3, image_size, image_size, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + WARMUP):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= WARMUP:
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
