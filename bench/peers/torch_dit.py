"""A PyTorch peer of the transformer backbone (``model.backbone='vit'``) for bench/train_step.py.

The same network as ``mtlgen_jax.models.vit`` inside ``MultiTaskModel`` (a DiT with
adaLN-Zero + one token head per task, every head run on every example and the task
id selecting one output): same layers, shapes and parameter count (the benchmark
asserts the count equals the JAX model's) --

  * conditioning ``c`` = Dense(D) - SiLU - Dense(D) of the sinusoidal time
    embedding (``torch_unet.timestep_embedding``) + task (+ class) embedding;
  * ``p x p`` patch embedding (a stride-``p`` conv) + fixed 2D sin-cos positions;
  * ``depth`` blocks: ``Dense(6 D)(silu(c))`` regresses shift, scale and gate of
    both sub-layers; LayerNorm without affine (eps 1e-6); multi-head
    self-attention (``qkv`` Dense(3 D), the same head split, ``proj``) through
    ``torch.nn.functional.scaled_dot_product_attention``; MLP Dense(mlp_ratio D) -
    GELU (tanh approximation, as ``nn.gelu``'s default) - Dense(D);
  * the final LayerNorm modulated by ``Dense(2 D)(silu(c))``;
  * per task: ``head_depth`` residual MLP blocks, LayerNorm (affine, eps 1e-6),
    Dense(p * p * C), unpatchified in the JAX layout (each token's pixels row-major,
    channels last).

The adaLN modulation layers start at zero as in JAX (adaLN-Zero); the other
initialisers are torch's defaults (they change no cost).

The multi-task step (degrade, q_sample, masked per-task losses, clipping, AdamW,
EMA) is ``torch_unet.TorchStep``'s, shared with the U-Net peer; so are its
differences from the JAX step (``torch_unet``'s docstring). Here the model runs in
token layout [B, T, D] between the patch embedding and the heads, as in JAX.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.peers.torch_unet import TorchStep, step_kwargs, timestep_embedding

LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon (and the DiT's norms)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """[h * w, dim] fixed 2D sin-cos position code, as ``mtlgen_jax.models.vit.sincos_2d``."""
    omega = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def axis(pos):
        out = pos[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    code = np.concatenate([axis(rows.ravel()), axis(cols.ravel())], axis=1)
    return torch.from_numpy(code.astype(np.float32))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _zero_linear(din: int, dout: int) -> nn.Linear:
    layer = nn.Linear(din, dout)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    """Multi-head self-attention over tokens (4 D^2 + 4 D params)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        b, t, d = x.shape
        # The JAX split: [B, T, 3, heads, d_head] -> q, k, v [B, heads, T, d_head].
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d_head), as JAX's
        return self.proj(o.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """Dense - GELU (tanh) - (dropout) - Dense."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x), approximate="tanh")
        return self.fc2(F.dropout(h, self.dropout, self.training) if self.dropout else h)


class DiTBlock(nn.Module):
    """``x + gate_a * Attn(LN(x) (1 + scale_a) + shift_a)``, then the same with the MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.adaLN_modulation = _zero_linear(width, 6 * width)
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.mlp = Mlp(width, int(width * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(
            F.silu(c)).chunk(6, dim=-1)
        x = x + gate_a[:, None, :] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None, :] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    """Mirror of ``mtlgen_jax.models.vit.DiT``: [B, C_in, H, W] -> tokens [B, T, D]."""

    def __init__(self, *, in_channels: int, image_size: int, width: int, depth: int,
                 num_heads: int, patch_size: int, mlp_ratio: float, num_tasks: int,
                 num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.width, self.num_classes = width, num_classes
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(),
                                        nn.Linear(width, width))
        self.task_embed = nn.Embedding(num_tasks, width)
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, dropout)
                                    for _ in range(depth))
        self.final_modulation = _zero_linear(width, 2 * width)
        self.norm = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        grid = image_size // patch_size
        # A constant, as in JAX (not a parameter); built here, not on the first call, so
        # torch.compile sees no state change between calls (no recompile).
        self.register_buffer("pos", sincos_2d(grid, grid, width), persistent=False)

    def forward(self, x, t, task_id, label=None):
        c = self.time_embed(timestep_embedding(t, self.width)) + self.task_embed(task_id)
        if self.class_embed is not None:
            if label is None:
                label = torch.full_like(task_id, self.num_classes)
            c = c + self.class_embed(label)
        h = self.patch_embed(x)  # [B, D, H/p, W/p]
        gh, gw = h.shape[2:]
        tokens = h.flatten(2).transpose(1, 2) + self.pos[None]  # row-major grid
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(F.silu(c)).chunk(2, dim=-1)
        return _modulate(self.norm(tokens), shift, scale), (gh, gw)


class HeadBlock(nn.Module):
    """A residual LayerNorm - MLP layer of a deeper token head (``TokenHead``'s hidden_i)."""

    def __init__(self, width: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TokenHead(nn.Module):
    """A task's head: [deeper blocks,] LayerNorm, Dense to each token's p x p x C pixels."""

    def __init__(self, width: int, out_channels: int, patch_size: int, depth: int = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.p, self.c = patch_size, out_channels
        self.hidden = nn.ModuleList(HeadBlock(width, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.out = nn.Linear(width, patch_size * patch_size * out_channels)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        for block in self.hidden:
            tokens = block(tokens)
        h = self.out(self.norm(tokens))  # [B, T, p * p * C], per token (p, p, C) row-major
        (gh, gw), p, c = grid, self.p, self.c
        h = h.view(-1, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, C, gh, p, gw, p]
        return h.reshape(-1, c, gh * p, gw * p)


class MultiTaskModel(nn.Module):
    """Backbone on [x_t, condition image, condition mask]; every head on every example.

    The constructor and ``forward`` are those ``torch_unet.TorchStep`` builds and calls.
    """

    def __init__(self, *, num_tasks: int, channels: int, image_size: int, width: int,
                 depth: int, num_heads: int, patch_size: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, head_depth: int = 0, num_classes: int = 0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch_size}")
        self.backbone = DiT(in_channels=2 * channels + 1, image_size=image_size, width=width,
                            depth=depth, num_heads=num_heads, patch_size=patch_size,
                            mlp_ratio=mlp_ratio, num_tasks=num_tasks, num_classes=num_classes,
                            dropout=dropout)
        self.heads = nn.ModuleList(TokenHead(width, channels, patch_size, head_depth, mlp_ratio)
                                   for _ in range(num_tasks))

    def forward(self, x_t, cond_image, cond_mask, t, task_id, label=None):
        x = torch.cat([x_t, cond_image, cond_mask], dim=1)
        tokens, grid = self.backbone(x, t, task_id, label)
        outs = torch.stack([head(tokens, grid) for head in self.heads])  # [K, B, C, H, W]
        onehot = F.one_hot(task_id, len(self.heads)).to(outs.dtype)  # [B, K]
        return torch.einsum("kbchw,bk->bchw", outs, onehot)


def attention_flops(config) -> float:
    """Forward matmul FLOPs of the attention (QK^T and PV) over a batch of ``config``.

    ``torch.utils.flop_counter`` has no formula for CPU's flash attention
    (``_scaled_dot_product_flash_attention_for_cpu``), so a count of the step misses these.
    """
    m = config.model
    tokens = (config.dataset.image_size // m.patch_size) ** 2
    return float(m.depth * 2 * 2 * config.batch_size * tokens * tokens * m.width)


def from_config(config, *, channels: int = 3, num_classes: int = 0,
                compile: bool = False) -> TorchStep:
    """The peer of a ``model.backbone='vit'`` config (e.g. ``configs/default.py:vit``)."""
    m = config.model
    if m.get("backbone", "unet") != "vit":
        raise ValueError(f"model.backbone={m.get('backbone', 'unet')!r}: the DiT peer needs 'vit'")
    if m.get("task_lora_rank", 0) or m.get("task_film", False):
        raise ValueError("model.task_lora_rank / task_film: the per-task adapters are not "
                         "mirrored by the torch peer; benchmark with them off.")
    if m.width % 4 or m.width % m.num_heads:
        raise ValueError(f"model.width={m.width} must divide by 4 and num_heads={m.num_heads}")
    return TorchStep(
        **step_kwargs(config, channels=channels, num_classes=num_classes),
        model_cls=MultiTaskModel,
        model_kw=dict(width=m.width, depth=m.depth, num_heads=m.num_heads,
                      patch_size=m.patch_size, mlp_ratio=float(m.mlp_ratio),
                      dropout=float(m.dropout), head_depth=int(m.get("head_depth", 0))),
        compile=compile)

