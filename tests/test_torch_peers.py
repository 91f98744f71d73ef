"""The PyTorch peers of ``bench/train_step.py`` are the same models as the JAX ones.

Parameter counts equal to the JAX model's (as the benchmark asserts), the output
shape, and for the DiT peer the same function: the JAX parameters copied into the
torch modules give the same outputs. Skipped where torch is not installed (the
``bench`` extra).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench import common  # noqa: E402
from bench.peers import torch_dit, torch_unet  # noqa: E402
from mtlgen_jax import components, tasks  # noqa: E402


def _jax_params(config):
    """Shapes of the JAX model's parameters (nothing is computed)."""
    comp = components.build(config, common.synthetic_info(config))
    return comp, jax.eval_shape(
        lambda: components.init_params(comp.model, comp.info, jax.random.key(0)))


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _forward(peer, config, b=2):
    s = config.dataset.image_size
    x = torch.randn(b, 3, s, s)
    with torch.no_grad():
        return peer.model(x, x, torch.ones(b, 1, s, s), torch.rand(b), torch.arange(b) % peer.k)


@pytest.mark.parametrize("variant, module, expected", [
    ("", torch_unet, None),
    ("vit", torch_dit, 1_049_808),  # configs/default.py:vit's documented size
])
def test_peer_has_the_jax_parameter_count_and_output_shape(variant, module, expected):
    config = common.load_config("default", variant)
    _, params = _jax_params(config)
    peer = module.from_config(config)
    assert peer.num_params == _count(params)
    if expected:
        assert peer.num_params == expected
    s = config.dataset.image_size
    assert _forward(peer, config).shape == (2, 3, s, s)


def _load_dit(model, params, task_names) -> None:
    """Copies the JAX DiT's parameters into the torch peer (Dense kernels transposed)."""
    sd = {}

    def dense(prefix, p):
        sd[f"{prefix}.weight"] = np.asarray(p["kernel"]).T
        sd[f"{prefix}.bias"] = np.asarray(p["bias"])

    bb = params["backbone"]
    dense("backbone.time_embed.0", bb["time_embed_0"])
    dense("backbone.time_embed.2", bb["time_embed_1"])
    sd["backbone.task_embed.weight"] = np.asarray(bb["task_embed"]["embedding"])
    sd["backbone.patch_embed.weight"] = np.asarray(bb["patch_embed"]["kernel"]).transpose(
        3, 2, 0, 1)
    sd["backbone.patch_embed.bias"] = np.asarray(bb["patch_embed"]["bias"])
    dense("backbone.final_modulation", bb["final_modulation"])
    i = 0
    while f"block_{i}" in bb:
        blk, pre = bb[f"block_{i}"], f"backbone.blocks.{i}"
        dense(f"{pre}.adaLN_modulation", blk["adaLN_modulation"])
        for name in ("qkv", "proj"):
            dense(f"{pre}.attn.{name}", blk["attn"][name])
        for name in ("fc1", "fc2"):
            dense(f"{pre}.mlp.{name}", blk["mlp"][name])
        i += 1
    for k, task in enumerate(task_names):
        head = params[f"head_{task}"]
        sd[f"heads.{k}.norm.weight"] = np.asarray(head["norm"]["scale"])
        sd[f"heads.{k}.norm.bias"] = np.asarray(head["norm"]["bias"])
        dense(f"heads.{k}.out", head["out"])
    tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=True)
    assert not missing and not unexpected


def test_dit_peer_computes_the_jax_function():
    config = common.load_config("default", "vit,tiny")
    config.model.num_heads = 2  # the head split matters: more than one head
    comp, shapes = _jax_params(config)
    # Random values everywhere: at init adaLN-Zero makes every block the identity, which
    # would hide a wrong attention or MLP.
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(1)
    params = jax.tree.unflatten(treedef, [0.3 * rng.standard_normal(x.shape, np.float32)
                                          for x in leaves])
    peer = torch_dit.from_config(config)
    _load_dit(peer.model, params, peer.names)

    b, s = 4, config.dataset.image_size
    x = rng.normal(size=(b, s, s, 3)).astype(np.float32)
    cond = rng.normal(size=(b, s, s, 3)).astype(np.float32)
    mask = (rng.random((b, s, s, 1)) > 0.5).astype(np.float32)
    t = rng.random(b).astype(np.float32)
    task_id = np.arange(b, dtype=np.int32) % len(peer.names)
    want = jax.jit(comp.model.apply)({"params": params}, jnp.asarray(x),
                                     tasks.Condition(image=jnp.asarray(cond),
                                                     mask=jnp.asarray(mask)),
                                     jnp.asarray(t), jnp.asarray(task_id))
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        got = peer.model(nchw(x), nchw(cond), nchw(mask), torch.from_numpy(t),
                         torch.from_numpy(task_id).long())
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), np.asarray(want),
                               rtol=1e-5, atol=1e-5)  # GELU erf vs tanh: 2e-4
