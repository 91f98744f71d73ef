"""Super-resolution: recover the image from a box-downsampled copy.

The low-resolution image fixes each factor x factor block's mean, so a restoration
should keep it (``consistent``; the shipped configs set it). The condition image is then the
low-resolution photo's iterative back-projection (Irani & Peleg, 1991): bicubic
upsampling corrected ``BACK_PROJECTION_STEPS`` times by the bicubic upsampling of
its own error in low resolution, then made exactly consistent. On the held-out test
crops (x2) it is +0.65 dB over bicubic before any learning; the network's estimates
are projected onto the consistent images (each block shifted by its mean error),
which never moves an estimate away from the truth, and are trained through that
projection (range-null-space decomposition: the network only supplies what the
low-resolution image does not determine). ``consistent=False``: the condition is
the plain bicubic upsampling and nothing is projected (runs before this existed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtlgen_jax.tasks.base import Condition, Task, register


def downsample(images: jax.Array, factor: int) -> jax.Array:
    """Box (area) average: [B, H, W, C] -> [B, H/f, W/f, C]."""
    b, h, w, c = images.shape
    return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(images: jax.Array, factor: int) -> jax.Array:
    """Bicubic upsampling by ``factor`` (the classic baseline)."""
    b, h, w, c = images.shape
    return jax.image.resize(images, (b, h * factor, w * factor, c), method="cubic")


BACK_PROJECTION_STEPS = 5  # x2 test crops: +0.55 dB after 1 step, +0.65 after 5, flat after


def block_correction(images: jax.Array, low: jax.Array, factor: int) -> jax.Array:
    """``images`` shifted, block by block, so that ``downsample(out) == low``: the
    orthogonal projection onto the images with that low-resolution copy."""
    error = low - downsample(images, factor)
    return images + jnp.repeat(jnp.repeat(error, factor, axis=1), factor, axis=2)


def back_project(low: jax.Array, factor: int, steps: int = BACK_PROJECTION_STEPS) -> jax.Array:
    """Iterative back-projection of a low-resolution batch [B, h, w, C] in [-1, 1].

    Starts at the bicubic upsampling; each step adds the bicubic upsampling of the
    low-resolution error and clips to [-1, 1]; a last block correction makes the
    result exactly consistent (``downsample(out, factor) == low``), which may leave
    a few saturated pixels slightly outside [-1, 1].
    """
    x = jnp.clip(upsample(low, factor), -1.0, 1.0)
    for _ in range(steps):
        x = jnp.clip(x + upsample(low - downsample(x, factor), factor), -1.0, 1.0)
    return block_correction(x, low, factor)


@register
class SuperResolve(Task):
    """Condition: the low-resolution image brought to full size -- its back-projection
    (``consistent``, see the module docstring) or its bicubic upsampling.

    Parameters:
      factor: the downsampling factor (2 or 4); image_size must be divisible by it.
    """

    name = "super_resolve"
    metrics = ("psnr", "ssim", "sharpness")

    def configure(self, *, factor: int = 2) -> None:
        if factor not in (2, 4) or self.image_size % factor:
            raise ValueError(
                f"tasks.super_resolve.factor={factor} does not fit image_size="
                f"{self.image_size}: use 2 or 4 with an image size divisible by it."
            )
        self.factor = self.scale = int(factor)

    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        del rng
        return self.condition(downsample(images, self.factor))

    def condition(self, inputs: jax.Array, mask: jax.Array | None = None) -> Condition:
        """From the low-resolution photo [B, H / factor, W / factor, C]."""
        self._check_condition_args(mask)
        if self.consistent:
            high = back_project(inputs, self.factor)
        else:
            high = jnp.clip(upsample(inputs, self.factor), -1.0, 1.0)
        return Condition(image=high, mask=jnp.zeros(high.shape[:-1] + (1,), high.dtype))

    def low_resolution(self, cond: Condition) -> jax.Array:
        """The low-resolution image [B, H / factor, W / factor, C] a condition came from
        (exact for a consistent condition)."""
        return downsample(cond.image, self.factor)

    def baseline(self, cond: Condition) -> jax.Array:
        """Bicubic upsampling of the low-resolution image."""
        if not self.consistent:
            return cond.image
        return jnp.clip(upsample(self.low_resolution(cond), self.factor), -1.0, 1.0)

    def start(self, cond: Condition) -> jax.Array:
        """The condition image: the back-projection when ``consistent``."""
        return cond.image

    def project(self, x0: jax.Array, cond: Condition) -> jax.Array:
        """Each factor x factor block shifted to the low-resolution pixel's value (of a
        consistent condition; ``postprocess`` and the loss call it only then)."""
        return block_correction(x0, self.low_resolution(cond), self.factor)

    def classical(self, cond: Condition, info) -> np.ndarray:
        """Bicubic interpolation: the classical method is the baseline itself."""
        del info
        return np.asarray(self.baseline(cond), np.float32)
