"""Adding a task is one file: a task registered here trains, evaluates and samples
through the normal paths (Trainer, evaluation, notebook API, --mode sample, Δm's
primary metric) with no edit anywhere else."""

import os

import _data
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mtlgen_jax import api, cli, tasks, train, writers
from mtlgen_jax.experiments import delta_m


@tasks.register
class Unflip(tasks.Task):
    """Condition: the image mirrored left-right; target: the image itself."""

    name = "unflip_test"
    metrics = ("psnr",)

    def degrade(self, images, rng):
        del rng
        return self.condition(images[:, :, ::-1])

    def baseline(self, cond):
        return cond.image


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("plugin") / "run")
    c = default.get_config("tiny")
    c.dataset.data_dir = _data.shared()
    c.tasks.names = "denoise,unflip_test"
    c.num_train_steps = 2
    c.eval.sample_steps = 1
    train.Trainer(c, work).run()
    return work


def test_trains_and_evaluates_with_its_own_metrics(workdir):
    rows = writers.read_metrics(workdir)
    assert np.isfinite([r["loss/unflip_test"] for r in rows if "loss" in r]).all()
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)][-1]
    ours = {k for k in evals if k.startswith("eval/unflip_test/")}
    # Only the metric it declared (no ssim), beside its baseline; not ill-posed: no diversity.
    assert ours == {"eval/unflip_test/psnr", "eval/unflip_test/psnr_baseline"}
    assert os.path.exists(os.path.join(workdir, "samples", "unflip_test_step2.png"))
    reference = {k[len("eval/"):]: v for k, v in evals.items() if k.startswith("eval/")}
    assert delta_m.primary_metrics(["denoise", "unflip_test"], reference) == {
        "denoise/psnr": True, "unflip_test/psnr": True}


def test_samples_from_the_notebook_and_the_command_line(workdir):
    run = api.restore(workdir)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    cond = run.degrade("unflip_test", images, jax.random.key(0))
    np.testing.assert_allclose(cond.image, jnp.asarray(images[:, :, ::-1]) / 127.5 - 1.0)
    out = run.sample("unflip_test", condition=cond, rng=jax.random.key(1), steps=2)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    paths = cli.sample_workdir(workdir, num=2, steps=1)
    assert any(p.endswith("unflip_test_sample_step2.png") and os.path.exists(p) for p in paths)
