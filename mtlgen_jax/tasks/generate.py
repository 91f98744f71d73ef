"""Generation: unconditional, or class-conditional with classifier-free guidance."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtlgen_jax.tasks.base import Condition, Task, register


@register
class Generate(Task):
    """Samples images from nothing (or from a class label).

    Parameters:
      class_conditional: 'auto' (class-conditional when the dataset has labels),
        True or False.
      label_dropout: probability, in training, of replacing the label with the
        "no label" token, so one model learns both the conditional and the
        unconditional score (classifier-free guidance, Ho & Salimans 2022).
    """

    name = "generate"
    metrics = ("accuracy", "frechet", "diversity")
    ill_posed = True

    def configure(self, *, class_conditional="auto", label_dropout: float = 0.1) -> None:
        if class_conditional == "auto":
            class_conditional = self.num_classes > 0
        if class_conditional and self.num_classes == 0:
            raise ValueError(
                "tasks.generate.class_conditional=True, but the dataset has no labels; "
                "set it to False (or 'auto') for unconditional generation."
            )
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"tasks.generate.label_dropout={label_dropout} must be in [0, 1).")
        self.class_conditional = bool(class_conditional)
        self.label_dropout = float(label_dropout)

    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        del rng
        return Condition(image=jnp.zeros_like(images),
                         mask=jnp.zeros(images.shape[:-1] + (1,), images.dtype))

    def model_labels(self, labels: jax.Array, rng: jax.Array, *, train: bool) -> jax.Array:
        null = jnp.full(labels.shape, self.num_classes, jnp.int32)
        if not self.class_conditional:
            return null
        labels = labels.astype(jnp.int32)
        if not train or self.label_dropout == 0.0:
            return labels
        drop = jax.random.bernoulli(rng, self.label_dropout, labels.shape)
        return jnp.where(drop, null, labels)
