r"""The two-objective toy on R^2 of CAGrad / Nash-MTL / FAMO: one trajectory panel per strategy.

    python -m mtlgen_jax.experiments.toy --out toy.png [--strategies mgda,cagrad] \
        [--steps 20000] [--lr 1e-3] [--scale 0.1]

The problem, written from the toy in the CAGrad paper's code (Liu et al., NeurIPS
2021) as we understand it, with x = (x1, x2) in [-10, 10]^2 and LOWER = 5e-6:

    c1 = max(tanh(x2 / 2), 0)                 # weight of the upper half-plane
    c2 = max(tanh(-x2 / 2), 0)                # weight of the lower half-plane
    h1 = log(max(|0.5 (-x1 - 7) - tanh(-x2)|, LOWER)) + 6
    h2 = log(max(|0.5 (-x1 + 3) + tanh(-x2) + 2|, LOWER)) + 6
    q1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    q2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    f1 = scale * (c1 h1 + c2 q1),   f2 = c1 h2 + c2 q2

The upper half-plane holds two narrow log valleys that trap plain gradient descent;
the lower one two quadratic bowls (minima near (7, -8) and (-7, -8)) whose
compromise curve, near x2 = -8 between x1 = -7 and 7, is the Pareto set. `scale`
multiplies f1: 1 is CAGrad's original; 0.1 (the default) is the version with
tasks of different scales used by Nash-MTL and FAMO. The five starting points are
those of the CAGrad code.

Each strategy is `weighting.create(name, 2)`; at every step it gets the losses
shifted by their lower bound (f_k + 20 s_k > 0, where s = (scale, 1): uw, dwa, gls
and famo assume positive losses; the shift changes no gradient) and the Jacobian
as `task_grads` (a flat [2, 2] array); its `out.update` (for a loss weighting,
its weights times the task gradients) drives Adam (or SGD). All starts of one
strategy run in one jitted `lax.scan` (vmapped over the starts).

The Pareto set is computed, not assumed: the non-dominated points of a dense grid
of the domain. The picture is drawn with PIL (matplotlib is not a dependency).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlgen_jax import weighting

LOWER = 5e-6  # floor inside the logs (as the CAGrad code)
DOMAIN = (-10.0, 10.0)  # both coordinates
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
DEFAULT_STRATEGIES = tuple(n for n in weighting.NAMES if n != "static")  # static == ew here
DEFAULT_STEPS = 50_000
DEFAULT_LR = 1e-3
DEFAULT_SCALE = 0.1
ON_SET = 0.3  # a run "reaches" the Pareto set when it ends this close to it (domain units)
# Hyperparameters the strategies' own papers ran this toy with, where they differ from
# the defaults (which are for real training). FAMO's official toy (experiments/toy/run.sh)
# decays the logits by gamma = 0: "the objective is not changing"; its real-training
# runs use 1e-3 (our default) or 0.01. CAGrad's toy c = 0.5 and Nash-MTL's solver are
# the defaults already.
TOY_HPARAMS = {"famo": {"weight_decay": 0.0}}


def objectives(x: jax.Array, scale: float = DEFAULT_SCALE) -> jax.Array:
    """The two objectives at x [..., 2]: returns [..., 2] = (f1, f2) (see the module doc)."""
    x1, x2 = x[..., 0], x[..., 1]
    c1 = jnp.maximum(jnp.tanh(0.5 * x2), 0.0)
    c2 = jnp.maximum(jnp.tanh(-0.5 * x2), 0.0)
    h1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7.0) - jnp.tanh(-x2)), LOWER)) + 6.0
    h2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3.0) + jnp.tanh(-x2) + 2.0), LOWER)) + 6.0
    q1 = (jnp.square(-x1 + 7.0) + 0.1 * jnp.square(-x2 - 8.0)) / 10.0 - 20.0
    q2 = (jnp.square(-x1 - 7.0) + 0.1 * jnp.square(-x2 - 8.0)) / 10.0 - 20.0
    f1 = scale * (c1 * h1 + c2 * q1)
    f2 = c1 * h2 + c2 * q2
    return jnp.stack([f1, f2], axis=-1)


def lower_bounds(scale: float = DEFAULT_SCALE) -> np.ndarray:
    """[2] strict lower bounds of (f1, f2) on R^2.

    c1 and c2 are never both positive, c1 h >= log(LOWER) + 6 > -20 and c2 q > -20.
    """
    return np.array([-20.0 * scale, -20.0], np.float32)


def _optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"optimizer={name!r} is unknown; use 'adam' or 'sgd'")


@functools.partial(jax.jit, static_argnames=("strategy", "steps", "lr", "scale", "optimizer"))
def _trajectories(strategy, starts, rng, *, steps, lr, scale, optimizer):
    tx = _optimizer(optimizer, lr)
    lower = jnp.asarray(lower_bounds(scale))
    f = functools.partial(objectives, scale=scale)

    def one(x0, key):  # x0 [2] -> [steps + 1, 2]
        def body(carry, i):
            x, opt_state, w_state = carry
            losses = f(x) - lower  # [2] > 0
            task_grads = jax.jacrev(f)(x)  # [2 tasks, 2 coordinates]
            out = strategy.apply(losses, task_grads, w_state, jax.random.fold_in(key, i))
            updates, opt_state = tx.update(out.update, opt_state, x)
            x = optax.apply_updates(x, updates)
            return (x, opt_state, out.state), x

        init = (x0, tx.init(x0), strategy.init())
        _, xs = jax.lax.scan(body, init, jnp.arange(steps))
        return jnp.concatenate([x0[None], xs], axis=0)

    return jax.vmap(one)(starts, jax.random.split(rng, starts.shape[0]))


def trajectories(
    name: str,
    starts: Sequence[Sequence[float]] = STARTS,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    scale: float = DEFAULT_SCALE,
    optimizer: str = "adam",
    seed: int = 0,
    **hparams,
) -> np.ndarray:
    """Runs strategy `name` from every start; returns the iterates [S, steps + 1, 2].

    Args:
      name: a weighting strategy (`weighting.NAMES`).
      starts: S starting points.
      steps: optimizer steps.
      lr: learning rate.
      scale: the factor of f1.
      optimizer: 'adam' or 'sgd'.
      seed: seeds the strategies that draw random numbers (rlw, pcgrad, gradvac).
      **hparams: the strategy's hyperparameters.
    """
    strategy = weighting.create(name, 2, **hparams)
    _optimizer(optimizer, lr)  # a clear error before compiling
    starts = jnp.asarray(starts, jnp.float32).reshape(-1, 2)
    out = _trajectories(strategy, starts, jax.random.key(seed), steps=int(steps),
                        lr=float(lr), scale=float(scale), optimizer=optimizer)
    return np.asarray(out)


def pareto_set(scale: float = DEFAULT_SCALE, resolution: int = 801) -> np.ndarray:
    """The non-dominated points [M, 2] of a resolution x resolution grid of the domain.

    A grid point is kept unless another grid point is at least as good in both
    objectives and better in one: sort by f1 (then f2), keep the points whose f2 is
    below every f2 before them.
    """
    axis = np.linspace(*DOMAIN, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2)
    values = np.asarray(jax.jit(functools.partial(objectives, scale=scale))(grid))
    order = np.lexsort((values[:, 1], values[:, 0]))
    f2 = values[order, 1]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(f2)[:-1]])
    return grid[order[f2 < best_before]]


def distance_to_set(points: np.ndarray, pareto: np.ndarray) -> np.ndarray:
    """[N] Euclidean distance of each point [N, 2] to the nearest point of `pareto` [M, 2]."""
    d = np.linalg.norm(points[:, None, :] - pareto[None, :, :], axis=-1)
    return d.min(axis=1)


# --- drawing (PIL) --------------------------------------------------------------------
_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (23, 190, 207))
_PANEL = 280  # plot area, pixels
_MARGIN = (34, 26, 10, 22)  # left, top, right, bottom


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _background(scale: float) -> np.ndarray:
    """[P, P, 3] uint8 shading of f1 + f2 by quantile bands (light = low), y upward."""
    centers = DOMAIN[0] + (np.arange(_PANEL) + 0.5) * (DOMAIN[1] - DOMAIN[0]) / _PANEL
    xx, yy = np.meshgrid(centers, centers[::-1], indexing="xy")  # row 0 is the top
    grid = np.stack([xx, yy], axis=-1).astype(np.float32)
    total = np.asarray(jax.jit(functools.partial(objectives, scale=scale))(grid)).sum(-1)
    ranks = total.ravel().argsort().argsort().reshape(total.shape) / total.size  # [0, 1)
    bands = np.floor(ranks * 12) / 12
    shade = 250 - 90 * bands
    edge = np.zeros_like(bands, bool)  # contour lines: where the band changes
    edge[1:, :] |= bands[1:, :] != bands[:-1, :]
    edge[:, 1:] |= bands[:, 1:] != bands[:, :-1]
    shade = np.where(edge, shade - 25, shade)
    return np.repeat(shade[..., None], 3, axis=-1).astype(np.uint8)


def _to_pixel(p: np.ndarray) -> np.ndarray:
    """Domain coordinates [..., 2] -> panel pixel coordinates [..., 2] (y downward)."""
    u = (p - DOMAIN[0]) / (DOMAIN[1] - DOMAIN[0]) * _PANEL
    return np.stack([u[..., 0], _PANEL - u[..., 1]], axis=-1)


def draw_panel(title: str, trajs: np.ndarray, pareto: np.ndarray, background: np.ndarray):
    """One panel (a PIL image): background, Pareto set, trajectories, ticks, title."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = _MARGIN
    img = Image.new("RGB", (left + _PANEL + right, top + _PANEL + bottom), "white")
    img.paste(Image.fromarray(background), (left, top))
    d = ImageDraw.Draw(img)
    off = np.array([left, top], np.float32)
    for x, y in _to_pixel(pareto) + off:
        d.ellipse((x - 1, y - 1, x + 1, y + 1), fill=(70, 70, 70))
    for i, traj in enumerate(trajs):
        color = _COLORS[i % len(_COLORS)]
        stride = max(1, len(traj) // 2000)  # the line needs no more points than pixels
        pts = np.clip(_to_pixel(np.concatenate([traj[::stride], traj[-1:]])), -5, _PANEL + 5)
        d.line([tuple(p) for p in pts + off], fill=color, width=2)
        (x0, y0), (x1, y1) = pts[0] + off, pts[-1] + off
        d.ellipse((x0 - 4, y0 - 4, x0 + 4, y0 + 4), outline=color, width=2)
        d.ellipse((x1 - 4, y1 - 4, x1 + 4, y1 + 4), fill=color, outline="black")
    d.rectangle((left, top, left + _PANEL, top + _PANEL), outline="black")
    small = _font(10)
    for v in (-10, -5, 0, 5, 10):
        px = left + (v - DOMAIN[0]) / (DOMAIN[1] - DOMAIN[0]) * _PANEL
        py = top + _PANEL - (v - DOMAIN[0]) / (DOMAIN[1] - DOMAIN[0]) * _PANEL
        d.line((px, top + _PANEL, px, top + _PANEL + 4), fill="black")
        d.text((px, top + _PANEL + 6), str(v), fill="black", font=small, anchor="mt")
        d.line((left - 4, py, left, py), fill="black")
        d.text((left - 6, py), str(v), fill="black", font=small, anchor="rm")
    d.text((left + _PANEL / 2, top / 2), title, fill="black", font=_font(14), anchor="mm")
    return img


def draw(results: dict[str, np.ndarray], *, scale: float, caption: str, columns: int = 4,
         tolerance: float = ON_SET):
    """The figure (a PIL image): one panel per strategy, a caption on top.

    Each title says how many of the runs end within `tolerance` of the Pareto set.
    """
    from PIL import Image, ImageDraw

    pareto = pareto_set(scale)
    background = _background(scale)
    panels = []
    for name, trajs in results.items():
        hits = int(np.sum(distance_to_set(trajs[:, -1], pareto) <= tolerance))
        panels.append(draw_panel(f"{name}  ({hits}/{len(trajs)} on the Pareto set)", trajs,
                                 pareto, background))
    w, h = panels[0].size
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    lines = caption.split("\n")[:3]
    head = 8 + 18 * len(lines)
    fig = Image.new("RGB", (cols * w, head + rows * h), "white")
    for i, panel in enumerate(panels):
        fig.paste(panel, ((i % cols) * w, head + (i // cols) * h))
    d = ImageDraw.Draw(fig)
    for j, line in enumerate(lines):
        d.text((8, 6 + 18 * j), line, fill="black", font=_font(13))
    return fig


def make_figure(out: str, strategies: Sequence[str] = DEFAULT_STRATEGIES, *,
                steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, scale: float = DEFAULT_SCALE,
                optimizer: str = "adam") -> dict[str, float]:
    """Runs every strategy from `STARTS` and writes the PNG; returns seconds per strategy."""
    for name in strategies:  # every name is checked before anything runs
        weighting.create(name, 2)
    results, seconds = {}, {}
    for name in strategies:
        t0 = time.perf_counter()
        results[name] = trajectories(name, steps=steps, lr=lr, scale=scale, optimizer=optimizer,
                                     **TOY_HPARAMS.get(name, {}))
        seconds[name] = time.perf_counter() - t0
    caption = (f"CAGrad's two-task toy, f1 scaled by {scale:g}; {optimizer} lr={lr:g}, "
               f"{steps} steps from {len(STARTS)} starts (open circles; dots: end points).\n"
               "Dark gray: the Pareto set (non-dominated grid points; 'on' it = within "
               f"{ON_SET:g}); background: bands of f1 + f2 (light = low).\n"
               "Each strategy's training defaults, except FAMO's logit decay: 0, as in its "
               "paper's toy (training default 1e-3).")
    fig = draw(results, scale=scale, caption=caption)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="comma-separated weighting strategies (one panel each)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="factor of f1")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        for name in names:
            weighting.create(name, 2)
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    seconds = make_figure(args.out, names, steps=args.steps, lr=args.lr, scale=args.scale,
                          optimizer=args.optimizer)
    for name, s in seconds.items():
        print(f"{name:>12}: {s:6.2f} s")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
