"""The training loop (paper B.2: SGD with Nesterov momentum, cosine schedule, mixed precision
on CUDA), BatchNorm recalibration and evaluation. Reads top to bottom."""

from __future__ import annotations

import time

from tans.workers.job import TrainSettings
from tans.workers.networks.images import stage_on


class DeadlineReached(Exception):
    """`train` was given a deadline (a `time.monotonic()` instant) and it passed before the
    training ended; the model is part-trained and its loss means nothing."""


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
    starts = list(range(0, len(sample), batch_size))
    if len(starts) > 1 and len(sample) - starts[-1] == 1:
        starts.pop()  # a last batch of one image would fail BatchNorm: it joins the one before
    model.train()
    with torch.no_grad():
        for i, j in zip(starts, starts[1:] + [len(sample)]):
            model(sample[i:j].to(device))
    model.eval()


def evaluate(model, x, y, device="cpu", batch_size: int = 256) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(model, x, y, xt, yt, settings: TrainSettings, device, seed: int, on_epoch=None, timings=None, deadline=None):
    """SGD + cosine schedule (paper B.2); returns (per-epoch losses, test accuracies): one
    accuracy per epoch, or with `settings.evaluate_every_epoch` false the last epoch's only
    (BatchNorm recalibration and the test split cost about a quarter of a CPU epoch); with `xt`
    None, BatchNorm is recalibrated and no accuracy is measured (the caller scores the network
    itself; `on_epoch` is not called and `timings` gets no "eval"). With a dict `timings`, adds
    the seconds spent evaluating as "eval". With a `deadline` (`time.monotonic()`), raises
    DeadlineReached at the first batch or evaluation after it."""
    import torch

    def in_time() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineReached

    torch.manual_seed(seed)
    model.to(device)
    x, y = stage_on(device, x, y)
    use_amp = settings.mixed_precision and device.type == "cuda"
    opt = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=True,
    )
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
            idx = order[i : i + settings.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            in_time()
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
        if not settings.evaluate_every_epoch and epoch < settings.epochs - 1:
            continue
        in_time()
        started = time.perf_counter()
        recalibrate_bn(model, x, device)
        if xt is None:
            continue
        accs.append(evaluate(model, xt, yt, device))
        if timings is not None:
            timings["eval"] = timings.get("eval", 0.0) + time.perf_counter() - started
        if on_epoch:
            on_epoch(epoch, losses[-1], accs[-1])
    return losses, accs
