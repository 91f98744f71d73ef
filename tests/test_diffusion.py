"""Tests for mtlgen_jax.diffusion: schedules, objective, samplers (all under jax.jit)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlgen_jax import diffusion

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("eps", "v", "x0")
SHAPE = (3, 8, 8, 2)  # [B, H, W, C]


def _x0(seed=0, shape=SHAPE):
    """Clean images in [-0.9, 0.9] (inside the clip range)."""
    return 0.9 * jnp.tanh(jax.random.normal(jax.random.key(seed), shape))


def _oracle(x0, schedule, prediction):
    """A model_fn that knows x0: returns the exact prediction for any x_t."""

    def model_fn(x_t, t):
        alpha, sigma = diffusion._alpha_sigma(t, schedule, x_t.ndim)
        eps = (x_t - alpha * x0) / sigma
        return diffusion.target(x0, eps, t, schedule, prediction)

    return model_fn


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_endpoints_and_monotone(name):
    schedule = diffusion.get_schedule(name)
    t = jnp.linspace(0.0, 1.0, 1001)
    ab = jax.jit(schedule.alpha_bar)(t)
    om = jax.jit(schedule.one_minus_alpha_bar)(t)
    assert ab[0] == pytest.approx(1.0, abs=1e-7)
    assert 1e-6 < ab[-1] < 1e-4  # tiny but positive
    assert np.all(np.diff(np.asarray(ab)) < 0)  # strictly decreasing
    np.testing.assert_allclose(ab + om, 1.0, atol=2e-7)
    log_snr = diffusion.log_snr(t[1:], schedule)
    assert np.all(np.isfinite(log_snr)) and -11 < log_snr[-1] < -9


def test_linear_matches_ddpm_product():
    betas = np.linspace(1e-4, 0.02, 1000)
    ab_discrete = np.cumprod(1.0 - betas)
    t = np.arange(1, 1001) / 1000
    ab = np.asarray(diffusion.get_schedule("linear").alpha_bar(jnp.asarray(t)))
    np.testing.assert_allclose(ab, ab_discrete, rtol=5e-3)
    # 1 - alpha_bar at the first step is beta_1 (plus O(beta^2)), resolved in float32.
    om = diffusion.get_schedule("linear").one_minus_alpha_bar(1e-3)
    assert om == pytest.approx(1e-4, rel=0.15)


def test_cosine_matches_nichol_dhariwal_inside():
    s = 0.008
    t = np.linspace(0.0, 0.9, 10)
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    ab = diffusion.get_schedule("cosine").alpha_bar(jnp.asarray(t))
    np.testing.assert_allclose(ab, f, rtol=0.05, atol=2e-3)


def test_unknown_schedule_lists_names():
    with pytest.raises(ValueError, match="cosine.*linear"):
        diffusion.get_schedule("sigmoid")


def test_sample_time_ranges():
    rng = jax.random.key(0)
    t = jax.jit(lambda r: diffusion.sample_time(r, 4096, discrete_steps=None))(rng)
    assert t.shape == (4096,) and t.dtype == jnp.float32
    assert float(t.min()) > 0.0 and float(t.max()) <= 1.0
    t = jax.jit(lambda r: diffusion.sample_time(r, 4096, discrete_steps=10))(rng)
    np.testing.assert_allclose(np.unique(np.asarray(t)), np.arange(1, 11) / 10, rtol=1e-6)


# --------------------------------------------------------------------------- objective


def test_q_sample_closed_form():
    schedule = diffusion.get_schedule("cosine")
    x0, eps = _x0(0), _x0(1)
    t = jnp.array([0.0, 0.5, 1.0])
    x_t = jax.jit(lambda *a: diffusion.q_sample(*a, schedule))(x0, eps, t)
    ab = np.asarray(schedule.alpha_bar(t))[:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, atol=1e-6)
    np.testing.assert_allclose(x_t[0], x0[0], atol=1e-6)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_round_trip(name, prediction):
    schedule = diffusion.get_schedule(name)
    x0 = _x0(0)
    eps = jax.random.normal(jax.random.key(1), SHAPE)
    t = jnp.array([1e-3, 0.5, 1.0])

    @jax.jit
    def round_trip(x0, eps, t):
        x_t = diffusion.q_sample(x0, eps, t, schedule)
        pred = diffusion.target(x0, eps, t, schedule, prediction)
        return diffusion.to_x0_eps(pred, x_t, t, schedule, prediction)

    x0_hat, eps_hat = round_trip(x0, eps, t)
    # x0 from eps at t=1 divides by alpha(1) ~ 7e-3: allow for the amplified rounding.
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    # eps from x0 at t=1e-3 divides by sigma(1e-3) ~ 6e-3, likewise.
    np.testing.assert_allclose(eps_hat, eps, atol=2e-3 if prediction == "x0" else 1e-4)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_to_x0_eps_finite_at_ends(prediction):
    schedule = diffusion.get_schedule("cosine")
    x = jax.random.normal(jax.random.key(0), SHAPE)
    t = jnp.array([0.0, 1.0, 1.0])
    outs = jax.jit(lambda p, x_t, t: diffusion.to_x0_eps(p, x_t, t, schedule, prediction))(x, x, t)
    assert all(np.all(np.isfinite(o)) for o in outs)


def test_v_target_closed_form():
    schedule = diffusion.get_schedule("linear")
    x0, eps, t = _x0(0), _x0(1), jnp.array([0.2, 0.4, 0.6])
    v = jax.jit(lambda *a: diffusion.target(*a, schedule, "v"))(x0, eps, t)
    ab = np.asarray(schedule.alpha_bar(t))[:, None, None, None]
    np.testing.assert_allclose(v, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, atol=1e-6)


def test_unknown_prediction():
    schedule = diffusion.get_schedule("cosine")
    with pytest.raises(ValueError, match="eps"):
        diffusion.target(_x0(), _x0(), jnp.ones(3), schedule, "score")


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_loss_zero_for_perfect_prediction(kind):
    x = _x0(0)
    out = jax.jit(functools.partial(diffusion.loss, kind=kind))(x, x, jnp.ones(SHAPE[:3] + (1,)))
    np.testing.assert_array_equal(out, np.zeros(SHAPE[0]))


def test_loss_masked_hand_computed():
    pred = jnp.zeros((2, 2, 2, 2))
    tgt = jnp.arange(16, dtype=jnp.float32).reshape(2, 2, 2, 2)
    mask = jnp.zeros((2, 2, 2, 1))
    mask = mask.at[0, 0, 1].set(1.0).at[0, 1, 1].set(1.0)  # example 0: pixels (0,1), (1,1)
    l2 = jax.jit(diffusion.loss)(pred, tgt, mask)
    l1 = jax.jit(functools.partial(diffusion.loss, kind="l1"))(pred, tgt, mask)
    # example 0, pixel (0,1) holds channels [2, 3], pixel (1,1) holds [6, 7]; example 1: empty.
    np.testing.assert_allclose(l2, [(4 + 9 + 36 + 49) / 4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(l1, [(2 + 3 + 6 + 7) / 4, 0.0], rtol=1e-6)
    # No mask: the plain mean.
    np.testing.assert_allclose(jax.jit(diffusion.loss)(pred, tgt), [140.0 / 8, 1100.0 / 8])


def test_guided_convention():
    cond, uncond = _x0(0), _x0(1)
    g = jax.jit(diffusion.guided)
    np.testing.assert_allclose(g(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(g(cond, uncond, 1.0), cond, atol=1e-7)
    np.testing.assert_allclose(g(cond, uncond, 3.0), 3 * cond - 2 * uncond, atol=1e-6)


# --------------------------------------------------------------------------- samplers


def _sampler(kind, model_fn, *, steps, **kw):
    fn = diffusion.ddim_sample if kind == "ddim" else diffusion.ddpm_sample
    return jax.jit(lambda rng: fn(model_fn, SHAPE, rng, steps=steps, **kw))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_oracle_recovers_x0(kind, prediction, name):
    schedule = diffusion.get_schedule(name)
    x0 = _x0(3)
    sample = _sampler(
        kind, _oracle(x0, schedule, prediction), steps=10, schedule=schedule, prediction=prediction
    )
    np.testing.assert_allclose(sample(jax.random.key(0)), x0, atol=1e-4)


def test_ddim_eta0_deterministic_eta1_not():
    schedule = diffusion.get_schedule("cosine")
    model_fn = lambda x, t: 0.5 * x  # not an oracle: the output depends on the path
    kw = dict(steps=8, schedule=schedule, prediction="eps")
    det = _sampler("ddim", model_fn, **kw)
    a, b = det(jax.random.key(0)), det(jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, det(jax.random.key(1)))
    # eta=0 depends only on the initial noise: same as eta=0.0 traced separately.
    np.testing.assert_array_equal(a, _sampler("ddim", model_fn, eta=0.0, **kw)(jax.random.key(0)))
    # With eta=1 the per-step noise changes the path, so the output differs from eta=0.
    stoch = _sampler("ddim", model_fn, eta=1.0, **kw)(jax.random.key(0))
    assert np.all(np.isfinite(stoch)) and not np.allclose(stoch, a)


def test_ddim_eta1_matches_ddpm_posterior():
    """DDIM with eta=1 and DDPM's posterior are the same update for a consistent model."""
    schedule = diffusion.get_schedule("linear")
    model_fn = lambda x, t: 0.3 * x + 0.1  # an eps prediction
    kw = dict(steps=6, schedule=schedule, prediction="eps")
    # Same keys drive both samplers' noise, but the two use them identically only if the
    # posterior variance equals the eta=1 variance and the means agree.
    a = _sampler("ddim", model_fn, eta=1.0, **kw)(jax.random.key(5))
    b = _sampler("ddpm", model_fn, **kw)(jax.random.key(5))
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampler_traced_once(kind):
    schedule = diffusion.get_schedule("cosine")
    fn = diffusion.ddim_sample if kind == "ddim" else diffusion.ddpm_sample
    chex.clear_trace_counter()  # the counter is keyed by code, shared by both parametrizations

    @functools.partial(jax.jit, static_argnames="steps")
    @chex.assert_max_traces(n=1)
    def sample(rng, *, steps):
        return fn(lambda x, t: 0.1 * x, SHAPE, rng, schedule=schedule, prediction="v", steps=steps)

    for seed in range(3):
        out = sample(jax.random.key(seed), steps=4)
    assert out.shape == SHAPE


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_x0_fn_pastes_known_pixels(kind):
    schedule = diffusion.get_schedule("cosine")
    known = _x0(7)
    mask = (jnp.arange(8) < 4).astype(jnp.float32)[None, :, None, None]  # top half known
    paste = lambda x0_hat: mask * known + (1 - mask) * x0_hat
    calls = []

    def model_fn(x, t):
        calls.append(1)  # traced once: the loop body is traced, not unrolled
        return jnp.zeros_like(x)  # eps = 0 -> x0_hat = x_t / alpha, far from `known`

    out = _sampler(kind, model_fn, steps=5, schedule=schedule, prediction="eps", x0_fn=paste)(
        jax.random.key(0)
    )
    np.testing.assert_allclose(out[:, :4], known[:, :4], atol=1e-6)
    assert not np.allclose(out[:, 4:], known[:, 4:], atol=0.1)
    assert float(jnp.abs(out).max()) <= 1.0  # clipped
    assert len(calls) == 1


def test_clip_false_leaves_range():
    schedule = diffusion.get_schedule("cosine")
    model_fn = lambda x, t: jnp.full_like(x, 3.0)  # x0 prediction outside [-1, 1]
    kw = dict(steps=3, schedule=schedule, prediction="x0")
    out = _sampler("ddim", model_fn, clip=False, **kw)(jax.random.key(0))
    np.testing.assert_allclose(out, 3.0)
    out = _sampler("ddim", model_fn, **kw)(jax.random.key(0))
    np.testing.assert_allclose(out, 1.0)
