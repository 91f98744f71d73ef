"""Each task's degrade against hand-computed cases, and its bad-input errors."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtlgen_jax import metrics as metrics_lib
from mtlgen_jax import tasks
from mtlgen_jax.tasks.base import Condition
from mtlgen_jax.tasks.colorize import luminance
from mtlgen_jax.tasks.inpaint import box_holes, half_holes, smooth_fill, stroke_holes
from mtlgen_jax.tasks.super_resolve import downsample, upsample


def make(name, channels=3, size=16, num_classes=0, **params):
    return tasks.get_class(name)(channels=channels, image_size=size, num_classes=num_classes,
                                 **params)


def images(b=8, size=16, c=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (b, size, size, c), minval=-1, maxval=1)


def test_registry_has_the_five_tasks():
    own = {n for n in tasks.names() if tasks.get_class(n).__module__.startswith("mtlgen_jax.")}
    assert own == {"colorize", "denoise", "generate", "inpaint", "super_resolve"}


def test_denoise_noise_statistics():
    t = make("denoise", sigma_min=0.2, sigma_max=0.2)
    x = jnp.zeros((64, 16, 16, 3))
    cond = jax.jit(t.degrade)(x, jax.random.key(1))
    noise = np.asarray(cond.image - x)
    assert abs(noise.mean()) < 0.01
    assert abs(noise.std() - 0.2) < 0.01  # clipping at +-1 is 5 sigma away: negligible
    np.testing.assert_array_equal(cond.mask, 0.0)


def test_denoise_sigma_range_per_example():
    t = make("denoise", sigma_min=0.05, sigma_max=0.5)
    cond = jax.jit(t.degrade)(jnp.zeros((256, 8, 8, 1)), jax.random.key(2))
    stds = np.asarray(cond.image).reshape(256, -1).std(axis=1)
    assert stds.min() > 0.02 and stds.max() < 0.6
    assert stds.max() - stds.min() > 0.3  # a range of strengths, not one value


def test_inpaint_box_area_bounds():
    size = 32
    holes = np.asarray(box_holes(jax.random.key(0), 200, size))
    area = holes.sum(axis=(1, 2))
    assert area.min() >= (size // 4) ** 2 and area.max() <= (size // 2) ** 2
    rows, cols = holes.any(axis=2).sum(1), holes.any(axis=1).sum(1)
    np.testing.assert_array_equal(area, rows * cols)  # a rectangle


def test_inpaint_half_is_exactly_half():
    holes = np.asarray(half_holes(jax.random.key(0), 50, 16))
    np.testing.assert_array_equal(holes.sum(axis=(1, 2)), 128)


def test_inpaint_stroke_segment_hand_case():
    holes = np.asarray(stroke_holes(jax.random.key(3), 20, 32))
    frac = holes.mean(axis=(1, 2))
    assert (frac > 0).all() and (frac < 0.9).all()


def test_inpaint_condition_loss_mask_paste_and_baseline():
    t = make("inpaint", mask_kinds="box")
    x = images()
    cond = jax.jit(t.degrade)(x, jax.random.key(4))
    known = np.asarray(cond.mask)
    assert set(np.unique(known)) <= {0.0, 1.0}
    np.testing.assert_allclose(cond.image, x * known)
    np.testing.assert_array_equal(t.loss_mask(cond), 1.0 - known)
    guess = jnp.full_like(x, 0.5)
    pasted = np.asarray(t.postprocess(guess, cond))
    np.testing.assert_allclose(pasted, np.where(known > 0, x, 0.5), atol=1e-6)
    base = np.asarray(t.baseline(cond))
    mean = (np.asarray(x) * known).sum((1, 2)) / known.sum((1, 2))
    hole = known[..., 0] == 0
    for i in range(x.shape[0]):
        filled = base[i][hole[i]]  # [n_hole, C]
        np.testing.assert_allclose(filled, np.broadcast_to(mean[i], filled.shape), atol=1e-5)


@pytest.mark.parametrize("h, w", [(16, 16), (15, 21)])
def test_smooth_fill_keeps_known_pixels_and_is_exact_on_harmonic_images(h, w):
    """A linear ramp is harmonic: the fill of a box hole converges to it. Known pixels
    are untouched; a constant image is filled with its constant; a pixel whose image
    is unknown everywhere gets zeros, not NaN."""
    yy, xx = np.meshgrid(np.linspace(-0.8, 0.8, h), np.linspace(-0.5, 0.7, w), indexing="ij")
    ramp = jnp.asarray(np.stack([0.6 * yy + 0.3 * xx, -xx, 0.2 + 0 * yy], -1)[None],
                       jnp.float32)
    known = np.ones((1, h, w, 1), np.float32)
    known[:, 4:11, 5:12] = 0.0
    known = jnp.asarray(known)
    filled = np.asarray(smooth_fill(ramp * known, known, iters=400))
    np.testing.assert_array_equal(filled[known[..., 0] > 0], np.asarray(ramp)[known[..., 0] > 0])
    np.testing.assert_allclose(filled, ramp, atol=2e-3)
    mean_fill = make("inpaint", size=16).baseline(Condition(image=ramp * known, mask=known))
    mean_err = np.abs(np.asarray(mean_fill) - np.asarray(ramp)).max()
    assert mean_err > 0.1  # the mean fill is far off on the same hole
    np.testing.assert_allclose(smooth_fill(jnp.full((1, h, w, 3), 0.4) * known, known), 0.4,
                               atol=1e-5)
    empty = smooth_fill(jnp.zeros((2, h, w, 3)), jnp.zeros((2, h, w, 1)))
    assert np.isfinite(np.asarray(empty)).all() and not np.asarray(empty).any()


def test_biharmonic_fill_is_exact_on_a_thin_plate_where_the_harmonic_fill_is_not():
    """x^2 + y^2 - x y has a constant Laplacian (harmonic fill is wrong inside the hole)
    and zero squared Laplacian: the biharmonic sweeps converge to it on an interior hole
    (the 13-point stencil reaches only hole and known pixels there). Known pixels are
    untouched; the damped sweeps keep a constant image constant."""
    n = 24
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    plate = jnp.asarray((0.5 * (xx**2 + yy**2 - xx * yy))[None, ..., None], jnp.float32)
    known = np.ones((1, n, n, 1), np.float32)
    known[:, 7:16, 6:17] = 0.0
    known = jnp.asarray(known)
    hole = np.asarray(known[..., 0]) < 0.5
    harmonic = np.asarray(smooth_fill(plate * known, known, iters=400))
    biharmonic = np.asarray(smooth_fill(plate * known, known, biharmonic_iters=8000))
    np.testing.assert_array_equal(biharmonic[~hole], np.asarray(plate)[~hole])
    harmonic_err = np.abs(harmonic - np.asarray(plate))[hole].max()
    biharmonic_err = np.abs(biharmonic - np.asarray(plate))[hole].max()
    assert harmonic_err > 0.1 and biharmonic_err < 1e-4, (harmonic_err, biharmonic_err)
    const = smooth_fill(jnp.full((1, n, n, 2), -0.3) * known, known, biharmonic_iters=64)
    np.testing.assert_allclose(const, -0.3, atol=1e-5)
    t = make("inpaint", size=n, fill="biharmonic")
    np.testing.assert_allclose(t.start(Condition(image=plate * known, mask=known)),
                               smooth_fill(plate * known, known, biharmonic_iters=128))


def test_super_resolve_shapes_and_block_constant_image():
    blocks = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    x = jnp.repeat(jnp.repeat(blocks, 4, axis=1), 4, axis=2)  # [2, 16, 16, 3]
    np.testing.assert_allclose(downsample(x, 4), blocks, atol=1e-6)
    assert upsample(blocks, 4).shape == (2, 16, 16, 3)
    t = make("super_resolve", factor=2)
    cond = t.degrade(images(), jax.random.key(0))
    chex.assert_shape(cond.image, (8, 16, 16, 3))
    const = jnp.full((1, 16, 16, 3), 0.3)
    np.testing.assert_allclose(t.degrade(const, jax.random.key(0)).image, const, atol=1e-5)


def test_colorize_luminance_formula():
    rgb = jnp.asarray([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(luminance(rgb)[:, 0], [0.299, 0.587, 0.114, 0.5], atol=1e-6)
    t = make("colorize")
    x = images()
    cond = t.degrade(x, jax.random.key(0))
    np.testing.assert_allclose(cond.image[..., 0], cond.image[..., 2])
    np.testing.assert_allclose(cond.image[..., :1], luminance(x), atol=1e-6)


def test_generate_labels_dropout_and_unconditional():
    t = make("generate", num_classes=10, label_dropout=0.25)
    labels = jnp.arange(4000) % 10
    out = np.asarray(t.model_labels(labels, jax.random.key(0), train=True))
    dropped = out == 10
    assert abs(dropped.mean() - 0.25) < 0.03
    np.testing.assert_array_equal(out[~dropped], np.asarray(labels)[~dropped])
    np.testing.assert_array_equal(t.model_labels(labels, jax.random.key(0), train=False), labels)
    u = make("generate", num_classes=0)
    assert not u.class_conditional
    np.testing.assert_array_equal(u.model_labels(labels, jax.random.key(0), train=True), 0)


@pytest.mark.parametrize("name,params,match", [
    ("denoise", dict(weight=0.0), "weight"),
    ("denoise", dict(sigma_min=0.5, sigma_max=0.1), "sigma_min"),
    ("inpaint", dict(mask_kinds="box,circle"), "circle"),
    ("inpaint", dict(fill="cubic"), "fill='cubic'"),
    ("super_resolve", dict(factor=3), "factor=3"),
    ("generate", dict(class_conditional=True), "no labels"),
    ("denoise", dict(objective="gan"), "objective"),
    ("denoise", dict(sigmaa=1), "sigmaa"),
    ("denoise", dict(objective="bridge", sample_steps=0), "sample_steps=0"),
    ("super_resolve", dict(objective="regression", residual=True, sample_steps=1),
     "one pass"),
])
def test_bad_task_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        make(name, **params)


def test_colorize_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        make("colorize", channels=1)


def test_create_all_order_and_unknown_names():
    cfg = ml_collections.ConfigDict({"names": "inpaint,denoise", "denoise": {"sigma_max": 0.3}})
    ts = tasks.create_all(cfg, channels=3, image_size=16, num_classes=0)
    assert [t.name for t in ts] == ["inpaint", "denoise"]
    assert ts[1].sigma_max == 0.3
    with pytest.raises(ValueError, match="known tasks"):
        tasks.create_all(ml_collections.ConfigDict({"names": "denoise,deblur"}), channels=3,
                         image_size=16, num_classes=0)


def test_condition_from_a_users_input_equals_degrade():
    """``condition`` (from a degraded photo) builds what ``degrade`` (from a clean one)
    builds: the noisy image, the low-resolution image (x factor smaller), the gray image
    (gray or RGB input), the image and its hole."""
    x, key = images(), jax.random.key(3)
    same = lambda a, b: chex.assert_trees_all_close(a, b, atol=1e-6)  # noqa: E731
    t = make("denoise")
    cond = t.degrade(x, key)
    same(t.condition(cond.image), cond)
    t = make("super_resolve", factor=2)
    assert t.scale == 2 and make("denoise").scale == 1
    same(t.condition(downsample(x, 2)), t.degrade(x, key))
    t = make("colorize")
    same(t.condition(x), t.degrade(x, key))
    same(t.condition(luminance(x)), t.degrade(x, key))
    t = make("inpaint")
    cond = t.degrade(x, key)
    hole = (1.0 - cond.mask).astype(bool)
    same(t.condition(x, mask=hole), cond)


def test_condition_refuses_what_a_task_does_not_take():
    x = images()
    with pytest.raises(ValueError, match="inpaint' needs a mask of the missing pixels"):
        make("inpaint").condition(x)
    with pytest.raises(ValueError, match="denoise' takes no mask"):
        make("denoise").condition(x, mask=jnp.zeros(x.shape[:-1] + (1,), bool))
    with pytest.raises(ValueError, match="generate' generates from nothing"):
        make("generate").condition(x)
    assert not tasks.get_class("generate").has_condition


def test_score_reads_the_tasks_metrics():
    """The default ``score`` reports each declared pixel metric, and the same for the
    baseline; inpainting's PSNR counts the hole only."""
    x, key = images(), jax.random.key(4)
    t = make("inpaint")
    cond = t.degrade(x, key)
    perfect_in_hole = cond.image * cond.mask + x * (1 - cond.mask)
    scores = t.score(perfect_in_hole, x, cond)
    assert set(scores) == {"psnr", "ssim", "psnr_baseline", "ssim_baseline"}
    np.testing.assert_allclose(scores["psnr"], 10 * np.log10(4 / 1e-10), rtol=1e-5)
    t = make("denoise")
    t.metrics = ("psnr",)  # a task that declares one metric is scored on it alone
    assert set(t.score(x, x, t.degrade(x, key))) == {"psnr", "psnr_baseline"}


def smooth_images(b=4, size=16):
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    base = np.stack([0.6 * xx, 0.5 * yy, 0.4 * xx * yy], -1)
    return jnp.asarray(np.stack([base * (1 - 0.2 * i) for i in range(b)]), jnp.float32)


def test_denoise_degrade_info_is_the_noise_it_drew():
    t = make("denoise", sigma_min=0.1, sigma_max=0.4)
    x, key = smooth_images(), jax.random.key(7)
    sigma = t.degrade_info(x, key)["sigma"]
    assert sigma.shape == (4,) and np.all((sigma >= 0.1) & (sigma <= 0.4))
    noise = jax.random.normal(jax.random.split(key)[1], x.shape)
    np.testing.assert_allclose(t.degrade(x, key).image,
                               jnp.clip(x + sigma[:, None, None, None] * noise, -1, 1),
                               atol=1e-6)


def test_classical_methods_beat_the_trivial_baselines_on_smooth_images():
    x, key = smooth_images(), jax.random.key(1)
    for name, params in (("denoise", dict(sigma_min=0.2, sigma_max=0.3)),
                         ("inpaint", dict(mask_kinds="box"))):
        t = make(name, **params)
        cond = t.degrade(x, key)
        info = jax.tree.map(np.asarray, t.degrade_info(x, key))
        out = t.classical(jax.tree.map(np.asarray, cond), info)
        assert out.shape == x.shape and out.dtype == np.float32
        mask = t.loss_mask(cond)
        gain = (metrics_lib.masked_psnr(out, x, mask)
                - metrics_lib.masked_psnr(t.baseline(cond), x, mask))
        assert np.all(np.asarray(gain) > 3.0), (name, gain)
    t = make("super_resolve")
    cond = t.degrade(x, key)
    bicubic = jnp.clip(upsample(downsample(x, 2), 2), -1, 1)
    np.testing.assert_allclose(t.classical(cond, {}), bicubic, atol=1e-5)
    np.testing.assert_allclose(t.baseline(cond), bicubic, atol=1e-5)
    assert make("colorize").classical(t.degrade(x, key), {}) is None


@pytest.mark.parametrize("name,params", [("super_resolve", dict(factor=2)),
                                         ("super_resolve", dict(factor=4)),
                                         ("colorize", {}), ("inpaint", {})])
def test_project_is_the_orthogonal_projection_onto_consistent_images(name, params):
    """The clean image is fixed; P(P(y)) = P(y); P(y) satisfies the condition; and
    y - P(y) is orthogonal to P(y) - x (x in the affine set: P is the nearest point)."""
    t = make(name, consistent=True, **params)
    x = images(b=4, seed=1)
    cond = t.degrade(x, jax.random.key(2))
    y = images(b=4, seed=3)
    p = t.project(y, cond)
    np.testing.assert_allclose(t.project(x, cond), x, atol=1e-5)
    np.testing.assert_allclose(t.project(p, cond), p, atol=1e-5)
    if name == "super_resolve":
        np.testing.assert_allclose(downsample(p, t.factor), downsample(x, t.factor), atol=1e-5)
    elif name == "colorize":
        np.testing.assert_allclose(luminance(p), luminance(x), atol=1e-5)
    else:
        np.testing.assert_allclose(p * cond.mask, x * cond.mask, atol=1e-6)
    inner = jnp.sum((y - p) * (p - x), axis=(1, 2, 3))
    np.testing.assert_allclose(inner, 0.0, atol=1e-3)
    assert np.all(np.asarray(jnp.sum((p - x) ** 2, axis=(1, 2, 3))
                             < jnp.sum((y - x) ** 2, axis=(1, 2, 3))))


def test_super_resolve_condition_is_a_consistent_back_projection():
    x = smooth_images()
    t = make("super_resolve", factor=2, consistent=True)
    cond = t.degrade(x, jax.random.key(0))
    np.testing.assert_allclose(downsample(cond.image, 2), downsample(x, 2), atol=1e-6)
    np.testing.assert_allclose(t.start(cond), cond.image)
    bicubic = t.baseline(cond)
    gain = metrics_lib.masked_psnr(cond.image, x, None) - metrics_lib.masked_psnr(bicubic, x, None)
    assert np.all(np.asarray(gain) > 0.0), gain
    # consistent unset (runs made before the option): the plain bicubic upsampling.
    old = make("super_resolve", factor=2)
    assert not old.consistent and make("inpaint").consistent
    cond_old = old.degrade(x, jax.random.key(0))
    np.testing.assert_allclose(cond_old.image, bicubic, atol=1e-6)
    np.testing.assert_array_equal(old.postprocess(cond.image, cond_old), cond.image)
