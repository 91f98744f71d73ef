"""The shared U-Net backbone (DDPM / Palette style), pure Flax Linen.

The backbone maps an input image stack ``[B, H, W, C_in]`` plus per-example
conditioning (diffusion time, task id and an optional class label) to feature
maps ``[B, H, W, width]`` at full resolution. The task heads (``multitask.py``) turn
those features into each task's output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlgen_jax.models import capacity

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of continuous time.

    Args:
      t: [B] times in [0, 1] (scaled by 1000 so the frequencies match DDPM's
        integer timesteps).
      dim: embedding size (even).
      max_period: the lowest frequency's period.

    Returns:
      [B, dim] float32 embedding.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _groups(channels: int, preferred: int = 32) -> int:
    """Largest group count <= preferred that divides ``channels``."""
    g = min(preferred, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv residual block with an additive embedding bias.

    Per-task capacity (``capacity.py``, off by default): ``task_film`` scales and
    shifts the second GroupNorm's output per task; ``lora_rank`` > 0 adds a per-task
    low-rank update to every conv of the block.
    """

    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    num_tasks: int = 1
    task_film: bool = False
    lora_rank: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, task_id: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        conv = functools.partial(capacity.conv, task_id=task_id, num_tasks=self.num_tasks,
                                 lora_rank=self.lora_rank, dtype=self.dtype)
        h = nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x)
        h = conv(nn.silu(h), self.out_channels, (3, 3))
        h = h + nn.Dense(self.out_channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.GroupNorm(_groups(self.out_channels), dtype=self.dtype)(h)
        if self.task_film:
            h = capacity.TaskFiLM(self.num_tasks, name=f"{capacity.PREFIX}film")(h, task_id)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        # Zero-init the last conv so every block starts as the identity (as in DDPM/ADM).
        h = conv(h, self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)
        if x.shape[-1] != self.out_channels:
            x = conv(x, self.out_channels, (1, 1))
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, with a residual."""

    num_heads: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = nn.GroupNorm(_groups(c), dtype=self.dtype)(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            out_kernel_init=nn.initializers.zeros,
        )(y)
        return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
    """U-Net backbone conditioned on time, task and (optionally) class.

    Attributes:
      width: channels at full resolution.
      channel_mult: per-level multipliers of ``width``; the image is halved
        ``len(channel_mult) - 1`` times, so H and W must be divisible by
        ``2 ** (len(channel_mult) - 1)``.
      num_res_blocks: residual blocks per level (the decoder has one more).
      attn_resolutions: spatial sizes (e.g. ``(8,)``) at which self-attention
        runs after each residual block.
      num_tasks: size of the task-embedding table.
      num_classes: number of class labels, or 0 for none. Index ``num_classes``
        is the "no label" token (unconditional / classifier-free guidance).
      dropout: dropout rate inside residual blocks.
      num_heads: attention heads.
      task_film: a per-task scale and shift after each residual block's second
        GroupNorm (``capacity.TaskFiLM``; zero tables: the identity at init).
      task_lora_rank: r > 0 adds a per-task rank-r update to every convolution
        (``capacity.TaskLoRAConv``; zero B: the identity at init); 0 = off.
      dtype: computation dtype (parameters stay float32).
    """

    width: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (8,)
    num_tasks: int = 1
    num_classes: int = 0
    dropout: float = 0.0
    num_heads: int = 4
    task_film: bool = False
    task_lora_rank: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, H, W, C_in]
        t: jax.Array,  # [B] in [0, 1]
        task_id: jax.Array,  # [B] int32
        label: jax.Array | None = None,  # [B] int32 in [0, num_classes]
        *,
        train: bool = False,
    ) -> jax.Array:  # [B, H, W, width]
        emb_dim = 4 * self.width
        emb = timestep_embedding(t, self.width)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(emb)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(nn.silu(emb))
        emb = emb + nn.Embed(self.num_tasks, emb_dim, name="task_embed")(task_id).astype(emb.dtype)
        if self.num_classes:
            if label is None:
                label = jnp.full(task_id.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, name="class_embed")(label).astype(
                emb.dtype
            )

        conv = functools.partial(capacity.conv, task_id=task_id, num_tasks=self.num_tasks,
                                 lora_rank=self.task_lora_rank, dtype=self.dtype)
        block = functools.partial(ResBlock, dropout=self.dropout, dtype=self.dtype,
                                  num_tasks=self.num_tasks, task_film=self.task_film,
                                  lora_rank=self.task_lora_rank)
        h = conv(x.astype(self.dtype), self.width, (3, 3))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.width * mult)(h, emb, task_id, train=train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttentionBlock(self.num_heads, dtype=self.dtype)(h)
                skips.append(h)
            if level != len(self.channel_mult) - 1:
                h = conv(h, h.shape[-1], (3, 3), strides=(2, 2))
                skips.append(h)

        h = block(h.shape[-1])(h, emb, task_id, train=train)
        h = AttentionBlock(self.num_heads, dtype=self.dtype)(h)
        h = block(h.shape[-1])(h, emb, task_id, train=train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(self.width * mult)(h, emb, task_id, train=train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttentionBlock(self.num_heads, dtype=self.dtype)(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
                h = conv(h, c, (3, 3))
        assert not skips, "every skip connection must be consumed"
        return nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
