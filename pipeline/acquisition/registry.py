"""The registry of acquisition policies, by strategy name (a leaf: it imports no policy).

Policies register themselves with `@register(name)` when their module is imported;
importing the `pipeline.acquisition` package imports them all (as timm's model registry
does). `create_policy` and `check_strategy` refuse an unknown name with the valid list.
"""
from __future__ import annotations

from typing import Callable

from zoo_schema.errors import ConfigError

POLICIES: dict[str, Callable] = {}


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
    return POLICIES[name](context)
