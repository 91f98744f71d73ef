"""The task interface: what a task is given, what it is trained on, how it is scored.

A task is one file in this package: a subclass of :class:`Task` decorated with
:func:`register`; the train step, the evaluator, the sampler, the notebook API
and the command line ask the task, never its name. ``degrade``, ``condition``,
``loss_mask``, ``baseline`` and ``score`` run on device (jit-able) on float
images in [-1, 1]; ``score_samples`` runs on the host.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mtlgen_jax import metrics as metrics_lib

OBJECTIVES = ("diffusion", "regression", "bridge")  # see mtlgen_jax.objectives


@flax.struct.dataclass
class Condition:
    """What the model is given besides the noisy target."""

    image: jax.Array  # [B, H, W, C] in [-1, 1]; zeros when the task has no image condition
    mask: jax.Array  # [B, H, W, 1]; 1 = known pixel (inpainting), zeros for other tasks


class Task:
    """Base class of a task. Subclasses set ``name`` and override ``degrade``.

    Args:
      channels: image channels C of the dataset.
      image_size: image height = width.
      num_classes: class labels of the dataset (0 if unlabeled).
      weight: the task's share of every batch (relative to the other tasks).
      objective: 'diffusion' (Palette-style conditional denoising from pure noise),
        'regression' (one-step prediction of the clean image) or 'bridge' (iterative
        restoration that starts at the task's baseline; see ``mtlgen_jax.objectives``).
      loss: 'l2' or 'l1' per-pixel loss, or 'relative': each example's squared error
        divided by its start's (``start``, a constant of the batch), so every example
        weighs by how much it improves on its start rather than by how large its error
        is. Training then follows the mean per-example PSNR (whose gradient weighs each
        example by 1 / its error) instead of the mean squared error, which hard examples
        (large holes, textured crops, high noise) dominate. Needs a start (``residual``
        or the bridge); at a zero head it is exactly 1 for a one-pass residual.
      relative_floor_db: ``loss='relative'`` only (other losses ignore it, so a config's
        floor survives a switch of loss): the start's squared error is floored
        softly at that of a start this many dB from its target (``eps = 4 /
        10^(dB / 10)`` added before dividing), so no example weighs more than about
        ``1 / eps``. None: ``RELATIVE_LOSS_EPS`` (1e-4, a 46 dB start). Near-perfect
        starts (a flat crop's upsampling, a nearly gray photo's luminance) otherwise take
        most of the loss; ``bench/relative_floor.py`` prints each task's start errors on
        the training data and the floor at any quantile of them.
      residual: predict relative to the task's baseline (the clean-image estimate is
        ``baseline + head``; the head starts at zero, so an untrained model returns
        the baseline). Restoration tasks only.
      bridge_noise: the bridge's noise scale gamma (``objective='bridge'``): the noise
        of ``x_t`` is ``gamma sqrt(t (1 - t))``, zero at both ends.
      endpoint_fraction: the bridge's training examples drawn at t = 1 (the network sees
        the start alone: its output there is the one-step estimate, the fidelity
        operating point) instead of t ~ U(0, 1]; the others train the later steps. 0
        (what runs before the option did): every t uniform. ``objective='bridge'`` only.
      consistent: keep every clean-image estimate consistent with the condition: the
        task's ``project`` (inpainting: the known pixels pasted back; super-resolution:
        each factor x factor block's mean equal to its low-resolution pixel;
        colorization: the luminance equal to the gray input) is applied to each
        estimate while sampling and inside the training loss, so the network is
        scored only on what the condition does not already determine. Unset: the
        task's ``consistent_default`` (what runs made before the option did: inpainting
        pasted its known pixels, nothing else projected); the shipped configs set it.
      sample_steps: the sampler steps this task is evaluated and sampled at by default
        (``sampling.settings_for``); None: the run's ``eval.sample_steps``. For a task
        whose fidelity operating point is its 1-step estimate in a run whose other
        tasks gain from more steps. Not for a regression (one pass).
      **params: the task's own parameters (see each subclass).
    """

    name: ClassVar[str] = ""
    # What the evaluator reports for this task; the first is its primary metric (Δm).
    # Per-example metrics come from ``score`` (psnr, ssim: also for the baseline),
    # whole-set ones from ``score_samples``; 'diversity' is the evaluator's own.
    metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim")
    # False: generation from nothing (no condition image; ``condition`` refuses).
    has_condition: ClassVar[bool] = True
    # True: ``condition`` needs a mask of the missing pixels (inpainting).
    takes_mask: ClassVar[bool] = False
    # True when many outputs fit one condition (diversity is then reported).
    ill_posed: ClassVar[bool] = False
    # The model takes class labels (classifier-free guidance applies); see ``model_labels``.
    class_conditional: bool = False
    # A user's input is this many times smaller than the output (super-resolution).
    scale: int = 1
    # ``consistent`` when a config does not say (see __init__).
    consistent_default: ClassVar[bool] = False

    @property
    def input_channels(self) -> tuple[int, ...]:
        """Channel counts ``condition`` takes from a user's photo (default: the run's)."""
        return (self.channels,)

    def __init__(
        self,
        *,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        weight: float = 1.0,
        objective: str = "diffusion",
        loss: str = "l2",
        residual: bool = False,
        bridge_noise: float = 0.2,
        consistent: bool | None = None,
        endpoint_fraction: float = 0.0,
        sample_steps: int | None = None,
        relative_floor_db: float | None = None,
        **params: Any,
    ):
        if weight <= 0:
            raise ValueError(
                f"tasks.{self.name}.weight={weight}: a task's mixture weight must be > 0; "
                f"remove '{self.name}' from config.tasks.names to drop the task."
            )
        if objective not in OBJECTIVES:
            raise ValueError(
                f"tasks.{self.name}.objective={objective!r} is unknown; use one of {OBJECTIVES}."
            )
        if loss not in ("l1", "l2", "relative"):
            raise ValueError(f"tasks.{self.name}.loss={loss!r} is unknown; use 'l1', 'l2' or "
                             "'relative'.")
        has_baseline = self.has_condition and type(self).baseline is not Task.baseline
        if objective == "bridge" and not has_baseline:
            raise ValueError(
                f"tasks.{self.name}.objective='bridge': {self.name} has no condition image "
                "(or no baseline) to start the bridge from; use objective='diffusion'.")
        if residual and not has_baseline:
            raise ValueError(f"tasks.{self.name}.residual=True: {self.name} has no baseline to "
                             "predict relative to; drop residual.")
        if loss == "relative" and not (residual or objective == "bridge"):
            raise ValueError(f"tasks.{self.name}.loss='relative' divides by the error of the "
                             "task's start: use it with residual=True or objective='bridge'.")
        if not bridge_noise >= 0:
            raise ValueError(f"tasks.{self.name}.bridge_noise={bridge_noise} must be >= 0.")
        if not 0.0 <= endpoint_fraction <= 1.0:
            raise ValueError(f"tasks.{self.name}.endpoint_fraction={endpoint_fraction} must be "
                             "in [0, 1].")
        if endpoint_fraction and objective != "bridge":
            raise ValueError(f"tasks.{self.name}.endpoint_fraction={endpoint_fraction} draws "
                             f"bridge times; with objective={objective!r} drop it (or use "
                             "objective='bridge').")
        if sample_steps is not None and not (isinstance(sample_steps, int)
                                              and sample_steps >= 1):
            raise ValueError(f"tasks.{self.name}.sample_steps={sample_steps!r} must be an "
                             "integer >= 1 (or drop it: eval.sample_steps applies).")
        if sample_steps is not None and objective == "regression":
            raise ValueError(f"tasks.{self.name}.sample_steps={sample_steps}: a regression "
                             "samples in one pass, whatever the step count; drop it.")
        if relative_floor_db is not None and not 0.0 < float(relative_floor_db) < 100.0:
            raise ValueError(f"tasks.{self.name}.relative_floor_db={relative_floor_db} must be "
                             "a PSNR in dB in (0, 100), e.g. 30 (or None: 46 dB).")
        self.relative_floor_db = None if relative_floor_db is None else float(relative_floor_db)
        self.sample_steps = sample_steps
        self.endpoint_fraction = float(endpoint_fraction)
        self.residual = bool(residual)
        self.consistent = bool(self.consistent_default if consistent is None else consistent)
        self.bridge_noise = float(bridge_noise)
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.weight = float(weight)
        self.objective = objective
        self.loss = loss
        import inspect

        accepted = inspect.signature(self.configure).parameters
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"tasks.{self.name} got unknown parameter(s) {unknown}; "
                f"{self.name} takes {sorted(accepted) or 'none'} besides weight, objective, loss, "
                "residual, bridge_noise, consistent, endpoint_fraction, sample_steps, "
                "relative_floor_db."
            )
        self.configure(**params)

    def configure(self) -> None:
        """Takes the task's own parameters (keyword-only); the default has none."""

    # --- what every task defines -------------------------------------------------------
    def degrade(self, images: jax.Array, rng: jax.Array) -> Condition:
        """Builds the condition from clean images [B, H, W, C] in [-1, 1]."""
        raise NotImplementedError

    # --- what a task may override ------------------------------------------------------
    def loss_mask(self, cond: Condition) -> jax.Array | None:
        """[B, H, W, 1] pixels the loss (and the metrics) count, or None for all."""
        return None

    def model_labels(self, labels: jax.Array, rng: jax.Array, *, train: bool) -> jax.Array:
        """Class labels given to the model; the default is the "no label" token."""
        return jnp.full(labels.shape, self.num_classes, jnp.int32)

    def project(self, x0: jax.Array, cond: Condition) -> jax.Array:
        """The image nearest ``x0`` (in L2) that is consistent with the condition, when the
        condition fixes part of the image (the known pixels, the low-resolution image,
        the luminance): an affine orthogonal projection, differentiable. The default (no
        hard constraint, e.g. denoising) returns ``x0``. A clean image is its own
        projection, so projecting never moves an estimate away from the truth."""
        del cond
        return x0

    def postprocess(self, x0: jax.Array, cond: Condition) -> jax.Array:
        """Applied to each predicted clean image (already clipped to [-1, 1]) while
        sampling: with ``consistent``, ``project`` and clip again."""
        if not self.consistent:
            return x0
        return jnp.clip(self.project(x0, cond), -1.0, 1.0)

    @property
    def uses_start(self) -> bool:
        """Whether the objective starts from ``start`` (residual prediction, the bridge):
        the head's output is a correction of it, zero-initialised."""
        return self.residual or self.objective == "bridge"

    @property
    def projects_in_loss(self) -> bool:
        """Whether the training loss scores the ``project``-ed estimate (a consistent task
        whose head's output, plus the objective's offset, is a clean-image estimate)."""
        return self.consistent and self.predicts_image

    @property
    def predicts_image(self) -> bool:
        """Whether the head's output (plus the objective's offset) is a clean-image
        estimate -- every objective but plain diffusion, whose head predicts v or eps."""
        return self.objective != "diffusion" or self.residual

    def baseline(self, cond: Condition) -> jax.Array | None:
        """The trivial restoration from the condition alone, or None (what the
        evaluator reports as ``<metric>_baseline``)."""
        return None

    def start(self, cond: Condition) -> jax.Array | None:
        """The cheap estimate that residual prediction and the bridge start from (the
        clean-image estimate of a zero head). Defaults to ``baseline``; a task may
        start from something better than the trivial baseline it is scored against
        (inpainting: a smooth fill of the hole instead of its mean)."""
        return self.baseline(cond)

    @property
    def stochastic(self) -> bool:
        """Whether samples of one condition differ (diffusion; a bridge with noise)."""
        return self.objective == "diffusion" or (self.objective == "bridge"
                                                  and self.bridge_noise > 0)

    def condition(self, inputs: jax.Array, mask: jax.Array | None = None) -> Condition:
        """The condition from a user's degraded image (not from a clean one: ``degrade``).

        Args:
          inputs: [B, h, w, C] in [-1, 1]: the noisy photo, the gray photo, the
            low-resolution photo (h = H / ``scale``), the photo with a hole.
          mask: [B, H, W, 1], 1 = missing pixel; only tasks with ``takes_mask``.

        The default (a task whose input is its condition image, e.g. denoising) passes
        ``inputs`` through.
        """
        self._check_condition_args(mask)
        return Condition(image=inputs, mask=jnp.zeros(inputs.shape[:-1] + (1,), inputs.dtype))

    def _check_condition_args(self, mask) -> None:
        if not self.has_condition:
            raise ValueError(f"task {self.name!r} generates from nothing: it takes no input "
                             "image.")
        if (mask is not None) != self.takes_mask:
            raise ValueError(f"task {self.name!r} " + (
                "needs a mask of the missing pixels (True / white = missing)."
                if self.takes_mask else "takes no mask; pass mask=None."))

    def score(self, out: jax.Array, target: jax.Array, cond: Condition) -> dict[str, jax.Array]:
        """Per-example scores [B] of outputs against the clean targets.

        The default scores each of ``metrics`` that is a pixel metric (``psnr``: over the
        ``loss_mask`` pixels; ``ssim``; ``sharpness``, see ``metrics.sharpness``) for the
        output and, as ``<metric>_baseline``, for the task's ``baseline``.
        """
        mask = self.loss_mask(cond)
        fns = {"psnr": lambda x: metrics_lib.masked_psnr(x, target, mask),
               "ssim": lambda x: metrics_lib.ssim(x, target),
               "sharpness": lambda x: metrics_lib.sharpness(x, target)}
        base = self.baseline(cond)
        out_scores = {}
        for name in (m for m in self.metrics if m in fns):
            out_scores[name] = fns[name](out)
            if base is not None:
                out_scores[f"{name}_baseline"] = fns[name](base)
        return out_scores

    def degrade_info(self, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-example parameters [B] of the degradation ``degrade(images, rng)`` drew
        (e.g. the noise level), for ``classical``. The default has none."""
        del images, rng
        return {}

    def classical(self, cond: Condition, info: dict[str, np.ndarray]) -> np.ndarray | None:
        """A classical (non-learned) restoration of host conditions, float [B, H, W, C] in
        [-1, 1], given ``degrade_info``'s parameters; None where the task has none. It
        sets the bar a learned model must clear."""
        del cond, info
        return None

    def score_samples(self, images: np.ndarray, labels: np.ndarray,
                      dataset_config: Any) -> dict[str, float]:
        """Scores of all evaluated outputs together (host side; uint8 [N, H, W, C] and
        the labels they were sampled with). The default has none."""
        del images, labels, dataset_config
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, objective={self.objective!r})"


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: makes a task available by its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"task name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(sorted(_REGISTRY))


def get_class(name: str) -> type[Task]:
    """The task class registered as ``name``; clear error for unknown names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}.")
    return _REGISTRY[name]

