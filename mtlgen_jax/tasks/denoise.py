"""Denoising: recover the clean image from one corrupted by Gaussian noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtlgen_jax.tasks.base import Condition, Task, register


@register
class Denoise(Task):
    """Additive Gaussian noise with a per-example standard deviation.

    Parameters:
      sigma_min, sigma_max: the noise std is uniform in [sigma_min, sigma_max],
        in units of the [-1, 1] image range (0.2 is about 25/255 of [0, 255]).
    The noisy image is clipped to [-1, 1], as a stored image would be.
    """

    name = "denoise"
    metrics = ("psnr", "ssim", "sharpness")

    def configure(self, *, sigma_min: float = 0.1, sigma_max: float = 0.4) -> None:
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(
                f"tasks.denoise needs 0 < sigma_min <= sigma_max, got "
                f"sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        k_sigma, k_noise = jax.random.split(rng)
        b = images.shape[0]
        sigma = jax.random.uniform(k_sigma, (b, 1, 1, 1), minval=self.sigma_min,
                                   maxval=self.sigma_max)
        noisy = images + sigma * jax.random.normal(k_noise, images.shape, images.dtype)
        return Condition(
            image=jnp.clip(noisy, -1.0, 1.0), mask=jnp.zeros(images.shape[:-1] + (1,), images.dtype)
        )

    def baseline(self, cond: Condition) -> jax.Array:
        return cond.image
