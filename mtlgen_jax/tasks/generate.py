"""Generation: unconditional, or class-conditional with classifier-free guidance."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtlgen_jax import metrics as metrics_lib
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
    has_condition = False
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

    def condition(self, inputs, mask=None) -> Condition:
        self._check_condition_args(mask)  # always refuses: nothing conditions generation

    def score(self, out, target, cond) -> dict:
        return {}  # no per-example reference: see score_samples

    def score_samples(self, images: np.ndarray, labels: np.ndarray,
                      dataset_config) -> dict[str, float]:
        """Digits: the Fréchet distance to the real test digits in a judge's feature space
        (``metrics.DigitsJudge``) and, class-conditional, the judge's accuracy on the
        samples (and on the real test digits, for reference). Other datasets: none."""
        if dataset_config.name != "digits" or self.channels != 1:
            return {}
        key = tuple(sorted((k, v) for k, v in dataset_config.to_dict().items()
                           if not isinstance(v, dict | list)))
        judge, test_images, test_labels = _digits_judge(key)
        out = {"frechet": judge.frechet_distance(images, test_images)}
        if self.class_conditional:
            out.update(accuracy=judge.accuracy(images, labels),
                       accuracy_real=judge.accuracy(test_images, test_labels))
        return out


@functools.lru_cache(maxsize=4)
def _digits_judge(dataset_key: tuple):
    """A DigitsJudge fitted on the real training digits at the run's resolution, and the
    real test digits and labels."""
    import ml_collections

    from mtlgen_jax import data

    ds_cfg = ml_collections.ConfigDict(dict(dataset_key))
    info = data.get_info(ds_cfg)
    whole = dict(shuffle=False, repeat=False, process_index=0, process_count=1, seed=0)
    train = next(data.create_iterator(ds_cfg, ds_cfg.train_split, batch_size=info.num_train,
                                      **whole))
    judge = metrics_lib.fit_digits_judge(train["image"], train["label"])
    test = next(data.create_iterator(ds_cfg, ds_cfg.test_split, batch_size=info.num_test,
                                     **whole))
    return judge, test["image"], test["label"]
