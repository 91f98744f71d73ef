"""The objectives against closed forms: the bridge's forward process and one-step sample,
residual prediction's zero head, the samplers' determinism; sharpness of blur and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlgen_jax import diffusion, metrics, objectives, tasks

SCHEDULE = diffusion.get_schedule("cosine")


def make(name, **params):
    return tasks.get_class(name)(channels=3, image_size=16, num_classes=0, **params)


def images(b=4, seed=0):
    return jax.random.uniform(jax.random.key(seed), (b, 16, 16, 3), minval=-0.9, maxval=0.9)


def test_bridge_marginal_closed_form():
    x0, base = images(seed=1), images(seed=2)
    eps = jax.random.normal(jax.random.key(3), x0.shape)
    t = jnp.array([0.0, 1.0, 0.25, 0.5])
    x_t = objectives.bridge_marginal(x0, base, eps, t, gamma=0.4)
    np.testing.assert_allclose(x_t[0], x0[0], atol=1e-6)  # t = 0: the clean image
    np.testing.assert_allclose(x_t[1], base[1], atol=1e-6)  # t = 1: the baseline, no noise
    np.testing.assert_allclose(x_t[2], 0.75 * x0[2] + 0.25 * base[2]
                               + 0.4 * np.sqrt(0.25 * 0.75) * eps[2], atol=1e-6)
    np.testing.assert_allclose(x_t[3], 0.5 * (x0[3] + base[3]) + 0.2 * eps[3], atol=1e-6)


@pytest.mark.parametrize("name", ["denoise", "super_resolve", "colorize", "inpaint"])
def test_one_bridge_step_is_the_networks_estimate_at_t1(name):
    task = make(name, objective="bridge", bridge_noise=0.5)
    x = images()
    cond = task.degrade(x, jax.random.key(0))
    seen = {}

    def head_fn(x_t, t):
        jax.debug.callback(lambda a, b: seen.update(x_t=np.asarray(a), t=np.asarray(b)), x_t, t)
        return 0.1 * jnp.sin(7 * x_t)

    out = objectives.sample(task, head_fn, cond, jax.random.key(1), schedule=SCHEDULE,
                            prediction="v", steps=1)
    jax.effects_barrier()
    base = task.start(cond)
    np.testing.assert_allclose(seen["x_t"], base, atol=1e-6)  # starts exactly at b
    np.testing.assert_allclose(seen["t"], 1.0)
    expected = task.postprocess(jnp.clip(base + 0.1 * jnp.sin(7 * base), -1, 1), cond)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["denoise", "super_resolve", "colorize", "inpaint"])
@pytest.mark.parametrize("objective, sampler, steps", [
    ("diffusion", "ddim", 1), ("diffusion", "ddim", 5), ("diffusion", "ddpm", 4),
    ("regression", "ddim", 1)])
def test_zero_head_under_residual_prediction_returns_the_start(name, objective, sampler,
                                                               steps):
    """At every sampler step the clean-image estimate is b = the task's ``start``
    (recorded from inside the loop by a debug callback on the task's x0 hook), and so
    is the output."""
    task = make(name, objective=objective, residual=True)
    cond = task.degrade(images(), jax.random.key(0))
    base = np.asarray(task.start(cond))
    estimates = []
    post = task.postprocess

    def recording(x0, c):
        jax.debug.callback(lambda v: estimates.append(np.asarray(v)), x0)
        return post(x0, c)

    task.postprocess = recording
    out = objectives.sample(task, lambda x_t, t: jnp.zeros_like(x_t), cond, jax.random.key(1),
                            schedule=SCHEDULE, prediction="v", steps=steps, sampler=sampler,
                            eta=0.5)
    jax.effects_barrier()
    np.testing.assert_allclose(out, base, atol=1e-6)
    assert len(estimates) == steps
    for est in estimates:
        np.testing.assert_allclose(est, base, atol=1e-6)


def test_train_inputs_residual_and_bridge():
    task = make("super_resolve", objective="diffusion", residual=True)
    x = images()
    cond = task.degrade(x, jax.random.key(0))
    eps = jax.random.normal(jax.random.key(1), x.shape)
    t = jnp.array([0.01, 0.3, 0.7, 1.0])
    ti = objectives.train_inputs(task, x, cond, eps, t, schedule=SCHEDULE, prediction="v")
    np.testing.assert_allclose(ti.offset, task.start(cond))
    np.testing.assert_allclose(ti.target, x)
    sigma = np.sqrt(np.asarray(SCHEDULE.one_minus_alpha_bar(t)))
    np.testing.assert_allclose(ti.weight, 1 / np.maximum(sigma, 0.2) ** 2, rtol=1e-5)
    # v-weighting: (x0_hat - x0)^2 / sigma^2 == (v_hat - v)^2 where sigma > floor.
    x0_hat = x + 0.05
    v = diffusion.target(x, eps, t, SCHEDULE, "v")
    alpha = np.sqrt(np.asarray(SCHEDULE.alpha_bar(t)))[:, None, None, None]
    v_hat = (alpha * ti.x_t - x0_hat) / sigma[:, None, None, None]
    lhs = np.mean((x0_hat - x) ** 2, axis=(1, 2, 3)) * ti.weight
    np.testing.assert_allclose(lhs[1:3], np.mean((v_hat - v) ** 2, axis=(1, 2, 3))[1:3],
                               rtol=1e-3)
    bridge = make("denoise", objective="bridge", bridge_noise=0.3)
    cond = bridge.degrade(x, jax.random.key(0))
    ti = objectives.train_inputs(bridge, x, cond, eps, t, schedule=SCHEDULE, prediction="v")
    np.testing.assert_allclose(ti.offset, ti.x_t)
    np.testing.assert_allclose(ti.x_t[3], cond.image[3], atol=1e-6)  # t = 1: the noisy input


def test_bridge_sampling_is_deterministic_for_an_rng():
    task = make("denoise", objective="bridge", bridge_noise=0.5)
    cond = task.degrade(images(), jax.random.key(0))
    fn = jax.jit(lambda key: objectives.sample(
        task, lambda x_t, t: -0.2 * x_t, cond, key, schedule=SCHEDULE, prediction="v",
        steps=4))
    a, b, c = fn(jax.random.key(5)), fn(jax.random.key(5)), fn(jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # gamma > 0: stochastic


def test_objective_checks():
    with pytest.raises(ValueError, match="objective='bridge'.*generate.*no condition image"):
        make("generate", objective="bridge")
    with pytest.raises(ValueError, match="residual=True.*generate"):
        make("generate", residual=True)
    with pytest.raises(ValueError, match="bridge_noise=-1"):
        make("denoise", objective="bridge", bridge_noise=-1.0)


def test_sharpness_of_blur_and_noise():
    rng = np.random.default_rng(0)
    # A textured image: smooth gradients plus fine detail.
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    base = 0.5 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + 0.2 * rng.standard_normal((32, 32))
    img = np.repeat(base[None, :, :, None], 3, axis=-1).astype(np.float32)
    img = np.concatenate([img, img[:, ::-1]])
    blurred = jax.image.resize(jax.image.resize(img, (2, 16, 16, 3), "linear"),
                               (2, 32, 32, 3), "linear")
    noisy = img + 0.3 * rng.standard_normal(img.shape).astype(np.float32)
    np.testing.assert_allclose(metrics.sharpness(img, img), 1.0, rtol=1e-5)
    assert np.all(np.asarray(metrics.sharpness(blurred, img)) < 0.5)
    assert np.all(np.asarray(metrics.sharpness(noisy, img)) > 1.2)


def test_relative_loss_divides_each_example_by_its_starts_error():
    """loss='relative': weight = 1 / (start's masked MSE + eps), so a zero head scores
    start_error / (start_error + eps) ~ 1 per example, whatever the example's difficulty;
    refused without a start."""
    task = make("inpaint", objective="regression", residual=True, loss="relative")
    x = images(b=6)
    cond = task.degrade(x, jax.random.key(3))
    zeros = jnp.zeros_like(x)
    ti = objectives.train_inputs(task, x, cond, zeros, jnp.ones(6), schedule=SCHEDULE,
                                 prediction="v")
    mask = task.loss_mask(cond)
    start_error = diffusion.loss(task.start(cond), x, mask)
    np.testing.assert_allclose(ti.weight, 1 / (start_error + objectives.RELATIVE_LOSS_EPS),
                               rtol=1e-5)
    zero_head = diffusion.loss(ti.offset + 0.0, ti.target, mask) * ti.weight
    np.testing.assert_allclose(zero_head, start_error / (start_error + 1e-4), rtol=1e-5)
    assert np.ptp(np.asarray(start_error)) > 0.01  # the examples' difficulties differ
    with pytest.raises(ValueError, match="relative"):
        make("denoise", objective="regression", residual=False, loss="relative")


def test_relative_floor_caps_the_weight_of_near_perfect_starts():
    """relative_floor_db=D adds the squared error of a D dB start (4 / 10^(D/10) for
    images in [-1, 1]) instead of 1e-4: an example whose start is exact weighs 10^(D/10)/4,
    one far worse than the floor about 1 / its error as before; out-of-range refused; the
    other losses ignore it."""
    task = make("colorize", objective="bridge", loss="relative", relative_floor_db=30.0)
    x = images(b=6)
    x = x.at[0].set(jnp.broadcast_to(jnp.mean(x[0], axis=-1, keepdims=True), x[0].shape))
    cond = task.degrade(x, jax.random.key(3))
    ti = objectives.train_inputs(task, x, cond, jnp.zeros_like(x), jnp.ones(6),
                                 schedule=SCHEDULE, prediction="v")
    start_error = np.asarray(diffusion.loss(task.start(cond), x, task.loss_mask(cond)))
    assert start_error[0] < 1e-10  # a gray image: its luminance is exact
    np.testing.assert_allclose(ti.weight, 1 / (start_error + 4e-3), rtol=1e-5)
    np.testing.assert_allclose(ti.weight[0], 250.0, rtol=1e-5)
    default = make("colorize", objective="bridge", loss="relative")
    assert objectives.relative_eps(default) == objectives.RELATIVE_LOSS_EPS
    for bad in (0.0, -3.0, 120.0):
        with pytest.raises(ValueError, match="relative_floor_db"):
            make("colorize", objective="bridge", loss="relative", relative_floor_db=bad)
    # Other losses ignore it (the default config floors every relative task, and switching
    # a task's loss on the command line must not need a second flag).
    l2 = [objectives.train_inputs(make("colorize", objective="bridge", loss="l2", **kw), x,
                                  cond, jnp.zeros_like(x), jnp.ones(6), schedule=SCHEDULE,
                                  prediction="v").weight
          for kw in ({}, {"relative_floor_db": 30.0})]
    np.testing.assert_array_equal(l2[0], l2[1])
