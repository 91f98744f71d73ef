"""Tests for mtlgen_jax.metrics: PSNR, SSIM, diversity, the digits judge and Fréchet distance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mtlgen_jax import metrics


def _images(seed=0, shape=(4, 16, 16, 3)):
    return jnp.tanh(jax.random.normal(jax.random.key(seed), shape))  # in (-1, 1)


# --------------------------------------------------------------------------- pixel metrics


def test_psnr_constant_error_closed_form():
    a = _images()
    b = a + 0.1  # MSE = 0.01 everywhere
    out = jax.jit(metrics.psnr)(a, b)
    np.testing.assert_allclose(out, 10 * np.log10(4.0 / 0.01), rtol=1e-4)  # ~26.02 dB
    assert out.shape == (4,)
    # uint8 with data_range=255: an error of 5 levels -> 10 log10(255^2 / 25).
    u = np.full((2, 8, 8, 1), 100, np.uint8)
    out = jax.jit(functools.partial(metrics.psnr, data_range=255.0))(u, u + 5)
    np.testing.assert_allclose(out, 10 * np.log10(255.0**2 / 25), rtol=1e-5)


def test_psnr_per_example():
    a = jnp.zeros((2, 4, 4, 1))
    b = a.at[1].set(0.2)
    out = np.asarray(jax.jit(metrics.psnr)(a, b))
    assert np.isinf(out[0]) and out[1] == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-4)


@pytest.mark.parametrize("size", [16, 8])
def test_ssim_identical_and_noisy(size):
    a = _images(shape=(3, size, size, 1))
    same = jax.jit(metrics.ssim)(a, a)
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    noisy = jnp.clip(a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), -1, 1)
    out = jax.jit(metrics.ssim)(a, noisy)
    assert out.shape == (3,) and np.all(out < 0.95)


def test_diversity():
    base = _images(shape=(1, 8, 8, 3))
    identical = jnp.repeat(base, 5, axis=0)  # [S=5, H, W, C]
    assert float(jax.jit(metrics.diversity)(identical)) == pytest.approx(0.0, abs=1e-6)
    # Two samples at +-d around anything: per-pixel population std is exactly d.
    pair = jnp.concatenate([base - 0.25, base + 0.25])
    assert float(jax.jit(metrics.diversity)(pair)) == pytest.approx(0.25, rel=1e-5)
    batched = jnp.stack([identical[:2], pair])  # [N=2, S=2, H, W, C]
    np.testing.assert_allclose(jax.jit(metrics.diversity)(batched), [0.0, 0.25], atol=1e-6)


# --------------------------------------------------------------------------- digits judge


@pytest.fixture(scope="module")
def digits16():
    """sklearn digits as uint8 [N, 16, 16, 1] (2x nearest upsampling), with a fixed split."""
    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    big = np.kron(small, np.ones((1, 2, 2), np.uint8))[..., None]  # [N, 16, 16, 1]
    return train_test_split(
        big, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )


@pytest.fixture(scope="module")
def judge(digits16):
    x_train, _, y_train, _ = digits16
    return metrics.fit_digits_judge(x_train, y_train)


def test_area_downsample_inverts_upsampling():
    digits = load_digits()
    small = np.round(digits.images[:10] * (255.0 / 16.0)).astype(np.uint8)
    for factor in (2, 4):
        big = np.kron(small, np.ones((1, factor, factor), np.uint8))[..., None]
        rep = metrics.to_digits_representation(big)
        np.testing.assert_allclose(rep, small.reshape(10, 64) * 16.0 / 255.0, atol=1e-9)
    # A non-multiple size still averages areas: a constant image stays constant.
    const = np.full((1, 28, 28, 1), 51, np.uint8)
    np.testing.assert_allclose(metrics.to_digits_representation(const), 51 * 16.0 / 255.0)


def test_judge_rejects_float_images(judge):
    with pytest.raises(ValueError, match="uint8"):
        judge.predict(np.zeros((1, 16, 16, 1), np.float32))


def test_judge_accuracy_on_real_test_digits(judge, digits16):
    _, x_test, _, y_test = digits16
    assert judge.accuracy(x_test, y_test) >= 0.95
    assert judge.accuracy(x_test, (y_test + 1) % 10) < 0.1
    assert judge.features(x_test).shape == (len(x_test), 20)


def test_frechet_self_zero_and_grows_with_shift(judge, digits16):
    x_train, x_test, _, _ = digits16
    assert judge.frechet_distance(x_test, x_test) == pytest.approx(0.0, abs=1e-6)
    real_vs_real = judge.frechet_distance(x_train, x_test)  # same distribution, sampling noise
    shifted = [np.clip(x_test.astype(int) + d, 0, 255).astype(np.uint8) for d in (30, 60)]
    d1, d2 = (judge.frechet_distance(x_test, s) for s in shifted)
    assert real_vs_real < d1 < d2


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = 2.0 * rng.standard_normal((4000, 3)) + 1.0
    # Between N(0, I) and N(1, 4I) in 3-d: 3 * 1^2 + 3 * (1 + 4 - 2 * 2) = 6.
    assert metrics.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    mean_only = metrics.frechet_distance(a, a + 0.5)
    assert mean_only == pytest.approx(3 * 0.25, rel=1e-6)
