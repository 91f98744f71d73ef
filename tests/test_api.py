"""The notebook API and the eval/sample modes, on a checkpoint written with 8 devices."""

import os
import sys

import _data
import _serial
import chex
import jax
import numpy as np
import pytest

import mtlgen_jax as mg
from mtlgen_jax import cpu_devices, data

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, devices=1, timeout=600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
               + cpu_devices.COLLECTIVE_TIMEOUT_FLAG,
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = _serial.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env, devices=devices,
                       capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny digits run trained on 8 simulated devices (a subprocess)."""
    root = tmp_path_factory.mktemp("api")
    wd = str(root / "run")
    launch("--config", "configs/digits.py:tiny", "--workdir", wd,
           f"--config.dataset.data_dir={_data.shared()}", "--config.num_train_steps=2",
           "--config.tasks.names=generate,inpaint,denoise", "--config.eval.sample_steps=1",
           "--config.eval.batch_size=8", "--config.batch_size=8", devices=8)
    return wd


@pytest.fixture(scope="module")
def run(workdir):
    return mg.restore(workdir)


def test_restore_on_one_device(run):
    assert jax.device_count() == 1
    assert run.step == 2
    assert run.tasks == ("generate", "inpaint", "denoise")
    assert run.config.dataset.name == "digits"
    assert set(run.params) == {"backbone", "head_generate", "head_inpaint", "head_denoise"}
    raw = mg.restore(run.workdir, ema=False)
    leaves = zip(jax.tree.leaves(run.params), jax.tree.leaves(raw.params))
    assert any(not np.allclose(a, b) for a, b in leaves)  # EMA differs from raw params


def test_sample_shapes_and_determinism(run):
    it = data.create_iterator(run.config.dataset, "test", batch_size=4, seed=0, shuffle=False)
    images = next(it)["image"]
    key = jax.random.key(3)
    cond = run.degrade("inpaint", images, key)
    a = run.sample("inpaint", condition=cond, rng=key, steps=2)
    b = run.sample("inpaint", condition=cond, rng=key, steps=2)
    chex.assert_shape(a, (4, 8, 8, 1))
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Without steps/sampler/eta: the run's evaluation settings (what its metrics measured).
    steps, ev = run.config.eval.sample_steps, run.config.diffusion
    at_eval = run.sample("inpaint", condition=cond, rng=key, steps=steps, sampler=ev.sampler,
                         eta=ev.eta)
    np.testing.assert_array_equal(run.sample("inpaint", condition=cond, rng=key), at_eval)
    # A task's own sample_steps wins over eval.sample_steps (and an explicit steps= over it).
    own = mg.restore(run.workdir, overrides={"tasks.inpaint.sample_steps": 2})
    np.testing.assert_array_equal(own.sample("inpaint", condition=cond, rng=key), a)
    np.testing.assert_array_equal(own.sample("inpaint", condition=cond, rng=key, steps=steps),
                                  at_eval)
    assert not np.array_equal(a, at_eval)  # 2 steps and 1 step differ, so the checks bite
    known = np.asarray(cond.mask[..., 0]) > 0
    np.testing.assert_array_equal(a[..., 0][known], images[..., 0][known])  # pasted back
    g = run.sample("generate", labels=np.arange(3), rng=key, steps=2)
    chex.assert_shape(g, (3, 8, 8, 1))
    u = run.sample("generate", num_samples=2, rng=key, steps=2, guidance=0.0)
    chex.assert_shape(u, (2, 8, 8, 1))


def test_bad_inputs(run, workdir, tmp_path):
    images = np.zeros((2, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="not one this model was trained on"):
        run.degrade("colorize", images, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        run.degrade("inpaint", np.zeros((2, 16, 16, 3), np.uint8), jax.random.key(0))
    with pytest.raises(ValueError, match="uint8"):
        run.degrade("inpaint", images.astype(np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match="labels must be in"):
        run.sample("generate", labels=[3, 10])
    with pytest.raises(ValueError, match="needs a condition"):
        run.sample("inpaint")
    with pytest.raises(ValueError, match="sampler"):
        run.sample("generate", num_samples=1, sampler="euler")
    with pytest.raises(FileNotFoundError, match=r"steps present: \[2\]"):
        mg.restore(workdir, step=7)
    with pytest.raises(FileNotFoundError, match="config.json"):
        os.makedirs(tmp_path / "empty")
        mg.restore(str(tmp_path / "empty"))


def test_eval_and_sample_modes(workdir):
    out = launch("--config", "configs/digits.py:tiny", "--workdir", workdir, "--mode", "sample",
                 "--sample_num=4", "--sample_steps=1")
    del out
    for task in ("generate", "inpaint", "denoise"):
        assert os.path.exists(os.path.join(workdir, "samples", f"{task}_sample_step2.png"))
    proc = launch("--config", "configs/digits.py:tiny", "--workdir", workdir, "--mode", "eval")
    assert "inpaint" in proc.stdout and "psnr" in proc.stdout


def test_eval_batch_that_does_not_divide_the_devices_is_padded_not_refused(workdir):
    """Digits' real eval batch (100) on 8 devices: padded to 104 and the padding dropped;
    every condition and sample is keyed by its row, so the metrics equal 1 device's."""
    from mtlgen_jax import writers

    launch("--config", "configs/digits.py:tiny", "--workdir", workdir, "--mode", "eval",
           "--config.eval.batch_size=100", "--config.eval.num_batches=1",
           "--config.eval.sample_steps=2", devices=8)
    mg.cli.eval_workdir(workdir, overrides={"eval.batch_size": 100, "eval.num_batches": 1,
                                            "eval.sample_steps": 2})  # here: 1 device
    rows = [r for r in writers.read_metrics(workdir, latest=False)
            if "eval/inpaint/psnr" in r][-2:]
    assert rows[0].keys() == rows[1].keys()
    for key in rows[0]:
        if key.startswith("eval/") and "accuracy" not in key and "frechet" not in key:
            np.testing.assert_allclose(rows[0][key], rows[1][key], rtol=1e-3, err_msg=key)
