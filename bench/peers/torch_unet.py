"""A PyTorch peer of the JAX model and train step, for ``bench/train_step.py``.

The same network as ``mtlgen_jax.models`` (U-Net backbone + one light head per
task, every head run on every example and the task id selecting one output):
same layers, shapes and parameter count (the benchmark asserts the count equals
the JAX model's), GroupNorm groups and epsilon, sinusoidal time embedding and
its MLP, task (and class) embedding tables, multi-head self-attention with the
same projections, strided-conv downsampling, nearest-upsample + conv decoder.
Zero-initialisation is not mirrored (it changes no cost).

The step mirrors ``mtlgen_jax.step.train_step`` with equal weighting: task ids
as a random permutation of the mixture counts, each task's condition built for
EVERY example (K conditions per example, then the example's own one selected),
cosine-schedule q_sample with the config's prediction target (eps, v or x0),
per-example masked L2, per-task means through a task one-hot, their sum,
backward, global-norm clipping, AdamW, EMA of the parameters.

Differences from the JAX step, all small next to the U-Net (see the JSON's
``torch_notes``):
  * randomness: one batched draw per task, not one key per example (the JAX step
    vmaps each degrade over per-example keys; the arithmetic is the same);
  * super-resolution upsampling: torch's bicubic (a = -0.75) instead of
    jax.image.resize's Keys cubic (a = -0.5): same cost, slightly other kernel;
  * no learning-rate schedule (constant lr), no per-step metrics (norms of
    updates and parameters), no EMA warm-up formula (a fixed decay);
  * padding of the stride-2 convolution: symmetric (torch) vs SAME (XLA pads
    (0, 1)): same output shapes and FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GN_EPS = 1e-6  # flax.linen.GroupNorm's default epsilon


def groups(channels: int, preferred: int = 32) -> int:
    """Largest group count <= preferred that divides ``channels`` (as the JAX model)."""
    g = min(preferred, channels)
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups(channels), channels, eps=GN_EPS)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] sinusoidal embedding (times scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """GroupNorm + multi-head self-attention over positions + residual (4c^2 + 4c params)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(y).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]; scale 1/sqrt(d)
        o = self.out(o.transpose(1, 2).reshape(b, h * w, c))
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """Mirror of ``mtlgen_jax.models.unet.UNet`` (NCHW tensors)."""

    def __init__(self, *, in_channels: int, width: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attn_resolutions: Sequence[int], num_tasks: int,
                 num_classes: int, num_heads: int, image_size: int):
        super().__init__()
        self.width, self.num_classes = width, num_classes
        emb_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.task_embed = nn.Embedding(num_tasks, emb_dim)
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)

        # The plan below follows the JAX module's loop exactly; ``size`` tracks H.
        ch, size = width, image_size
        skip_ch = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                attn = size in attn_resolutions
                self.down.append(nn.ModuleList(
                    [ResBlock(ch, width * mult, emb_dim)]
                    + ([Attention(width * mult, num_heads)] if attn else [])))
                ch = width * mult
                skip_ch.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                size //= 2
                skip_ch.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim)
        self.mid_attn = Attention(ch, num_heads)
        self.mid2 = ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                attn = size in attn_resolutions
                self.up.append(nn.ModuleList(
                    [ResBlock(ch + skip_ch.pop(), width * mult, emb_dim)]
                    + ([Attention(width * mult, num_heads)] if attn else [])))
                ch = width * mult
            if level != 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after a nearest 2x upsample
                size *= 2
        assert not skip_ch
        self.norm_out = group_norm(ch)

    def forward(self, x, t, task_id, label=None):
        emb = self.time_mlp(timestep_embedding(t, self.width)) + self.task_embed(task_id)
        if self.class_embed is not None:
            if label is None:
                label = torch.full_like(task_id, self.num_classes)
            emb = emb + self.class_embed(label)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, nn.Conv2d):  # downsample
                h = layer(h)
            else:
                h = layer[0](h, emb)
                for attn in layer[1:]:
                    h = attn(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.Conv2d):  # nearest upsample + conv
                h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
            else:
                h = layer[0](torch.cat([h, skips.pop()], dim=1), emb)
                for attn in layer[1:]:
                    h = attn(h)
        assert not skips
        return F.silu(self.norm_out(h))


class TaskHead(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm, self.conv = group_norm(width), nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, features):
        return self.conv(F.silu(self.norm(features)))


class MultiTaskModel(nn.Module):
    """Backbone on [x_t, condition image, condition mask]; every head on every example."""

    def __init__(self, *, num_tasks: int, channels: int, image_size: int, width: int,
                 channel_mult, num_res_blocks: int, attn_resolutions, num_heads: int,
                 num_classes: int = 0):
        super().__init__()
        self.backbone = UNet(in_channels=2 * channels + 1, width=width, channel_mult=channel_mult,
                             num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                             num_tasks=num_tasks, num_classes=num_classes, num_heads=num_heads,
                             image_size=image_size)
        self.heads = nn.ModuleList(TaskHead(width * channel_mult[0], channels)
                                   for _ in range(num_tasks))

    def forward(self, x_t, cond_image, cond_mask, t, task_id, label=None):
        x = torch.cat([x_t, cond_image, cond_mask], dim=1)
        features = self.backbone(x, t, task_id, label)
        outs = torch.stack([head(features) for head in self.heads])  # [K, B, C, H, W]
        onehot = F.one_hot(task_id, len(self.heads)).to(outs.dtype)  # [B, K]
        return torch.einsum("kbchw,bk->bchw", outs, onehot)


# --------------------------------------------------------------------------- the step


class CosineSchedule:
    """``mtlgen_jax.diffusion.CosineSchedule`` (s = 0.008, log-SNR(1) = -10)."""

    def __init__(self, s: float = 0.008, min_log_snr: float = -10.0):
        self.g0 = s / (1.0 + s) * math.pi / 2
        ab_min = 1.0 / (1.0 + math.exp(-min_log_snr))
        self.g1 = math.acos(math.sqrt(ab_min) * math.cos(self.g0))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.g0 + t * (self.g1 - self.g0)
        c0 = math.cos(self.g0)
        ab = (torch.cos(g) / c0) ** 2
        om = torch.sin(g - self.g0) * torch.sin(g + self.g0) / c0**2
        return ab.sqrt(), om.clamp_min(0.0).sqrt()


LUMA = (0.299, 0.587, 0.114)


def _box_holes(b: int, s: int) -> torch.Tensor:
    hw = torch.randint(s // 4, s // 2 + 1, (b, 2))
    yx = torch.randint(0, s, (b, 2)) % (s - hw + 1)
    grid = torch.arange(s)
    rows = (grid[None] >= yx[:, :1]) & (grid[None] < yx[:, :1] + hw[:, :1])
    cols = (grid[None] >= yx[:, 1:]) & (grid[None] < yx[:, 1:] + hw[:, 1:])
    return rows[:, :, None] & cols[:, None, :]


def _half_holes(b: int, s: int) -> torch.Tensor:
    side = torch.randint(0, 4, (b,))[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    half = s // 2
    return torch.where(side == 0, yy < half, torch.where(
        side == 1, yy >= half, torch.where(side == 2, xx < half, xx >= half)))


def _stroke_holes(b: int, s: int, n: int = 4) -> torch.Tensor:
    pts = torch.rand(b, n, 2, 2) * (s - 1.0)
    width = s / 16 + torch.rand(b, n) * (s / 8 - s / 16)
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                            torch.arange(s, dtype=torch.float32), indexing="ij")
    p = torch.stack([yy, xx], -1)[None, None]  # [1, 1, S, S, 2]
    a, c = pts[:, :, None, None, 0], pts[:, :, None, None, 1]
    ab = c - a
    u = (((p - a) * ab).sum(-1) / ((ab * ab).sum(-1) + 1e-6)).clamp(0.0, 1.0)
    dist = torch.linalg.norm(p - (a + u[..., None] * ab), dim=-1)  # [B, N, S, S]
    return (dist < width[:, :, None, None]).any(1)


def degrade_all(names: Sequence[str], x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Every task's condition for EVERY example (as the JAX step): [K,B,C,H,W], [K,B,1,H,W] x2.

    Returns condition images, condition masks and loss masks.
    """
    b, c, s, _ = x0.shape
    zeros, ones = x0.new_zeros(b, 1, s, s), x0.new_ones(b, 1, s, s)
    images, masks, loss_masks = [], [], []
    for name in names:
        loss_mask = ones
        if name == "denoise":
            sigma = 0.1 + 0.3 * torch.rand(b, 1, 1, 1)
            image, mask = (x0 + sigma * torch.randn_like(x0)).clamp(-1, 1), zeros
        elif name == "inpaint":
            kind = torch.randint(0, 3, (b, 1, 1))
            hole = torch.where(kind == 0, _box_holes(b, s),
                               torch.where(kind == 1, _stroke_holes(b, s), _half_holes(b, s)))
            mask = 1.0 - hole[:, None].float()
            image, loss_mask = x0 * mask, 1.0 - mask
        elif name == "super_resolve":
            low = F.avg_pool2d(x0, 2)
            image = F.interpolate(low, scale_factor=2, mode="bicubic").clamp(-1, 1)
            mask = zeros
        elif name == "colorize":
            gray = torch.einsum("bchw,c->bhw", x0, x0.new_tensor(LUMA))[:, None]
            image, mask = gray.expand_as(x0), zeros
        elif name == "generate":
            image, mask = torch.zeros_like(x0), zeros
        else:
            raise ValueError(f"the torch peer has no task {name!r}")
        images.append(image)
        masks.append(mask)
        loss_masks.append(loss_mask)
    return torch.stack(images), torch.stack(masks), torch.stack(loss_masks)


def mixture_counts(k: int, batch: int) -> list[int]:
    """Equal task weights: as ``mtlgen_jax.step.mixture_counts`` with all weights 1."""
    base, rest = divmod(batch, k)
    return [base + (i < rest) for i in range(k)]


class TorchStep:
    """Model + AdamW + EMA and one multi-task train step (equal weighting).

    The model is ``model_cls(num_tasks=, channels=, image_size=, num_classes=, **model_kw)``
    (this module's U-Net :class:`MultiTaskModel`, or ``bench.peers.torch_dit``'s DiT one):
    any module with that constructor and ``forward(x_t, cond_image, cond_mask, t, task_id,
    label)`` -> [B, C, H, W] shares this step.

    Args:
      task_names: tasks in task-id order.
      batch, channels, image_size: batch shape.
      model_kw: the backbone's keyword arguments (U-Net: width, channel_mult,
        num_res_blocks, attn_resolutions, num_heads).
      model_cls: the multi-task model's class.
      lr, betas, weight_decay, grad_clip, ema_decay: the optimizer's settings.
      channels_last: use channels-last memory format for the model and its inputs.
      compile: wrap the forward + loss in ``torch.compile`` (degrade and optimizer stay eager).
    """

    def __init__(self, *, task_names: Sequence[str], batch: int, channels: int, image_size: int,
                 model_kw: dict, num_classes: int = 0, lr: float = 2e-3,
                 betas=(0.9, 0.99), weight_decay: float = 0.0, grad_clip: float = 1.0,
                 ema_decay: float = 0.995, prediction: str = "eps", channels_last: bool = False,
                 compile: bool = False, model_cls: type[nn.Module] | None = None):
        if prediction not in ("eps", "v", "x0"):
            raise ValueError(f"prediction={prediction!r}: use eps, v or x0")
        self.prediction = prediction
        self.names = tuple(task_names)
        self.batch, self.k = batch, len(self.names)
        self.grad_clip, self.ema_decay = grad_clip, ema_decay
        self.num_classes = num_classes
        self.model = (model_cls or MultiTaskModel)(num_tasks=self.k, channels=channels,
                                                   image_size=image_size,
                                                   num_classes=num_classes, **model_kw)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        try:
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas,
                                         weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):  # fused AdamW unsupported here: the foreach one
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas,
                                         weight_decay=weight_decay, foreach=True)
        self.schedule = CosineSchedule()
        self.counts = torch.tensor(mixture_counts(self.k, batch), dtype=torch.float32)
        self.ids = torch.repeat_interleave(torch.arange(self.k), self.counts.long())
        self.loss_fn = torch.compile(self._losses) if compile else self._losses

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def _losses(self, x_t, cond_image, cond_mask, t, task_id, label, target, loss_mask):
        pred = self.model(x_t, cond_image, cond_mask, t, task_id, label)
        err = (pred - target).square() * loss_mask  # loss_mask [B, 1, H, W] broadcasts over C
        count = (loss_mask.sum((1, 2, 3)) * pred.shape[1]).clamp_min(1.0)
        per_ex = err.sum((1, 2, 3)) / count  # [B]
        onehot = F.one_hot(task_id, self.k).float()  # [B, K]
        return (onehot.T @ per_ex) / self.counts  # [K] per-task means

    def make_inputs(self, images_u8: torch.Tensor, labels: torch.Tensor):
        """uint8 [B, H, W, C] -> the model's inputs, target and loss mask (all on CPU)."""
        x0 = (images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous(
            memory_format=self.memory_format)
        b = x0.shape[0]
        task_id = self.ids[torch.randperm(b)]
        images, masks, loss_masks = degrade_all(self.names, x0)
        idx = torch.arange(b)
        cond_image, cond_mask = images[task_id, idx], masks[task_id, idx]
        loss_mask = loss_masks[task_id, idx]
        t = 1.0 - torch.rand(b)
        eps = torch.randn_like(x0)
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha, sigma = alpha[:, None, None, None], sigma[:, None, None, None]
        x_t = alpha * x0 + sigma * eps
        target = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.prediction]
        label = None
        if self.num_classes:
            gen = torch.tensor([n == "generate" for n in self.names])[task_id]
            label = torch.where(gen, labels.long(), torch.full_like(task_id, self.num_classes))
        to = lambda z: z.contiguous(memory_format=self.memory_format)  # noqa: E731
        return (to(x_t), to(cond_image), to(cond_mask), t, task_id, label, to(target),
                to(loss_mask))

    def step(self, images_u8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the per-task losses [K] (detached)."""
        inputs = self.make_inputs(images_u8, labels)
        losses = self.loss_fn(*inputs)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # equal weighting: w_k = 1
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
        return losses.detach()


def step_kwargs(config, *, channels: int = 3, num_classes: int = 0) -> dict:
    """:class:`TorchStep`'s arguments from ``config``, all but the model's."""
    names = [n.strip() for n in str(config.tasks.names).split(",") if n.strip()]
    return dict(task_names=names, batch=config.batch_size, channels=channels,
                image_size=config.dataset.image_size, num_classes=num_classes,
                lr=config.learning_rate, betas=(config.adam_b1, config.adam_b2),
                weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                ema_decay=config.ema_decay, prediction=config.diffusion.prediction)


def from_config(config, *, channels: int = 3, num_classes: int = 0, channels_last: bool = False,
                compile: bool = False) -> TorchStep:
    """The peer of ``config`` (an ``ml_collections`` config of this project)."""
    m = config.model
    return TorchStep(
        **step_kwargs(config, channels=channels, num_classes=num_classes),
        model_kw=dict(width=m.width, channel_mult=tuple(m.channel_mult),
                      num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                      num_heads=m.num_heads),
        channels_last=channels_last, compile=compile)
