"""Tests of mtlgen_jax.weighting: the contract of every strategy, closed forms, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlgen_jax import weighting

K = 3
HPARAMS = {"static": {"weights": (1.0, 2.0, 0.5)}}
GRADIENT_NAMES = tuple(
    n for n in weighting.NAMES if weighting.create(n, K, **HPARAMS.get(n, {})).uses_task_grads
)


def make(name, num_tasks=K, **hparams):
    return weighting.create(name, num_tasks, **{**HPARAMS.get(name, {}), **hparams})


def task_tree(key, num_tasks=K):
    """A small parameter-like pytree with a leading task axis on every leaf."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "conv": {
            "kernel": jax.random.normal(k1, (num_tasks, 3, 3, 2)),
            "bias": jax.random.normal(k2, (num_tasks, 2)),
        },
        "dense": jax.random.normal(k3, (num_tasks, 5)),
    }


def flatten(tree):
    """[K, P] matrix of a task pytree (test-side reference)."""
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def run(strategy, losses, grads, state=None, rng=None):
    """One jitted apply from `state` (default: init) with `rng` (default: key 0)."""
    state = strategy.init() if state is None else state
    rng = jax.random.key(0) if rng is None else rng
    out = jax.jit(strategy.apply)(jnp.asarray(losses, jnp.float32), grads, state, rng)
    return out


def shapes(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", weighting.NAMES)
def test_contract_pytree_flat_state_and_single_trace(name):
    strategy = make(name)
    assert strategy.name == name and strategy.num_tasks == K
    assert hash(strategy) == hash(make(name))  # usable as a static jit argument
    state = strategy.init()
    grads = task_tree(jax.random.key(1))
    losses = jnp.array([0.5, 1.0, 2.0])

    traces = []

    @jax.jit
    def apply(losses, grads, state, rng):
        traces.append(1)  # Python side effect: runs once per trace
        return strategy.apply(losses, grads, state, rng)

    out = apply(losses, grads, state, jax.random.key(2))

    one_task = jax.tree.map(lambda x: x[0], grads)
    assert jax.tree.structure(out.update) == jax.tree.structure(one_task)
    assert shapes(out.update) == shapes(one_task)
    assert out.weights.shape == (K,) and out.weights.dtype == jnp.float32
    assert np.all(np.isfinite(out.weights))
    assert jax.tree.structure(out.state) == jax.tree.structure(state)
    assert shapes(out.state) == shapes(state)
    for value in out.metrics.values():
        assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(value)
    # The update is sum_k w_k g_k.
    expected = np.einsum("k,kp->p", out.weights, flatten(grads))
    np.testing.assert_allclose(
        flatten(jax.tree.map(lambda x: x[None], out.update))[0], expected, rtol=1e-5, atol=1e-5
    )

    # Repeated calls with the returned state and new values do not retrace; zero
    # gradients (a zero Gram matrix) give finite weights and a zero update.
    out2 = apply(losses * 0.9, jax.tree.map(lambda x: -x, grads), out.state, jax.random.key(3))
    zeros = jax.tree.map(jnp.zeros_like, grads)
    out3 = apply(losses * 0.8, zeros, out2.state, jax.random.key(4))
    assert set(out3.metrics) == set(out.metrics)
    assert np.all(np.isfinite(out3.weights))
    assert all(np.all(x == 0) for x in jax.tree.leaves(out3.update))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out3.state))
    assert len(traces) == 1

    # The same call on the flat [K, P] matrix gives the same result.
    flat_out = run(strategy, losses, flatten(grads), state, jax.random.key(2))
    assert flat_out.update.shape == (flatten(grads).shape[1],)
    np.testing.assert_allclose(flat_out.weights, out.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flat_out.update, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in weighting.NAMES if n not in GRADIENT_NAMES])
def test_loss_weighting_without_grads(name):
    strategy = make(name)
    assert not strategy.uses_task_grads
    losses = jnp.array([0.5, 1.0, 2.0])
    out = run(strategy, losses, None)
    assert out.update is None
    with_grads = run(strategy, losses, jnp.eye(K))
    np.testing.assert_allclose(out.weights, with_grads.weights, rtol=1e-6)


def test_update_keeps_leaf_dtypes():
    grads = {"a": jnp.ones((2, 4), jnp.bfloat16), "b": jnp.ones((2, 3), jnp.float32)}
    out = run(make("mgda", 2), jnp.ones(2), grads)
    assert out.update["a"].dtype == jnp.bfloat16 and out.update["b"].dtype == jnp.float32
    np.testing.assert_allclose(out.update["a"].astype(jnp.float32), 1.0)


def test_single_task_loss_weightings_return_the_gradient_gradient_methods_refuse():
    grads = jnp.array([[1.0, -2.0, 0.5]])
    for name in weighting.NAMES:
        hp = {"weights": (1.0,)} if name == "static" else {}
        if name in GRADIENT_NAMES:
            with pytest.raises(ValueError, match=f"{name} combines per-task gradients and "
                               "needs at least 2 tasks.*use weighting 'ew'"):
                weighting.create(name, 1, **hp)
            continue
        out = run(weighting.create(name, 1, **hp), jnp.array([0.7]), grads)
        w = float(out.weights[0])
        assert np.isfinite(w) and w > 0, name
        np.testing.assert_allclose(out.update, w * grads[0], rtol=1e-5, err_msg=name)


def test_apply_gram_matches_apply():
    grads = jax.random.normal(jax.random.key(3), (3, 7))
    losses = jnp.array([0.5, 1.0, 2.0])
    for name in GRADIENT_NAMES:
        strategy = make(name, 3)
        ref = strategy.apply(losses, grads, strategy.init(), jax.random.key(0))
        out = strategy.apply_gram(grads @ grads.T, losses, strategy.init(), jax.random.key(0))
        assert out.update is None
        np.testing.assert_allclose(out.weights, ref.weights, rtol=1e-4, atol=1e-6, err_msg=name)
        chex.assert_trees_all_close(out.state, ref.state, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- loss weightings


def test_ew_is_the_sum():
    grads = task_tree(jax.random.key(0))
    out = run(make("ew"), jnp.ones(K), grads)
    np.testing.assert_array_equal(out.weights, np.ones(K))
    for got, g in zip(jax.tree.leaves(out.update), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, g.sum(0), rtol=1e-6, atol=1e-6)


def test_static_weights_honoured():
    grads = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = run(make("static", weights=[0.0, 3.0, 0.5]), jnp.ones(K), grads)
    np.testing.assert_allclose(out.weights, [0.0, 3.0, 0.5])
    np.testing.assert_allclose(out.update, [0.5, 3.5])


def test_gls_weights_are_the_gradient_of_the_geometric_mean():
    losses = jnp.array([0.2, 1.5, 4.0])
    out = run(make("gls"), losses, None)
    expected = jax.grad(lambda x: jnp.prod(x) ** (1.0 / K))(losses)
    np.testing.assert_allclose(out.weights, expected, rtol=1e-5)


def test_rlw_weights_sum_to_one_and_depend_on_rng():
    strategy = make("rlw")
    a = run(strategy, jnp.ones(K), None, rng=jax.random.key(0)).weights
    b = run(strategy, jnp.ones(K), None, rng=jax.random.key(1)).weights
    np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-6)
    assert np.all(a > 0) and not np.allclose(a, b)


def test_dwa_equal_ratios_give_ones_and_slow_tasks_get_more():
    strategy = make("dwa")
    apply = jax.jit(strategy.apply)
    state = strategy.init()
    for step, losses in enumerate([[1.0, 2.0, 4.0], [0.5, 1.0, 2.0], [0.25, 0.5, 1.0]]):
        out = apply(jnp.array(losses), None, state, None)
        state = out.state
        if step < 2:  # fewer than two completed windows
            np.testing.assert_allclose(out.weights, np.ones(K))
    np.testing.assert_allclose(out.weights, np.ones(K), rtol=1e-6)  # every ratio 0.5
    # Task 2 stopped improving: it gets the largest weight; weights sum to K.
    out = apply(jnp.array([0.125, 0.25, 1.0]), None, state, None)
    out = apply(jnp.array([0.1, 0.2, 1.0]), None, out.state, None)
    np.testing.assert_allclose(out.weights.sum(), K, rtol=1e-6)
    assert out.weights[2] > out.weights[0] and out.weights[2] > 1.0


def test_dwa_period_averages_windows():
    strategy = make("dwa", period=2)
    apply = jax.jit(strategy.apply)
    state = strategy.init()
    for losses in ([1.0, 1.0, 1.0], [3.0, 3.0, 3.0], [1.0, 2.0, 1.0], [1.0, 2.0, 1.0]):
        out = apply(jnp.array(losses), None, state, None)
        state = out.state
    np.testing.assert_allclose(state["last"], [1.0, 2.0, 1.0])
    np.testing.assert_allclose(state["before"], [2.0, 2.0, 2.0])
    out = apply(jnp.ones(K), None, state, None)
    ratios = np.array([0.5, 1.0, 0.5])
    expected = K * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose(out.weights, expected, rtol=1e-5)


def test_uw_log_variances_converge_to_log_losses():
    strategy = make("uw", lr=0.05)
    losses = jnp.array([0.5, 2.0, 5.0])

    @jax.jit
    def train(state):
        def body(state, _):
            return strategy.apply(losses, None, state, None).state, None

        return jax.lax.scan(body, state, None, length=1500)[0]

    state = train(strategy.init())
    np.testing.assert_allclose(state["log_var"], np.log(losses), atol=0.02)
    out = run(strategy, losses, None, state)
    np.testing.assert_allclose(out.weights, 1.0 / losses, rtol=0.03)


def test_famo_moves_weight_to_the_slower_task():
    strategy = make("famo", 2)

    @jax.jit
    def train(state):
        def body(carry, _):
            state, losses = carry
            out = strategy.apply(losses, None, state, None)
            return (out.state, losses * jnp.array([0.9, 0.99])), out.weights

        return jax.lax.scan(body, (state, jnp.ones(2)), None, length=50)

    (state, _), weights = train(strategy.init())
    assert state["logits"][1] > state["logits"][0] + 0.1  # task 1 improves slower
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    # At equal losses the weights are softmax(logits): task 1 now dominates.
    out = run(strategy, jnp.ones(2), None, state)
    np.testing.assert_allclose(out.weights, jax.nn.softmax(out.state["logits"]), rtol=1e-5)
    assert out.weights[1] > out.weights[0]


def test_gradnorm_shrinks_the_weight_of_the_larger_gradient():
    strategy = make("gradnorm", 2)
    grads = jnp.array([[10.0, 0.0], [0.0, 1.0]])
    out = run(strategy, jnp.array([1.0, 1.0]), grads)
    np.testing.assert_allclose(out.weights, [1.0, 1.0])  # first call: initial weights
    np.testing.assert_allclose(out.update, [10.0, 1.0])
    new = out.state["weights"]
    np.testing.assert_allclose(new.sum(), 2.0, rtol=1e-6)
    assert new[0] < 1.0 < new[1]
    # |G - target| with G = (10, 1), target = mean(G) = 5.5.
    np.testing.assert_allclose(out.metrics["gradnorm_loss"], 9.0, rtol=1e-6)
    assert out.metrics["weights_reset"] == 0.0


def test_gradnorm_reset_to_equal_weights_is_reported():
    """Weights that all reach 0 restart at 1 -- counted in the weights_reset metric."""
    strategy = make("gradnorm", 2)
    state = dict(strategy.init(), weights=jnp.zeros((2,), jnp.float32))
    out = strategy.apply(jnp.array([1.0, 1.0]), jnp.array([[1.0, 0.0], [0.0, 1.0]]), state,
                         jax.random.key(0))
    assert out.metrics["weights_reset"] == 1.0
    np.testing.assert_allclose(out.state["weights"], [1.0, 1.0])


# ----------------------------------------------------------------------------- gradient methods

CONFLICT = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # <g1, g2> = -1


def test_pcgrad_projects_conflicting_and_keeps_others():
    out = run(make("pcgrad", 2), jnp.ones(2), CONFLICT)
    # g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1).
    np.testing.assert_allclose(out.update, [0.5, 1.5], atol=1e-6)
    np.testing.assert_allclose(out.metrics["conflict_fraction"], 1.0)
    aligned = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    out = run(make("pcgrad"), jnp.ones(K), aligned)
    np.testing.assert_allclose(out.weights, np.ones(K), atol=1e-6)


def test_pcgrad_order_is_random():
    # g1 conflicts with g2 and g3, so its projection depends on the order it meets them.
    grads = jnp.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    strategy = make("pcgrad")
    apply = jax.jit(strategy.apply)
    updates = {
        tuple(np.round(np.asarray(apply(jnp.ones(K), grads, {}, jax.random.key(s)).update), 4))
        for s in range(16)
    }
    # g1 -> (.25, .5, .25) or (.25, .25, .5); g2 -> (0, 1, 0); g3 -> (0, 0, 1).
    assert updates == {(0.25, 1.5, 1.25), (0.25, 1.25, 1.5)}


def test_gradvac_with_zero_targets_is_pcgrad_and_tracks_cosines():
    strategy = make("gradvac", 2, beta=0.5)
    out = run(strategy, jnp.ones(2), CONFLICT)
    np.testing.assert_allclose(out.update, [0.5, 1.5], atol=1e-6)
    cos = -1.0 / np.sqrt(2.0)
    np.testing.assert_allclose(
        out.state["target_cos"], [[0.0, 0.5 * cos], [0.5 * cos, 0.0]], atol=1e-6
    )
    # With a positive target, even orthogonal gradients are pulled together.
    state = {"target_cos": jnp.full((2, 2), 0.5)}
    out = run(strategy, jnp.ones(2), jnp.eye(2), state)
    # g1' = g1 + w g2 with cos(g1', g2) = 0.5: w = tan(30 deg).
    np.testing.assert_allclose(out.weights, [1 + np.tan(np.pi / 6)] * 2, rtol=1e-5)


@pytest.mark.parametrize(
    "grads, weights",
    [
        ([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),
        ([[2.0, 0.0], [0.0, 1.0]], [0.2, 0.8]),  # min of 4w^2 + (1-w)^2
        ([[1.0, 0.0], [1.0, 1.0]], [1.0, 0.0]),  # g1 is the min-norm point itself
    ],
)
def test_mgda_min_norm_point(grads, weights):
    out = run(make("mgda", 2), jnp.ones(2), jnp.array(grads))
    np.testing.assert_allclose(out.weights, weights, atol=1e-5)
    np.testing.assert_allclose(out.update, np.array(weights) @ np.array(grads), atol=1e-5)
    assert out.metrics["solver_residual"] < 1e-5


def test_mgda_optimality_on_random_gradients():
    g = jax.random.normal(jax.random.key(0), (4, 10)) * jnp.array([[1.0], [3.0], [0.3], [1.0]])
    out = run(make("mgda", 4), jnp.ones(4), g)
    w, d = np.asarray(out.weights), np.asarray(out.update)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
    # KKT: <g_k, d> >= |d|^2 for every k, with equality on the support.
    dots = np.asarray(g) @ d
    assert np.all(dots >= d @ d - 1e-3)
    np.testing.assert_allclose(dots[w > 1e-3], d @ d, rtol=1e-2, atol=1e-3)
    assert out.metrics["solver_residual"] < 1e-4


def test_cagrad_c_zero_is_the_mean():
    g = jax.random.normal(jax.random.key(0), (K, 7))
    out = run(make("cagrad", c=0.0), jnp.ones(K), g)
    np.testing.assert_allclose(out.update, np.asarray(g).mean(0), rtol=1e-5, atol=1e-6)


def test_cagrad_improves_the_worst_task_within_the_ball():
    g = np.array(jax.random.normal(jax.random.key(3), (K, 6)))
    g[1] -= 1.5 * g[0]  # a conflict
    c = 0.5
    out = run(make("cagrad", c=c, rescale=0), jnp.ones(K), jnp.asarray(g))
    d, g0 = np.asarray(out.update), g.mean(0)
    np.testing.assert_allclose(np.linalg.norm(d - g0), c * np.linalg.norm(g0), rtol=1e-3)
    assert (g @ d).min() > (g @ g0).min() + 1e-3
    # d maximises the worst improvement over the ball: no random point does better.
    rng = np.random.default_rng(0)
    u = rng.normal(size=(2000, 6))
    ball = g0 + c * np.linalg.norm(g0) * u / np.linalg.norm(u, axis=1, keepdims=True)
    assert (ball @ g.T).min(1).max() <= (g @ d).min() + 1e-4
    assert out.metrics["solver_residual"] < 1e-4
    scaled = run(make("cagrad", c=c, rescale=1), jnp.ones(K), jnp.asarray(g))
    np.testing.assert_allclose(scaled.update, d / (1 + c**2), rtol=1e-4, atol=1e-6)


def test_imtl_equal_projections_on_unit_gradients():
    g = jax.random.normal(jax.random.key(1), (4, 9)) * jnp.array([[1.0], [5.0], [0.2], [2.0]])
    out = run(make("imtl", 4), jnp.ones(4), g)
    units = np.asarray(g) / np.linalg.norm(g, axis=1, keepdims=True)
    proj = units @ np.asarray(out.update)
    np.testing.assert_allclose(proj, proj.mean(), rtol=1e-3)
    np.testing.assert_allclose(out.weights.sum(), 1.0, rtol=1e-5)
    assert out.metrics["solver_residual"] < 1e-3


def test_nash_mtl_bargaining_solution():
    g = jax.random.normal(jax.random.key(2), (K, 8)) * jnp.array([[1.0], [4.0], [0.5]])
    out = run(make("nash_mtl"), jnp.ones(K), g)
    alpha, d = np.asarray(out.weights), np.asarray(out.update)
    assert np.all(alpha > 0)
    # G alpha = 1 / alpha (G normalised by its Frobenius norm): each task's directional
    # derivative <g_k, d> is inversely proportional to its weight.
    gram = np.asarray(g) @ np.asarray(g).T
    np.testing.assert_allclose(alpha * (gram @ alpha) / np.linalg.norm(gram), 1.0, rtol=1e-3)
    products = alpha * (np.asarray(g) @ d)
    np.testing.assert_allclose(products, products.mean(), rtol=1e-3)
    assert out.metrics["solver_residual"] < 1e-4


def test_nash_mtl_orthogonal_gradients_get_inverse_norm_weights():
    g = jnp.diag(jnp.array([1.0, 2.0, 4.0]))
    out = run(make("nash_mtl"), jnp.ones(K), g)
    alpha_norm = np.asarray(out.weights) * np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(alpha_norm, alpha_norm.mean(), rtol=1e-4)


def test_aligned_mtl_orthogonal_equal_norms_is_the_sum():
    g = 3.0 * jnp.eye(K, 5)
    out = run(make("aligned_mtl"), jnp.ones(K), g)
    np.testing.assert_allclose(out.weights, np.ones(K), rtol=1e-5)
    np.testing.assert_allclose(out.update, np.asarray(g).sum(0), rtol=1e-5)


def test_aligned_mtl_matches_svd_reference():
    g = np.asarray(jax.random.normal(jax.random.key(4), (K, 6))) * np.array([[1.0], [2.0], [0.5]])
    out = run(make("aligned_mtl"), jnp.ones(K), jnp.asarray(g))
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    aligned = s.min() * u @ vt  # [K, P], every singular value sigma_min
    np.testing.assert_allclose(out.update, aligned.sum(0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out.metrics["rank"], K)


def test_upgrad_non_conflicting_is_the_mean():
    g = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    out = run(make("upgrad"), jnp.ones(K), g)
    np.testing.assert_allclose(out.weights, np.full(K, 1.0 / K), atol=1e-5)


def test_upgrad_conflicting_projects_onto_the_dual_cone():
    # Projections: g1 -> (0.5, 0.5), g2 -> (0, 1); their mean is (0.25, 0.75) (up to
    # the 1e-4 ridge, which we shrink here).
    out = run(make("upgrad", 2, ridge=1e-7), jnp.ones(2), CONFLICT)
    np.testing.assert_allclose(out.update, [0.25, 0.75], atol=1e-5)
    g = np.array(jax.random.normal(jax.random.key(5), (4, 6)))
    g[1:] -= 0.9 * g[0]  # several conflicts
    out = run(make("upgrad", 4), jnp.ones(4), jnp.asarray(g))
    dots = g @ np.asarray(out.update)
    assert np.all(dots >= -1e-3 * np.linalg.norm(g, axis=1).max() ** 2)
    assert out.metrics["solver_residual"] < 1e-3


@pytest.mark.parametrize("name", ["mgda", "cagrad", "nash_mtl", "upgrad"])
def test_solver_residual_reports_an_unconverged_solve(name):
    g = np.array(jax.random.normal(jax.random.key(6), (4, 6))) * np.array([[1], [3], [0.3], [1]])
    g[1:] -= 0.7 * g[0]
    short = run(make(name, 4, num_iters=1), jnp.ones(4), jnp.asarray(g))
    full = run(make(name, 4), jnp.ones(4), jnp.asarray(g))
    assert full.metrics["solver_residual"] < 1e-3
    assert short.metrics["solver_residual"] > 10 * full.metrics["solver_residual"] + 1e-4


@pytest.mark.parametrize("name", ["mgda", "cagrad"])
def test_two_quadratics_end_on_the_pareto_set(name):
    """Descent with the combined gradient of |x - a|^2/2 and |x - b|^2/2 on R^2."""
    a, b = jnp.array([1.0, 0.0]), jnp.array([-1.0, 0.0])
    strategy = make(name, 2)

    def losses_fn(x):
        return 0.5 * jnp.stack([jnp.sum((x - a) ** 2), jnp.sum((x - b) ** 2)])

    @jax.jit
    def descend(x0):
        def body(carry, _):
            x, state = carry
            out = strategy.apply(losses_fn(x), jax.jacrev(losses_fn)(x), state, None)
            return (x - 0.1 * out.update, out.state), None

        return jax.lax.scan(body, (x0, strategy.init()), None, length=300)[0][0]

    final = np.asarray(jax.vmap(descend)(jnp.array([[0.5, 2.0], [3.0, -1.0], [-2.0, 0.5]])))
    # The Pareto set is the segment [b, a].
    np.testing.assert_allclose(final[:, 1], 0.0, atol=1e-3)
    assert np.all(np.abs(final[:, 0]) <= 1.0 + 1e-3)


# ----------------------------------------------------------------------------- bad input


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown weighting strategy 'nope'.*mgda.*upgrad"):
        weighting.create("nope", 2)


@pytest.mark.parametrize(
    "name, num_tasks, hparams, match",
    [
        ("cagrad", 2, {"c": -0.1}, r"c=-0.1 .*c >= 0"),
        ("cagrad", 2, {"rescale": 3}, r"rescale=3"),
        ("static", 2, {"weights": [1.0]}, r"length 1.*num_tasks=2"),
        ("static", 2, {"weights": [1.0, -1.0]}, r"weights\[i\]=-1.0"),
        ("static", 2, {}, r"weights=None"),
        ("ew", 0, {}, r"num_tasks=0"),
        ("mgda", 2, {"num_iters": 0}, r"num_iters=0"),
        ("dwa", 2, {"temperature": 0.0}, r"temperature=0.0 .*> 0"),
        ("gradvac", 2, {"beta": 2.0}, r"beta=2.0"),
        ("mgda", 2, {"c": 0.5}, r"unknown hyperparameter.*'c'.*num_iters"),
    ],
)
def test_bad_hparams(name, num_tasks, hparams, match):
    with pytest.raises(ValueError, match=match):
        weighting.create(name, num_tasks, **hparams)


def test_bad_apply_inputs():
    strategy = make("mgda", 2)
    with pytest.raises(ValueError, match="needs per-task gradients"):
        strategy.apply(jnp.ones(2), None, strategy.init(), None)
    with pytest.raises(ValueError, match="leading axis 2"):
        strategy.apply(jnp.ones(2), jnp.ones((3, 4)), strategy.init(), None)
    with pytest.raises(ValueError, match=r"losses must have shape \(2,\)"):
        strategy.apply(jnp.ones(3), jnp.ones((2, 4)), strategy.init(), None)
