"""What a long-lived (warm) worker keeps between jobs: the zoo's base supernets and decoded
dataset splits, bounded by a memory budget, so that a job's fixed costs are paid once per
worker instead of once per job.

Entries are keyed by what determines them: a split by (zoo, dataset id, dataset content
sha256, split, image size), a supernet by (zoo, width, base weights id), so a cached entry
is never stale. Jobs never modify what they get: a subnet is extracted with its own copy of
the weights, and the training loop reads the split's tensors without writing them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from tans.workers.networks.images import load_tensors
from tans.workers.networks.nets import load_base_supernet
from tans.zoo_schema.manifest import BaseWeights
from tans.zoo_schema.store import ZooStore


class JobCache:
    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._splits: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._supernets: dict[tuple, torch.nn.Module] = {}
        self._loading: dict[tuple, threading.Event] = {}  # splits being decoded by some thread
        self.timing = threading.Lock()  # held while a job times its network: no decode runs beside it
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def split_bytes(self) -> int:
        return sum(x.element_size() * x.nelement() + y.element_size() * y.nelement() for x, y in self._splits.values())

    def datasets(self) -> set[str]:
        """The dataset ids whose splits are held."""
        return {key[1] for key in self._splits}

    def split(
        self, store: ZooStore, dataset_id: str, dataset_sha256: str, split: str, size: int, workers: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's tensors, decoded once: a thread that asks for a split another thread is
        decoding (a job and the prefetch of its data) waits for that decode, then takes it."""
        key = (store.uri, dataset_id, dataset_sha256, split, size)
        while True:
            with self._lock:
                if key in self._splits:
                    self._splits.move_to_end(key)
                    self.hits += 1
                    return self._splits[key]
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()  # then look again: that decode may have failed (this one then tries)
        try:
            with self.timing:  # a prefetch's decode waits while the running job measures latency
                x, y = load_tensors(store, dataset_id, split, size, workers)
            with self._lock:
                self.misses += 1
                self._splits[key] = (x, y)
                while len(self._splits) > 1 and self.split_bytes > self.max_bytes:
                    self._splits.popitem(last=False)  # least recently used first
        finally:
            with self._lock:
                self._loading.pop(key).set()
        return x, y

    def supernet(self, store: ZooStore, width: float, base_weights: BaseWeights) -> torch.nn.Module:
        key = (store.uri, width, base_weights.id)
        with self._lock:
            if key in self._supernets:
                self.hits += 1
                return self._supernets[key]
        supernet = load_base_supernet(store, width, base_weights)
        with self._lock:
            self.misses += 1
            self._supernets = {key: supernet}  # one zoo's base at a time: it is ~30 MB per width
        return supernet
