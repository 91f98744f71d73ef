"""End to end: train a few steps on each dataset, checkpoint, resume, evaluate; bad input."""

import json
import os
import subprocess
import sys

import _data
import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import mtlgen_jax as mg
from configs import default
from mtlgen_jax import api, train, writers

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir():
    return _data.shared()


def tiny_config(data_dir, **overrides):
    c = default.get_config("tiny")
    c.dataset.data_dir = data_dir
    c.num_train_steps = 2
    c.checkpoint_every_steps = 2
    c.eval_every_steps = 100
    c.eval.sample_steps = 1
    c.eval.batch_size = 8
    c.update_from_flattened_dict(overrides)
    return c


def test_train_then_resume_photo_patches(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir)
    trainer = train.Trainer(cfg, workdir)
    state = trainer.run()
    assert trainer.step_fn._cache_size() == 1  # one compilation for the whole run
    assert int(state.step) == 2
    rows = writers.read_metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2]
    for name in ("denoise", "inpaint", "super_resolve", "colorize"):
        assert np.isfinite(train_rows[0][f"loss/{name}"])
        assert 0.0 < train_rows[0][f"weight/{name}"] < 4.0  # famo: weights sum to K = 4
        assert os.path.exists(os.path.join(workdir, "samples", f"{name}_step2.png"))
    assert any("eval/denoise/psnr" in r for r in rows)
    assert os.path.isdir(os.path.join(workdir, "tensorboard"))
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 2

    # A second run with more steps resumes from the checkpoint at step 2.
    cfg2 = tiny_config(data_dir, num_train_steps=4)
    resumed = train.Trainer(cfg2, workdir)
    restored, position = resumed.initial_state()
    assert int(restored.step) == 2 and position == 2
    chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state.params))
    chex.assert_trees_all_equal(jax.device_get(restored.opt_state),
                                jax.device_get(state.opt_state))
    final = resumed.run()
    assert int(final.step) == 4
    steps = [r["step"] for r in writers.read_metrics(workdir) if "loss" in r]
    assert steps == [2, 4]  # appended, never rewritten
    assert sorted(resumed.ckpt.all_steps()) == [2, 4]

    # The notebook API restores the same parameters that training saved.
    run = api.restore(workdir, ema=False)
    assert run.step == 4
    chex.assert_trees_all_close(run.params, jax.device_get(final.params))


def test_digits_class_conditional_generation(data_dir, tmp_path):
    cfg = tiny_config(data_dir, **{"dataset.name": "digits", "dataset.image_size": 8,
                                   "tasks.names": "generate,denoise,inpaint"})
    state = train.train_and_evaluate(cfg, str(tmp_path / "digits"))
    assert int(state.step) == 2
    rows = writers.read_metrics(str(tmp_path / "digits"))
    ev = [r for r in rows if "eval/generate/accuracy" in r]
    assert ev and 0.0 <= ev[0]["eval/generate/accuracy"] <= 1.0
    assert ev[0]["eval/generate/accuracy_real"] > 0.9  # the judge itself works


def test_mock_catalog_dataset(tmp_path):
    """A TFDS catalog dataset through ``tfds.testing.mock_data``, asynchronous saves on.

    The evaluation runs after training, not inside it: mock_data's ``as_dataset`` swaps
    the process's file system for a fake one (tfds ``MockFs``) while it builds the
    evaluation dataset, and orbax's background thread, still finalising the final
    checkpoint, then wrote into that fake root (ENOENT on ``array_metadatas``). A test
    artifact: no real run mocks its file system."""
    cfg = tiny_config(str(tmp_path / "tfds"), **{"dataset.name": "mnist",
                                                 "tasks.names": "denoise,inpaint",
                                                 "eval.num_batches": 0})
    with tfds.testing.mock_data(num_examples=32):
        state = train.train_and_evaluate(cfg, str(tmp_path / "mnist"))
        results = mg.restore(str(tmp_path / "mnist")).evaluate(num_batches=1)
    assert int(state.step) == 2
    assert {"eval/denoise/psnr", "eval/inpaint/psnr"} <= set(results)


@pytest.mark.parametrize("overrides,match", [
    ({"dataset.name": "no_such_dataset"}, "no_such_dataset"),
    ({"tasks.names": "denoise,deblur"}, "deblur"),
    ({"dataset.image_size": 10, "model.channel_mult": (1, 2, 2)}, "divisible by 4"),
    ({"weighting.name": "magic"}, "magic"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"batch_size": 3}, "smaller than the number of tasks"),
])
def test_bad_config_is_refused_before_compiling(data_dir, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train.Trainer(tiny_config(data_dir, **overrides), str(tmp_path / "bad"))


def test_unwritable_workdir(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be created"):
        train.Trainer(tiny_config(data_dir), str(blocker / "run"))


def test_incompatible_resume_is_refused_and_keeps_checkpoints(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(data_dir), workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(ValueError, match="model.*cannot be resumed"):
        train.Trainer(tiny_config(data_dir, **{"model.width": 16}), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["width"] == 8


def test_mistyped_config_key_names_the_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config", "configs/default.py:tiny",
         "--workdir", str(tmp_path / "x"), "--config.modle.width=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "modle" in proc.stderr
