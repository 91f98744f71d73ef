"""Super-resolution: recover the image from a box-downsampled copy."""

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


@register
class SuperResolve(Task):
    """Condition: the low-resolution image, bicubically upsampled to full size.

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
        high = jnp.clip(upsample(inputs, self.factor), -1.0, 1.0)
        return Condition(image=high, mask=jnp.zeros(high.shape[:-1] + (1,), high.dtype))

    def baseline(self, cond: Condition) -> jax.Array:
        return cond.image

    def classical(self, cond: Condition, info) -> np.ndarray:
        """Bicubic interpolation: the classical method is the baseline itself."""
        del info
        return np.asarray(cond.image, np.float32)
