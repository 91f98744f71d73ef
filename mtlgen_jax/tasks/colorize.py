"""Colorization: recover RGB from luminance."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtlgen_jax.tasks.base import Condition, Task, register

# ITU-R BT.601 luma coefficients.
LUMA = (0.299, 0.587, 0.114)


def luminance(images: jax.Array) -> jax.Array:
    """[..., 3] RGB -> [..., 1] luma (BT.601), in the same range as the input."""
    return jnp.tensordot(images, jnp.asarray(LUMA, images.dtype), axes=([-1], [0]))[..., None]


@register
class Colorize(Task):
    """Condition: the luminance, repeated over the three channels. RGB datasets only."""

    name = "colorize"
    ill_posed = True

    def configure(self) -> None:
        if self.channels != 3:
            raise ValueError(
                f"task 'colorize' needs RGB images, but the dataset has {self.channels} "
                "channel(s); remove 'colorize' from config.tasks.names or use an RGB dataset."
            )

    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        del rng
        gray = jnp.broadcast_to(luminance(images), images.shape)
        return Condition(image=gray, mask=jnp.zeros(images.shape[:-1] + (1,), images.dtype))

    @property
    def input_channels(self) -> tuple[int, ...]:
        return (1, 3)  # a gray photo, or a colour one whose luminance is taken

    def condition(self, inputs: jax.Array, mask: jax.Array | None = None) -> Condition:
        """From a gray photo [B, H, W, 1] (or an RGB one, whose luminance is taken)."""
        self._check_condition_args(mask)
        gray = inputs if inputs.shape[-1] == 1 else luminance(inputs)
        return Condition(image=jnp.broadcast_to(gray, inputs.shape[:-1] + (self.channels,)),
                         mask=jnp.zeros(inputs.shape[:-1] + (1,), inputs.dtype))

    def baseline(self, cond: Condition) -> jax.Array:
        return cond.image

    def project(self, x0: jax.Array, cond: Condition) -> jax.Array:
        """The colour image nearest ``x0`` whose luminance is the gray input: each
        pixel moved along the luma vector w by (gray - w.x) / |w|^2."""
        w = jnp.asarray(LUMA, x0.dtype)
        gap = cond.image[..., :1] - luminance(x0)
        return x0 + gap * w / jnp.sum(w * w)
