"""Adversarial robustness as the smallest L2 perturbation that flips a prediction.

Paper App. F.2 (Table 3): for each image, adversarial examples are computed
towards the top-k incorrect classes (those of highest probability), each
"just" successful, i.e. on the decision boundary, and the robustness is the
mean L2 norm of these perturbations over images.

:func:`minimal_l2_attack` does this for a classifier ``logit_fn``. For an
image ``x`` with predicted class ``y`` and a target ``t``, the margin

    ``g(x) = z_t(x) - max_{j != t} z_j(x)``

is negative at ``x`` and the decision boundary towards ``t`` is ``g = 0``.
A targeted DeepFool iteration (Moosavi-Dezfooli et al. 2016) linearises
``g`` and steps to the linearised boundary, ``r <- r - g / ||grad g||^2
grad g``, until the point ``x + (1 + overshoot) r`` lies beyond it; then a
bisection along that perturbation returns the point of the segment on the
boundary, on its adversarial side (``g >= 0``), to ``2^-bisection_steps``
of the perturbation's length. For a linear classifier and two classes the
first step is exact, so the result is the minimal perturbation.

Perturbations are not clipped to the image range (as in DeepFool): the
norm measures the classifier, not the pixel range. Every iteration is one
compiled call in a host loop (XLA:CPU runs gradients inside compiled loops
slowly), which stops as soon as every attack has crossed its boundary.

Example:
    >>> import jax.numpy as jnp
    >>> from jax.tree_util import Partial
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    >>> fn = Partial(lambda x: x.reshape(x.shape[0], -1) @ w.T)
    >>> x = jnp.array([[[[0.8], [0.2]]]])       # (1, 1, 2, 1): class 0 wins by 0.6
    >>> res = minimal_l2_attack(fn, x, top_k=1)
    >>> int(res.targets[0, 0]), round(float(res.norm[0, 0]), 4)  # 0.6 / sqrt(2)
    (1, 0.4243)
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard import validation
from jax_infodiscard.types import Array

__all__ = ["MinimalL2Result", "minimal_l2_attack"]


class MinimalL2Result(NamedTuple):
    """Minimal-L2 perturbations towards the top-k wrong classes.

    Attributes:
      perturbation: float32 ``(B, k, H, W, C)``; ``images[:, None] +
        perturbation`` lies on the boundary towards each target.
      norm: float32 ``(B, k)``: L2 norm of each perturbation (unit-range
        pixel values); NaN where the attack failed.
      targets: int32 ``(B, k)``: target classes, most probable first.
      source: int32 ``(B,)``: predicted class of each clean image.
      margin: float32 ``(B, k)``: ``g`` at the returned point (logit units;
        ``>= 0`` and near 0 on success).
      success: bool ``(B, k)``: the boundary was crossed within
        ``max_iter`` iterations.
      iterations: linearised steps taken by the slowest attack (1 for a
        linear classifier).
    """

    perturbation: np.ndarray
    norm: np.ndarray
    targets: np.ndarray
    source: np.ndarray
    margin: np.ndarray
    success: np.ndarray
    iterations: int

    def robustness(self) -> float:
        """Mean L2 norm over images and targets of the successful attacks."""
        ok = self.success & np.isfinite(self.norm)
        return float(np.mean(self.norm[ok])) if ok.any() else float("nan")


def _margin(logits: Array, targets: Array) -> Array:
    """``z_t - max_{j != t} z_j`` per row: ``(N, K), (N,) -> (N,)``."""
    hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=bool)
    z_t = jnp.sum(jnp.where(hot, logits, 0.0), axis=-1)
    others = jnp.max(jnp.where(hot, -jnp.inf, logits), axis=-1)
    return z_t - others


@jax.jit
def _clean(logit_fn, x):
    return logit_fn(x)


@partial(jax.jit, static_argnames=("overshoot",))
def _deepfool_step(logit_fn, x0, r, targets, active, *, overshoot):
    """One linearised step for every attack that has not crossed yet.

    Returns ``(r, margin_at_current, crossed)``, shapes ``(N, ...)``,
    ``(N,)``, ``(N,)``.
    """

    def total(x):
        g = _margin(logit_fn(x), targets)
        return jnp.sum(g), g

    x = x0 + (1.0 + overshoot) * r
    grad, g = jax.grad(total, has_aux=True)(x)
    crossed = g >= 0
    norm2 = jnp.sum(jnp.square(grad), axis=(1, 2, 3))
    scale = (jnp.abs(g) + 1e-4) / jnp.maximum(norm2, 1e-20)
    move = active & ~crossed
    r = jnp.where(move[:, None, None, None], r + scale[:, None, None, None] * grad, r)
    return r, g, crossed


@jax.jit
def _margin_at(logit_fn, x0, p, s, targets):
    return _margin(logit_fn(x0 + s[:, None, None, None] * p), targets)


def minimal_l2_attack(
    logit_fn,
    images,
    *,
    top_k: int = 5,
    max_iter: int = 50,
    overshoot: float = 0.02,
    bisection_steps: int = 20,
) -> MinimalL2Result:
    """Smallest L2 perturbations that move each image to the top-k wrong classes.

    Args:
      logit_fn: ``logit_fn(images (N, H, W, C)) -> logits (N, K)``; a
        :class:`jax.tree_util.Partial` (e.g.
        :func:`jax_infodiscard.models.model_fn`) or a plain callable. The
        logits of one image must not depend on the others (inference-mode
        BatchNorm).
      images: float32 ``(B, H, W, C)``.
      top_k: targets per image: the ``top_k`` most probable classes other
        than the predicted one, ``1 <= top_k < K``.
      max_iter: DeepFool iterations at most.
      overshoot: relative overshoot of each trial point past the linearised
        boundary (DeepFool's 0.02); the bisection removes it.
      bisection_steps: halvings of the final segment; the returned point is
        within ``2^-bisection_steps`` of the perturbation's length from
        the boundary.

    Returns:
      A :class:`MinimalL2Result` (NumPy arrays).

    Raises:
      TypeError: ``logit_fn`` not callable, or bad argument types.
      ValueError: bad images, ``top_k`` out of range, logits not ``(B, K)``.
    """
    fn = validation.as_partial(logit_fn, "logit_fn")
    x = validation.check_images(images)
    top_k = validation.check_int("top_k", top_k)
    max_iter = validation.check_int("max_iter", max_iter)
    bisection_steps = validation.check_int("bisection_steps", bisection_steps, 0)
    overshoot = validation.check_number("overshoot", overshoot, minimum=0.0)
    logits = np.asarray(_clean(fn, x))
    b = x.shape[0]
    if logits.ndim != 2 or logits.shape[0] != b:
        raise ValueError(
            f"logit_fn must return logits of shape ({b}, K), got {logits.shape}"
        )
    num_classes = logits.shape[1]
    if top_k >= num_classes:
        raise ValueError(
            f"top_k must be < the {num_classes} classes (targets exclude the "
            f"predicted class), got {top_k}"
        )
    validation.check_finite("logits", logits)
    order = np.argsort(-logits, axis=1, kind="stable")
    source = order[:, 0].astype(np.int32)
    targets = order[:, 1 : 1 + top_k].astype(np.int32)

    x0 = jnp.repeat(x, top_k, axis=0)  # (B * k, H, W, C), image-major
    tgt = jnp.asarray(targets.reshape(-1))
    r = jnp.zeros_like(x0)
    active = jnp.ones((b * top_k,), bool)
    crossed = np.zeros((b * top_k,), bool)
    taken = max_iter
    # Iteration i checks the point of the i - 1 steps taken so far, then
    # steps every attack that has not crossed; one more call checks the last.
    for i in range(max_iter + 1):
        r, _, now = _deepfool_step(fn, x0, r, tgt, active, overshoot=overshoot)
        crossed = np.asarray(now)
        if crossed.all() or i == max_iter:
            taken = i
            break
        active = jnp.asarray(~crossed)
    p = (1.0 + overshoot) * r
    lo = jnp.zeros((b * top_k,))
    hi = jnp.ones((b * top_k,))
    for _ in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        adv = _margin_at(fn, x0, p, mid, tgt) >= 0
        lo, hi = jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)
    # The margin at the accepted point, from the very computation that accepted
    # it (a recomputation elsewhere may round a margin of ~1e-8 below 0).
    margin = np.asarray(_margin_at(fn, x0, p, hi, tgt))
    pert = hi[:, None, None, None] * p
    success = crossed & (margin >= 0)
    norm = np.sqrt(np.sum(np.square(np.asarray(pert)), axis=(1, 2, 3)))
    norm = np.where(success, norm, np.nan)
    shape = (b, top_k)
    return MinimalL2Result(
        perturbation=np.asarray(pert).reshape(*shape, *x.shape[1:]),
        norm=norm.reshape(shape).astype(np.float32),
        targets=targets,
        source=source,
        margin=margin.reshape(shape).astype(np.float32),
        success=success.reshape(shape),
        iterations=taken,
    )
