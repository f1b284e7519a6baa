"""A warm worker's cache (workers/cache.py) when a job and the prefetch of its data ask for the
same split at once: one decode, both get its tensors; a decode that fails leaves the split to
the next caller, who decodes it itself."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tans.workers import cache as cache_module
from tans.workers.cache import JobCache


class _Store:
    uri = "memory://zoo"


def test_concurrent_requests_for_a_split_decode_it_once(monkeypatch):
    calls = []

    def slow_load(store, dataset_id, split, size, workers=1):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return torch.zeros(2, 3, size, size), torch.tensor([0, 1])

    monkeypatch.setattr(cache_module, "load_tensors", slow_load)
    cache, got = JobCache(), {}
    threads = [
        threading.Thread(
            target=lambda n=n: got.__setitem__(n, cache.split(_Store(), "d", "sha", "train", 8)), name=f"t{n}"
        )
        for n in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(got) == 3
    assert got[0][0] is got[1][0] is got[2][0]  # the one decode's tensors
    assert (cache.misses, cache.hits) == (1, 2)


def test_a_failed_decode_is_retried_by_the_caller_that_waited(monkeypatch):
    attempts = []
    first_started = threading.Event()

    def flaky_load(store, dataset_id, split, size, workers=1):
        attempts.append(1)
        if len(attempts) == 1:
            first_started.set()
            time.sleep(0.3)
            raise OSError("the prefetch's read failed")
        return torch.zeros(1, 3, size, size), torch.tensor([0])

    monkeypatch.setattr(cache_module, "load_tensors", flaky_load)
    cache, errors = JobCache(), []

    def prefetch():
        try:
            cache.split(_Store(), "d", "sha", "train", 8)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=prefetch)
    t.start()
    first_started.wait(5)
    x, _ = cache.split(_Store(), "d", "sha", "train", 8)  # waits for the failing decode, then decodes
    t.join(5)
    assert len(attempts) == 2 and x.shape == (1, 3, 8, 8) and len(errors) == 1
    with pytest.raises(OSError):  # and a decode that fails for the only caller raises to it
        monkeypatch.setattr(cache_module, "load_tensors", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
        cache.split(_Store(), "other", "sha", "train", 8)
    assert cache._loading == {}
