"""Devices: the mesh, the two wrappers of the per-device step, host -> global arrays.

The train step is ONE per-device function with explicit collectives over the
axis ``data`` (``AXIS``). It is wrapped either by
``jax.jit(jax.shard_map(...))`` over a ``jax.make_mesh((n,), ('data',))`` mesh
(``backend='shard_map'``, the default) or by ``jax.pmap(..., axis_name='data')``
(``backend='pmap'``). Both give the same numbers; state is replicated.

:class:`Parallel` owns every difference between the two backends: the loop, the
evaluator and the sampler call its methods and never ask which backend runs.
Jitted functions outside the step (sampling, evaluation) always run over the
mesh, sharded over the batch, whichever backend the step uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"  # the mesh axis the batch is split over
BACKENDS = ("shard_map", "pmap")


class Parallel:
    """Places state and batches on devices and runs the wrapped step.

    Args:
      backend: 'shard_map' or 'pmap'.
      devices: the devices to use (default: all devices of all processes).
    """

    def __init__(self, backend: str = "shard_map", devices=None):
        if backend not in BACKENDS:
            raise ValueError(f"parallel.backend={backend!r} is unknown; use one of {BACKENDS}.")
        self.backend = backend
        self.devices = list(devices) if devices is not None else jax.devices()
        self.mesh = jax.make_mesh((len(self.devices),), (AXIS,), devices=self.devices,
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch(self, global_batch: int, grad_accum_steps: int = 1) -> tuple[int, int]:
        """Returns (per-process, per-device) batch sizes, or a clear error."""
        n_dev, n_local = self.num_devices, len(self.local_devices)
        n_proc = len({d.process_index for d in self.devices})
        if grad_accum_steps < 1 or (global_batch // n_dev) % grad_accum_steps:
            raise ValueError(
                f"grad_accum_steps={grad_accum_steps} must be >= 1 and divide the per-device "
                f"batch {global_batch // n_dev} (batch_size={global_batch} over {n_dev} "
                "devices).")
        if global_batch % n_dev:
            raise ValueError(
                f"batch_size={global_batch} is not divisible by the {n_dev} devices "
                f"({n_proc} process(es) x {n_local} local); use a multiple of "
                f"{n_dev}, e.g. {max(n_dev, global_batch // n_dev * n_dev)}.")
        return global_batch // n_dev * n_local, global_batch // n_dev

    # --- step ---------------------------------------------------------------------------
    def wrap(self, per_device: Callable, *, donate: bool = True) -> Callable:
        """``per_device(state, batch) -> (state, metrics)`` -> the compiled global step."""
        donate_argnums = (0,) if donate else ()
        if self.backend == "pmap":
            return jax.pmap(per_device, axis_name=AXIS, devices=self.devices,
                            donate_argnums=donate_argnums)
        sharded = jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                out_specs=(P(), P()), check_vma=False)
        return jax.jit(sharded, donate_argnums=donate_argnums)

    # --- placement ----------------------------------------------------------------------
    def init_state(self, init_fn: Callable[[], Any]) -> Any:
        """Builds the state from shapes directly on the devices (replicated)."""
        if self.backend == "pmap":
            return self.replicate(jax.jit(init_fn)())
        shapes = jax.eval_shape(init_fn)
        shardings = jax.tree.map(lambda _: self.replicated, shapes)
        return jax.jit(init_fn, out_shardings=shardings)()

    def replicate(self, tree: Any) -> Any:
        """Host values (or single-device arrays) -> replicated on every device."""
        if self.backend == "pmap":
            # A leading axis of local-device length; pmap shards it over its devices.
            n = len(self.local_devices)

            def stack(x):  # a global replicated array: this process's copy
                x = x.addressable_data(0) if isinstance(x, jax.Array) else x
                return np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy()

            return jax.tree.map(stack, tree)
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), self.replicated), tree)

    def abstract_state(self, shapes: Any) -> Any:
        """ShapeDtypeStructs with the sharding a restored state should have: replicated
        over this run's devices, whatever devices wrote it (for pmap, ``place_restored``
        then stacks the copies). Without a sharding, orbax would restore onto the
        writer's topology and refuse another device count."""
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    def place_restored(self, state: Any) -> Any:
        """A state restored into ``abstract_state``'s layout -> what the wrapped step takes."""
        return self.replicate(state) if self.backend == "pmap" else state

    def replicated_copy(self, tree: Any) -> Any:
        """Replicated step state (or a part of it, e.g. the EMA params) -> one copy
        replicated over the mesh, for jitted functions outside the step (sampling)."""
        if self.backend == "pmap":
            return jax.tree.map(lambda x: jax.device_put(np.asarray(x[0]), self.replicated),
                                tree)
        return tree

    def unreplicate(self, tree: Any) -> Any:
        """Replicated device state -> one copy (a global array or, for pmap, device 0's)."""
        if self.backend == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
        return tree

    def shard_batch(self, batch: dict[str, np.ndarray]) -> Any:
        """This process's batch -> the global batch sharded over ``data``."""
        if self.backend == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

    # --- batches for jitted functions outside the step (sampling, evaluation) ----------------
    def pad(self, tree: Any) -> tuple[Any, int]:
        """This process's rows -> padded to a multiple of its device count, and the
        number of real rows. Padding repeats the last row (any valid input will do)."""
        n = jax.tree.leaves(tree)[0].shape[0]
        per = len(self.local_devices)
        extra = -n % per
        if not extra:
            return tree, n
        return jax.tree.map(
            lambda x: np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], extra, 0)]),
            tree), n

    def shard_rows(self, tree: Any) -> tuple[Any, int]:
        """This process's rows (any count) -> global arrays sharded over ``data``, and the
        number of real rows per process (see :meth:`gather`)."""
        padded, n = self.pad(tree)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding,
                                                             np.asarray(x)), padded), n

    def gather(self, tree: Any, rows: int) -> Any:
        """Global arrays from :meth:`shard_rows`'s layout -> numpy on every process, the
        padding dropped: every process's ``rows`` real rows, in process order."""
        def one(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                x = multihost_utils.process_allgather(x, tiled=True)
            x = np.asarray(x)
            per = x.shape[0] // jax.process_count()
            blocks = x.reshape((jax.process_count(), per) + x.shape[1:])[:, :rows]
            return blocks.reshape((-1,) + x.shape[1:])

        return jax.tree.map(one, tree)

    def metrics_to_host(self, metrics: dict) -> dict[str, float]:
        """Device metrics (replicated) -> Python floats (a host sync)."""
        # Replicated values: this process's first shard is the whole value (also multi-host).
        return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0])
                for k, v in metrics.items()}
