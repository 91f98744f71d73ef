"""Restoring a user's photo: any size, tiles blended at every step, clear errors, and the
inference modes that hear (or refuse) command-line overrides."""

import os
import sys

import _data
import _serial
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import default
from mtlgen_jax import api, cli, components, parallel, tiling, train
from mtlgen_jax import workdir as workdir_lib
from mtlgen_jax.data import DatasetInfo
from mtlgen_jax.images import to_float, to_uint8
from mtlgen_jax.tasks.inpaint import FILLS, smooth_fill

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = "denoise,inpaint,super_resolve,colorize"


def fresh_run(objective="regression", residual=True, self_ensemble=False, **task_params):
    """An untrained Run (no checkpoint): with residual prediction its heads are zero,
    so every task returns its baseline -- an identity model for the tiler."""
    cfg = default.get_config("tiny")
    cfg.tasks.names = TASKS
    cfg.eval.self_ensemble = self_ensemble
    for t in TASKS.split(","):
        cfg.tasks[t] = default.with_objective(cfg.tasks[t], objective, residual=residual,
                            **{"loss": "l2", **task_params})
    info = DatasetInfo("synthetic", None, 3, 16, 64, 8, "train", "test")
    comp = components.build(cfg, info)
    par = parallel.Parallel(devices=jax.local_devices())
    params = jax.jit(lambda: components.init_params(comp.model, info, jax.random.key(0)),
                     out_shardings=par.replicated)()
    return api.Run(cfg, comp, params, 0, "<memory>", par)


def photo(h=50, w=75, c=3, seed=0):
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 80 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 7.0)[..., None]
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w, c))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_tiler_split_then_merge_is_the_identity():
    img = np.random.default_rng(0).standard_normal((50, 75, 3)).astype(np.float32)
    t = tiling.Tiler(50, 75, 16, 4)
    assert t.num == 4 * 6  # starts every 12 px, the last flush with the edge
    np.testing.assert_allclose(t.merge(t.split(img)), img, atol=1e-5)
    assert tiling.window(16, 4).min() > 0  # every pixel has weight


def test_any_size_comes_back_at_the_size_a_user_expects():
    run = fresh_run()
    img = photo()
    out = run.restore_image("denoise", img)
    assert out.shape == (50, 75, 3) and out.dtype == np.uint8
    # Zero heads + residual: the identity through 24 blended tiles, to 1 LSB.
    assert np.abs(out.astype(int) - img).max() <= 1
    assert run.restore_image("super_resolve", img).shape == (100, 150, 3)
    gray = img.mean(-1).astype(np.uint8)
    colored = run.restore_image("colorize", gray)
    assert colored.shape == (50, 75, 3)
    assert np.abs(colored.astype(int) - gray[..., None]).max() <= 1  # the gray baseline
    assert run.restore_image("denoise", img[:9, :13]).shape == (9, 13, 3)  # padded, cropped


def test_inpainting_keeps_every_known_pixel_and_fills_a_hole_larger_than_a_tile():
    run = fresh_run(objective="diffusion", residual=False)
    img = photo()
    mask = np.zeros((50, 75), bool)
    mask[5:45, 10:60] = True  # 40 x 50: larger than the 16 x 16 tile
    out = run.restore_image("inpaint", img, mask=mask, steps=3)
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert out[mask].std() > 0  # the hole is filled by the model, not left black
    # Residual prediction with a zero head returns the task's start: the smooth fill of
    # the WHOLE image (coarse to fine), not a fill of each tile on its own.
    zero_run = fresh_run()
    zero = zero_run.restore_image("inpaint", img, mask=mask)
    known = jnp.asarray(~mask[None, ..., None], jnp.float32)
    fill = zero_run.config.tasks.inpaint["fill"]  # the default's: 'biharmonic'
    whole = smooth_fill(to_float(jnp.asarray(img))[None] * known, known,
                        biharmonic_iters=FILLS[fill])
    np.testing.assert_allclose(zero.astype(np.float32), np.asarray(to_uint8(whole))[0], atol=1)


def test_stochastic_sampler_leaves_no_seam():
    """Mean absolute step across tile borders vs across other columns: a seam would
    make the border steps stand out (here tiles start every 12 px)."""
    run = fresh_run(objective="diffusion", residual=False)
    smooth = np.tile(np.linspace(60, 190, 75).astype(np.uint8)[None, :, None], (50, 1, 3))
    out = run.restore_image("denoise", smooth, steps=3, eta=1.0).astype(float)
    steps = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))  # [74]: step between x, x+1
    borders = [x - 1 for x in tiling.tile_starts(75, 16, 12)[1:]]
    inner = [x for x in range(74) if x not in borders]
    assert steps[borders].mean() < 1.5 * steps[inner].mean()


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="generate"), "not one this model was trained on"),
    (dict(image=np.zeros((20, 20, 3), np.float32)), "dtype float32"),
    (dict(image=np.zeros((20, 20), np.uint8)), "takes RGB images; this one is gray"),
    (dict(task="inpaint"), "needs mask="),
    (dict(task="inpaint", mask=np.ones((10, 10), bool)), r"mask is \(10, 10\) but the image"),
    (dict(mask=np.ones((20, 20), bool)), "takes no mask"),
])
def test_restore_image_bad_input(kwargs, match):
    run = fresh_run()
    args = dict(task="denoise", image=np.zeros((20, 20, 3), np.uint8), mask=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run.restore_image(args.pop("task"), args.pop("image"), **args)


def test_overrides_that_may_change_after_training_and_those_that_may_not():
    cfg = default.get_config("tiny")
    out = workdir_lib.apply_inference_overrides(
        cfg, {"dataset.name": "folder", "dataset.folder": "/photos", "eval.sample_steps": 7},
        mode="eval")
    assert (out.dataset.name, out.dataset.folder, out.eval.sample_steps) == (
        "folder", "/photos", 7)
    assert cfg.dataset.name == "photo_patches"  # the run's config is not touched
    for key in ("model.width", "dataset.image_size", "dataset.channels", "tasks.names",
                "tasks.denoise.objective", "tasks.generate.sample_steps"):  # not a task here
        with pytest.raises(ValueError, match=rf"--config.{key} cannot change after training"):
            workdir_lib.apply_inference_overrides(cfg, {key: 1}, mode="eval")
    # A task's own evaluation step count may change; its other parameters stay.
    out = workdir_lib.apply_inference_overrides(cfg, {"tasks.denoise.sample_steps": 8},
                                                mode="sample")
    assert out.tasks.denoise.sample_steps == 8
    assert out.tasks.denoise.objective == cfg.tasks.denoise.objective == "bridge"
    assert "sample_steps" not in cfg.tasks.denoise


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny photo run (2 steps) on disk, for the command line."""
    root = tmp_path_factory.mktemp("restore")
    c = default.get_config("tiny")
    c.dataset.data_dir = _data.shared()
    c.tasks.names = TASKS
    c.num_train_steps = 2
    c.eval.num_batches = 0
    train.Trainer(c, str(root / "run")).run()
    return root


def launch(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    return _serial.run([sys.executable, "launch.py", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)


def test_mode_restore_writes_the_photo_and_refuses_bad_input(trained):
    run_dir, src = trained / "run", trained / "in.png"
    Image.fromarray(photo(30, 41)).save(src)
    mask = np.zeros((30, 41), np.uint8)
    mask[5:20, 5:30] = 255
    Image.fromarray(mask).save(trained / "mask.png")
    out = trained / "out.png"
    proc = launch("--workdir", run_dir, "--mode", "restore", "--task", "inpaint",
                  "--input", src, "--mask", trained / "mask.png", "--output", out,
                  "--steps", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = np.asarray(Image.open(out))
    assert restored.shape == (30, 41, 3)
    np.testing.assert_array_equal(restored[mask == 0], photo(30, 41)[mask == 0])
    for extra, match in [
        (("--task", "denoise", "--input", trained / "nope.png", "--output", out),
         "--input=.*nope.png: no such file"),
        (("--task", "denoise", "--input", src), "--mode restore needs --output"),
        (("--task", "denoise", "--input", src, "--output", trained / "no_dir" / "o.png"),
         "does not exist or is not writable"),
        (("--task", "inpaint", "--input", src, "--mask", trained / "in.png", "--output",
          trained / "x.txt"), "name an image file"),
        (("--task", "generate", "--input", src, "--output", out),
         "--task=generate is not one this run was trained on"),
    ]:
        proc = launch("--workdir", run_dir, "--mode", "restore", *extra)
        assert proc.returncode != 0 and __import__("re").search(match, proc.stderr), (
            match, proc.stderr[-2000:])


def test_mode_eval_hears_a_folder_override_and_refuses_a_model_one(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(photo(40, 40, seed=i)).save(folder / f"p{i}.png")
    results = cli.eval_workdir(str(trained / "run"), overrides={
        "dataset.name": "folder", "dataset.folder": str(folder), "dataset.test_fraction": 0.5,
        "dataset.data_dir": str(tmp_path / "tfds"), "eval.num_batches": 1,
        "eval.batch_size": 4, "eval.sample_steps": 1})
    assert np.isfinite(results["eval/denoise/psnr"])
    proc = launch("--config", "configs/default.py:tiny", "--workdir", trained / "run",
                  "--mode", "eval", "--config.model.width=16")
    assert proc.returncode != 0 and "--config.model.width cannot change after training" in \
        proc.stderr
