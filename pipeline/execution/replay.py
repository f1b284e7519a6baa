"""The replay executor: jobs answered from an evaluated zoo instead of trained (paper A.1)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from tans.pipeline.acquisition.base import Pair
from tans.pipeline.acquisition.priors import cached_profiles
from tans.pipeline.execution.executor import Outcome
from tans.workers.job import JobSpec
from tans.zoo_schema.layout import checkpoint_uri
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import ArchProfile, to_table
from tans.zoo_schema.results import read_result, read_results
from tans.zoo_schema.store import ZooStore


class ReplayExecutor:
    """Answers each job from an existing evaluated zoo instead of training (paper A.1).

    Jobs complete in submission order, `in_flight` at a time, like W workers of equal
    speed. Each answer is committed to the target zoo like a real result (create-only row;
    the checkpoint stays in the source zoo and the row points there), so replay goes
    through the same driver, policy and store code as the Ray executor. Only pairs the
    source zoo holds can be proposed: `universe()` says which.
    """

    def __init__(self, source: ZooStore, target: ZooStore):
        self.source, self.target = source, target
        self._answers = {Pair(r.dataset_id, r.arch): r for r in read_results(source)}
        self._queue: list[JobSpec] = []

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def universe(self) -> frozenset[Pair]:
        return frozenset(self._answers)

    def close(self) -> None:
        self._queue.clear()

    def submit(self, spec: JobSpec) -> None:
        self._queue.append(spec)

    def _answer(self, spec: JobSpec) -> Outcome:
        src = self._answers.get(Pair(spec.dataset_id, spec.arch))
        if src is None:
            return Outcome(
                spec,
                error=KeyError(f"the replay zoo {self.source.uri} has no result for ({spec.dataset_id}, {spec.arch})"),
            )
        # the checkpoint stays in the source zoo: the replayed row names it absolutely
        record = dataclasses.replace(
            src,
            job_id=spec.job_id,
            checkpoint_uri=checkpoint_uri(self.source, src.checkpoint_uri),
            created_at=datetime.now(UTC).isoformat(),
        )
        if not self.target.write_table(spec.result_key, to_table([record]), create_only=True):
            return Outcome(spec, result=read_result(self.target, spec.result_key))
        return Outcome(spec, result=record)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._queue:
            return []
        return [self._answer(self._queue.pop(0))]

    def profile(self, manifest: Manifest, arch_ids: list[str], image_size: int) -> list[ArchProfile]:
        """The source zoo's profiles of these archs (a replay measures nothing)."""
        known = cached_profiles(self.source) or {}
        missing = [a for a in arch_ids if a not in known]
        if missing:
            raise KeyError(
                f"the replay zoo {self.source.uri} has no profiles of {len(missing)} "
                f"pool archs (e.g. {missing[0]}); replay from a zoo built with the same pool"
            )
        return [known[a] for a in arch_ids]
