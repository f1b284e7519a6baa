"""What one fine-tuning job is: its frozen spec and its deterministic id (`run_job` runs it).

The id hashes everything that determines the result (dataset content, arch, training
settings, seed, base weights, functional-embedding noise), so writing the same job twice
is recognisably the same job, and its result row can be written create-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from tans.zoo_schema import layout
from tans.zoo_schema.manifest import BaseWeights, Manifest
from tans.zoo_schema.records import DatasetRecord


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning settings (paper B.2 defaults; epochs and image size are small on CPU)."""

    epochs: int = 2
    image_size: int = 32
    batch_size: int = 32
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 4e-5
    seed: int = 0
    latency_repeats: int = 20
    mixed_precision: bool = True  # only takes effect on CUDA
    evaluate_every_epoch: bool = True  # False: BatchNorm recalibration and test after the last epoch only


@dataclass(frozen=True)
class JobSpec:
    dataset_id: str
    dataset_sha256: str
    num_classes: int
    arch: str
    train: TrainSettings
    width: float
    base_weights: BaseWeights
    noise_seed: int
    noise_shape: tuple[int, ...]
    init_job: str = ""  # start from this zoo job's checkpoint (`tans finetune`), not the base weights

    @property
    def job_id(self) -> str:
        fields = {**dataclasses.asdict(self), "base_weights": self.base_weights.to_json()}
        if not fields["init_job"]:
            del fields["init_job"]  # ids of base-weight jobs predate the field and stay stable
        if fields["train"]["evaluate_every_epoch"]:
            del fields["train"]["evaluate_every_epoch"]  # so do ids of jobs evaluated every epoch
        blob = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @property
    def result_key(self) -> str:
        return layout.result_key(self.dataset_id, self.job_id)

    def checkpoint_key(self, sha256: str) -> str:
        return layout.checkpoint_key(self.job_id, sha256)


def job_spec(
    dataset: DatasetRecord, arch: str, train: TrainSettings, manifest: Manifest, init_job: str = ""
) -> JobSpec:
    """The job that fine-tunes `arch` on `dataset` in the zoo of `manifest`."""
    return JobSpec(
        dataset_id=dataset.dataset_id,
        dataset_sha256=dataset.content_sha256,
        num_classes=dataset.num_classes,
        arch=arch,
        train=train,
        width=manifest.width,
        base_weights=manifest.base_weights,
        noise_seed=manifest.noise_seed,
        noise_shape=tuple(manifest.noise_shape),
        init_job=init_job,
    )
