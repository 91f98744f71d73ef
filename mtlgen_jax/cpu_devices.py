"""CPU hosts: split the cores into several JAX devices so data parallelism uses them all.

XLA:CPU runs one device's convolutions on about one core: on the 2-core machine of
the README's Performance section, one CPU device kept 1.13 cores busy, and the
same train step run data-parallel over 2 CPU devices (the ordinary shard_map path,
``--xla_force_host_platform_device_count=2``) trained 1.46-1.70x more images/s.

The device count has to be in ``XLA_FLAGS`` before JAX creates its CPU backend (the
first ``jax.devices()``), so entry points call :func:`configure` right after
reading the config. It changes nothing where the user already set a count, where
JAX has already started, or on accelerator hosts (their CPU devices run nothing).
"""

from __future__ import annotations

import os
import re

from absl import logging

_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_AUTO = 8  # the automatic count never exceeds this (measured on 2 cores only)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose(batch_size: int, grad_accum_steps: int = 1, cores: int | None = None,
           cap: int = MAX_AUTO) -> int:
    """The largest device count <= min(cores, cap) that splits the batch evenly.

    Every device needs a whole number of micro-batches: ``batch_size / n`` must be
    a multiple of ``grad_accum_steps``.
    """
    cores = available_cores() if cores is None else cores
    for n in range(max(1, min(cores, cap)), 0, -1):
        if batch_size % n == 0 and (batch_size // n) % max(grad_accum_steps, 1) == 0:
            return n
    return 1


def _backend_started() -> bool:
    from jax._src import xla_bridge  # private, but the only way to ask without starting it

    return bool(getattr(xla_bridge, "_backends", {}))


def configure(config, *, num_processes: int = 1) -> int | None:
    """Sets ``XLA_FLAGS`` so the CPU backend has ``config.parallel.cpu_devices`` devices.

    ``parallel.cpu_devices``: 0 = automatic (:func:`choose` over this process's share
    of the batch), 1 = one device (XLA's default), N = N devices.

    Returns:
      The device count set, or None where nothing was changed (the count already in
      ``XLA_FLAGS``, JAX started, or a JAX_PLATFORMS without cpu).

    Raises:
      ValueError: a negative count, or one that does not split the batch.
    """
    requested = int(config.parallel.get("cpu_devices", 0))
    if requested < 0:
        raise ValueError(f"parallel.cpu_devices={requested} must be >= 0 (0 = automatic).")
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if re.search(_COUNT_FLAG + r"=", flags) or (platforms and "cpu" not in platforms):
        return None
    if _backend_started():
        logging.warning("JAX has started: parallel.cpu_devices cannot take effect now.")
        return None
    batch = config.batch_size // max(num_processes, 1)
    accum = config.get("grad_accum_steps", 1)
    n = requested or choose(batch, accum)
    if batch % n or (batch // n) % accum:
        raise ValueError(
            f"parallel.cpu_devices={n} does not split this process's batch of {batch} into "
            f"whole micro-batches (grad_accum_steps={accum}); use a divisor of "
            f"{batch // accum}, or 0 for automatic.")
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {_COUNT_FLAG}={n}".strip()
    return n
