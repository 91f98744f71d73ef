"""Multi-task weighting and gradient-combination strategies (LibMTL's set, in JAX).

```python
strategy = weighting.create(name, num_tasks, **hparams)  # ValueError on bad input
state = strategy.init()                                   # pytree of arrays (checkpointed)
out = strategy.apply(losses, task_grads, state, rng)      # pure, jit-able
out.update   # sum_k out.weights[k] * task_grads[k] (one task's structure), or None
out.weights  # [K] float32
out.state    # same structure, shapes and dtypes as init()
out.metrics  # dict of scalar float32 arrays, fixed keys per strategy
```

| name        | grads | hparams (defaults)                                  | metrics           |
|-------------|-------|-----------------------------------------------------|-------------------|
| ew          | no    | -                                                   | -                 |
| static      | no    | weights (required, K floats >= 0)                   | -                 |
| uw          | no    | lr=1e-3                                             | -                 |
| dwa         | no    | temperature=2.0, period=1                           | -                 |
| rlw         | no    | - (uses rng; weights sum to 1)                      | -                 |
| gls         | no    | min_loss=1e-12                                      | -                 |
| famo        | no    | lr=0.025, weight_decay=1e-3, min_loss=0.0, eps=1e-8 | -                 |
| gradnorm    | yes   | alpha=1.5, lr=1e-2                                  | gradnorm_loss     |
| pcgrad      | yes   | - (uses rng)                                        | conflict_fraction |
| gradvac     | yes   | beta=0.5 (uses rng)                                 | conflict_fraction |
| mgda        | yes   | num_iters=100                                       | solver_residual   |
| cagrad      | yes   | c=0.5, rescale=1, num_iters=100                     | solver_residual   |
| imtl        | yes   | -                                                   | solver_residual   |
| nash_mtl    | yes   | num_iters=30, ridge=1e-6                            | solver_residual   |
| aligned_mtl | yes   | rcond=1e-5                                          | rank              |
| upgrad      | yes   | num_iters=100, ridge=1e-4                           | solver_residual   |

A loss weighting (`uses_task_grads=False`) may be called with task_grads=None; its
combined gradient is then `vjp(out.weights)` of the per-task losses.

A *spec* names a strategy and where a gradient method takes its per-task gradients:
`mgda` (the shared parameters) or `mgda-ub` (the shared representation, the cheap
mode; `config.weighting.grad_space='representation'`); see `parse_spec`.
"""

# Importing a strategy module registers its classes.
from mtlgen_jax.weighting import (  # noqa: F401
    aligned_mtl,
    basic,
    cagrad,
    dwa,
    famo,
    gradnorm,
    imtl,
    mgda,
    nash_mtl,
    surgery,
    upgrad,
    uw,
)
from mtlgen_jax.weighting.base import (
    GradientWeighting,
    LossWeighting,
    Strategy,
    WeightingOutput,
)
from mtlgen_jax.weighting.registry import create, hparam_names, names

NAMES: tuple[str, ...] = (
    # loss weightings
    "ew", "static", "uw", "dwa", "rlw", "gls", "famo",
    # gradient methods
    "gradnorm", "pcgrad", "gradvac", "mgda", "cagrad", "imtl", "nash_mtl", "aligned_mtl",
    "upgrad",
)  # fmt: skip
if set(NAMES) != set(names()):
    raise ImportError(f"NAMES {NAMES} and the registry {names()} disagree")

UB_SUFFIX = "-ub"  # a gradient method in representation mode, e.g. 'mgda-ub'


def parse_spec(spec: str) -> tuple[str, str]:
    """A strategy spec -> (name, grad_space): 'mgda-ub' -> ('mgda', 'representation'),
    'mgda' -> ('mgda', 'params')."""
    spec = spec.strip()
    if spec.endswith(UB_SUFFIX):
        return spec[: -len(UB_SUFFIX)], "representation"
    return spec, "params"

__all__ = [
    "NAMES",
    "UB_SUFFIX",
    "GradientWeighting",
    "LossWeighting",
    "Strategy",
    "WeightingOutput",
    "create",
    "hparam_names",
    "parse_spec",
]
