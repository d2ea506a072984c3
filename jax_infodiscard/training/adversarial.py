"""PGD-L-inf adversarial examples and adversarial training (paper App. F.4).

:func:`pgd_linf` is projected gradient ascent on the cross-entropy (Madry et
al. 2018): from a random start in the L-inf ball of radius ``epsilon``
around ``x``, ``steps`` times ``x' <- clip(x' + step_size * sign(grad), ball,
[0, 1])``. The iterations are unrolled in Python (a fixed, small number),
which keeps them at top level of whatever program calls them: XLA:CPU runs
convolution gradients inside compiled loops many times slower.

:func:`pgd_transform` packs a :class:`PGDConfig` into the
``batch_transform`` hook of :func:`jax_infodiscard.training.train`: every
training batch is replaced by its PGD examples against the current
parameters (Madry-style adversarial training). The attack sees the model in
training mode (batch statistics, as the loss it attacks), and the BatchNorm
statistics it would update are discarded.

Images are in the unit range, so ``epsilon = 4/255`` is four grey levels.

Example:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> apply = lambda x: x.reshape(x.shape[0], -1)[:, :2] @ w
    >>> x = jnp.full((1, 1, 2, 1), 0.5)
    >>> adv = pgd_linf(apply, x, jnp.array([0]), jax.random.key(0), epsilon=0.1,
    ...                step_size=0.05, steps=4)
    >>> [round(float(v), 3) for v in adv.ravel()]
    [0.4, 0.6]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from jax_infodiscard import validation
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["PGDConfig", "pgd_linf", "pgd_transform"]


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """Settings of the PGD-L-inf attack.

    Attributes:
      epsilon: radius of the L-inf ball (unit-range pixel values).
      steps: gradient steps (the paper: 10).
      step_size: size of each signed step; ``None``: ``2.5 * epsilon /
        steps`` (Madry et al.).
      random_start: start from a uniform draw in the ball (else from ``x``).
    """

    epsilon: float = 4 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self):
        validation.check_number("epsilon", self.epsilon, minimum=0.0, maximum=1.0)
        validation.check_int("steps", self.steps)
        if self.step_size is not None:
            validation.check_number("step_size", self.step_size, positive=True)
        if not isinstance(self.random_start, bool):
            raise TypeError(f"random_start must be a bool, got {self.random_start!r}")

    @property
    def step(self) -> float:
        """The step size used (``step_size`` or its default)."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.epsilon / self.steps


def _loss(apply: Callable[[Array], Array], labels: Array, x: Array) -> Array:
    logits = apply(x)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def pgd_linf(
    apply: Callable[[Array], Array],
    images: Array,
    labels: Array,
    key: PRNGKey,
    *,
    epsilon: float | Array,
    step_size: float | Array,
    steps: int,
    random_start: bool = True,
) -> Array:
    """PGD-L-inf adversarial examples that raise the cross-entropy.

    Args:
      apply: ``apply(images (B, H, W, C)) -> logits (B, K)``; traceable.
      images: float32 ``(B, H, W, C)`` in ``[0, 1]``.
      labels: int ``(B,)``: the classes whose loss is raised.
      key: PRNG key of the random start.
      epsilon: L-inf radius (unit-range values); may be traced.
      step_size: signed step size; may be traced.
      steps: number of steps (a Python int: the loop is unrolled).
      random_start: start from a uniform draw in the ball.

    Returns:
      float32 ``(B, H, W, C)``: ``|x' - x| <= epsilon`` everywhere and
      ``x'`` in ``[0, 1]``; no gradient flows back through the attack.
    """
    steps = validation.check_int("steps", steps, minimum=0)
    x = jax.lax.stop_gradient(jnp.asarray(images, jnp.float32))
    lo = jnp.clip(x - epsilon, 0.0, 1.0)
    hi = jnp.clip(x + epsilon, 0.0, 1.0)
    if random_start:
        noise = jax.random.uniform(key, x.shape, minval=-1.0, maxval=1.0)
        adv = jnp.clip(x + epsilon * noise, lo, hi)
    else:
        adv = x
    grad = jax.grad(lambda z: _loss(apply, labels, z))
    for _ in range(steps):
        adv = jnp.clip(adv + step_size * jnp.sign(grad(adv)), lo, hi)
    return jax.lax.stop_gradient(adv)


def _transform(
    epsilon: Array,
    step_size: Array,
    steps: int,
    random_start: bool,
    key: PRNGKey,
    apply: Callable[[Array], Array],
    images: Array,
    labels: Array,
) -> Array:
    return pgd_linf(
        apply,
        images,
        labels,
        key,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        random_start=random_start,
    )


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable static settings (the jit cache keys on them)."""

    steps: int
    random_start: bool

    def __call__(self, epsilon, step_size, key, apply, images, labels):
        return _transform(
            epsilon,
            step_size,
            self.steps,
            self.random_start,
            key,
            apply,
            images,
            labels,
        )


def pgd_transform(config: PGDConfig = PGDConfig()) -> Partial:
    """The ``batch_transform`` hook of :func:`~jax_infodiscard.training.train`.

    Args:
      config: the attack.

    Returns:
      A Partial ``transform(key, apply, images, labels) -> images`` that
      returns the PGD examples of the batch (see :func:`pgd_linf`).
    """
    if not isinstance(config, PGDConfig):
        raise TypeError(f"config must be a PGDConfig, got {type(config).__name__}")
    return Partial(
        _Static(config.steps, config.random_start),
        jnp.float32(config.epsilon),
        jnp.float32(config.step),
    )
