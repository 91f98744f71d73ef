"""The train step's gradient paths against references computed another way (1 device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mtlgen_jax import components, step
from mtlgen_jax.data import DatasetInfo

INFO = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=16, num_train=64,
                   num_test=8, train_split="train", test_split="test")


def build(weighting="mgda", grad_space="params", accum=1):
    cfg = default.get_config("tiny")
    cfg.batch_size = 8
    cfg.weighting.name = weighting
    cfg.weighting.grad_space = grad_space
    cfg.grad_accum_steps = accum
    cfg.tasks.names = "denoise,inpaint,super_resolve"
    for name in ("denoise", "inpaint", "super_resolve"):  # heads that start non-zero
        cfg.tasks[name] = default.with_objective(cfg.tasks[name], "diffusion", residual=False,
                                                  loss="l2")
    comp = components.build(cfg, INFO)
    return cfg, comp


def prepared_batch(cfg, comp):
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)),
             "label": jnp.zeros((8,), jnp.int32)}
    state = components.init_state(comp, cfg.seed)
    return state, batch


def on_one_device(fn):
    """Runs fn under a 1-device 'data' axis (the step's collectives need one)."""
    mesh = jax.make_mesh((1,), (step.AXIS,), devices=jax.devices()[:1])
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(), out_specs=jax.P(),
                                 check_vma=False))


def test_representation_mode_weights_and_update_match_a_reference():
    """Weights from the Gram of per-task gradients w.r.t. a shared representation offset;
    backbone update = sum_k w_k grad L_k; heads get their own task's gradient."""
    cfg, comp = build("mgda", "representation")
    scfg = comp
    state, batch = prepared_batch(cfg, comp)
    key = jax.random.key(7)
    drop = jax.random.key(8)

    def ours():
        b = step.prepare_batch(scfg, batch, key)
        split = lambda mb, i: step.split_task_losses(scfg, mb, drop)  # noqa: E731
        losses, grads, out = step.representation_losses_and_gradients(
            scfg, state.params, b, split, state.weighting_state, key)
        return losses, grads, out.weights

    def reference():
        b = step.prepare_batch(scfg, batch, key)
        params = state.params
        features_fn, head_loss_fn = step.split_task_losses(scfg, b, drop)
        heads = {k: v for k, v in params.items() if k != "backbone"}
        z = features_fn(params["backbone"])
        # Per task: gradient w.r.t. an offset delta [H, W, F] added to every example's z.
        offset_grads = jnp.stack([
            jax.grad(lambda d, i=i: head_loss_fn(z + d, heads)[i])(jnp.zeros(z.shape[1:]))
            for i in range(len(scfg.tasks))])
        g = offset_grads.reshape(len(scfg.tasks), -1)
        w = comp.strategy.apply_gram(g @ g.T, jnp.zeros(3), state.weighting_state, key).weights
        full = jax.grad(lambda p: jnp.dot(w, step.task_losses(scfg, p, b, drop)))(params)
        own = jax.grad(lambda p: jnp.sum(step.task_losses(scfg, p, b, drop)))(params)
        return step.task_losses(scfg, params, b, drop), full["backbone"], own, w

    losses, grads, weights = on_one_device(ours)()
    ref_losses, ref_backbone, ref_own, ref_w = on_one_device(reference)()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-3, atol=1e-5)
    assert np.max(np.abs(np.asarray(weights) - np.mean(weights))) > 1e-3  # not equal weights
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6),
                 grads["backbone"], ref_backbone)
    for name in grads:
        if name != "backbone":
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                         grads[name], ref_own[name])


@pytest.mark.parametrize("weighting, space, match", [
    ("ew", "representation", "applies to gradient methods only.*'ew' weighs losses"),
    ("mgda", "features", "grad_space='features' is unknown.*'params', 'representation'"),
])
def test_bad_grad_space(weighting, space, match):
    with pytest.raises(ValueError, match=match):
        build(weighting, space)


def test_gradient_method_with_one_task_is_refused_before_compiling():
    cfg = default.get_config("tiny")
    cfg.tasks.names = "denoise"
    cfg.weighting.name = "cagrad"
    with pytest.raises(ValueError, match="cagrad combines per-task gradients and needs at least 2"):
        components.build(cfg, INFO)


def test_loss_scores_only_what_the_condition_leaves_open():
    """A consistent task's loss is that of its projected estimate: shifting a super-
    resolution estimate by a block-constant field (which the low-resolution image fixes)
    or a colour estimate along the luma vector changes nothing; without consistency it
    does."""
    from mtlgen_jax import objectives
    from mtlgen_jax.tasks.colorize import LUMA

    def losses(consistent, shift):
        cfg = default.get_config("tiny")
        cfg.tasks.names = "super_resolve,colorize"
        for name in ("super_resolve", "colorize"):
            cfg.tasks[name] = default.with_objective(cfg.tasks[name], "regression", residual=True,
                                   consistent=consistent)
        comp = components.build(cfg, INFO)
        x0 = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-0.9, maxval=0.9)
        task_id = jnp.asarray([0, 1] * 4)
        keys = jax.vmap(lambda k: jax.random.split(k, 4))(jax.random.split(jax.random.key(1), 8))
        cond, inputs, mask, _ = step.make_inputs(comp, x0, jnp.zeros(8, jnp.int32), task_id,
                                                 keys, train=True)
        pred = 0.1 * jax.random.normal(jax.random.key(2), x0.shape)
        blocks = jax.random.normal(jax.random.key(3), (8, 8, 8, 3))
        block_field = jnp.repeat(jnp.repeat(blocks, 2, axis=1), 2, axis=2)
        luma_field = jax.random.normal(jax.random.key(4), (8, 16, 16, 1)) * jnp.asarray(LUMA)
        field = jnp.where((task_id == 0)[:, None, None, None], block_field, luma_field)
        assert isinstance(inputs, objectives.TrainInputs)
        return np.asarray(step._per_task(comp, pred + shift * field, inputs, mask, task_id,
                                         cond))

    np.testing.assert_allclose(losses(True, 0.0), losses(True, 0.5), rtol=1e-5)
    assert np.all(losses(False, 0.5) > 1.1 * losses(False, 0.0))


def test_endpoint_fraction_trains_the_one_step_estimate_on_that_share_of_examples():
    """endpoint_fraction = f: about f of a bridge task's examples get t = 1 (the model's
    input is then the start itself), the rest keep the times f = 0 draws, unchanged."""
    def inputs(fraction):
        cfg = default.get_config("tiny")
        cfg.tasks.names = "super_resolve,denoise"
        cfg.tasks.super_resolve = dict(cfg.tasks.super_resolve, objective="bridge",
                                       residual=False, endpoint_fraction=fraction)
        comp = components.build(cfg, INFO)
        b = 512
        x0 = jax.random.uniform(jax.random.key(0), (b, 16, 16, 3), minval=-0.9, maxval=0.9)
        task_id = jnp.asarray([0, 1] * (b // 2))
        keys = jax.vmap(lambda k: jax.random.split(k, 4))(jax.random.split(jax.random.key(1), b))
        cond, inp, _, _ = step.make_inputs(comp, x0, jnp.zeros(b, jnp.int32), task_id, keys,
                                           train=True)
        return comp, cond, inp, np.asarray(task_id)

    _, _, before, task_id = inputs(0.0)
    comp, cond, after, _ = inputs(0.4)
    t0, t1 = np.asarray(before.t), np.asarray(after.t)
    sr = task_id == 0
    at_end = sr & (t1 == 1.0)
    assert 0.3 < at_end.sum() / sr.sum() < 0.5  # about 0.4 of the 256 examples
    np.testing.assert_array_equal(t1[~at_end], t0[~at_end])  # the others: the same draws
    np.testing.assert_array_equal(t1[~sr], t0[~sr])  # the other task is untouched
    start = comp.tasks[0].start(cond)
    np.testing.assert_allclose(after.x_t[at_end], start[at_end], atol=1e-6)  # x_1 = b
    with pytest.raises(ValueError, match="endpoint_fraction=0.5 draws bridge times"):
        default_cfg = default.get_config("tiny")
        default_cfg.tasks.names = "inpaint"
        default_cfg.tasks.inpaint = dict(default_cfg.tasks.inpaint, endpoint_fraction=0.5)
        components.build(default_cfg, INFO)
