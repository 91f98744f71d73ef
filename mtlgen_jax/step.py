"""The per-device train step: task mixture, per-task losses, weighting, update.

``train_step`` is written for ONE device's slice of the global batch, with
explicit collectives over the mesh axis ``data``; ``parallel.py`` wraps it with
``jax.shard_map`` or ``jax.pmap``. Every random draw of an example is keyed by
the example's *global* index, so a run on 1 device and on 8 devices with the
same global batch computes the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dm_pix as pix
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlgen_jax import diffusion, ensemble, objectives
from mtlgen_jax.images import to_float
from mtlgen_jax.models import capacity
from mtlgen_jax.parallel import AXIS
from mtlgen_jax.weighting.task_grads import gram as weighting_gram

if TYPE_CHECKING:
    from mtlgen_jax.components import Components

# ``loss_transform(losses [K], step) -> losses [K]``: applied to every (micro-)batch's
# per-task losses before the weighting sees them (e.g. fault injection in tests).
LossTransform = Callable[[jax.Array, jax.Array], jax.Array]

# Training-image augmentations (``dataset.augment``): the elements of the dihedral group
# of the square (``ensemble.transform``) each clean image is drawn from.
_GROUP = {"none": (0,), "flip": (0, 4), "dihedral": tuple(range(ensemble.SIZE))}
AUGMENTS = tuple(_GROUP)


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly."""

    step: jax.Array  # [] int32
    params: Any
    opt_state: Any
    ema_params: Any
    weighting_state: Any
    rng: jax.Array  # [2] uint32 key data; the step's key is fold_in(rng, step)
    skipped: jax.Array  # [] int32 consecutive updates dropped for non-finite values


def mixture_counts(weights: Sequence[float], batch: int) -> np.ndarray:
    """Examples per task in a global batch: proportional to weights, each >= 1.

    Largest-remainder rounding, so the counts sum to ``batch`` exactly and every
    task has examples in every step (a task loss is never an empty mean).
    """
    k = len(weights)
    if batch < k:
        raise ValueError(f"batch_size={batch} is smaller than the number of tasks ({k}); "
                         "every task needs at least one example per step.")
    w = np.asarray(weights, np.float64) / np.sum(weights)
    raw = w * (batch - k)
    counts = np.floor(raw).astype(np.int64) + 1
    rest = batch - counts.sum()
    counts[np.argsort(-(raw - np.floor(raw)), kind="stable")[:rest]] += 1
    return counts


def select(task_id: jax.Array, per_task: Sequence[Any]) -> Any:
    """Per example, picks the entry of its task from K pytrees with a batch axis."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_task)  # [K, B, ...]
    idx = jnp.arange(task_id.shape[0])
    return jax.tree.map(lambda x: x[task_id, idx], stacked)


def per_example(fn, keys: jax.Array, *args):
    """Runs a batched ``fn(*args, rng)`` once per example with the example's own key."""
    out = jax.vmap(lambda k, *a: fn(*(x[None] for x in a), k))(keys, *args)
    return jax.tree.map(lambda x: x[:, 0], out)


def example_keys(step_key: jax.Array, local_batch: int) -> jax.Array:
    """[B_local] keys, one per example, from its global index in the batch."""
    first = jax.lax.axis_index(AXIS) * local_batch
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(local_batch))


def assign_tasks(comp: Components, key: jax.Array, local_batch: int) -> jax.Array:
    """[B_local] task ids: a random permutation of the mixture's fixed counts."""
    counts = comp.task_counts
    ids = jnp.repeat(jnp.arange(len(counts)), counts, total_repeat_length=comp.global_batch)
    ids = jax.random.permutation(key, ids)
    start = jax.lax.axis_index(AXIS) * local_batch
    return jax.lax.dynamic_slice_in_dim(ids, start, local_batch)


def augment(x0: jax.Array, keys: jax.Array, kind: str) -> jax.Array:
    """Each clean training image [B, H, W, C] under an element of the dihedral group drawn
    from its own key (``keys`` [B]): ``'flip'`` a left-right mirror with probability 1/2,
    ``'dihedral'`` one of the 8 flips and quarter turns (H == W), ``'none'`` unchanged.

    The augmentation of SR and restoration training (EDSR, Lim et al. 2017): the task's
    degradations commute with these transforms (``mtlgen_jax.ensemble``), so each
    transformed image is a valid example, and a network that sees them all is closer to
    the equivariance that the test-time self-ensemble assumes. Keyed per example like the
    degradations, so a run computes the same on every device count.
    """
    group = _GROUP[kind]
    if len(group) == 1:
        return x0
    g = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(group)))(keys)
    options = jnp.stack([ensemble.transform(x0, i) for i in group])  # [G, B, H, W, C]
    return options[g, jnp.arange(x0.shape[0])]


def contrast(x0: jax.Array, keys: jax.Array, lowest: float) -> jax.Array:
    """Each clean training image [B, H, W, C] with its contrast scaled by a factor drawn
    uniformly from [``lowest``, 1] with its own key (``keys`` [B]): dm-pix's
    ``adjust_contrast``, ``mean + s (x - mean)`` with the mean per image and channel, so
    colours keep their cast and nothing leaves [-1, 1].

    More flat examples: on the held-out photographs, super-resolution's learned correction
    fits best at 0.33 of its size in the flattest quarter of the crops and at 1.69 in the
    busiest (about 1 everywhere on training crops): it adds detail to flat crops that they
    do not have (README "Results").
    """
    s = jax.vmap(lambda k: jax.random.uniform(k, (), x0.dtype, lowest, 1.0))(keys)
    return pix.adjust_contrast(x0, s[:, None, None, None])


def make_inputs(comp: Components, x0, labels, task_id, keys, *, train: bool):
    """Condition, the task objective's inputs (``objectives.TrainInputs``), loss mask and
    model labels of each example."""
    k_deg, k_lab, k_t, k_eps = (keys[:, i] for i in range(4))  # keys: [B, 4]
    conds = [per_example(t.degrade, k_deg, x0) for t in comp.tasks]
    cond = select(task_id, conds)
    ones = jnp.ones(x0.shape[:-1] + (1,), x0.dtype)
    masks = [m if (m := t.loss_mask(c)) is not None else ones for t, c in zip(comp.tasks, conds)]
    mask = select(task_id, masks)
    model_labels = select(task_id, [
        jax.vmap(lambda lab, k, t=t: t.model_labels(lab[None], k, train=train)[0])(labels, k_lab)
        for t in comp.tasks
    ])
    t = jax.vmap(lambda k: diffusion.sample_time(k, 1, discrete_steps=comp.discrete_steps)[0])(k_t)
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(k_eps)
    # A bridge task's endpoint_fraction of its examples train its one-step estimate (t = 1).
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1)))(k_t)

    def task_time(task):
        return jnp.where(u < task.endpoint_fraction, 1.0, t) if task.endpoint_fraction else t

    inputs = select(task_id, [
        objectives.train_inputs(task, x0, c, eps, task_time(task), schedule=comp.schedule,
                                prediction=comp.prediction)
        for task, c in zip(comp.tasks, conds)])
    return cond, inputs, mask, model_labels


def prepare_batch(comp: Components, batch, step_key):
    """Adds each example's task id and random keys (from its GLOBAL index) to the batch."""
    b = batch["image"].shape[0]
    k_assign, k_ex = jax.random.split(step_key)
    task_id = assign_tasks(comp, k_assign, b)
    keys = jax.vmap(lambda k: jax.random.split(k, 4))(example_keys(k_ex, b))  # [B, 4]
    return dict(batch, task_id=task_id, keys=keys)


def _model_inputs(comp: Components, batch, *, train: bool):
    """The model's positional inputs, the objective's inputs and the loss mask."""
    task_id = batch["task_id"]
    x0 = to_float(batch["image"])
    if train and comp.augment != "none":  # its own stream: the other draws are unchanged
        aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0xA06))(batch["keys"][:, 0])
        x0 = augment(x0, aug_keys, comp.augment)
    if train and comp.augment_contrast < 1.0:  # a stream of its own too
        con_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0xC0A))(batch["keys"][:, 0])
        x0 = contrast(x0, con_keys, comp.augment_contrast)
    cond, inputs, mask, model_labels = make_inputs(comp, x0, batch["label"], task_id,
                                                   batch["keys"], train=train)
    return (inputs.x_t, cond, inputs.t, task_id, model_labels), inputs, mask


def _per_task(comp: Components, pred, inputs: objectives.TrainInputs, mask, task_id,
              cond) -> jax.Array:
    """Per-task losses [K], each a sum over its examples / its GLOBAL example count.

    A consistent task's clean-image estimate goes through its ``project`` first (the
    projection the sampler applies), so the loss scores only what the condition leaves
    open.
    """
    pred = pred + inputs.offset
    if any(tk.projects_in_loss for tk in comp.tasks):
        pred = select(task_id, [tk.project(pred, cond) if tk.projects_in_loss else pred
                                for tk in comp.tasks])
    l2 = diffusion.loss(pred, inputs.target, mask, kind="l2")
    l1 = diffusion.loss(pred, inputs.target, mask, kind="l1")
    use_l1 = jnp.asarray([tk.loss == "l1" for tk in comp.tasks])[task_id]
    per_ex = jnp.where(use_l1, l1, l2) * inputs.weight  # [B]
    onehot = jax.nn.one_hot(task_id, len(comp.tasks), dtype=jnp.float32)  # [B, K]
    counts = jnp.asarray(comp.task_counts, jnp.float32)
    return (onehot.T @ per_ex) / counts


def task_losses(comp: Components, params, batch, dropout_key, *, train: bool = True):
    """Per-task losses [K] of a prepared (micro)batch, normalised by GLOBAL task counts.

    Summed over micro-batches and ``psum``-ed over devices, this is the exact per-task
    mean of the global batch.
    """
    args, inputs, mask = _model_inputs(comp, batch, train=train)
    pred = comp.model.apply({"params": params}, *args, train=train, rngs={"dropout": dropout_key})
    return _per_task(comp, pred, inputs, mask, batch["task_id"], args[1])


def split_task_losses(comp: Components, batch, dropout_key, *, train: bool = True):
    """``task_losses`` in two halves around the shared representation.

    Returns ``(features_fn, head_loss_fn)``: ``features_fn(backbone_params)`` is the
    backbone's output z [B, H, W, F] and ``head_loss_fn(z, head_params)`` the per-task
    losses [K] (``head_params``: the ``head_<task>`` subtrees), so that
    ``head_loss_fn(features_fn(p['backbone']), heads) == task_losses(comp, p, ...)``.
    """
    args, inputs, mask = _model_inputs(comp, batch, train=train)
    task_id = batch["task_id"]

    def features_fn(backbone):
        return comp.model.apply({"params": {"backbone": backbone}}, *args, train=train,
                               rngs={"dropout": dropout_key}, method="features")

    def head_loss_fn(z, heads):
        pred = comp.model.apply({"params": heads}, z, task_id, method="head_outputs")
        return _per_task(comp, pred, inputs, mask, task_id, args[1])

    return features_fn, head_loss_fn


def _micro(batch, n: int):
    """[B, ...] leaves -> [n, B/n, ...] (micro-batches for gradient accumulation)."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def _accumulate(fn, micro, init):
    """Sums ``fn(i, microbatch)`` over micro-batches with a scan (one compiled body)."""
    def body(acc, xs):
        i, mb = xs
        return jax.tree.map(jnp.add, acc, fn(i, mb)), None

    n = jax.tree.leaves(micro)[0].shape[0]
    return jax.lax.scan(body, init, (jnp.arange(n), micro))[0]


def losses_and_gradients(comp: Components, params, batch, loss_fn, wstate, key):
    """Per-task losses [K] (global) and the combined gradient, via the weighting strategy.

    Loss-only strategies give weights, and a VJP with the weights as the cotangent
    gives the combined gradient. Gradient strategies get the per-task gradients of
    the shared backbone (a vmapped VJP: one forward pass, K backward passes in one
    batched computation), summed over devices first; each head keeps its own
    task's gradient, and so does each task's row of the backbone's per-task tables
    (``capacity.partition``: they stay out of the Gram matrix). With
    ``grad_accum_steps`` > 1 the local batch is processed in
    micro-batches (a ``lax.scan``): per-task gradients are accumulated exactly; a
    loss weighting first needs the whole batch's losses, so it costs one extra
    forward pass.
    """
    k, n = len(comp.tasks), comp.grad_accum_steps
    eye = jnp.eye(k, dtype=jnp.float32)
    if n == 1:
        local, vjp_fn = jax.vjp(lambda p: loss_fn(p, batch, 0), params)
        losses = jax.lax.psum(local, AXIS)
        if not comp.strategy.uses_task_grads:
            out = comp.strategy.apply(losses, None, wstate, key)
            return losses, jax.lax.psum(vjp_fn(out.weights.astype(local.dtype))[0], AXIS), out
        task_grads = jax.vmap(vjp_fn)(eye)[0]  # leaves [K, ...]
    else:
        micro = _micro(batch, n)
        zeros_k = jnp.zeros((k,), jnp.float32)
        if not comp.strategy.uses_task_grads:
            losses = jax.lax.psum(_accumulate(lambda i, mb: loss_fn(params, mb, i), micro,
                                              zeros_k), AXIS)
            out = comp.strategy.apply(losses, None, wstate, key)
            w = out.weights.astype(jnp.float32)

            def weighted_grad(i, mb):
                return jax.grad(lambda p: jnp.dot(w, loss_fn(p, mb, i)))(params)

            grads = _accumulate(weighted_grad, micro, jax.tree.map(jnp.zeros_like, params))
            return losses, jax.lax.psum(grads, AXIS), out

        def local_and_task_grads(i, mb):
            local, vjp_fn = jax.vjp(lambda p: loss_fn(p, mb, i), params)
            return local, jax.vmap(vjp_fn)(eye)[0]

        zeros_g = jax.tree.map(lambda p: jnp.zeros((k,) + p.shape, p.dtype), params)
        local, task_grads = _accumulate(local_and_task_grads, micro, (zeros_k, zeros_g))
        losses = jax.lax.psum(local, AXIS)
    task_grads = jax.lax.psum(task_grads, AXIS)
    shared, per_task = capacity.partition(task_grads["backbone"])
    out = comp.strategy.apply(losses, shared, wstate, key)
    # Row k of a per-task table [K, ...]: task k's gradient of it (leaves [K, K, ...]).
    own_rows = jax.tree.map(lambda g: g[jnp.arange(k), jnp.arange(k)], per_task)
    grads = {name: (capacity.combine(out.update, own_rows) if name == "backbone"
                    else jax.tree.map(lambda g: g.sum(0), sub))
             for name, sub in task_grads.items()}
    return losses, grads, out


def representation_losses_and_gradients(comp: Components, params, batch, split_fn, wstate, key):
    """Gradient methods in representation mode (``grad_space='representation'``).

    The strategy's weights come from per-task gradients with respect to the shared
    representation instead of the shared parameters -- the cheap "-ub" mode of MGDA-UB
    (Sener & Koltun 2018) and of LibMTL's ``rep_grad``: one backward pass through the
    heads gives every task's gradient at the backbone's output (each example enters
    only its own task's loss), and the backbone is differentiated once, with the
    weighted cotangent ``sum_k w_k dL_k/dz`` -- the cost of a loss weighting. Its
    update is therefore ``sum_k w_k grad L_k`` over the shared parameters, with w from
    the representation gradients.

    Every example here belongs to one task, so the per-example gradients dL_k/dz of
    different tasks live on different examples and are always orthogonal. The
    representation gradient of task k is therefore taken with respect to an offset
    of the representation shared by every example (``z_b + delta``):
    ``g_k = sum_b dL_k/dz_b``, [H, W, F] per task -- the gradient of a shared,
    per-position bias on the backbone output. These are summed over micro-batches
    and devices before the Gram matrix is formed. Heads get their own task's gradient.

    The backbone's per-task tables (``capacity.py``) get their own task's gradient too:
    row k receives dL_k/d(row k) through the backbone, unweighted, as head k does. Only
    task k's examples use row k, so that is the rows' part of the backbone's VJP of the
    unweighted ``dz`` -- a second VJP (the forward pass is shared), made only when the
    model has per-task tables.

    Args:
      split_fn: ``(microbatch, i) -> (features_fn, head_loss_fn)`` (see
        ``split_task_losses``).
    """
    k, n = len(comp.tasks), comp.grad_accum_steps
    backbone = params["backbone"]
    heads = {name: sub for name, sub in params.items() if name != "backbone"}
    has_per_task = bool(capacity.partition(backbone)[1])

    def rep_pass(i, mb):
        features_fn, head_loss_fn = split_fn(mb, i)
        z, backbone_vjp = jax.vjp(features_fn, backbone)
        local, head_vjp = jax.vjp(head_loss_fn, z, heads)
        # One backward pass through the heads gives every task's representation gradient:
        # example b enters only its own task's loss, through its own task's head, so
        # dL_k/dz_b = dz_b if task(b) == k else 0 (no K-fold vmap needed).
        dz, head_grads = head_vjp(jnp.ones_like(local))  # dz [B, H, W, F]
        onehot = jax.nn.one_hot(mb["task_id"], k, dtype=jnp.float32)  # [B, K]
        pooled = jnp.einsum("bk,bhwf->khwf", onehot, dz.astype(jnp.float32))
        # The per-task tables' own-task gradients (sum_k dL_k/d(row k)); {} without tables.
        own = capacity.partition(backbone_vjp(dz)[0])[1] if has_per_task else {}
        return local, pooled, (head_grads, own), backbone_vjp, dz, onehot

    if n == 1:
        local, pooled, (head_grads, own), backbone_vjp, dz, onehot = rep_pass(0, batch)
    else:
        micro = _micro(batch, n)

        def summed(i, mb):
            local, pooled, grads, *_ = rep_pass(i, mb)
            return local, pooled, grads

        first = jax.tree.map(lambda x: x[0], micro)
        init = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                            jax.eval_shape(summed, 0, first))
        local, pooled, (head_grads, own) = _accumulate(summed, micro, init)
    losses = jax.lax.psum(local, AXIS)
    pooled = jax.lax.psum(pooled, AXIS)
    out = comp.strategy.apply_gram(weighting_gram(pooled), losses, wstate, key)
    w = out.weights
    if n == 1:  # sum_k w_k dL_k/dz: each example's gradient scaled by its task's weight
        scale = (onehot @ w.astype(jnp.float32)).astype(dz.dtype)  # [B]
        backbone_grads = backbone_vjp(dz * scale[:, None, None, None])[0]
    else:
        def weighted(i, mb):
            features_fn, head_loss_fn = split_fn(mb, i)
            return jax.grad(lambda pb: jnp.dot(w, head_loss_fn(features_fn(pb), heads)))(backbone)

        backbone_grads = _accumulate(weighted, micro, jax.tree.map(jnp.zeros_like, backbone))
    # The shared parameters: the weighted gradient; the per-task tables: their own task's.
    backbone_grads = capacity.combine(capacity.partition(backbone_grads)[0], own)
    grads = jax.lax.psum(dict(head_grads, backbone=backbone_grads), AXIS)
    return losses, grads, out


def train_step(comp: Components, state: TrainState, batch, *,
               loss_transform: LossTransform | None = None) -> tuple[TrainState, dict]:
    """One optimisation step on this device's slice of the batch (call under a mesh axis).

    Non-finite losses or gradients: with ``comp.nonfinite == 'skip'`` the update is
    dropped (params, optimizer, EMA and weighting state stay bitwise unchanged; the
    step and data still advance) and ``skipped`` counts consecutive drops; with
    'halt' the update is applied and the host loop stops before anything is saved.

    Args:
      comp: the run's static pieces (``components.build``).
      state: the replicated train state.
      batch: this device's ``{'image': uint8 [B, H, W, C], 'label': int32 [B]}``.
      loss_transform: optional ``(losses [K], step) -> losses [K]`` applied to each
        (micro-)batch's per-task losses (see ``LossTransform``).
    """
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_batch, k_drop, k_weight = jax.random.split(step_key, 3)
    batch = prepare_batch(comp, batch, k_batch)
    k_drop = jax.random.fold_in(k_drop, jax.lax.axis_index(AXIS))
    transform = (lambda losses: losses) if loss_transform is None else (
        lambda losses: loss_transform(losses, state.step))

    def loss_fn(p, mb, i):
        return transform(task_losses(comp, p, mb, jax.random.fold_in(k_drop, i)))

    def split_fn(mb, i):
        features_fn, head_loss_fn = split_task_losses(comp, mb, jax.random.fold_in(k_drop, i))
        return features_fn, lambda z, h: transform(head_loss_fn(z, h))

    # losses: [K] exact global per-task means; grads: the combined update direction.
    if comp.grad_space == "representation":
        losses, grads, wout = representation_losses_and_gradients(
            comp, state.params, batch, split_fn, state.weighting_state, k_weight)
    else:
        losses, grads, wout = losses_and_gradients(comp, state.params, batch, loss_fn,
                                                   state.weighting_state, k_weight)
    grad_norm = optax.global_norm(grads)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)
    updates, opt_state = comp.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with the usual warm-up so early averages are not dominated by the init.
    decay = jnp.minimum(comp.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, weighting_state=wout.state,
                              skipped=jnp.zeros_like(state.skipped))
    if comp.nonfinite == "skip":
        kept = state.replace(step=state.step + 1, skipped=state.skipped + 1)
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, kept)
    metrics = {
        "loss": jnp.sum(wout.weights * losses),
        "lr": comp.learning_rate_fn(state.step),
        "grad_norm": grad_norm,
        "update_norm": optax.global_norm(updates),
        "param_norm": optax.global_norm(params),
        "finite": finite.astype(jnp.float32),
        "skipped": new_state.skipped.astype(jnp.float32),
    }
    for i, t in enumerate(comp.tasks):
        metrics[f"loss/{t.name}"] = losses[i]
        metrics[f"weight/{t.name}"] = wout.weights[i]
    for name, value in wout.metrics.items():
        metrics[f"weighting/{name}"] = value
    return new_state, metrics
