"""The transformer backbone (``model.backbone='vit'``): a DiT with adaLN-Zero, pure Flax Linen.

The image stack ``[B, H, W, C_in]`` is cut into ``p x p`` patches, each linearly
embedded to a token of ``width`` channels plus a fixed 2D sin-cos position code;
``depth`` transformer blocks follow, and the backbone returns the token grid
``[B, H/p, W/p, width]`` -- the shared representation. Each task's head
(:class:`TokenHead`) maps every token back to its ``p x p`` pixels.

Why DiT (Peebles & Xie, 2023) and not U-ViT (Bao et al., 2023). Both are diffusion
transformers over patches; they differ in how the conditioning enters and in
U-ViT's long skips.

* **Conditioning.** U-ViT feeds time (and class) as extra *tokens* ("in-context"
  conditioning): a task would be one more token that attention must learn to
  consult. DiT's adaLN-Zero regresses each block's LayerNorm shift and scale and a
  residual gate from one conditioning vector ``c``; DiT's ablation (its Fig. 5)
  found adaLN-Zero better than in-context tokens and cross-attention, at the
  lowest cost. For several tasks this matters most: here ``c = time embedding +
  task embedding (+ class embedding)``, exactly as in our U-Net (whose residual
  blocks add the same sum as a bias), so **every block gets its own per-task
  shift, scale and gate of every channel** -- six ``width``-vectors per block and
  task, a FiLM-style per-task modulation of the shared weights, the main per-task
  capacity of the shared backbone (besides each task's own head). The final
  LayerNorm is modulated by ``c`` too (DiT's final layer), so the representation
  the heads read is already task-aware. More per-task capacity, off by default:
  ``model.task_lora_rank`` adds a per-task low-rank update to the attention and MLP
  layers of every block (``capacity.py``; zero at init, so adaLN-Zero's identity holds).
* **Identity at initialisation.** adaLN-Zero initialises every modulation layer
  to zero: shift = scale = gate = 0, so every block is the identity and the
  backbone's output is the normalised patch embedding. This is the same
  discipline as the U-Net's zero-initialised residual convs and our zero-initialised
  heads of residual/bridge tasks (an untrained model returns the task's baseline).
  U-ViT has no such property (its long-skip linear layers mix two streams from
  the start).
* **What U-ViT has that we leave out.** Its long skips (concatenating shallow and
  deep tokens) were the largest gain in its pixel-space ablation. We did not add
  them: they would break the identity-at-init property above, and DiT's blocks are
  the simpler, better-studied scaling recipe. Worth measuring if the transformer
  falls short of the U-Net on fine detail (a zero-initialised ``skip -> Dense``
  added to the deep tokens would keep the identity).

Attention: ``attention_impl=None`` (the default) is :func:`attention`, softmax
attention written in the form XLA compiles best on CPU (the default DiT's train
step, 2 CPU devices with huge pages, ran 77.9 images/s with it against 62.9 with
``jax.nn.dot_product_attention``'s XLA implementation; same values and gradients,
tested); ``'xla'`` is that
``jax.nn.dot_product_attention`` implementation; ``'cudnn'`` asks
``jax.nn.dot_product_attention`` for cuDNN's flash attention
(GPU, bfloat16/float16, head size a multiple of 8 up to 128; ``check_model_config``
refuses the other cases before compiling). On a platform without cuDNN (CPU, TPU) a
``'cudnn'`` model runs XLA's attention instead, with a warning -- the parameters
and the result are the same, so a GPU run's checkpoint still restores elsewhere.

Positions are a 2D sin-cos code computed from the token grid (not a learned
table), so the same parameters run on any ``H x W`` divisible by ``p`` (tiles,
other image sizes).

Parameters are float32; computation runs in ``dtype`` (bfloat16 on accelerators);
the heads return float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mtlgen_jax.models import capacity
from mtlgen_jax.models.unet import timestep_embedding

Dtype = Any
ATTENTION_IMPLS = (None, "xla", "cudnn")
_dense_init = nn.initializers.xavier_uniform()  # DiT's initialisation of linear layers
_warned_cudnn = []


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """[h * w, dim] fixed 2D sin-cos position code (MAE / DiT), row-major over the grid.

    Half of the channels encode the row, half the column (``dim`` divisible by 4).
    """
    assert dim % 4 == 0, dim
    omega = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def axis(pos):  # [N] -> [N, dim // 2]
        out = pos[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    return np.concatenate([axis(rows.ravel()), axis(cols.ravel())], axis=1).astype(np.float32)


def _layer_norm(dtype) -> nn.LayerNorm:
    """LayerNorm without its own scale and bias (adaLN supplies them), as in DiT."""
    return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, T, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _resolve_impl(impl: str | None) -> str | None:
    """``'cudnn'`` where cuDNN exists (a GPU backend), else XLA's attention with a warning."""
    if impl == "cudnn" and jax.default_backend() != "gpu":
        if not _warned_cudnn:
            logging.warning("model.attention_impl='cudnn' needs a GPU; running XLA's attention "
                            "on %s (same parameters and results).", jax.default_backend())
            _warned_cudnn.append(True)
        return "xla"
    return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention on head-major arrays: q, k, v ``[B, H, T, E]`` -> ``[B, H, T, E]``.

    The same function as ``jax.nn.dot_product_attention``'s XLA implementation
    (tested equal), written in the form XLA:CPU runs fastest: the heads lead (no
    transposes between the products), the row maximum is a constant for
    differentiation (softmax does not depend on it, so the gradients are exact),
    and the normalisation divides the ``[T, E]`` output instead of the ``[T, T]``
    probabilities. On the 2-core CPU of the README, for the default DiT's attention
    (32 x 4 heads x 256 tokens x 24, with the qkv and output projections, one device,
    huge pages): forward 6.5 ms against 14.5 ms for ``jax.nn.dot_product_attention``,
    forward + backward 47.7 against 65.4 ms.

    As in ``jax.nn``, the scores, the softmax and its normaliser are float32 whatever
    the inputs' dtype; the probabilities enter the second product in ``v``'s dtype.
    """
    scores = jnp.einsum("bhqe,bhke->bhqk", q * (q.shape[-1] ** -0.5), k,
                        preferred_element_type=jnp.float32)
    scores = scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    probs = jnp.exp(scores)  # unnormalised
    out = jnp.einsum("bhqk,bhke->bhqe", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return (out / probs.sum(axis=-1, keepdims=True)).astype(v.dtype)


class Attention(nn.Module):
    """Multi-head self-attention over tokens: :func:`attention` (``attention_impl=None``)
    or ``jax.nn.dot_product_attention`` ('xla', 'cudnn').

    ``lora_rank`` > 0: per-task low-rank updates of the qkv and output projections
    (``capacity.TaskLoRADense``; zero at init).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    num_tasks: int = 1
    lora_rank: int = 0

    @nn.compact
    def __call__(self, x: jax.Array,
                 task_id: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
        b, t, d = x.shape
        dense = functools.partial(capacity.dense, task_id=task_id, num_tasks=self.num_tasks,
                                  lora_rank=self.lora_rank, dtype=self.dtype,
                                  kernel_init=_dense_init)
        qkv = dense(x, 3 * d, name="qkv").reshape(b, t, 3, self.num_heads, d // self.num_heads)
        impl = _resolve_impl(self.attention_impl)
        if impl is None:  # head-major: [3, B, H, T, E]
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)
            out = attention(q, k, v).transpose(0, 2, 1, 3)  # [B, T, H, E]
        else:
            out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                               implementation=impl)
        return dense(out.reshape(b, t, d), d, name="proj")


class Mlp(nn.Module):
    """Dense - GELU - (dropout) - Dense (``lora_rank`` > 0: per-task low-rank updates of
    both, as in :class:`Attention`)."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    zero_out: bool = False  # the output layer starts at zero (a residual branch = identity)
    num_tasks: int = 1
    lora_rank: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, task_id: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        dense = functools.partial(capacity.dense, task_id=task_id, num_tasks=self.num_tasks,
                                  lora_rank=self.lora_rank, dtype=self.dtype)
        h = dense(x, self.hidden, name="fc1", kernel_init=_dense_init)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h, approximate=True))
        init = nn.initializers.zeros if self.zero_out else _dense_init
        return dense(h, x.shape[-1], name="fc2", kernel_init=init)


class DiTBlock(nn.Module):
    """A transformer block whose norms and residual gates are regressed from ``c``.

    ``x + gate_a * Attn(LN(x) * (1 + scale_a) + shift_a)``, then the same with the
    MLP; the six vectors come from ``Dense(6 D)(silu(c))``, initialised at zero, so
    the block starts as the identity (adaLN-Zero).
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    num_tasks: int = 1
    lora_rank: int = 0  # per-task low-rank updates of the attention and MLP layers

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, task_id: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        d = x.shape[-1]
        mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                       name="adaLN_modulation")(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        h = _modulate(_layer_norm(self.dtype)(x), shift_a, scale_a)
        x = x + gate_a[:, None, :] * Attention(self.num_heads, self.dtype, self.attention_impl,
                                               self.num_tasks, self.lora_rank,
                                               name="attn")(h, task_id)
        h = _modulate(_layer_norm(self.dtype)(x), shift_m, scale_m)
        mlp = Mlp(int(d * self.mlp_ratio), self.dropout, self.dtype, num_tasks=self.num_tasks,
                  lora_rank=self.lora_rank, name="mlp")
        return x + gate_m[:, None, :] * mlp(h, task_id, train=train)


class DiT(nn.Module):
    """Diffusion transformer backbone conditioned on time, task and (optionally) class.

    Attributes:
      width: token channels D (divisible by ``num_heads`` and by 4).
      depth: transformer blocks.
      num_heads: attention heads (head size ``width / num_heads``).
      patch_size: p; H and W must be divisible by it.
      mlp_ratio: MLP hidden size over ``width``.
      num_tasks: size of the task-embedding table.
      num_classes: number of class labels, or 0 for none. Index ``num_classes``
        is the "no label" token (unconditional / classifier-free guidance).
      dropout: dropout rate inside the MLPs.
      attention_impl: None (:func:`attention`), or ``jax.nn.dot_product_attention``'s
        implementation ('xla', 'cudnn').
      task_lora_rank: r > 0 adds a per-task rank-r update to the qkv and output
        projections and both MLP layers of every block (``capacity.TaskLoRADense``;
        zero at init); 0 = off. (No per-task FiLM: adaLN already conditions every
        norm on the task.)
      dtype: computation dtype (parameters stay float32).
    """

    width: int = 64
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_tasks: int = 1
    num_classes: int = 0
    dropout: float = 0.0
    attention_impl: str | None = None
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
    ) -> jax.Array:  # [B, H/p, W/p, width]
        d, p = self.width, self.patch_size
        embed_init = nn.initializers.normal(0.02)  # DiT's embedding tables
        # c: time + task (+ class) embedding, the adaLN conditioning of every block.
        c = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                     name="time_embed_0")(timestep_embedding(t, d))
        c = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                     name="time_embed_1")(nn.silu(c))
        c = c + nn.Embed(self.num_tasks, d, embedding_init=embed_init,
                         name="task_embed")(task_id).astype(c.dtype)
        if self.num_classes:
            if label is None:
                label = jnp.full(task_id.shape, self.num_classes, jnp.int32)
            c = c + nn.Embed(self.num_classes + 1, d, embedding_init=embed_init,
                             name="class_embed")(label).astype(c.dtype)

        h = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    kernel_init=_dense_init, name="patch_embed")(x.astype(self.dtype))
        b, gh, gw, _ = h.shape  # [B, H/p, W/p, D]
        tokens = h.reshape(b, gh * gw, d) + jnp.asarray(sincos_2d(gh, gw, d), self.dtype)[None]
        for i in range(self.depth):
            tokens = DiTBlock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype,
                              self.attention_impl, self.num_tasks, self.task_lora_rank,
                              name=f"block_{i}")(tokens, c, task_id, train=train)
        # DiT's final layer without its linear map (that is each task's head): the last
        # LayerNorm, modulated by c (zero-initialised: a plain LayerNorm at init).
        shift, scale = jnp.split(
            nn.Dense(2 * d, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                     name="final_modulation")(nn.silu(c)), 2, axis=-1)
        tokens = _modulate(_layer_norm(self.dtype)(tokens), shift, scale)
        return tokens.reshape(b, gh, gw, d)


def unpatchify(x: jax.Array, p: int, channels: int) -> jax.Array:
    """[B, h, w, p * p * C] -> [B, h * p, w * p, C] (each token's pixels row-major)."""
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, channels)


class TokenHead(nn.Module):
    """A task's own output layers on the token grid: LayerNorm, Dense to the patch's pixels.

    ``depth`` residual MLP blocks (LayerNorm, Dense, GELU, Dense; the last Dense
    zero-initialised, so a deeper head starts as the same function as a depth-0 one)
    run before the output layer. Like the U-Net's head it runs on every example of a
    batch, so it stays light: the output layer is one ``D x p*p*C`` matrix per task.
    """

    out_channels: int
    patch_size: int
    dtype: Any = jnp.float32
    zero_init: bool = False  # the output starts at zero (residual and bridge objectives)
    depth: int = 0
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:  # [B, h, w, D] -> [B, H, W, C]
        h = features
        for i in range(self.depth):
            y = nn.LayerNorm(dtype=self.dtype, name=f"hidden_{i}_norm")(h)
            h = h + Mlp(int(h.shape[-1] * self.mlp_ratio), dtype=self.dtype, zero_out=True,
                        name=f"hidden_{i}")(y)
        h = nn.LayerNorm(dtype=self.dtype, name="norm")(h)
        init = nn.initializers.zeros if self.zero_init else _dense_init
        p = self.patch_size
        h = nn.Dense(p * p * self.out_channels, dtype=self.dtype, kernel_init=init, name="out")(h)
        return unpatchify(h, p, self.out_channels).astype(jnp.float32)
