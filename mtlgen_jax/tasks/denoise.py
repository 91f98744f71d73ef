"""Denoising: recover the clean image from one corrupted by Gaussian noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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

    def _sigma(self, rng: jax.Array, b: int) -> jax.Array:
        """[B, 1, 1, 1] the noise std of each example (the draw ``degrade`` makes)."""
        return jax.random.uniform(jax.random.split(rng)[0], (b, 1, 1, 1),
                                  minval=self.sigma_min, maxval=self.sigma_max)

    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        k_noise = jax.random.split(rng)[1]
        sigma = self._sigma(rng, images.shape[0]).astype(images.dtype)
        noisy = images + sigma * jax.random.normal(k_noise, images.shape, images.dtype)
        return Condition(
            image=jnp.clip(noisy, -1.0, 1.0), mask=jnp.zeros(images.shape[:-1] + (1,), images.dtype)
        )

    def baseline(self, cond: Condition) -> jax.Array:
        return cond.image

    def degrade_info(self, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        return {"sigma": self._sigma(rng, images.shape[0])[:, 0, 0, 0]}

    def classical(self, cond: Condition, info: dict[str, np.ndarray]) -> np.ndarray:
        """Non-local means (scikit-image, fast mode) given each image's true noise std,
        with the filter strength it recommends for that mode (h = 0.6 sigma)."""
        from skimage.restoration import denoise_nl_means

        out = []
        for noisy, sigma in zip(np.asarray(cond.image), np.asarray(info["sigma"])):
            s01 = float(sigma) / 2.0  # [-1, 1] -> [0, 1]
            clean = denoise_nl_means((noisy + 1.0) / 2.0, patch_size=5, patch_distance=6,
                                     h=0.6 * s01, sigma=s01, fast_mode=True,
                                     channel_axis=-1 if noisy.shape[-1] > 1 else None)
            out.append(np.asarray(clean).reshape(noisy.shape) * 2.0 - 1.0)
        return np.stack(out).astype(np.float32)
