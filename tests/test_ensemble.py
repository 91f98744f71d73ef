"""The geometric self-ensemble: the group it averages over, its two implementations, the
consistency of its result, and its use by the sampler and ``restore_image``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mtlgen_jax import components, ensemble, tasks
from mtlgen_jax.data import DatasetInfo
from mtlgen_jax.evaluate import per_row
from mtlgen_jax.sampling import Sampler
from mtlgen_jax.tasks import Condition
from tests.test_restore import fresh_run, photo


def not_equivariant(c: Condition) -> jax.Array:
    """Depends on position and direction: no flip or rotation commutes with it."""
    h, w = c.image.shape[1:3]
    ramp = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1) / (h * w)
    return jnp.cumsum(c.image, axis=2) * ramp + c.mask


def test_the_eight_transforms_are_the_dihedral_group():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 3)), jnp.float32)
    images = [ensemble.transform(x, g) for g in range(ensemble.SIZE)]
    for g, y in enumerate(images):
        np.testing.assert_array_equal(ensemble.invert(y, g), x)
        for h in range(g):
            assert not np.array_equal(y, images[h])  # 8 distinct elements
    np.testing.assert_array_equal(images[0], x)  # 0 is the identity
    # Closed under composition: a transform of a transform is one of the eight.
    for g in range(ensemble.SIZE):
        for h in range(ensemble.SIZE):
            y = ensemble.transform(images[g], h)
            assert any(np.array_equal(y, z) for z in images)


def test_batched_equals_looped_and_an_equivariant_function_is_unchanged():
    rng = np.random.default_rng(1)
    cond = Condition(image=jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32),
                     mask=jnp.asarray(rng.random((3, 6, 6, 1)) > 0.5, jnp.float32))
    looped = ensemble.looped(not_equivariant, cond)
    np.testing.assert_allclose(ensemble.batched(not_equivariant, cond), looped, atol=1e-5)
    assert not np.allclose(looped, not_equivariant(cond), atol=1e-3)  # it does average
    # A per-pixel function commutes with every transform: its ensemble is itself.
    pointwise = lambda c: jnp.tanh(c.image) * c.mask  # noqa: E731
    np.testing.assert_allclose(ensemble.looped(pointwise, cond), pointwise(cond), atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        ensemble.batched(pointwise, Condition(image=jnp.zeros((1, 4, 6, 1)),
                                              mask=jnp.zeros((1, 4, 6, 1))))


@pytest.mark.parametrize("name", ["inpaint", "super_resolve", "colorize"])
def test_the_mean_of_consistent_estimates_of_transformed_conditions_is_consistent(name):
    """Each task's degradation commutes with the transforms, so the ensemble of projected
    estimates still agrees with the original condition (what the docstring claims)."""
    task = tasks.get_class(name)(channels=3, image_size=16, num_classes=0, consistent=True)
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    cond = per_row(task.degrade, x0, jax.random.key(0))
    guess = lambda c: task.project(  # noqa: E731
        jnp.asarray(rng.uniform(-1, 1, c.image.shape), jnp.float32), c)
    mean = ensemble.looped(guess, cond)
    np.testing.assert_allclose(task.project(mean, cond), mean, atol=1e-5)


def test_the_sampler_ensembles_in_one_call_what_eight_calls_give():
    cfg = default.get_config("tiny")
    cfg.tasks.names = "super_resolve,generate"
    cfg.tasks.super_resolve = default.with_objective(  # a head that starts random
        cfg.tasks.super_resolve, "regression", residual=False, loss="l2")
    info = DatasetInfo("synthetic", None, 3, 16, 64, 8, "train", "test")
    comp = components.build(cfg, info)
    params = components.init_params(comp.model, info, jax.random.key(0))  # random heads
    task = comp.tasks[0]
    x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    cond = per_row(task.degrade, x0, jax.random.key(1))
    labels, key = jnp.zeros((2,), jnp.int32), jax.random.key(2)
    sampler = Sampler(comp)
    plain = lambda c: sampler(params, "super_resolve", c, labels, key, steps=1)  # noqa: E731
    out = sampler(params, "super_resolve", cond, labels, key, steps=1, self_ensemble=True)
    np.testing.assert_allclose(out, ensemble.looped(plain, cond), atol=1e-5)
    assert not np.allclose(out, plain(cond), atol=1e-4)
    with pytest.raises(ValueError, match="has no condition image"):
        sampler(params, "generate", cond, labels, key, steps=1, self_ensemble=True)


def test_restore_image_ensembles_a_photo_of_any_shape():
    run = fresh_run(residual=False)  # random heads: the 8 restorations differ
    img = photo(h=20, w=27)  # not square: a quarter turn changes the tiling
    out = run.restore_image("denoise", img, self_ensemble=True)
    assert out.shape == (20, 27, 3) and out.dtype == np.uint8
    each = [np.asarray(ensemble.invert(
        run.restore_image("denoise", np.asarray(ensemble.transform(img, g)),
                          self_ensemble=False).astype(np.float32), g))
        for g in range(ensemble.SIZE)]
    # The 8 uint8 restorations, averaged, agree with the ensemble to their rounding.
    assert np.abs(np.mean(each, axis=0) - out).max() <= 1.0
    assert np.abs(each[0] - out).max() > 2  # and the ensemble is not one of them
