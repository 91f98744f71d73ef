"""Training-image augmentation (`dataset.augment`, `step.augment`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mtlgen_jax import components, ensemble, step
from mtlgen_jax.data import DatasetInfo
from mtlgen_jax.images import to_float

INFO = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=16, num_train=64,
                   num_test=8, train_split="train", test_split="test")


def group_elements(x, y, atol=0.0):
    """For each example, the dihedral elements g with transform(x, g) == y (a distinct
    image has exactly one)."""
    x, y = np.asarray(x), np.asarray(y)
    return [[g for g in range(ensemble.SIZE)
             if np.allclose(np.asarray(ensemble.transform(xi, g)), yi, rtol=0, atol=atol)]
            for xi, yi in zip(x, y)]


@pytest.mark.parametrize("kind, allowed", [("none", {0}), ("flip", {0, 4}),
                                           ("dihedral", set(range(8)))])
def test_each_image_gets_an_element_of_its_group_and_all_of_them_occur(kind, allowed):
    x = jax.random.uniform(jax.random.key(0), (200, 6, 6, 3))  # no symmetric image
    keys = jax.random.split(jax.random.key(1), 200)
    found = group_elements(x, step.augment(x, keys, kind))
    assert all(len(g) == 1 for g in found)
    assert {g[0] for g in found} == allowed


def test_augmentation_is_keyed_per_example():
    """Example i's transform depends on its key only (not on its batch position), so a
    run draws the same on every device count."""
    x = jax.random.uniform(jax.random.key(0), (16, 6, 6, 3))
    keys = jax.random.split(jax.random.key(1), 16)
    whole = step.augment(x, keys, "dihedral")
    for i in (0, 5, 15):
        np.testing.assert_array_equal(step.augment(x[i:i + 1], keys[i:i + 1], "dihedral")[0],
                                      whole[i])
    again = step.augment(x[::-1], keys[::-1], "dihedral")[::-1]
    np.testing.assert_array_equal(again, whole)


def build(augment):
    cfg = default.get_config("tiny")
    cfg.batch_size = 8
    cfg.tasks.names = "denoise,super_resolve"
    cfg.dataset.augment = augment
    return components.build(cfg, INFO)


def test_training_examples_are_built_from_the_augmented_image_and_evaluation_is_not():
    """With dataset.augment='dihedral' the training target is the image under one group
    element per example; train=False, and augment='none', leave it as it is."""
    comp = build("dihedral")
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)),
             "label": jnp.zeros((8,), jnp.int32),
             "task_id": jnp.asarray([0, 1] * 4),
             "keys": jax.vmap(lambda k: jax.random.split(k, 4))(
                 jax.random.split(jax.random.key(3), 8))}
    x0 = to_float(batch["image"])

    def clean_target(comp, train):
        _, inputs, _ = step._model_inputs(comp, batch, train=train)
        return inputs.target  # the clean image (both objectives here estimate it)

    found = group_elements(x0, clean_target(comp, True), atol=1e-5)
    assert all(len(g) == 1 for g in found) and len({g[0] for g in found}) > 1
    for comp_, train in ((comp, False), (build("none"), True)):
        np.testing.assert_allclose(clean_target(comp_, train), x0, atol=1e-6)


def test_an_unknown_augmentation_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"dataset.augment='rotate' is unknown.*'dihedral'"):
        build("rotate")


def test_contrast_scales_each_image_about_its_mean_by_its_own_factor():
    """step.contrast: mean kept per image and channel, deviations scaled by one factor in
    [lowest, 1] per image, drawn from its own key. (Off, the default, the step does not
    call it: the test above trains on the image itself.)"""
    x = jax.random.uniform(jax.random.key(0), (64, 6, 6, 3), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.key(1), 64)
    y = np.asarray(step.contrast(x, keys, 0.5))
    x = np.asarray(x)
    mean_x, mean_y = x.mean(axis=(1, 2), keepdims=True), y.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(mean_y, mean_x, atol=1e-6)
    dx, dy = (x - mean_x).reshape(64, -1), (y - mean_y).reshape(64, -1)
    s = (dx * dy).sum(1) / (dx * dx).sum(1)  # each image's factor, by least squares
    np.testing.assert_allclose(dy, s[:, None] * dx, atol=1e-5)  # and it explains all of y
    assert s.min() >= 0.5 and s.max() <= 1.0 and s.max() - s.min() > 0.3  # drawn, not fixed
    assert np.abs(y).max() <= 1.0
    np.testing.assert_allclose(np.asarray(step.contrast(x[5:6], keys[5:6], 0.5))[0], y[5],
                               atol=1e-6)  # keyed per example


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_a_contrast_factor_outside_0_1_is_refused(value):
    cfg = default.get_config("tiny")
    cfg.dataset.augment_contrast = value
    with pytest.raises(ValueError, match=r"dataset.augment_contrast=.*in \(0, 1\]"):
        components.build(cfg, INFO)
