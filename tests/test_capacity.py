"""Per-task capacity inside the backbone (model.task_film, model.task_lora_rank): the
identity at init and gradient flow, the layers against references, parameter counts in
closed form, per-task parameters outside the Gram matrix (parameter and representation
space), transfer, both backends, old runs, and a tiny run through the Trainer."""

import json

import _data
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from mtlgen_jax import components, step, transfer, workdir
from mtlgen_jax.data import DatasetInfo
from mtlgen_jax.models import MultiTaskModel, capacity
from mtlgen_jax.tasks import Condition

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

TASKS = ("denoise", "inpaint", "generate")
UNET = dict(width=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_heads=2)
VIT = dict(width=16, depth=2, num_heads=2, patch_size=2, mlp_ratio=4.0)


def info(size=16):
    return DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=size,
                       num_train=64, num_test=8, train_split="train", test_split="test")


def model(kind="unet", **capacity_kw):
    return MultiTaskModel(tasks=TASKS, out_channels=3, num_classes=10, backbone_kind=kind,
                          backbone=dict(UNET if kind == "unet" else VIT, **capacity_kw))


def inputs(b=6, size=16, tasks=None):
    x = jax.random.normal(jax.random.key(0), (b, size, size, 3))
    cond = Condition(image=x * 0.5, mask=jnp.ones((b, size, size, 1)))
    task_id = jnp.arange(b) % len(TASKS) if tasks is None else jnp.asarray(tasks)
    return x, cond, jnp.linspace(0.1, 0.9, b), task_id, jnp.arange(b) % 10


def num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes_of(m, *args):
    return jax.eval_shape(m.init, jax.random.key(0), *args)["params"]


ON = {"unet": dict(task_film=True, task_lora_rank=2), "vit": dict(task_lora_rank=2)}


# --- the parameter tree with the options off: today's ---------------------------------------

@pytest.mark.parametrize("kind", ["unet", "vit"])
def test_options_off_give_todays_parameter_tree(kind):
    """film off and rank 0: exactly the tree of a model built without the options (the
    checkpoints written before them), and no per-task part."""
    off = {"unet": dict(task_film=False, task_lora_rank=0), "vit": dict(task_lora_rank=0)}[kind]
    before = shapes_of(model(kind), *inputs())
    after = shapes_of(model(kind, **off), *inputs())
    assert jax.tree.map(lambda x: x.shape, after) == jax.tree.map(lambda x: x.shape, before)
    shared, per_task = capacity.partition(after)
    assert per_task == {} and capacity.overhead_per_task(after) == 0
    assert jax.tree.structure(shared) == jax.tree.structure(after)


def test_old_config_json_builds_todays_tree_and_resumes(tmp_path):
    """A config.json written before the options: they load as off (ADDED_KEYS), the model
    is today's U-Net, a resume with today's default config is accepted, one with the
    options on is refused (its checkpoint lacks the per-task tables)."""
    cfg = default.get_config("tiny")
    saved = json.loads(cfg.to_json())
    for key in ("task_film", "task_lora_rank"):
        del saved["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = workdir.load_config(str(tmp_path))
    assert loaded.model.task_film is False and loaded.model.task_lora_rank == 0
    trees = [jax.eval_shape(lambda c=c: components.init_params(c.model, c.info,
                                                               jax.random.key(0)))
             for c in (components.build(loaded, info()), components.build(cfg, info()))]
    chex.assert_trees_all_equal_shapes(*trees)
    workdir.prepare(str(tmp_path), cfg, has_checkpoint=True, write=False)
    cfg.model.task_lora_rank = 2
    with pytest.raises(ValueError, match="different model.*task_lora_rank"):
        workdir.prepare(str(tmp_path), cfg, has_checkpoint=True, write=False)


# --- identity at init, gradient flow ------------------------------------------------------

@pytest.mark.parametrize("kind", ["unet", "vit"])
def test_adapters_start_as_the_identity_and_gradients_flow(kind):
    """With the options on, the model computes exactly what its shared parameters compute
    without them. Gradients: every B and FiLM table gets one on the rows of the tasks in
    the batch and exactly none on the other rows; A gets none while B is zero (LoRA)."""
    args = inputs(tasks=[0, 1, 0, 1, 1, 0])  # no example of task 2
    m_on, m_off = model(kind, **ON[kind]), model(kind)
    params = jax.jit(m_on.init)(jax.random.key(1), *args)["params"]
    shared, per_task = capacity.partition(params)
    assert per_task and capacity.overhead_per_task(params) > 0
    out_on = jax.jit(m_on.apply)({"params": params}, *args)
    out_off = jax.jit(m_off.apply)({"params": shared}, *args)
    np.testing.assert_allclose(out_on, out_off, rtol=0, atol=1e-6)

    # Zero-initialised shared layers (residual convs, adaLN-Zero gates) would also stop
    # the gradient: move the shared parameters off zero, keep the per-task tables at init.
    shared = jax.tree.map(lambda p: p + 0.05, shared)

    def loss(pt):
        return jnp.sum(m_on.apply({"params": capacity.combine(shared, pt)}, *args) ** 2)

    grads = jax.jit(jax.grad(loss))(per_task)
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    kinds = {"a": 0, "b": 0, "scale_shift": 0}
    for path, g in leaves:
        name = path[-1].key
        kinds[name] += 1
        g = np.asarray(g).reshape(len(TASKS), -1)
        assert np.all(g[2] == 0), path  # task 2 has no example
        if name == "a":
            assert np.all(g == 0), path  # B = 0: no gradient reaches A yet
        else:
            assert np.all(np.abs(g[:2]).max(axis=1) > 0), path
    assert kinds["b"] == kinds["a"] > 0 and (kinds["scale_shift"] > 0) == (kind == "unet")


# --- the layers against references --------------------------------------------------------

@pytest.mark.parametrize("kernel, strides", [((3, 3), (1, 1)), ((3, 3), (2, 2)), ((1, 1), (1, 1))])
def test_lora_conv_is_each_examples_own_tasks_low_rank_conv(kernel, strides):
    """Example b of task k: nn.Conv with A_k (same kernel, stride, 'SAME' padding) then a
    1x1 conv with B_k, computed per example with Flax's own conv."""
    import flax.linen as nn

    k, r, cout = 3, 2, 5
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 6))
    task_id = jnp.asarray([2, 0, 2, 1])
    layer = capacity.TaskLoRAConv(k, r, cout, kernel, strides)
    params = layer.init(jax.random.key(1), x, task_id)["params"]
    assert params["a"].shape == (k, *kernel, 6, r) and params["b"].shape == (k, r, cout)
    params = dict(params, b=jax.random.normal(jax.random.key(2), params["b"].shape))
    out = layer.apply({"params": params}, x, task_id)
    for i, t in enumerate(np.asarray(task_id)):
        u = nn.Conv(r, kernel, strides=strides, use_bias=False).apply(
            {"params": {"kernel": params["a"][t]}}, x[i:i + 1])
        ref = u @ params["b"][t]
        np.testing.assert_allclose(out[i:i + 1], ref, rtol=1e-5, atol=1e-5)


def test_lora_dense_and_film_against_closed_forms():
    k, r = 3, 2
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))  # [B, T, D]
    task_id = jnp.asarray([1, 0, 2, 1])
    dense = capacity.TaskLoRADense(k, r, 7)
    params = dense.init(jax.random.key(1), x, task_id)["params"]
    params = dict(params, b=jax.random.normal(jax.random.key(2), params["b"].shape))
    out = dense.apply({"params": params}, x, task_id)
    for i, t in enumerate(np.asarray(task_id)):
        np.testing.assert_allclose(out[i], x[i] @ params["a"][t] @ params["b"][t], rtol=1e-5,
                                   atol=1e-5)
    h = jax.random.normal(jax.random.key(3), (4, 2, 2, 6))
    table = jax.random.normal(jax.random.key(4), (k, 2, 6))
    out = capacity.TaskFiLM(k).apply({"params": {"scale_shift": table}}, h, task_id)
    for i, t in enumerate(np.asarray(task_id)):
        np.testing.assert_allclose(out[i], h[i] * (1 + table[t, 0]) + table[t, 1], rtol=1e-6)


# --- parameter counts ---------------------------------------------------------------------

def unet_overhead(*, width, channel_mult, num_res_blocks, c_in, rank, film):
    """Per-task parameters of the U-Net, counted from the architecture: every conv
    (kernel k, C_in -> C_out) gets r (k^2 C_in + C_out); every residual block 2 C_out."""
    convs, blocks = [(3, c_in, width)], []

    def res(cin, cout):
        blocks.append(cout)
        convs.extend([(3, cin, cout), (3, cout, cout)] + ([(1, cin, cout)] if cin != cout else []))
        return cout

    ch, skips = width, [width]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            ch = res(ch, width * mult)
            skips.append(ch)
        if level != len(channel_mult) - 1:
            convs.append((3, ch, ch))
            skips.append(ch)
    ch = res(res(ch, ch), ch)
    for level, mult in reversed(list(enumerate(channel_mult))):
        for _ in range(num_res_blocks + 1):
            ch = res(ch + skips.pop(), width * mult)
        if level:
            convs.append((3, ch, ch))
    return (sum(rank * (k * k * cin + cout) for k, cin, cout in convs)
            + (2 * sum(blocks) if film else 0))


def vit_overhead(*, width, depth, mlp_ratio, rank):
    """qkv (D -> 3D), proj (D -> D), fc1 (D -> M), fc2 (M -> D): r (D_in + D_out) each."""
    d, m = width, int(width * mlp_ratio)
    return depth * rank * ((d + 3 * d) + (d + d) + (d + m) + (m + d))


@pytest.mark.parametrize("kind, kw, expected", [
    ("unet", dict(task_film=True, task_lora_rank=2),
     unet_overhead(width=8, channel_mult=(1, 2), num_res_blocks=1, c_in=7, rank=2, film=True)),
    ("unet", dict(task_film=True), 2 * (8 + 16 + 16 + 16 + 16 + 16 + 8 + 8)),
    ("unet", dict(task_lora_rank=3),
     unet_overhead(width=8, channel_mult=(1, 2), num_res_blocks=1, c_in=7, rank=3, film=False)),
    ("vit", dict(task_lora_rank=3), vit_overhead(width=16, depth=2, mlp_ratio=4.0, rank=3)),
])
def test_overhead_per_task_in_closed_form(kind, kw, expected):
    params = shapes_of(model(kind, **kw), *inputs())
    base = shapes_of(model(kind), *inputs())
    assert capacity.overhead_per_task(params) == expected > 0
    assert num_params(params) == num_params(base) + len(TASKS) * expected
    shared, per_task = capacity.partition(params)
    assert num_params(shared) == num_params(base) and num_params(per_task) == 3 * expected


@pytest.mark.parametrize("variant, film, rank, expected", [
    ("", True, 0, 1_216), ("", False, 4, 72_572), ("vit", False, 4, 36_864)])
def test_default_configs_overhead_as_documented(variant, film, rank, expected):
    """The numbers in configs/default.py's comment (U-Net 1.12M, DiT 1.05M shared)."""
    cfg = default.get_config(variant)
    cfg.model.task_film, cfg.model.task_lora_rank = film, rank
    comp = components.build(cfg, info(32))
    shapes = jax.eval_shape(lambda: components.init_params(comp.model, comp.info,
                                                           jax.random.key(0)))
    assert capacity.overhead_per_task(shapes) == expected
    if variant == "":
        assert expected == unet_overhead(width=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                         c_in=7, rank=rank, film=film)
    else:
        assert expected == vit_overhead(width=96, depth=6, mlp_ratio=4.0, rank=rank)


@pytest.mark.parametrize("kw, match", [
    (dict(backbone="vit", task_film=True), "model.task_film applies to model.backbone='unet'"),
    (dict(task_lora_rank=-1), r"model.task_lora_rank=-1 must be an int >= 0"),
])
def test_bad_capacity_configs_are_refused(kw, match):
    cfg = default.get_config("vit" if kw.get("backbone") == "vit" else "")
    cfg.model.update(kw)
    with pytest.raises(ValueError, match=match):
        components.build(cfg, info(32))


# --- per-task parameters outside the Gram matrix ------------------------------------------

def build(weighting, grad_space="params", accum=1, kind="unet"):
    cfg = default.get_config("vit,tiny" if kind == "vit" else "tiny")
    cfg.batch_size = 8
    cfg.weighting.name = weighting
    cfg.weighting.grad_space = grad_space
    cfg.grad_accum_steps = accum
    cfg.model.update(ON[kind])
    cfg.tasks.names = "denoise,inpaint,super_resolve"
    for name in ("denoise", "inpaint", "super_resolve"):  # heads that start non-zero
        cfg.tasks[name] = default.with_objective(cfg.tasks[name], "diffusion", residual=False,
                                                  loss="l2")
    return cfg, components.build(cfg, info())


def generic_params(comp, seed=0):
    """Initial parameters moved off every zero init (B, FiLM, residual convs), the per-task
    tables far: they then change the losses and have gradients as large as the shared
    parameters' (so that a Gram matrix with them in would give other weights)."""
    params = components.init_params(comp.model, comp.info, jax.random.key(seed))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    moved = [p + (0.5 if capacity.is_per_task(path) else 0.05) * jax.random.normal(k, p.shape)
             for (path, p), k in zip(leaves, keys)]
    return jax.tree.unflatten(jax.tree.structure(params), moved)


def batch_and_keys():
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)),
             "label": jnp.zeros((8,), jnp.int32)}
    return batch, jax.random.key(7), jax.random.key(8)


def on_one_device(fn):
    mesh = jax.make_mesh((1,), (step.AXIS,), devices=jax.devices()[:1])
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(), out_specs=jax.P(),
                                 check_vma=False))


def flat(tree) -> jax.Array:
    """[K, P]: each task's gradient leaves concatenated (a Gram matrix another way)."""
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)], axis=1)


def own_rows(table_grads):
    """Row k of every per-task table from task k's gradient ([K, K, ...] -> [K, ...])."""
    return jax.tree.map(lambda g: jnp.stack([g[k, k] for k in range(g.shape[0])]), table_grads)


def test_mgda_with_adapters_weighs_the_shared_gradients_only():
    """Parameter space, 3 tasks: MGDA's weights are those of the shared parameters' Gram
    matrix (and differ from the Gram with the per-task tables in); the shared update is
    sum_k w_k g_k; task k's rows of each table get task k's own gradient; heads too."""
    cfg, comp = build("mgda")
    params = generic_params(comp)
    batch, key, drop = batch_and_keys()
    wstate = comp.strategy.init()

    def ours():
        b = step.prepare_batch(comp, batch, key)
        loss_fn = lambda p, mb, i: step.task_losses(comp, p, mb, drop)  # noqa: E731
        losses, grads, out = step.losses_and_gradients(comp, params, b, loss_fn, wstate, key)
        return losses, grads, out.weights

    def reference():
        b = step.prepare_batch(comp, batch, key)
        # Per task, a plain jax.grad of its loss, one task after the other (lax.map).
        g = jax.lax.map(lambda i: jax.grad(lambda p: step.task_losses(comp, p, b, drop)[i])(
            params), jnp.arange(3))  # leaves [K, ...]
        shared, tables = capacity.partition(g["backbone"])
        gram = lambda x: flat(x) @ flat(x).T  # noqa: E731
        losses = step.task_losses(comp, params, b, drop)
        w = comp.strategy.apply_gram(gram(shared), losses, wstate, key).weights
        w_all = comp.strategy.apply_gram(gram(g["backbone"]), losses, wstate, key).weights
        update = jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), shared)
        return losses, w, w_all, update, own_rows(tables), g

    losses, grads, weights = on_one_device(ours)()
    ref_losses, w, w_all, update, rows, g = on_one_device(reference)()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(weights, w, rtol=1e-3, atol=1e-5)
    assert np.max(np.abs(np.asarray(weights) - np.mean(weights))) > 1e-3  # not equal weights
    assert np.max(np.abs(np.asarray(w_all) - np.asarray(w))) > 1e-2  # the tables would matter
    shared, tables = capacity.partition(grads["backbone"])
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)  # noqa: E731
    jax.tree.map(close, shared, update)
    assert jax.tree.structure(tables) == jax.tree.structure(rows)
    jax.tree.map(close, tables, rows)
    for k, task in enumerate(comp.task_names):
        jax.tree.map(lambda a, b, k=k: close(a, b[k]), grads[f"head_{task}"], g[f"head_{task}"])


@pytest.mark.parametrize("accum", [1, 2])
def test_representation_mode_with_adapters(accum):
    """Representation space: weights from the representation gradients; the shared
    backbone gets sum_k w_k grad L_k; the per-task tables get their own task's gradient
    through the backbone, unweighted (grad of sum_k L_k: row k only sees task k's loss),
    as the heads do. With 2 micro-batches too."""
    cfg, comp = build("mgda", "representation", accum)
    params = generic_params(comp)
    batch, key, drop = batch_and_keys()
    wstate = comp.strategy.init()

    def ours():
        b = step.prepare_batch(comp, batch, key)
        split = lambda mb, i: step.split_task_losses(comp, mb, drop)  # noqa: E731
        losses, grads, out = step.representation_losses_and_gradients(
            comp, params, b, split, wstate, key)
        return losses, grads, out.weights

    def reference():
        b = step.prepare_batch(comp, batch, key)
        features_fn, head_loss_fn = step.split_task_losses(comp, b, drop)
        heads = {k: v for k, v in params.items() if k != "backbone"}
        z = features_fn(params["backbone"])
        offset = jnp.stack([
            jax.grad(lambda d, i=i: head_loss_fn(z + d, heads)[i])(jnp.zeros(z.shape[1:]))
            for i in range(3)]).reshape(3, -1)
        losses = step.task_losses(comp, params, b, drop)
        w = comp.strategy.apply_gram(offset @ offset.T, losses, wstate, key).weights
        weighted = jax.grad(lambda p: jnp.dot(w, step.task_losses(comp, p, b, drop)))(params)
        own = jax.grad(lambda p: jnp.sum(step.task_losses(comp, p, b, drop)))(params)
        return losses, w, weighted, own

    losses, grads, weights = on_one_device(ours)()
    ref_losses, w, weighted, own = on_one_device(reference)()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(weights, w, rtol=1e-3, atol=1e-5)
    assert np.max(np.abs(np.asarray(weights) - np.mean(weights))) > 1e-3
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)  # noqa: E731
    shared, tables = capacity.partition(grads["backbone"])
    ref_shared, ref_tables = capacity.partition(weighted["backbone"])
    jax.tree.map(close, shared, ref_shared)
    jax.tree.map(close, tables, capacity.partition(own["backbone"])[1])
    # The weighted gradient would have scaled task k's rows by w_k: a different answer.
    assert not np.allclose(flat(jax.tree.leaves(tables)), flat(jax.tree.leaves(ref_tables)),
                           rtol=1e-2)
    for name in grads:
        if name != "backbone":
            jax.tree.map(close, grads[name], own[name])


# --- transfer -----------------------------------------------------------------------------

def test_init_from_copies_table_rows_and_keeps_missing_tables_fresh():
    """Rows of tasks both runs have are copied, new tasks' rows stay fresh; a source
    without the tables (an older run) leaves them at their initial value."""
    table = ("backbone", "ResBlock_0", "per_task_film", "scale_shift")
    fresh = {"backbone": {"Conv_0": {"kernel": np.zeros((2, 2))},
                          "ResBlock_0": {"per_task_film": {"scale_shift": np.zeros((2, 2, 3))}}}}
    src_table = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    source = {"backbone": {"Conv_0": {"kernel": np.ones((2, 2))},
                           "ResBlock_0": {"per_task_film": {"scale_shift": src_table}}}}
    params, report = transfer.merge(fresh, source, tasks=("b", "c"), source_tasks=("a", "b"))
    got = params["backbone"]["ResBlock_0"]["per_task_film"]["scale_shift"]
    np.testing.assert_array_equal(got[0], src_table[1])  # task b: the source's row 1
    np.testing.assert_array_equal(got[1], 0)  # task c: fresh
    assert "/".join(table) in report["copied"]
    old = {"backbone": {"Conv_0": {"kernel": np.ones((2, 2))}}}
    params, report = transfer.merge(fresh, old, tasks=("b", "c"), source_tasks=("a", "b"))
    np.testing.assert_array_equal(params["backbone"]["Conv_0"]["kernel"], 1)
    assert report["fresh"] == ["/".join(table)]


def test_frozen_backbone_still_trains_the_per_task_tables():
    params = {"backbone": {"Conv_0": {"kernel": jnp.ones((2, 2))},
                           "per_task_lora_Conv_0": {"b": jnp.ones((3, 2))}},
              "head_a": {"Conv_0": {"kernel": jnp.ones((2,))}}}
    tx = transfer.freeze(optax.sgd(1.0), "backbone")
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert np.all(updates["backbone"]["Conv_0"]["kernel"] == 0)
    assert np.all(updates["backbone"]["per_task_lora_Conv_0"]["b"] == -1)
    assert np.all(updates["head_a"]["Conv_0"]["kernel"] == -1)


# --- both backends, a tiny run ------------------------------------------------------------

def test_shard_map_and_pmap_steps_agree():
    """Two steps of PCGrad with FiLM and LoRA on 1 device through each backend's wrapper
    (the first step's learning rate is 0: warm-up)."""
    cfg, _ = build("pcgrad")
    cfg.adam_eps = 1e-3
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                "label": np.zeros((8,), np.int32)} for _ in range(2)]
    out = {}
    for backend in ("shard_map", "pmap"):
        parts = components.build_run(cfg, info(), devices=jax.devices()[:1], backend=backend)
        state = parts.par.init_state(parts.init_fn)
        for batch in batches:
            state, metrics = parts.step_fn(state, parts.par.shard_batch(batch))
            assert np.isfinite(parts.par.metrics_to_host(metrics)["loss"])
        out[backend] = jax.device_get(parts.par.unreplicate(state).params)
    chex.assert_trees_all_close(out["shard_map"], out["pmap"], rtol=1e-5, atol=1e-6)
    # The update reached the per-task tables (B moved off zero).
    tables = capacity.partition(out["pmap"]["backbone"])[1]
    assert any(np.abs(x).max() > 0 for p, x in
               jax.tree_util.tree_flatten_with_path(tables)[0] if p[-1].key == "b")


def test_tiny_run_with_adapters_then_restore(tmp_path):
    """Through the Trainer: FAMO (a loss weighting) with FiLM and LoRA, a checkpoint, then
    mg.restore (the per-task tables come back, and the one real update reached them: the
    first step's learning rate is 0)."""
    import mtlgen_jax as mg
    from mtlgen_jax import train, writers

    cfg = default.get_config("tiny")
    cfg.dataset.data_dir = _data.shared()
    cfg.num_train_steps = 2
    cfg.eval.num_batches = 0
    cfg.async_checkpoints = False
    cfg.tasks.names = "denoise,inpaint"
    for name in ("denoise", "inpaint"):  # heads that start non-zero: the backbone trains
        cfg.tasks[name] = default.with_objective(cfg.tasks[name], "diffusion", residual=False,
                                                  loss="l2")
    cfg.model.task_film, cfg.model.task_lora_rank = True, 2
    wd = str(tmp_path / "run")
    state = train.Trainer(cfg, wd).run()
    rows = [r for r in writers.read_metrics(wd) if "loss" in r]
    assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["loss"])
    run = mg.restore(wd, ema=False)
    assert run.config.model.task_film and run.config.model.task_lora_rank == 2
    chex.assert_trees_all_close(run.params, jax.device_get(state.params))
    tables = capacity.partition(run.params["backbone"])[1]
    assert any(np.abs(x).max() > 0 for p, x in jax.tree_util.tree_flatten_with_path(tables)[0]
               if p[-1].key == "b")  # B starts at zero


def test_model_kwargs_pass_the_options():
    m = default.get_config().model
    m.task_film, m.task_lora_rank = True, 3
    kw = components.model_kwargs(m)
    assert kw["task_film"] is True and kw["task_lora_rank"] == 3
    m.backbone, m.task_film = "vit", False
    kw = components.model_kwargs(m)
    assert kw["task_lora_rank"] == 3 and "task_film" not in kw
