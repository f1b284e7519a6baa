"""The registry of acquisition policies, by strategy name (a leaf: it imports no policy).

The built-in policies are named by `module:Class` and imported when first created, so that
checking a name or reading the zoo never loads torch; another policy registers itself with
`@register(name)` on its class. `create_policy` and `check_strategy` refuse an unknown name
with the valid list.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tans.zoo_schema.errors import ConfigError

POLICIES: dict[str, Callable | str] = {
    "random": "tans.pipeline.acquisition.random:RandomPolicy",
    "pareto": "tans.pipeline.acquisition.pareto:ParetoPolicy",
    "nsga2": "tans.pipeline.acquisition.peers:NSGA2Policy",
    "tpe": "tans.pipeline.acquisition.peers:TPEPolicy",
    "qnehvi": "tans.pipeline.acquisition.peers:QNEHVIPolicy",
}


def register(name: str):
    def wrap(cls):
        POLICIES[name] = cls
        return cls

    return wrap


def check_strategy(name: str) -> None:
    """Refuse an unknown strategy name, listing the valid ones."""
    if name not in POLICIES:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(POLICIES))}")


def create_policy(name: str, context):
    """The policy registered as `name`, built from a `PolicyContext`."""
    check_strategy(name)
    policy = POLICIES[name]
    if isinstance(policy, str):
        module, _, attr = policy.partition(":")
        policy = getattr(importlib.import_module(module), attr)
    return policy(context)
