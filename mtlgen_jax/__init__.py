"""mtlgen_jax: multi-task image generation in JAX.

One shared U-Net backbone, one head per task (generation, inpainting,
super-resolution, colorization, denoising), trained jointly by a jit-compiled,
data-parallel step with a pluggable multi-task weighting strategy.

Notebook use::

    import mtlgen_jax as mg
    run = mg.restore("runs/demo")
    out = run.sample("inpaint", condition=run.degrade("inpaint", images, rng), rng=rng)
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("api", "checkpoint", "cli", "components", "cpu_devices", "data", "diffusion",
               "evaluate", "experiments", "images", "metrics", "models", "parallel", "sampling",
               "step", "tasks", "train", "weighting", "writers", "workdir")


def __getattr__(name):
    # Submodules load on first use, so `import mtlgen_jax` stays cheap (no TF import).
    if name in _SUBMODULES:
        return importlib.import_module(f"mtlgen_jax.{name}")
    if name in ("restore", "Run"):
        return getattr(importlib.import_module("mtlgen_jax.api"), name)
    raise AttributeError(f"module 'mtlgen_jax' has no attribute {name!r}")
