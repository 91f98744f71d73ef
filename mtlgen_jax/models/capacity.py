"""Per-task capacity inside the shared backbone: FiLM tables and low-rank adapters (LoRA).

Two options of ``config.model``, both off by default (until measured):

* ``task_film`` (U-Net): after the second GroupNorm of every residual block, a
  per-task, per-channel scale and shift, ``h * (1 + scale[k]) + shift[k]`` -- ADM's
  scale-shift norm, with a table row per task instead of a projection of the time
  embedding. The transformer needs none: DiT's adaLN already regresses every norm's
  shift and scale from a conditioning vector that includes the task embedding.
* ``task_lora_rank`` r > 0: a low-rank update ``B_k A_k`` of task k beside a shared
  layer W, so task k's layer is ``W + B_k A_k``. U-Net: every convolution of the
  backbone (A_k: the conv's kernel size and stride, C_in -> r; B_k: 1x1, r -> C_out).
  Transformer: the attention's qkv and output projections and both MLP layers.

Both start as the identity: the FiLM tables and every B_k are zero-initialised, so
a model with the options on computes exactly what the same shared parameters compute
without them; A_k is initialised like a layer (LeCun normal), so B_k gets a gradient
from the first step on (and A_k once B_k has moved), as in LoRA.

Layout. Every per-task parameter is a table whose leading axis is the task id (like
the backbone's task-embedding table) in a subtree named ``per_task_*``, inside
``params['backbone']`` next to the layer it adapts (``per_task_film``,
``per_task_lora_Conv_1``, ``per_task_lora_qkv``). :func:`partition` splits any
params-shaped tree (parameters, gradients, per-task gradients) into the shared part
and the per-task part; every gradient method forms its K x K Gram matrix from the
shared part only, and row k of a per-task table gets task k's own gradient, as head k
does (``step.py``). With both options off the parameter tree is exactly the one
before they existed, so older checkpoints restore unchanged.

Overhead per task (:func:`overhead_per_task`): FiLM adds 2 C per residual block (C its
output channels); LoRA adds ``r (kh kw C_in + C_out)`` per convolution and
``r (D_in + D_out)`` per dense layer (the numbers of the default configs: the comment
over ``task_film`` in ``configs/default.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "per_task_"  # the name of every per-task subtree


def _key(k) -> str:
    return str(getattr(k, "key", k))


def is_per_task(path: Sequence[Any]) -> bool:
    """Whether a parameter path (strings or ``jax.tree_util`` keys) is a per-task table."""
    return any(_key(k).startswith(PREFIX) for k in path)


def partition(tree: Mapping) -> tuple[dict, dict]:
    """(shared, per_task): ``tree``'s nested dicts, each part holding only its own leaves
    (empty dicts dropped). With the options off, ``per_task`` is ``{}`` and ``shared``
    equals ``tree``."""

    def split(d, inside):
        shared, own = {}, {}
        for k, v in d.items():
            hit = inside or str(k).startswith(PREFIX)
            if isinstance(v, Mapping):
                s, o = split(v, hit)
                if s:
                    shared[k] = s
                if o:
                    own[k] = o
            elif hit:
                own[k] = v
            else:
                shared[k] = v
        return shared, own

    return split(tree, False)


def combine(shared: Mapping, per_task: Mapping) -> dict:
    """The inverse of :func:`partition`: one nested dict with the leaves of both."""
    out = dict(shared)
    for k, v in per_task.items():
        out[k] = combine(out[k], v) if k in out and isinstance(v, Mapping) else v
    return out


def overhead_per_task(params: Any) -> int:
    """Parameters each task owns inside the backbone (its rows of every per-task table).

    Works on arrays or shapes (``jax.eval_shape``); 0 with the options off.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(int(np.prod(x.shape[1:])) for path, x in leaves if is_per_task(path))


class TaskFiLM(nn.Module):
    """``x * (1 + scale[task]) + shift[task]`` per channel; zero tables = the identity."""

    num_tasks: int

    @nn.compact
    def __call__(self, x: jax.Array, task_id: jax.Array) -> jax.Array:  # x [B, H, W, C]
        table = self.param("scale_shift", nn.initializers.zeros,
                           (self.num_tasks, 2, x.shape[-1]))  # [K, 2, C]
        scale, shift = (table[task_id, i].astype(x.dtype)[:, None, None, :] for i in (0, 1))
        return x * (1 + scale) + shift


def _a_init(in_axis) -> nn.initializers.Initializer:
    """LeCun normal over the layer's inputs, independently per task (axis 0)."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=in_axis, out_axis=-1, batch_axis=(0,))


class TaskLoRAConv(nn.Module):
    """Task k's low-rank update of a 'SAME' convolution: A_k (the conv's kernel size and
    stride, C_in -> r channels), then B_k (1x1, r -> ``features``); B starts at zero."""

    num_tasks: int
    rank: int
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task_id: jax.Array) -> jax.Array:
        k, r = self.num_tasks, self.rank
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        a = self.param("a", _a_init((1, 2, 3)), (k, kh, kw, cin, r))
        b = self.param("b", nn.initializers.zeros, (k, r, self.features))
        # All K tasks' A in one dense conv with K * r output channels (small: K and r are),
        # then each example keeps its own task's r channels. Gathering A by task id instead
        # would give every example its own kernel -- a batched conv XLA runs far slower.
        kernel = jnp.moveaxis(a, 0, 3).reshape(kh, kw, cin, k * r).astype(self.dtype)
        u = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel, tuple(self.strides),
                                         "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        onehot = jax.nn.one_hot(task_id, k, dtype=u.dtype)  # [B, K]
        u = jnp.einsum("bhwkr,bk->bhwr", u.reshape(u.shape[:-1] + (k, r)), onehot)
        return jnp.einsum("bhwr,bro->bhwo", u, b[task_id].astype(self.dtype))


class TaskLoRADense(nn.Module):
    """Task k's low-rank update of a dense layer on tokens: ``x A_k B_k``; B starts at zero."""

    num_tasks: int
    rank: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task_id: jax.Array) -> jax.Array:  # x [B, T, D_in]
        k, r = self.num_tasks, self.rank
        a = self.param("a", _a_init(1), (k, x.shape[-1], r))
        b = self.param("b", nn.initializers.zeros, (k, r, self.features))
        # Each example's own task's matrices, gathered: one small batched matmul per
        # example (a dense layer has no kernel to share, unlike the conv above).
        u = jnp.einsum("btd,bdr->btr", x.astype(self.dtype), a[task_id].astype(self.dtype))
        return jnp.einsum("btr,bro->bto", u, b[task_id].astype(self.dtype))


def conv(x: jax.Array, features: int, kernel_size: Sequence[int], task_id: jax.Array | None,
         *, num_tasks: int, lora_rank: int, dtype: Any, strides: Sequence[int] = (1, 1),
         kernel_init: Any = nn.linear.default_kernel_init) -> jax.Array:
    """``nn.Conv`` (auto-named as before: ``Conv_<i>``) plus task k's low-rank update
    (``per_task_lora_Conv_<i>``) when ``lora_rank`` > 0. Call inside a compact method."""
    layer = nn.Conv(features, tuple(kernel_size), strides=tuple(strides), dtype=dtype,
                    kernel_init=kernel_init)
    y = layer(x)
    if lora_rank:
        y = y + TaskLoRAConv(num_tasks, lora_rank, features, tuple(kernel_size),
                             tuple(strides), dtype, name=f"{PREFIX}lora_{layer.name}")(x, task_id)
    return y


def dense(x: jax.Array, features: int, task_id: jax.Array | None, *, name: str,
          num_tasks: int, lora_rank: int, dtype: Any, kernel_init: Any) -> jax.Array:
    """``nn.Dense`` named ``name`` plus task k's low-rank update (``per_task_lora_<name>``)
    when ``lora_rank`` > 0. Call inside a compact method."""
    y = nn.Dense(features, dtype=dtype, kernel_init=kernel_init, name=name)(x)
    if lora_rank:
        y = y + TaskLoRADense(num_tasks, lora_rank, features, dtype,
                              name=f"{PREFIX}lora_{name}")(x, task_id)
    return y
