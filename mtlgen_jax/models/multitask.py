"""The multi-task model: one shared U-Net backbone, one output head per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlgen_jax.models.unet import UNet, _groups


class TaskHead(nn.Module):
    """A task's own output layers: GroupNorm, SiLU, 3x3 conv to the output channels.

    Kept light on purpose: every head runs on every example of a batch (the
    example's task id then selects one output), so its cost is paid K times.
    """

    out_channels: int
    dtype: Any = jnp.float32
    zero_init: bool = False  # the output starts at zero (residual and bridge objectives)

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = nn.GroupNorm(_groups(features.shape[-1]), dtype=self.dtype)(features)
        init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=init)(nn.silu(h))
        return h.astype(jnp.float32)


class MultiTaskModel(nn.Module):
    """Shared backbone + one head per task.

    The backbone sees ``[x_noisy, condition.image, condition.mask]`` stacked on
    the channel axis, and is conditioned on time, task and class embeddings.
    Parameters live under ``params['backbone']`` (shared by all tasks) and
    ``params['head_<task>']`` (one subtree per task).

    Attributes:
      tasks: task names, in task-id order.
      out_channels: image channels C.
      backbone: keyword arguments of :class:`UNet` (width, channel_mult, ...).
      num_classes: class labels of the dataset (0 if unlabeled).
      dtype: computation dtype.
      zero_heads: per task, whether its head's output layer starts at zero.
    """

    tasks: Sequence[str]
    out_channels: int
    backbone: dict
    num_classes: int = 0
    dtype: Any = jnp.float32
    zero_heads: Sequence[bool] = ()

    def setup(self):
        self.unet = UNet(
            num_tasks=len(self.tasks),
            num_classes=self.num_classes,
            dtype=self.dtype,
            name="backbone",
            **self.backbone,
        )
        zero = tuple(self.zero_heads) or (False,) * len(self.tasks)
        self.heads = [
            TaskHead(self.out_channels, self.dtype, zero_init=z, name=f"head_{t}")
            for t, z in zip(self.tasks, zero)
        ]

    def __call__(
        self,
        x_noisy: jax.Array,  # [B, H, W, C] in [-1, 1] (zeros for regression tasks)
        condition,  # tasks.Condition: image [B, H, W, C], mask [B, H, W, 1]
        t: jax.Array,  # [B] float32 in [0, 1]
        task_id: jax.Array,  # [B] int32
        label: jax.Array | None = None,  # [B] int32; num_classes = "no label"
        *,
        train: bool = False,
    ) -> jax.Array:  # [B, H, W, C] float32: each example's own task's output
        features = self.features(x_noisy, condition, t, task_id, label, train=train)
        return self.head_outputs(features, task_id)

    def features(self, x_noisy, condition, t, task_id, label=None, *, train: bool = False):
        """The shared representation: the backbone's output features [B, H, W, F].

        Only ``params['backbone']`` is used (``method='features'`` in ``apply``).
        """
        x = jnp.concatenate([x_noisy, condition.image, condition.mask], axis=-1)
        return self.unet(x, t, task_id, label, train=train)

    def head_outputs(self, features: jax.Array, task_id: jax.Array) -> jax.Array:
        """Each example's own task head applied to its features: [B, H, W, C] float32.

        Only the ``params['head_<task>']`` subtrees are used.
        """
        outs = jnp.stack([head(features) for head in self.heads], axis=0)  # [K, B, H, W, C]
        onehot = jax.nn.one_hot(task_id, len(self.tasks), dtype=outs.dtype)  # [B, K]
        return jnp.einsum("kbhwc,bk->bhwc", outs, onehot)
