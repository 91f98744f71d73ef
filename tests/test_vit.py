"""The transformer backbone (model.backbone='vit', a DiT): parameter counts in closed form,
shapes on several image sizes, adaLN-Zero's identity at init, bfloat16, the config checks,
old U-Net workdirs, 1 device == 8 devices, and a tiny run through launch.py."""

import json
import os
import sys

import _data
import _serial
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mtlgen_jax import components, cpu_devices, workdir
from mtlgen_jax.models import MultiTaskModel, vit
from mtlgen_jax.models.vit import sincos_2d
from mtlgen_jax.tasks import Condition

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("denoise", "inpaint", "generate")


def vit_model(width=16, depth=2, num_heads=2, patch_size=2, mlp_ratio=4.0, head_depth=0,
              num_classes=10, channels=3, zero_heads=(), dtype=jnp.float32, impl=None):
    return MultiTaskModel(
        tasks=TASKS, out_channels=channels, num_classes=num_classes, dtype=dtype,
        zero_heads=zero_heads, backbone_kind="vit", head_depth=head_depth,
        backbone=dict(width=width, depth=depth, num_heads=num_heads, patch_size=patch_size,
                      mlp_ratio=mlp_ratio, attention_impl=impl))


def inputs(b=6, h=16, w=16, c=3):
    x = jax.random.normal(jax.random.key(0), (b, h, w, c))
    cond = Condition(image=x * 0.5, mask=jnp.ones((b, h, w, 1)))
    return x, cond, jnp.linspace(0.1, 0.9, b), jnp.arange(b) % len(TASKS), jnp.arange(b) % 10


def closed_form_count(*, width, depth, patch_size, mlp_ratio, head_depth, num_classes,
                      channels, num_tasks=3):
    """Parameters of MultiTaskModel(backbone_kind='vit'), counted from the architecture."""
    d, p, m = width, patch_size, int(width * mlp_ratio)
    c_in = 2 * channels + 1  # x_noisy, condition image, condition mask
    dense = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    mlp = dense(d, m) + dense(m, d)
    block = dense(d, 6 * d) + dense(d, 3 * d) + dense(d, d) + mlp  # adaLN, qkv, proj, MLP
    backbone = (dense(d, d) + dense(d, d)  # time embedding (sin-cos of size d, 2 layers)
                + num_tasks * d + ((num_classes + 1) * d if num_classes else 0)
                + dense(p * p * c_in, d)  # patch embedding; positions are not parameters
                + depth * block + dense(d, 2 * d))  # blocks, final adaLN
    head = head_depth * (2 * d + mlp) + 2 * d + dense(d, p * p * channels)
    return backbone + num_tasks * head


def num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("kw", [
    dict(width=16, depth=2, num_heads=2, patch_size=2, mlp_ratio=4.0, head_depth=0,
         num_classes=10, channels=3),
    dict(width=32, depth=3, num_heads=4, patch_size=4, mlp_ratio=2.0, head_depth=1,
         num_classes=0, channels=1),
    dict(width=24, depth=1, num_heads=3, patch_size=1, mlp_ratio=1.5, head_depth=2,
         num_classes=5, channels=3),
])
def test_parameter_count_in_closed_form_and_output_shapes(kw):
    model = vit_model(**kw)
    c, p = kw["channels"], kw["patch_size"]
    x, cond, t, task_id, label = inputs(c=c)
    label = label % max(kw["num_classes"], 1)
    params = jax.eval_shape(model.init, jax.random.key(0), x, cond, t, task_id, label)["params"]
    assert num_params(params) == closed_form_count(**{k: v for k, v in kw.items()
                                                      if k != "num_heads"})
    assert set(params) == {"backbone"} | {f"head_{t}" for t in TASKS}
    chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda _: jnp.zeros(()), params))
    # The same parameters on other image sizes (tiles, non-square): positions are computed.
    for h, w in ((16, 16), (8, 24)):
        x, cond, t, task_id, label = inputs(h=h, w=w, c=c)
        label = label % max(kw["num_classes"], 1)
        out = jax.eval_shape(model.apply, {"params": params}, x, cond, t, task_id, label)
        assert out.shape == (6, h, w, c) and out.dtype == jnp.float32
        z = jax.eval_shape(lambda pr, *a: model.apply({"params": pr}, *a, method="features"),
                           params, x, cond, t, task_id, label)
        assert z.shape == (6, h // p, w // p, kw["width"])


def test_default_vit_variant_is_about_the_unets_size():
    """configs/default.py:vit: 1.05M parameters beside the U-Net's 1.12M (test_models)."""
    cfg = default.get_config("vit")
    comp = components.build(cfg, _info(cfg.dataset.image_size))
    count = num_params(jax.eval_shape(
        lambda: components.init_params(comp.model, comp.info, jax.random.key(0))))
    assert count == closed_form_count(width=96, depth=6, patch_size=2, mlp_ratio=4.0,
                                      head_depth=0, num_classes=0, channels=3,
                                      num_tasks=4) == 1_049_808


def _info(size=16, num_classes=None):
    from mtlgen_jax.data import DatasetInfo

    return DatasetInfo(name="synthetic", num_classes=num_classes, channels=3, image_size=size,
                       num_train=64, num_test=8, train_split="train", test_split="test")


def test_sincos_positions():
    pos = sincos_2d(3, 5, 8)
    assert pos.shape == (15, 8)
    # Half the channels encode the row, half the column: tokens of a row share the first half.
    np.testing.assert_array_equal(pos[5:10, :4], np.broadcast_to(pos[5, :4], (5, 4)))
    np.testing.assert_array_equal(pos[[1, 6, 11], 4:], np.broadcast_to(pos[1, 4:], (3, 4)))
    assert len({tuple(r) for r in np.round(pos, 6)}) == 15  # every position distinct


@pytest.fixture(scope="module")
def model_and_params():
    model = vit_model()
    params = jax.jit(model.init)(jax.random.key(1), *inputs())["params"]
    return model, params


def test_every_block_is_the_identity_at_init(model_and_params):
    """adaLN-Zero: shift = scale = gate = 0 at init, so the backbone's output is the plain
    (scale-free) LayerNorm of patch embedding + positions, whatever the time, task, class."""
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    features = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method="features"))
    z = features(params, x, cond, t, task_id, label)  # [B, 8, 8, D]
    # Independent reference: patchify by reshape, multiply by the patch kernel, add sin-cos.
    stack = jnp.concatenate([x, cond.image, cond.mask], axis=-1)  # [B, 16, 16, 7]
    b, p = stack.shape[0], 2
    patches = stack.reshape(b, 8, p, 8, p, 7).transpose(0, 1, 3, 2, 4, 5).reshape(b, 8, 8, -1)
    conv = params["backbone"]["patch_embed"]
    tokens = patches @ conv["kernel"].reshape(-1, 16) + conv["bias"]
    tokens = tokens + sincos_2d(8, 8, 16).reshape(8, 8, 16)
    mean = tokens.mean(-1, keepdims=True)
    ref = (tokens - mean) / jnp.sqrt(((tokens - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(z, ref, atol=2e-5)
    # Perturbing one block's modulation makes it act (the test above can fail).
    bumped = jax.tree.map(lambda a: a, params)
    mod = params["backbone"]["block_1"]["adaLN_modulation"]
    bumped["backbone"]["block_1"]["adaLN_modulation"] = dict(mod, bias=mod["bias"] + 0.1)
    assert not np.allclose(features(bumped, x, cond, t, task_id, label), ref, atol=1e-3)


def test_time_task_and_class_enter_through_the_conditioning(model_and_params):
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    features = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method="features"))
    params = jax.tree.map(lambda p: p + 0.05 * jnp.ones_like(p), params)  # modulation != 0
    base = features(params, x, cond, t, task_id, label)
    for changed in ((x, cond, t + 0.05, task_id, label),
                    (x, cond, t, (task_id + 1) % 3, label),
                    (x, cond, t, task_id, (label + 1) % 10)):
        assert not np.allclose(features(params, *changed), base)


def test_zero_heads_and_deeper_heads_at_init():
    """A zero head outputs 0 (residual/bridge tasks start at their baseline); a deeper head
    starts as the same function as a depth-0 head with the same output layer."""
    x, cond, t, task_id, label = inputs()
    shallow = vit_model(zero_heads=(True, False, False))
    deep = vit_model(zero_heads=(True, False, False), head_depth=2)
    p0 = jax.jit(shallow.init)(jax.random.key(2), x, cond, t, task_id, label)["params"]
    p2 = jax.jit(deep.init)(jax.random.key(3), x, cond, t, task_id, label)["params"]
    assert set(p2["head_inpaint"]) == {"hidden_0", "hidden_0_norm", "hidden_1",
                                       "hidden_1_norm", "norm", "out"}
    p2 = dict(p2, backbone=p0["backbone"])
    for task in TASKS:
        p2[f"head_{task}"] = dict(p2[f"head_{task}"], norm=p0[f"head_{task}"]["norm"],
                                  out=p0[f"head_{task}"]["out"])
    out0 = jax.jit(shallow.apply)({"params": p0}, x, cond, t, task_id, label)
    out2 = jax.jit(deep.apply)({"params": p2}, x, cond, t, task_id, label)
    np.testing.assert_allclose(out2, out0, atol=1e-6)
    denoise = np.asarray(task_id) == 0
    assert np.all(np.asarray(out0)[denoise] == 0) and np.abs(out0[~denoise]).max() > 1e-3


def test_a_head_only_changes_its_own_tasks_outputs(model_and_params):
    model, params = model_and_params
    x, cond, t, task_id, label = inputs()
    apply = jax.jit(model.apply)
    base = apply({"params": params}, x, cond, t, task_id, label)
    bumped = dict(params, head_inpaint=jax.tree.map(lambda p: p + 0.1, params["head_inpaint"]))
    out = apply({"params": bumped}, x, cond, t, task_id, label)
    changed = np.abs(np.asarray(out - base)).reshape(len(task_id), -1).max(axis=1) > 1e-6
    np.testing.assert_array_equal(changed, np.asarray(task_id) == TASKS.index("inpaint"))


def test_unpatchify_puts_each_tokens_pixels_in_place():
    """A head whose output layer copies the token's own patch (the inverse of the patch
    embedding's layout) reproduces the input image: pixels land where they came from."""
    from mtlgen_jax.models.vit import unpatchify

    img = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
    p = 4
    tokens = img.reshape(2, 2, p, 3, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 3, -1)
    np.testing.assert_array_equal(unpatchify(tokens, p, 3), img)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_outputs(model_and_params):
    model, params = model_and_params
    params = jax.tree.map(lambda p: p + 0.02 * jnp.ones_like(p), params)
    x, cond, t, task_id, label = inputs()
    bf16 = vit_model(dtype=jnp.bfloat16)
    p16 = jax.jit(bf16.init)(jax.random.key(1), x, cond, t, task_id, label)["params"]
    chex.assert_trees_all_equal_dtypes(p16, params)  # float32 parameters
    out32 = jax.jit(model.apply)({"params": params}, x, cond, t, task_id, label)
    out16 = jax.jit(bf16.apply)({"params": params}, x, cond, t, task_id, label)
    assert out16.dtype == jnp.float32
    z16 = jax.jit(lambda p, *a: bf16.apply({"params": p}, *a, method="features"))(
        params, x, cond, t, task_id, label)
    assert z16.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel


def test_cudnn_attention_asked_on_cpu_runs_xla_with_the_same_result(model_and_params):
    _, params = model_and_params
    params = jax.tree.map(lambda p: p + 0.02 * jnp.ones_like(p), params)
    x, cond, t, task_id, label = inputs()
    ref = jax.jit(vit_model(impl="xla").apply)({"params": params}, x, cond, t, task_id, label)
    out = jax.jit(vit_model(impl="cudnn").apply)({"params": params}, x, cond, t, task_id, label)
    np.testing.assert_array_equal(out, ref)


def test_head_major_attention_equals_jax_nn_values_and_gradients():
    """vit.attention (the default, impl=None) is jax.nn.dot_product_attention rewritten:
    the same values and gradients, on head-major arrays; large logits stay finite."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
    q, k, v, do = (jax.random.normal(kk, (2, 3, 10, 8)) for kk in (k1, k2, k3, k4))
    q = q * 30.0  # logits of several hundred: the row maximum must be subtracted

    def ours(q, k, v):
        return jnp.sum(vit.attention(q, k, v) * do)

    def reference(q, k, v):
        bthe = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
        out = jax.nn.dot_product_attention(bthe(q), bthe(k), bthe(v), implementation="xla")
        return jnp.sum(bthe(out) * do)

    val, grads = jax.value_and_grad(ours, argnums=(0, 1, 2))(q, k, v)
    ref_val, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(q, k, v)
    assert np.isfinite(val)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert float(jnp.abs(r).max()) > 0
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()))


def test_default_attention_model_equals_jax_nn_attention_model(model_and_params):
    """The whole model on impl=None (vit.attention) and 'xla' (jax.nn), with the adaLN
    gates open (params + 0.02), so every block's attention reaches the output."""
    model, params = model_and_params
    params = jax.tree.map(lambda p: p + 0.02 * jnp.ones_like(p), params)
    x, cond, t, task_id, label = inputs()
    out = jax.jit(model.apply)({"params": params}, x, cond, t, task_id, label)
    ref = jax.jit(vit_model(impl="xla").apply)({"params": params}, x, cond, t, task_id, label)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def _model_cfg(**kw):
    cfg = default.get_config("vit").model
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("kw,size,dtype,match", [
    (dict(patch_size=3), 32, "float32", r"image_size=32 is not divisible by model.patch_size=3"),
    (dict(width=96, num_heads=5), 32, "float32", r"model.width=96 is not divisible by "
                                                 r"model.num_heads=5"),
    (dict(width=6, num_heads=2), 32, "float32", r"model.width=6 must be a multiple of 4"),
    (dict(attention_impl="flash"), 32, "float32", r"attention_impl='flash' is unknown"),
    (dict(attention_impl="cudnn"), 32, "float32", r"'cudnn' needs dtype='bfloat16'"),
    (dict(attention_impl="cudnn", width=48, num_heads=4), 32, "bfloat16",
     r"head size .* = 12\) that is a multiple of 8"),
    (dict(backbone="transformer"), 32, "float32", r"model.backbone='transformer' is unknown"),
    (dict(depth=0), 32, "float32", r"model.depth=0 must be > 0"),
    (dict(head_depth=-1), 32, "float32", r"model.head_depth=-1 must be >= 0"),
    (dict(backbone="unet", attention_impl="cudnn"), 32, "bfloat16",
     r"attention_impl='cudnn' applies to model.backbone='vit' only"),
])
def test_bad_vit_configs_are_refused_naming_the_key(kw, size, dtype, match):
    with pytest.raises(ValueError, match=match):
        components.check_model_config(_model_cfg(**kw), size, dtype)


def test_good_vit_configs_pass():
    components.check_model_config(_model_cfg(), 32)
    components.check_model_config(_model_cfg(attention_impl="cudnn", width=384, num_heads=6),
                                  32, "bfloat16")
    from configs import cifar10

    cfg = cifar10.get_config("vit")
    components.check_model_config(cfg.model, cfg.dataset.image_size, cfg.dtype)


def test_old_unet_workdir_loads_and_resumes_as_unet(tmp_path):
    """A config.json written before model.backbone existed: a U-Net with one-layer heads."""
    cfg = default.get_config("tiny")
    saved = json.loads(cfg.to_json())
    for key in ("backbone", "patch_size", "depth", "mlp_ratio", "attention_impl", "head_depth"):
        del saved["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = workdir.load_config(str(tmp_path))
    assert loaded.model.backbone == "unet" and loaded.model.head_depth == 0
    comp = components.build(loaded, _info())
    assert comp.model.backbone_kind == "unet" and comp.model.head_depth == 0
    ref = components.build(cfg, _info())
    shapes = [jax.eval_shape(lambda c=c: components.init_params(c.model, c.info,
                                                                jax.random.key(0)))
              for c in (comp, ref)]
    chex.assert_trees_all_equal_shapes(*shapes)
    # Resuming it with today's config is accepted; with the transformer it is refused.
    workdir.prepare(str(tmp_path), cfg, has_checkpoint=True, write=False)
    with pytest.raises(ValueError, match="different model"):
        workdir.prepare(str(tmp_path), default.get_config("vit,tiny"), has_checkpoint=True,
                        write=False)


# Runs in a subprocess with 8 simulated CPU devices (the count is fixed when JAX starts);
# each run trains 2 steps of the tiny transformer from the same seed and prints its
# losses and parameters. Palette diffusion on both tasks: heads that start non-zero.
# (Both backends, parameter-space gradients and accumulation: the launch.py run below.)
MULTIDEVICE = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=600")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax
jax.config.update("jax_disable_most_optimizations", True)
import numpy as np
from configs import default
from mtlgen_jax import components, weighting
from mtlgen_jax.data import DatasetInfo

def run(devices, backend, spec, accum):
    cfg = default.get_config("vit,tiny")
    cfg.batch_size = 8
    cfg.weighting.name, cfg.weighting.grad_space = weighting.parse_spec(spec)
    cfg.grad_accum_steps = accum
    cfg.adam_eps = 1e-3  # smooth in g: sums in another order give close updates
    cfg.tasks.names = "denoise,inpaint"
    for name in ("denoise", "inpaint"):
        cfg.tasks[name] = default.with_objective(cfg.tasks[name], "diffusion", residual=False,
                                                  loss="l2")
    info = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=16,
                       num_train=64, num_test=8, train_split="train", test_split="test")
    parts = components.build_run(cfg, info, devices=jax.devices()[:devices], backend=backend)
    par, comp = parts.par, parts.comp
    state = par.init_state(parts.init_fn)
    rng, losses = np.random.default_rng(0), []
    for _ in range(2):
        batch = {"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                 "label": np.zeros((8,), np.int32)}
        state, metrics = parts.step_fn(state, par.shard_batch(batch))
        host = par.metrics_to_host(metrics)
        losses.append([host[f"loss/{t}"] for t in comp.task_names])
    params = jax.tree.map(np.asarray, par.unreplicate(state).params)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    return {"losses": losses, "params": flat.tolist(),
            "compiles": parts.step_fn._cache_size() if hasattr(parts.step_fn, "_cache_size")
            else None}

RUNS = {"one": (1, "shard_map", "mgda-ub", 1), "eight": (8, "shard_map", "mgda-ub", 1)}
print("RESULT " + json.dumps({k: run(*v) for k, v in RUNS.items()}))
"""


@pytest.fixture(scope="module")
def multidevice_runs():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = _serial.run([sys.executable, "-c", MULTIDEVICE, ROOT], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _assert_same(a, b):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(a["params"], b["params"], rtol=1e-4, atol=5e-6)


def test_one_device_equals_eight(multidevice_runs):
    """MGDA on the representation (the token grid): per-task gradients w.r.t. the
    features, the Gram matrix and its solve, then one backward pass -- 1 device == 8."""
    one, eight = multidevice_runs["one"], multidevice_runs["eight"]
    np.testing.assert_allclose(one["losses"], eight["losses"], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-4, atol=5e-6)
    assert eight["compiles"] == 1 and np.isfinite(one["losses"]).all()


def test_tiny_run_through_launch_then_restore_sample_and_tile(tmp_path):
    """The CPU transformer config, shrunk, trained through launch.py: each objective (bridge,
    residual regression, diffusion), a parameter-space gradient method, pmap on 2 devices,
    2 micro-batches per device, a checkpoint; then mg.restore, sampling and the tiling of
    restore_image on a photo larger than a tile (evaluation is off: it only samples)."""
    import mtlgen_jax as mg
    from mtlgen_jax import writers

    wd = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                         + cpu_devices.COLLECTIVE_TIMEOUT_FLAG)
    proc = _serial.run(
        [sys.executable, "launch.py", "--config", "configs/default.py:vit,tiny", "--workdir", wd,
         f"--config.dataset.data_dir={_data.shared()}", "--config.num_train_steps=2",
         "--config.tasks.names=denoise,inpaint,generate",
         "--config.weighting.name=pcgrad", "--config.parallel.backend=pmap",
         "--config.grad_accum_steps=2", "--config.eval.num_batches=0",
         "--config.eval.sample_steps=1", "--config.async_checkpoints=False"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = writers.read_metrics(wd)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2]
    assert all(np.isfinite(v) for k, v in train_rows[0].items() if k.startswith("loss"))

    run = mg.restore(wd)
    assert run.step == 2 and run.config.model.backbone == "vit"
    assert set(run.params["backbone"]) >= {"patch_embed", "block_0", "block_1", "task_embed"}
    photo = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    out = run.restore_image("denoise", photo)  # 16x16 tiles over a 20x28 photo
    assert out.shape == photo.shape and out.dtype == np.uint8
    samples = run.sample("generate", num_samples=2, rng=jax.random.key(0), steps=2)
    assert samples.shape == (2, 16, 16, 3) and samples.dtype == np.uint8
