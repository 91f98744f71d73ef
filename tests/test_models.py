"""The U-Net backbone and the multi-task model: shapes, separate heads, conditioning."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtlgen_jax.components import check_model_config
from mtlgen_jax.models import MultiTaskModel
from mtlgen_jax.tasks import Condition

TASKS = ("denoise", "inpaint", "generate")


def tiny(num_classes=10, channels=3):
    return MultiTaskModel(tasks=TASKS, out_channels=channels, num_classes=num_classes,
                          backbone=dict(width=8, channel_mult=(1, 2), num_res_blocks=1,
                                        attn_resolutions=(8,), num_heads=2))


def inputs(b=6, size=16, c=3):
    x = jax.random.normal(jax.random.key(0), (b, size, size, c))
    cond = Condition(image=x * 0.5, mask=jnp.ones((b, size, size, 1)))
    return x, cond, jnp.linspace(0.1, 0.9, b), jnp.arange(b) % len(TASKS), jnp.arange(b) % 10


@pytest.fixture(scope="module")
def model_and_params():
    model = tiny()
    params = jax.jit(model.init)(jax.random.key(1), *inputs())["params"]
    return model, params


def test_output_shape_and_dtype_per_task(model_and_params):
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    out = jax.jit(model.apply)({"params": params}, x, cond, t, task_id, label)
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)


def test_heads_are_separate_parameters(model_and_params):
    _, params = model_and_params
    assert set(params) == {"backbone"} | {f"head_{t}" for t in TASKS}
    chex.assert_trees_all_equal_structs(params["head_denoise"], params["head_inpaint"])
    assert not np.allclose(params["head_denoise"]["Conv_0"]["kernel"],
                           params["head_inpaint"]["Conv_0"]["kernel"])


def test_a_head_only_changes_its_own_tasks_outputs(model_and_params):
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    apply = jax.jit(model.apply)
    base = apply({"params": params}, x, cond, t, task_id, label)
    bumped = jax.tree.map(lambda p: p, params)
    bumped["head_inpaint"] = jax.tree.map(lambda p: p + 0.1, params["head_inpaint"])
    out = apply({"params": bumped}, x, cond, t, task_id, label)
    changed = np.abs(np.asarray(out - base)).reshape(len(task_id), -1).max(axis=1) > 1e-6
    np.testing.assert_array_equal(changed, np.asarray(task_id) == TASKS.index("inpaint"))


def test_time_task_and_class_embeddings_are_used(model_and_params):
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    apply = jax.jit(model.apply)
    # The last convs of residual blocks start at zero, so perturb the params first.
    params = jax.tree.map(lambda p: p + 0.05 * jnp.ones_like(p), params)
    base = apply({"params": params}, x, cond, t, task_id, label)
    for changed in ((x, cond, t + 0.05, task_id, label),
                    (x, cond, t, (task_id + 1) % 3, label),
                    (x, cond, t, task_id, (label + 1) % 10)):
        assert not np.allclose(apply({"params": params}, *changed), base)


def test_unet_level_count_vs_image_size():
    cfg = ml_collections.ConfigDict(dict(channel_mult=(1, 2, 2, 2), width=32))
    check_model_config(cfg, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        check_model_config(cfg, 20)


def test_unet_parameter_tree_is_unchanged_by_the_backbone_option():
    """configs/default.py's U-Net (backbone 'unet', head_depth 0): the parameter count and
    head layout of checkpoints written before the transformer backbone existed."""
    from configs import default
    from mtlgen_jax import components
    from mtlgen_jax.data import DatasetInfo

    cfg = default.get_config()
    assert cfg.model.backbone == "unet" and cfg.model.head_depth == 0
    info = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=32,
                       num_train=64, num_test=8, train_split="train", test_split="test")
    comp = components.build(cfg, info)
    shapes = jax.eval_shape(lambda: components.init_params(comp.model, info, jax.random.key(0)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 1_118_476
    assert len(jax.tree.leaves(shapes)) == 197
    assert jax.tree.map(lambda x: x.shape, shapes["head_denoise"]) == {
        "GroupNorm_0": {"scale": (32,), "bias": (32,)},
        "Conv_0": {"kernel": (3, 3, 32, 3), "bias": (3,)}}


def test_deeper_unet_head_starts_as_the_one_layer_head(model_and_params):
    """head_depth adds zero-initialised residual layers before the same output layer."""
    model, params = model_and_params
    deep = MultiTaskModel(tasks=TASKS, out_channels=3, num_classes=10, head_depth=2,
                          backbone=dict(width=8, channel_mult=(1, 2), num_res_blocks=1,
                                        attn_resolutions=(8,), num_heads=2))
    x, cond, t, task_id, label = inputs()
    p2 = jax.jit(deep.init)(jax.random.key(5), x, cond, t, task_id, label)["params"]
    assert set(p2["head_inpaint"]) == {"hidden_0", "hidden_1", "GroupNorm_0", "Conv_0"}
    p2 = dict(p2, backbone=params["backbone"])
    for task in TASKS:
        p2[f"head_{task}"] = dict(p2[f"head_{task}"], GroupNorm_0=params[f"head_{task}"][
            "GroupNorm_0"], Conv_0=params[f"head_{task}"]["Conv_0"])
    np.testing.assert_allclose(jax.jit(deep.apply)({"params": p2}, x, cond, t, task_id, label),
                               jax.jit(model.apply)({"params": params}, x, cond, t, task_id,
                                                    label), atol=1e-6)


def test_unet_attention_computes_in_the_model_dtype(model_and_params):
    """bfloat16: every attention block of the U-Net computes (and returns) bfloat16 --
    its dtype is passed through, not left at the float32 default."""
    _, params = model_and_params
    model = MultiTaskModel(tasks=TASKS, out_channels=3, num_classes=10, dtype=jnp.bfloat16,
                           backbone=dict(width=8, channel_mult=(1, 2), num_res_blocks=1,
                                         attn_resolutions=(8,), num_heads=2))
    _, state = jax.jit(lambda p: model.apply({"params": p}, *inputs(),
                                             capture_intermediates=True))(params)
    outs = {"/".join(str(getattr(k, "key", k)) for k in path): x for path, x in
            jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}
    attn = {k: v.dtype for k, v in outs.items()
            if "AttentionBlock" in k and "MultiHeadDotProductAttention_0/__call__" in k}
    assert attn and all(d == jnp.bfloat16 for d in attn.values()), attn
