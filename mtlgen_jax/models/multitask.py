"""The multi-task model: one shared backbone (U-Net or transformer), one output head per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlgen_jax.models.unet import UNet, _groups
from mtlgen_jax.models.vit import DiT, TokenHead

BACKBONES = ("unet", "vit")


class HeadBlock(nn.Module):
    """A residual GroupNorm-SiLU-Conv3x3 layer of a deeper U-Net head (zero-initialised:
    the identity at init, so a deeper head starts as the same function as a depth-0 one)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x)
        return x + nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype,
                           kernel_init=nn.initializers.zeros)(nn.silu(h))


class TaskHead(nn.Module):
    """A task's own output layers: GroupNorm, SiLU, 3x3 conv to the output channels.

    Kept light on purpose: every head runs on every example of a batch (the
    example's task id then selects one output), so its cost is paid K times.
    ``depth`` residual :class:`HeadBlock` layers run first (0: the head above, with
    the same parameter names; deeper heads add ``hidden_<i>`` subtrees).
    """

    out_channels: int
    dtype: Any = jnp.float32
    zero_init: bool = False  # the output starts at zero (residual and bridge objectives)
    depth: int = 0

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        for i in range(self.depth):
            features = HeadBlock(self.dtype, name=f"hidden_{i}")(features)
        h = nn.GroupNorm(_groups(features.shape[-1]), dtype=self.dtype)(features)
        init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=init)(nn.silu(h))
        return h.astype(jnp.float32)


class MultiTaskModel(nn.Module):
    """Shared backbone + one head per task.

    The backbone sees ``[x_noisy, condition.image, condition.mask]`` stacked on
    the channel axis, and is conditioned on time, task and class embeddings.
    Parameters live under ``params['backbone']`` (shared by all tasks) and
    ``params['head_<task>']`` (one subtree per task). The backbone's optional per-task
    tables (``task_film``, ``task_lora_rank`` in ``backbone``; ``capacity.py``) sit inside
    ``params['backbone']`` in ``per_task_*`` subtrees, with the task id as leading axis;
    ``capacity.partition`` separates them from the shared parameters.

    Attributes:
      tasks: task names, in task-id order.
      out_channels: image channels C.
      backbone: keyword arguments of the backbone: :class:`UNet` (width,
        channel_mult, ..., task_film, task_lora_rank) or
        :class:`~mtlgen_jax.models.vit.DiT` (width, depth, num_heads, patch_size, ...,
        task_lora_rank).
      num_classes: class labels of the dataset (0 if unlabeled).
      dtype: computation dtype.
      zero_heads: per task, whether its head's output layer starts at zero.
      backbone_kind: 'unet' (feature maps [B, H, W, width], conv heads) or 'vit'
        (a DiT; the token grid [B, H/p, W/p, width], heads that unpatchify).
      head_depth: extra residual layers in each task head before its output layer.
    """

    tasks: Sequence[str]
    out_channels: int
    backbone: dict
    num_classes: int = 0
    dtype: Any = jnp.float32
    zero_heads: Sequence[bool] = ()
    backbone_kind: str = "unet"
    head_depth: int = 0

    def setup(self):
        if self.backbone_kind not in BACKBONES:
            raise ValueError(f"backbone_kind={self.backbone_kind!r}: use one of {BACKBONES}.")
        common = dict(num_tasks=len(self.tasks), num_classes=self.num_classes, dtype=self.dtype,
                      name="backbone", **self.backbone)
        zero = tuple(self.zero_heads) or (False,) * len(self.tasks)
        if self.backbone_kind == "unet":
            self.unet = UNet(**common)
            self.heads = [
                TaskHead(self.out_channels, self.dtype, zero_init=z, depth=self.head_depth,
                         name=f"head_{t}")
                for t, z in zip(self.tasks, zero)
            ]
        else:
            self.unet = DiT(**common)  # the attribute keeps its name: callers use model.unet
            self.heads = [
                TokenHead(self.out_channels, self.backbone["patch_size"], self.dtype,
                          zero_init=z, depth=self.head_depth,
                          mlp_ratio=self.backbone.get("mlp_ratio", 4.0), name=f"head_{t}")
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
        """The shared representation: the backbone's output, spatial in both cases.

        U-Net: feature maps [B, H, W, width]; vit: the token grid [B, H/p, W/p, width].
        Only ``params['backbone']`` is used (``method='features'`` in ``apply``), its
        per-task tables included (each example uses its own task's rows).
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
