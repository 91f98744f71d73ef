"""Name -> strategy class registry and `create`."""

from __future__ import annotations

import dataclasses
from typing import Any

from mtlgen_jax.weighting.base import Strategy, check_int

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: registers a strategy under `cls.name`."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"bad or duplicate strategy name {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_REGISTRY)


def hparam_names(name: str) -> tuple[str, ...]:
    """The hyperparameters `create(name, ...)` accepts."""
    return tuple(f.name for f in dataclasses.fields(_REGISTRY[name]) if f.name != "num_tasks")


def create(name: str, num_tasks: int, **hparams: Any) -> Strategy:
    """Builds the strategy registered as `name` for `num_tasks` tasks.

    Args:
      name: one of `NAMES`.
      num_tasks: K >= 1.
      **hparams: the strategy's hyperparameters (see its class); others are refused.

    Raises:
      ValueError: unknown name (the message lists the known ones), unknown
        hyperparameter, or a value out of its valid range (the message names both).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting strategy {name!r}; known: {', '.join(names())}")
    check_int(name, "num_tasks", num_tasks, low=1)
    valid = hparam_names(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"{name}: unknown hyperparameter(s) {unknown}; valid: {list(valid) or 'none'}"
        )
    return _REGISTRY[name](num_tasks=int(num_tasks), **hparams)
