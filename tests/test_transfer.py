"""``--config.init_from``: a fresh run starts from another run's EMA parameters."""

import _data
import chex
import jax
import numpy as np
import pytest

from configs import default
from mtlgen_jax import api, train


def config(data_dir, **kw):
    c = default.get_config("tiny")
    c.dataset.data_dir = str(data_dir)
    c.num_train_steps = 2
    c.eval.num_batches = 0
    c.tasks.names = "denoise,inpaint"
    c.update_from_flattened_dict(kw)
    return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    data_dir = _data.shared()
    train.Trainer(config(data_dir), str(root / "src")).run()
    return str(root / "src"), data_dir


def host_params(trainer):
    state, _ = trainer.initial_state()
    return jax.device_get(trainer.par.unreplicate(state).params)


def test_backbone_and_shared_heads_are_copied_new_task_parts_stay_fresh(source, tmp_path):
    src, data_dir = source
    ema = jax.device_get(api.restore(src).params)
    kw = {"tasks.names": "denoise,colorize"}
    fresh = host_params(train.Trainer(config(data_dir, **kw), str(tmp_path / "fresh")))
    got = host_params(train.Trainer(config(data_dir, init_from=src, **kw), str(tmp_path / "t")))
    for name in ("head_denoise",):
        chex.assert_trees_all_equal(got[name], ema[name])
    chex.assert_trees_all_equal(got["head_colorize"], fresh["head_colorize"])
    embed = got["backbone"]["task_embed"]["embedding"]
    np.testing.assert_array_equal(embed[0], ema["backbone"]["task_embed"]["embedding"][0])
    np.testing.assert_array_equal(embed[1], fresh["backbone"]["task_embed"]["embedding"][1])
    rest = {k: v for k, v in got["backbone"].items() if k != "task_embed"}
    chex.assert_trees_all_equal(rest, {k: v for k, v in ema["backbone"].items()
                                       if k != "task_embed"})


def test_frozen_backbone_is_bitwise_unchanged_after_steps(source, tmp_path):
    src, data_dir = source
    ema = jax.device_get(api.restore(src).params)
    trainer = train.Trainer(config(data_dir, init_from=src, init_from_freeze="backbone",
                                   **{"tasks.names": "denoise,colorize"}), str(tmp_path / "z"))
    state = jax.device_get(trainer.par.unreplicate(trainer.run()))
    assert int(state.step) == 2
    rest = {k: v for k, v in state.params["backbone"].items() if k != "task_embed"}
    chex.assert_trees_all_equal(rest, {k: v for k, v in ema["backbone"].items()
                                       if k != "task_embed"})
    assert not np.array_equal(state.params["head_denoise"]["Conv_0"]["kernel"],
                              ema["head_denoise"]["Conv_0"]["kernel"])  # heads train


def test_shape_mismatch_and_bad_source_are_refused(source, tmp_path):
    src, data_dir = source
    wide = config(data_dir, init_from=src, **{"model.width": 16})
    with pytest.raises(ValueError, match=r"init_from: parameter backbone/\S+ has shape"):
        train.Trainer(wide, str(tmp_path / "w")).initial_state()
    with pytest.raises(ValueError, match="not a run directory"):
        train.Trainer(config(data_dir, init_from=str(tmp_path / "nothing")), str(tmp_path / "n"))
    with pytest.raises(ValueError, match="init_from_freeze='backbone' needs"):
        train.Trainer(config(data_dir, init_from_freeze="backbone"), str(tmp_path / "f"))
    with pytest.raises(ValueError, match="init_from_freeze='all'"):
        train.Trainer(config(data_dir, init_from=src, init_from_freeze="all"), str(tmp_path / "a"))


def test_transfer_experiment_configs_and_steps_to_reach():
    from mtlgen_jax.experiments import transfer

    base = default.get_config()
    cfgs = transfer.run_configs(base, "colorize", 250)
    assert cfgs["source"].tasks.names == "denoise,inpaint,super_resolve"
    assert cfgs["scratch"].tasks.names == cfgs["transfer"].tasks.names == "colorize"
    assert cfgs["scratch"].eval_every_steps == 250
    assert cfgs["source"].eval_every_steps == base.eval_every_steps  # the config's own
    points = [(250, 17.0), (500, 18.2), (750, 19.1), (1000, 18.9)]
    assert transfer.steps_to_reach(points, 19.0) == 750
    assert transfer.steps_to_reach(points, 19.5) is None
    with pytest.raises(ValueError, match="generate"):
        transfer.run_configs(default.get_config(), "generate", 250)
