from __future__ import annotations

import hashlib
import random

import pytest

from pipeline import synth
from pipeline.errors import ConfigError
from pipeline.policy import RandomPolicy, create_policy
from pipeline.state import ZooState
from zoo_schema.records import DatasetRecord


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


def test_random_policy_is_deterministic_spreads_and_skips_excluded():
    state = _state(4)
    first = RandomPolicy(seed=1).propose(state, 8, exclude=set())
    assert first == RandomPolicy(seed=1).propose(state, 8, exclude=set())
    assert first != RandomPolicy(seed=2).propose(state, 8, exclude=set())
    assert sorted(d for d, _ in first) == ["d0", "d0", "d1", "d1", "d2", "d2", "d3", "d3"]
    # a resumed build with the first three done continues the same sequence
    assert RandomPolicy(seed=1).propose(state, 5, exclude=set(first[:3])) == first[3:]


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown strategy 'bayes'; valid strategies: .*random"):
        create_policy("bayes", seed=0)
