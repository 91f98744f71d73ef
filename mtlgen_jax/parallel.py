"""Devices: the mesh, the two wrappers of the per-device step, host -> global arrays.

The train step is ONE per-device function with explicit collectives over the
axis ``data`` (``step.AXIS``). It is wrapped either by
``jax.jit(jax.shard_map(...))`` over a ``jax.make_mesh((n,), ('data',))`` mesh
(``backend='shard_map'``, the default) or by ``jax.pmap(..., axis_name='data')``
(``backend='pmap'``). Both give the same numbers; state is replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtlgen_jax.step import AXIS

BACKENDS = ("shard_map", "pmap")


def check_batch(global_batch: int, grad_accum_steps: int = 1) -> tuple[int, int]:
    """Returns (per-process, per-device) batch sizes, or a clear error."""
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if grad_accum_steps < 1 or (global_batch // max(n_dev, 1)) % grad_accum_steps:
        raise ValueError(
            f"grad_accum_steps={grad_accum_steps} must be >= 1 and divide the per-device batch "
            f"{global_batch // max(n_dev, 1)} (batch_size={global_batch} over {n_dev} devices)."
        )
    if global_batch % n_dev:
        raise ValueError(
            f"batch_size={global_batch} is not divisible by the {n_dev} devices "
            f"({n_proc} process(es) x {jax.local_device_count()} local); use a multiple of "
            f"{n_dev}, e.g. {max(n_dev, global_batch // n_dev * n_dev)}."
        )
    return global_batch // n_proc, global_batch // n_dev


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
            return jax.tree.map(
                lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy(), tree)
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), self.replicated), tree)

    def abstract_state(self, shapes: Any) -> Any:
        """ShapeDtypeStructs with the sharding a restored state should have."""
        if self.backend == "pmap":
            return shapes
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

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

    def metrics_to_host(self, metrics: dict) -> dict[str, float]:
        """Device metrics (replicated) -> Python floats (a host sync)."""
        # Replicated values: this process's first shard is the whole value (also multi-host).
        return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0])
                for k, v in metrics.items()}
