"""CPU hosts: split the cores into several JAX devices, and give XLA huge pages.

**Devices.** XLA:CPU runs one device's program on about one core, with gaps: on the
2-core machine of the README's Performance section, one CPU device kept 1.13 cores
busy (the U-Net step) or 0.90 (the transformer's), and the same train step run
data-parallel over several CPU devices (the ordinary shard_map path,
``--xla_force_host_platform_device_count=N``) trained 1.46-1.70x more images/s
with 2 devices than with 1. Two devices per core fill the gaps further: with huge
pages (below), the transformer step ran 86.3 images/s on 4 devices against 77.9 on
2 (and 81.8 on 8), while the U-Net step ran the same on 4 as on 2 (114.7 and 114.9).
So the automatic count is two devices per core (:data:`DEVICES_PER_CORE`), at most
:data:`MAX_AUTO`.

The device count has to be in ``XLA_FLAGS`` before JAX creates its CPU backend (the
first ``jax.devices()``), so entry points call :func:`configure` right after
reading the config. It changes nothing where the user already set a count, where
JAX has already started, or on accelerator hosts (their CPU devices run nothing).

**Huge pages.** XLA:CPU allocates each step's temporary buffers afresh (the default
U-Net step: 191 MiB per device; the transformer's: 412 MiB), and glibc serves every
allocation over 32 MiB with a new ``mmap``, so each step first-touches all of it
again, 4 KiB page by page. An axpy writing 33 MB took 9.5 ms where one writing
31 MB (served from the heap) took 1.3 ms. glibc's ``glibc.malloc.hugetlb=1``
tunable (glibc >= 2.35) makes malloc ask for transparent huge pages instead
(``madvise``): the U-Net step went from 93.2 to 114.9 images/s and the
transformer's from 61.9 to 86.3 (2 and 4 devices; same results, only faster).
The tunable is read when a process starts, so :func:`reexec_with_huge_pages`
restarts the entry point's own command line once with it set (``launch.py``,
``bench/``, the experiments). In a notebook, start Jupyter with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment for the same speed;
``MTLGEN_HUGE_PAGES=0`` turns the restart off.
"""

from __future__ import annotations

import os
import re
import sys

from absl import logging

_COUNT_FLAG = "--xla_force_host_platform_device_count"
# XLA:CPU aborts the process when a device thread reaches a collective 40 s after the
# others. Several devices share a few cores, so another busy process on the host can
# starve one that long: a run of the default config aborted so in its final evaluation
# while a test suite ran beside it (session 15). With the split, the wait is 10 minutes.
_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_TIMEOUT_S = 600
COLLECTIVE_TIMEOUT_FLAG = f"{_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}"  # for XLA_FLAGS
MAX_AUTO = 8  # the automatic count never exceeds this (measured on 2 cores only)
DEVICES_PER_CORE = 2  # the automatic count's devices per core (module docstring)
_TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose(batch_size: int, grad_accum_steps: int = 1, cores: int | None = None,
           cap: int = MAX_AUTO, per_core: int = DEVICES_PER_CORE) -> int:
    """The largest device count <= min(per_core * cores, cap) that splits the batch evenly.

    Every device needs a whole number of micro-batches: ``batch_size / n`` must be
    a multiple of ``grad_accum_steps``.
    """
    cores = available_cores() if cores is None else cores
    for n in range(max(1, min(per_core * cores, cap)), 0, -1):
        if batch_size % n == 0 and (batch_size // n) % max(grad_accum_steps, 1) == 0:
            return n
    return 1


def _backend_started() -> bool:
    from jax._src import xla_bridge  # private, but the only way to ask without starting it

    return bool(getattr(xla_bridge, "_backends", {}))


def configure(config, *, num_processes: int = 1) -> int | None:
    """Sets ``XLA_FLAGS`` so the CPU backend has ``config.parallel.cpu_devices`` devices
    (and, with more than one, XLA's collective termination timeout at
    :data:`COLLECTIVE_TIMEOUT_S` unless ``XLA_FLAGS`` sets one).

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
        flags = f"{flags} {_COUNT_FLAG}={n}"
        if not re.search(_TIMEOUT_FLAG + r"=", flags):  # the user's own value wins
            flags += " " + COLLECTIVE_TIMEOUT_FLAG
        os.environ["XLA_FLAGS"] = flags.strip()
    return n


def huge_pages_available() -> bool:
    """Linux with glibc >= 2.35 (the ``hugetlb`` tunable) and transparent huge pages not
    switched off."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
        with open(_THP) as f:
            thp = f.read()
    except (OSError, ValueError):
        return False
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", libc)
    return bool(match) and (int(match[1]), int(match[2])) >= (2, 35) and "[never]" not in thp


def reexec_with_huge_pages() -> None:
    """Restarts this process's command line with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

    Call first thing in an entry point (before anything is written or started). It
    returns without restarting where the tunable is already set, where
    ``MTLGEN_HUGE_PAGES=0``, or where :func:`huge_pages_available` is False; the
    restarted process has the tunable, so it never restarts twice. The command line
    is ``sys.orig_argv`` (``python -m module ...`` stays a module run).
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if ("glibc.malloc.hugetlb" in tunables or os.environ.get("MTLGEN_HUGE_PAGES") == "0"
            or not huge_pages_available()):
        return
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{_TUNABLE}" if tunables else _TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
