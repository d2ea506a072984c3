"""Integrated gradients (Sundararajan, Taly and Yan, 2017).

``IG_i(x) = (x_i - x'_i) * int_0^1 d f_t(x' + a (x - x')) / d x_i da`` with
baseline ``x'``, approximated by a quadrature rule over ``steps`` points of
the straight path. By the fundamental theorem of calculus the attributions
add up to ``f_t(x) - f_t(x')`` (completeness); the residual of the
quadrature is reported per image as ``extras["completeness_gap"]``.

The map is the signed sum of the attributions over channels (logit units).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["RULES", "IntegratedGradientsConfig", "explain", "make_baseline"]

RULES = ("trapezoid", "left", "right", "middle")
BASELINES = ("zeros", "black", "mean", "blurred")


@dataclasses.dataclass(frozen=True)
class IntegratedGradientsConfig:
    """Static settings of integrated gradients.

    Attributes:
        steps: gradient evaluations along the path (``>= 1``; ``>= 2`` for the
            trapezoid rule, whose points include both ends).
        rule: quadrature rule, one of :data:`RULES`. ``"trapezoid"`` evaluates
            ``linspace(0, 1, steps)`` with halved end weights; ``"left"``,
            ``"right"`` and ``"middle"`` are Riemann sums on ``steps`` equal
            intervals.
        internal_batch_size: path points evaluated together (each on the whole
            image batch, so the model sees ``B * internal_batch_size`` images);
            bounds memory. CPUs prefer small calls (docs/benchmarks.md);
            raise it on accelerators.
    """

    steps: int = 300
    rule: str = "trapezoid"
    internal_batch_size: int = 4

    def __post_init__(self):
        common.check_positive_int("steps", self.steps)
        common.check_positive_int("internal_batch_size", self.internal_batch_size)
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")
        if self.rule == "trapezoid" and self.steps < 2:
            raise ValueError(
                f"the trapezoid rule needs steps >= 2 (both path ends), got "
                f"{self.steps}."
            )


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Path points and weights of a rule on ``[0, 1]``: two ``float32 (steps,)``."""
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] *= 0.5
    else:
        offset = {"left": 0.0, "middle": 0.5, "right": 1.0}[rule]
        alphas = (np.arange(steps) + offset) / steps
        weights = np.full(steps, 1.0 / steps)
    return alphas.astype(np.float32), weights.astype(np.float32)


def _blur_matrix(size: int, sigma: float) -> Array:
    """Row-normalised Gaussian smoothing matrix ``(size, size)``."""
    pos = jnp.arange(size, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
    return kernel / jnp.sum(kernel, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("kind", "blur_sigma"))
def _named_baseline(images: Array, kind: str, blur_sigma: float) -> Array:
    if kind in ("zeros", "black"):
        return jnp.zeros_like(images)
    if kind == "mean":
        return jnp.broadcast_to(
            jnp.mean(images, axis=(1, 2), keepdims=True), images.shape
        )
    blur_h = _blur_matrix(images.shape[1], blur_sigma)
    blur_w = _blur_matrix(images.shape[2], blur_sigma)
    return jnp.einsum("ih,bhwc,jw->bijc", blur_h, images, blur_w)


def make_baseline(
    images: Array, baseline: str | Array = "zeros", *, blur_sigma: float = 5.0
) -> Array:
    """Builds the IG baseline for a batch of images.

    Args:
        images: ``float32 (B, H, W, C)``.
        baseline: ``"zeros"``/``"black"`` (all zeros), ``"mean"`` (each image's
            mean colour), ``"blurred"`` (Gaussian blur of the image with
            standard deviation ``blur_sigma`` pixels, borders renormalised), or
            an array broadcastable to ``images.shape``.
        blur_sigma: blur width in pixels (``> 0``), only for ``"blurred"``.

    Returns:
        ``float32 (B, H, W, C)``.

    Raises:
        ValueError: for an unknown name, a non-positive ``blur_sigma`` or an
            array that does not broadcast to the images.
    """
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(
                f"baseline must be one of {BASELINES} or an array, got {baseline!r}."
            )
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0 pixels, got {blur_sigma}.")
        return _named_baseline(images, baseline, float(blur_sigma))
    baseline = jnp.asarray(baseline, dtype=jnp.float32)
    try:
        return jnp.broadcast_to(baseline, images.shape)
    except ValueError:
        raise ValueError(
            f"baseline of shape {baseline.shape} does not broadcast to the images' "
            f"shape {images.shape}."
        ) from None


@jax.jit
def _endpoints(model_fn, images, baseline, target):
    """Target logits at both path ends (one forward pass each) and the path.

    Returns ``(target (B,), f_t(x) (B,), f_t(baseline) (B,), x - baseline)``.
    """
    batch = images.shape[0]
    ends = model_fn(jnp.concatenate([images, baseline], axis=0))
    logits_x, logits_b = ends[:batch], ends[batch:]
    target = common.resolve_target(target, logits_x)
    f_x = common.select_logit(logits_x, target)
    f_b = common.select_logit(logits_b, target)
    return target, f_x, f_b, images - baseline


def _weighted_gradients(model_fn, baseline, delta, target, points):
    """``sum_k weight_k * grad f_t(baseline + alpha_k * delta)`` over a chunk
    ``points = (alphas (n,), weights (n,))``: one forward+backward pass on the
    ``n * B`` path images, ``(B, H, W, C)``."""
    alphas, weights = points
    n, batch = alphas.shape[0], baseline.shape[0]
    path = baseline[None] + alphas[:, None, None, None, None] * delta[None]
    _, _, gradients = common.target_gradient(
        model_fn, path.reshape(n * batch, *baseline.shape[1:]), jnp.tile(target, n)
    )
    gradients = gradients.reshape(n, *baseline.shape)
    return jnp.einsum(
        "k,kbhwc->bhwc", weights, gradients, precision=jax.lax.Precision.HIGHEST
    )


@jax.jit
def _finish(delta, path_integral, f_x, f_b, target):
    attributions = delta * path_integral
    gap = jnp.sum(attributions, axis=(1, 2, 3)) - (f_x - f_b)
    extras = {
        "attributions": attributions,
        "completeness_gap": gap,
        "input_logit": f_x,
        "baseline_logit": f_b,
        "target": target,
    }
    return common.reduce_sum(attributions), extras


def _worker(model_fn, images, baseline, target, config: IntegratedGradientsConfig):
    """Maps ``(B, H, W)`` and extras; path points in compiled chunks."""
    target, f_x, f_b, delta = _endpoints(model_fn, images, baseline, target)
    integrand = Partial(_weighted_gradients, model_fn, baseline, delta, target)
    path_integral = common.chunked_sum(
        integrand,
        quadrature(config.steps, config.rule),
        config.internal_batch_size,
    )
    return _finish(delta, path_integral, f_x, f_b, target)


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
    steps: int = 300,
    rule: str = "trapezoid",
    baseline: str | Array = "zeros",
    blur_sigma: float = 5.0,
    internal_batch_size: int = 4,
) -> common.Explanation:
    """Integrated gradients of the target logit.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class of
            the input.
        steps: gradient evaluations along the path (default 300, the paper's
            reference budget).
        rule: quadrature rule (see :class:`IntegratedGradientsConfig`).
        baseline: see :func:`make_baseline`.
        blur_sigma: Gaussian width in pixels for ``baseline="blurred"``.
        internal_batch_size: path points per vectorised chunk.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)`` (signed channel sum) and
        extras ``attributions (B, H, W, C)``, ``completeness_gap (B,)`` =
        ``sum(attributions) - (f_t(x) - f_t(baseline))``, ``input_logit``,
        ``baseline_logit`` and ``target`` (all ``(B,)``). ``model_calls =
        steps + 2``: one forward+backward per path point plus the forward
        passes at the input and at the baseline.

    Raises:
        ValueError: for malformed images, targets, baselines or settings.
    """
    del key
    config = IntegratedGradientsConfig(steps, rule, internal_batch_size)
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    classes = common.num_classes(model_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    baseline = make_baseline(images, baseline, blur_sigma=blur_sigma)
    maps, extras = _worker(model_fn, images, baseline, target, config)
    return common.Explanation(maps, extras, config.steps + 2, "integrated_gradients")
