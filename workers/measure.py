"""What a job measures of its network: FLOPs, batch-1 latency on its device, and the
functional embedding (the penultimate output on the manifest's fixed noise batch)."""
from __future__ import annotations

import platform
import statistics
import time

from workers.ofa_space import penultimate


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
