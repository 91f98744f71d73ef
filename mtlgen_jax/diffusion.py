"""Noise schedules, the training objective and samplers for conditional diffusion.

Conventions (VDM / DDIM, as used by Palette-style image-to-image diffusion):

* Images are float in ``[-1, 1]`` with shape ``[B, H, W, C]``.
* Time is continuous, ``t`` in ``[0, 1]``: ``t = 0`` is the clean image and
  ``t = 1`` is (almost) pure noise. "Discrete time" with ``T`` steps means ``t``
  drawn from ``{1/T, 2/T, ..., 1}``.
* ``alpha_bar(t)`` is the signal fraction of the variance-preserving forward
  process: ``x_t = alpha * x0 + sigma * eps`` with ``alpha = sqrt(alpha_bar)``,
  ``sigma = sqrt(1 - alpha_bar)`` and ``eps ~ N(0, I)``.
* The model predicts one of ``'eps'`` (the noise), ``'x0'`` (the clean image)
  or ``'v'`` (``alpha * eps - sigma * x0``, Salimans & Ho 2022).

The samplers take ``model_fn(x_t, t) -> pred`` with ``t`` a ``[B]`` float32
vector; conditioning (the degraded image, task id, class label, classifier-free
guidance) is closed over by the caller's ``model_fn``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]  # (x_t [B,H,W,C], t [B]) -> pred [B,H,W,C]
X0Fn = Callable[[Array], Array]  # x0_hat [B,H,W,C] -> x0_hat [B,H,W,C]

PREDICTIONS = ("eps", "v", "x0")

# Floor for divisions by sigma: sigma is 0 only at t = 0 exactly, where no sampler
# evaluates the model; the floor keeps an eps recovered from an x0 prediction finite there.
_SIGMA_FLOOR = 1e-6


# --------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """Cosine schedule of Nichol & Dhariwal (2021), in continuous time.

    ``alpha_bar(t) = cos^2(g(t)) / cos^2(g(0))`` with ``g`` linear in ``t``. The
    original ``g(t) = (t + s) / (1 + s) * pi / 2`` reaches ``pi / 2`` at ``t = 1``,
    where ``alpha_bar`` is exactly 0 and the log-SNR is -inf. Here the end angle is
    pulled in slightly (a ~0.4% rescaling of time) so that ``alpha_bar(1)`` equals
    ``sigmoid(min_log_snr)`` (4.5e-5 for the default -10): tiny but positive, so
    ``x0`` stays recoverable from an eps prediction and the log-SNR is finite.
    The schedule stays smooth and strictly decreasing; ``alpha_bar(0) = 1``.

    Attributes:
        s: the offset that keeps the noise level at small ``t`` from being too small.
        min_log_snr: the log-SNR at ``t = 1``.
    """

    s: float = 0.008
    min_log_snr: float = -10.0

    def _angles(self) -> tuple[float, float]:
        g0 = self.s / (1.0 + self.s) * math.pi / 2
        ab_min = 1.0 / (1.0 + math.exp(-self.min_log_snr))
        g1 = math.acos(math.sqrt(ab_min) * math.cos(g0))
        return g0, g1

    def alpha_bar(self, t: Array) -> Array:
        """Signal variance fraction at time ``t`` (any shape, float in [0, 1])."""
        g0, g1 = self._angles()
        g = g0 + jnp.asarray(t, jnp.float32) * (g1 - g0)
        return (jnp.cos(g) / math.cos(g0)) ** 2

    def one_minus_alpha_bar(self, t: Array) -> Array:
        """``1 - alpha_bar(t)``, computed without cancellation near ``t = 0``."""
        g0, g1 = self._angles()
        g = g0 + jnp.asarray(t, jnp.float32) * (g1 - g0)
        # cos^2(g0) - cos^2(g) = sin(g - g0) * sin(g + g0).
        return jnp.sin(g - g0) * jnp.sin(g + g0) / math.cos(g0) ** 2


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """The DDPM linear-beta schedule (Ho et al. 2020) as a continuous ``alpha_bar(t)``.

    DDPM uses ``beta_n`` linear from ``beta_min`` to ``beta_max`` over
    ``num_steps`` steps and ``alpha_bar_n = prod_{i <= n} (1 - beta_i)``. Here the
    product becomes an integral, ``log alpha_bar(t) = N * int_0^t log(1 - beta(u)) du``
    with ``beta(u)`` linear from ``beta_min`` to ``beta_max`` over ``u`` in [0, 1],
    which has a closed form. It matches the discrete product to within 0.5%
    at every step; ``alpha_bar(0) = 1`` and ``alpha_bar(1) ~ 4.0e-5``
    (log-SNR ~ -10.1).

    Attributes:
        beta_min: first DDPM beta.
        beta_max: last DDPM beta.
        num_steps: the DDPM step count the betas refer to.
    """

    beta_min: float = 1e-4
    beta_max: float = 0.02
    num_steps: int = 1000

    def log_alpha_bar(self, t: Array) -> Array:
        """``log alpha_bar(t)`` (any shape, float in [0, 1])."""
        t = jnp.asarray(t, jnp.float32)
        lo = self.beta_min
        hi = self.beta_min + t * (self.beta_max - self.beta_min)
        # int_lo^hi log(1 - b) db = -sum_k (hi^(k+1) - lo^(k+1)) / (k (k + 1)), and
        # hi^(k+1) - lo^(k+1) = (hi - lo) * sum_j hi^j lo^(k-j): factoring out
        # (hi - lo) avoids float32 cancellation at small t. Terms past k = 6 are
        # below 1e-14 for betas <= 0.02.
        total = jnp.zeros_like(t)
        for k in range(1, 7):
            h = sum(hi**j * lo ** (k - j) for j in range(k + 1))
            total = total + h / (k * (k + 1))
        # (hi - lo) / (beta_max - beta_min) = t.
        return -self.num_steps * t * total

    def alpha_bar(self, t: Array) -> Array:
        """Signal variance fraction at time ``t`` (any shape, float in [0, 1])."""
        return jnp.exp(self.log_alpha_bar(t))

    def one_minus_alpha_bar(self, t: Array) -> Array:
        """``1 - alpha_bar(t)``, computed without cancellation near ``t = 0``."""
        return -jnp.expm1(self.log_alpha_bar(t))


Schedule = CosineSchedule | LinearSchedule

_SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "cosine": CosineSchedule,
    "linear": LinearSchedule,
}


def get_schedule(name: str) -> Schedule:
    """Returns the named noise schedule (a frozen, hashable dataclass).

    Args:
        name: ``'cosine'`` or ``'linear'``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; known: {sorted(_SCHEDULES)}")
    return _SCHEDULES[name]()


def log_snr(t: Array, schedule: Schedule) -> Array:
    """``log(alpha_bar / (1 - alpha_bar))`` at ``t``; +inf at ``t = 0``."""
    return jnp.log(schedule.alpha_bar(t)) - jnp.log(schedule.one_minus_alpha_bar(t))


def _alpha_sigma(t: Array, schedule: Schedule, ndim: int) -> tuple[Array, Array]:
    """``alpha, sigma`` at ``t [B]``, reshaped to broadcast over ``ndim``-d images."""
    t = jnp.asarray(t, jnp.float32)
    shape = t.shape + (1,) * (ndim - t.ndim)
    alpha = jnp.sqrt(schedule.alpha_bar(t)).reshape(shape)
    sigma = jnp.sqrt(jnp.maximum(schedule.one_minus_alpha_bar(t), 0.0)).reshape(shape)
    return alpha, sigma


# --------------------------------------------------------------------------- training


def sample_time(rng: Array, batch: int, *, discrete_steps: int | None = None) -> Array:
    """Draws training times ``t [batch]`` float32 in ``(0, 1]``.

    Args:
        rng: a PRNG key.
        batch: how many times.
        discrete_steps: ``None`` for continuous uniform ``t`` in ``(0, 1]``; ``T``
            for ``t`` uniform on ``{1/T, ..., T/T}``.
    """
    if discrete_steps is None:
        # uniform is in [0, 1); 1 - u is in (0, 1], so t = 0 (no noise) never appears.
        return 1.0 - jax.random.uniform(rng, (batch,), jnp.float32)
    steps = jax.random.randint(rng, (batch,), 1, discrete_steps + 1)
    return steps.astype(jnp.float32) / discrete_steps


def q_sample(x0: Array, eps: Array, t: Array, schedule: Schedule) -> Array:
    """Forward process: ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``.

    Args:
        x0: clean images ``[B, H, W, C]`` in [-1, 1].
        eps: standard normal noise, same shape.
        t: times ``[B]``.
        schedule: the noise schedule.
    """
    alpha, sigma = _alpha_sigma(t, schedule, x0.ndim)
    return alpha * x0 + sigma * eps


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; known: {list(PREDICTIONS)}")


def target(x0: Array, eps: Array, t: Array, schedule: Schedule, prediction: str) -> Array:
    """The regression target for the model's output.

    Args:
        x0: clean images ``[B, H, W, C]``.
        eps: the noise used in ``q_sample``, same shape.
        t: times ``[B]``.
        schedule: the noise schedule.
        prediction: ``'eps'``, ``'x0'`` or ``'v'`` (``alpha eps - sigma x0``).

    Returns:
        ``[B, H, W, C]``.
    """
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    alpha, sigma = _alpha_sigma(t, schedule, x0.ndim)
    return alpha * eps - sigma * x0


def to_x0_eps(
    pred: Array, x_t: Array, t: Array, schedule: Schedule, prediction: str
) -> tuple[Array, Array]:
    """Turns a model output into ``(x0_hat, eps_hat)``; the inverse of ``target``.

    Safe at both ends of time: ``alpha >= sqrt(alpha_bar(1)) > 0`` for both
    schedules, ``v`` needs no division (``alpha^2 + sigma^2 = 1``), and the one
    division by ``sigma`` (eps from an x0 prediction) uses a floor, so the
    output is finite even at ``t = 0`` (where that eps is meaningless anyway).

    Args:
        pred: the model output ``[B, H, W, C]``.
        x_t: the noisy input it was given, same shape.
        t: times ``[B]``.
        schedule: the noise schedule.
        prediction: what ``pred`` is: ``'eps'``, ``'x0'`` or ``'v'``.

    Returns:
        ``x0_hat, eps_hat``, each ``[B, H, W, C]``.
    """
    _check_prediction(prediction)
    alpha, sigma = _alpha_sigma(t, schedule, x_t.ndim)
    if prediction == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if prediction == "x0":
        return pred, _eps_from_x0(pred, x_t, alpha, sigma)
    return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred


def _eps_from_x0(x0: Array, x_t: Array, alpha: Array, sigma: Array) -> Array:
    return (x_t - alpha * x0) / jnp.maximum(sigma, _SIGMA_FLOOR)


def loss(pred: Array, target: Array, mask: Array | None = None, kind: str = "l2") -> Array:
    """Per-example mean error over the masked elements.

    Args:
        pred: model output ``[B, H, W, C]``.
        target: regression target, same shape.
        mask: ``None`` (all pixels) or ``[B, H, W, 1]`` (or ``[B, H, W, C]``) with 1
            where the loss counts. An example whose mask is empty gets loss 0.
        kind: ``'l2'`` (squared error) or ``'l1'`` (absolute error).

    Returns:
        ``[B]``: the sum of the error over masked elements divided by their number
        (a masked pixel counts ``C`` elements).
    """
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    if kind == "l2":
        err = jnp.square(diff)
    elif kind == "l1":
        err = jnp.abs(diff)
    else:
        raise ValueError(f"Unknown loss kind {kind!r}; known: ['l1', 'l2']")
    axes = tuple(range(1, err.ndim))
    if mask is None:
        return jnp.mean(err, axis=axes)
    mask = jnp.broadcast_to(mask.astype(jnp.float32), err.shape)
    count = jnp.sum(mask, axis=axes)  # [B]
    return jnp.sum(err * mask, axis=axes) / jnp.maximum(count, 1.0)


def guided(pred_cond: Array, pred_uncond: Array, scale: float | Array) -> Array:
    """Classifier-free guidance: ``pred_uncond + scale * (pred_cond - pred_uncond)``.

    Convention: ``scale = 1`` is the plain conditional model, ``scale = 0`` the
    unconditional one, ``scale > 1`` pushes further toward the condition. (Some
    papers write ``(1 + w) cond - w uncond``; that ``w`` is ``scale - 1`` here.)
    Apply it to eps or v predictions (the combination is linear, so it commutes
    with ``to_x0_eps``).
    """
    return pred_uncond + scale * (pred_cond - pred_uncond)


# --------------------------------------------------------------------------- samplers


def _predict_x0(
    model_fn: ModelFn,
    x_t: Array,
    t: Array,
    *,
    schedule: Schedule,
    prediction: str,
    x0_fn: X0Fn | None,
    clip: bool,
) -> tuple[Array, Array]:
    """One model call at scalar time ``t`` -> ``(x0_hat, eps_hat)``.

    ``x0_hat`` is clipped to [-1, 1] (if ``clip``) and then passed through
    ``x0_fn``; ``eps_hat`` is then recomputed from that final ``x0_hat`` so the
    step stays consistent with it (as guided-diffusion's DDIM does).
    """
    t_vec = jnp.full((x_t.shape[0],), t, jnp.float32)  # [B]
    pred = model_fn(x_t, t_vec).astype(jnp.float32)  # a bf16 model still samples in f32
    x0_hat, eps_hat = to_x0_eps(pred, x_t, t_vec, schedule, prediction)
    if not clip and x0_fn is None:
        return x0_hat, eps_hat
    if clip:
        x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    if x0_fn is not None:
        x0_hat = x0_fn(x0_hat)
    alpha, sigma = _alpha_sigma(t_vec, schedule, x_t.ndim)
    return x0_hat, _eps_from_x0(x0_hat, x_t, alpha, sigma)


def batch_normal(rng: Array, shape: tuple[int, ...]) -> Array:
    """Standard normal ``[B, ...]`` noise, row ``b`` drawn from ``fold_in(rng, b)``: a
    sample's noise does not depend on the other rows of its batch, so padding a batch to
    the device count (or splitting it) leaves every real row's sample unchanged."""
    return jax.vmap(lambda b: jax.random.normal(jax.random.fold_in(rng, b), shape[1:],
                                                jnp.float32))(jnp.arange(shape[0]))


def _times(i: Array, steps: int) -> tuple[Array, Array]:
    """Loop index ``i`` in ``[0, steps)`` -> ``(t, s)``: from ``t`` down to ``s``."""
    t = (steps - i).astype(jnp.float32) / steps
    s = (steps - i - 1).astype(jnp.float32) / steps
    return t, s


def ddim_sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    rng: Array,
    *,
    schedule: Schedule,
    prediction: str,
    steps: int,
    eta: float = 0.0,
    x0_fn: X0Fn | None = None,
    clip: bool = True,
) -> Array:
    """DDIM sampler (Song et al. 2021) on the uniform grid ``t = 1, (S-1)/S, ..., 0``.

    Starts from ``x_1 ~ N(0, I)`` and takes ``steps`` model calls. Each step from
    ``t`` to ``s < t`` is
    ``x_s = alpha_s x0_hat + sqrt(1 - ab_s - c^2) eps_hat + c z`` with
    ``c = eta * sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))``; ``eta = 0`` is
    deterministic given ``rng`` (only the initial noise is random), ``eta = 1``
    matches DDPM's ancestral variance. Jit-compatible (``steps`` must be static).

    Args:
        model_fn: ``(x_t [B,H,W,C], t [B] float32) -> pred``.
        shape: ``(B, H, W, C)``.
        rng: PRNG key for the initial noise (and the per-step noise if ``eta > 0``).
        schedule: the noise schedule the model was trained with.
        prediction: what the model predicts: ``'eps'``, ``'x0'`` or ``'v'``.
        steps: number of model calls (static).
        eta: stochasticity, 0 (DDIM) to 1 (DDPM-like).
        x0_fn: optional hook applied to each step's predicted clean image (after
            clipping), e.g. to paste known pixels for inpainting.
        clip: clip each predicted clean image to [-1, 1].

    Returns:
        The last step's predicted clean image ``[B, H, W, C]`` (the step to ``t = 0``).
    """
    _check_prediction(prediction)
    rng_init, rng_loop = jax.random.split(rng)
    x_init = batch_normal(rng_init, shape)

    def body(i, carry):
        x_t, _ = carry
        t, s = _times(i, steps)
        x0_hat, eps_hat = _predict_x0(
            model_fn, x_t, t, schedule=schedule, prediction=prediction, x0_fn=x0_fn, clip=clip
        )
        om_t = schedule.one_minus_alpha_bar(t)
        ab_s, om_s = schedule.alpha_bar(s), schedule.one_minus_alpha_bar(s)
        # (1 - ab_t / ab_s) written as (om_t - om_s) / ab_s to avoid cancellation.
        c2 = eta**2 * om_s / om_t * (om_t - om_s) / ab_s
        x_s = jnp.sqrt(ab_s) * x0_hat + jnp.sqrt(jnp.maximum(om_s - c2, 0.0)) * eps_hat
        if not (isinstance(eta, int | float) and eta == 0):  # a Python 0 draws no noise
            z = batch_normal(jax.random.fold_in(rng_loop, i), shape)
            x_s = x_s + jnp.sqrt(c2) * z
        return x_s, x0_hat

    _, x0_hat = jax.lax.fori_loop(0, steps, body, (x_init, jnp.zeros(shape, jnp.float32)))
    return x0_hat


def ddpm_sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    rng: Array,
    *,
    schedule: Schedule,
    prediction: str,
    steps: int,
    x0_fn: X0Fn | None = None,
    clip: bool = True,
) -> Array:
    """Ancestral sampler: draws ``x_s ~ q(x_s | x_t, x0 = x0_hat)`` at each step.

    Uses the Gaussian posterior of the forward process on the uniform grid
    ``t = 1, (S-1)/S, ..., 0``:
    ``mean = sqrt(ab_s) b / (1 - ab_t) x0_hat + sqrt(ab_t / ab_s) (1 - ab_s) / (1 - ab_t) x_t``,
    ``var = b (1 - ab_s) / (1 - ab_t)`` with ``b = 1 - ab_t / ab_s``. The last
    step (to ``s = 0``) has zero variance. Jit-compatible (``steps`` static).

    Args:
        model_fn: ``(x_t [B,H,W,C], t [B] float32) -> pred``.
        shape: ``(B, H, W, C)``.
        rng: PRNG key for the initial and per-step noise.
        schedule: the noise schedule the model was trained with.
        prediction: what the model predicts: ``'eps'``, ``'x0'`` or ``'v'``.
        steps: number of model calls (static).
        x0_fn: optional hook applied to each step's predicted clean image (after
            clipping), e.g. to paste known pixels for inpainting.
        clip: clip each predicted clean image to [-1, 1].

    Returns:
        The last step's predicted clean image ``[B, H, W, C]``.
    """
    _check_prediction(prediction)
    rng_init, rng_loop = jax.random.split(rng)
    x_init = batch_normal(rng_init, shape)

    def body(i, carry):
        x_t, _ = carry
        t, s = _times(i, steps)
        x0_hat, _ = _predict_x0(
            model_fn, x_t, t, schedule=schedule, prediction=prediction, x0_fn=x0_fn, clip=clip
        )
        ab_t, om_t = schedule.alpha_bar(t), schedule.one_minus_alpha_bar(t)
        ab_s, om_s = schedule.alpha_bar(s), schedule.one_minus_alpha_bar(s)
        beta = (om_t - om_s) / ab_s  # 1 - ab_t / ab_s
        mean = (jnp.sqrt(ab_s) * beta / om_t) * x0_hat + (jnp.sqrt(ab_t / ab_s) * om_s / om_t) * x_t
        var = beta * om_s / om_t
        z = batch_normal(jax.random.fold_in(rng_loop, i), shape)
        return mean + jnp.sqrt(jnp.maximum(var, 0.0)) * z, x0_hat

    _, x0_hat = jax.lax.fori_loop(0, steps, body, (x_init, jnp.zeros(shape, jnp.float32)))
    return x0_hat
