"""Baseline attribution methods as compiled JAX programs.

Each method lives in its own module with the common calling shape::

    explain(model, images, key, *, target=None, **options) -> Explanation

``model`` is ``model_fn(images (B, H, W, C)) -> logits (B, K)`` for the
input-gradient and perturbation methods, the pair ``(body_fn, head_fn)`` split
at a layer for ``grad_cam`` and ``cam``, and a sequence of
:mod:`~jax_infodiscard.baselines.sequential` layers for ``lrp_epsilon``.
Pass models that carry parameters as :class:`jax.tree_util.Partial` so the
parameters are traced, not compiled in. Nothing here imports Flax.

>>> import jax, jax.numpy as jnp
>>> from jax_infodiscard import baselines
>>> w = jnp.ones((4, 4, 1, 2))
>>> model = jax.tree_util.Partial(lambda x: jnp.einsum("bhwc,hwck->bk", x, w))
>>> out = baselines.explain("gradient_x_input", model, jnp.full((1, 4, 4, 1), 0.5),
...                         jax.random.key(0), target=[1])
>>> float(out.maps.sum()), out.model_calls
(8.0, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax_infodiscard.baselines import (
    cam,
    grad_cam,
    gradient,
    gradient_x_input,
    guided_backprop,
    integrated_gradients,
    lime,
    lrp_epsilon,
    sequential,
    smoothgrad,
)
from jax_infodiscard.baselines.common import Explanation
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "EXPLAINERS",
    "MODEL_FORMS",
    "Explanation",
    "cam",
    "explain",
    "grad_cam",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "integrated_gradients",
    "lime",
    "lrp_epsilon",
    "sequential",
    "smoothgrad",
]

EXPLAINERS: dict[str, Callable[..., Explanation]] = {
    "gradient": gradient.explain,
    "gradient_x_input": gradient_x_input.explain,
    "integrated_gradients": integrated_gradients.explain,
    "smoothgrad": smoothgrad.explain,
    "lime": lime.explain,
    "grad_cam": grad_cam.explain,
    "cam": cam.explain,
    "guided_backprop": guided_backprop.explain,
    "lrp_epsilon": lrp_epsilon.explain,
}
"""Method name -> ``explain`` function of its module."""

MODEL_FORMS: dict[str, str] = {
    "gradient": "model_fn",
    "gradient_x_input": "model_fn",
    "integrated_gradients": "model_fn",
    "smoothgrad": "model_fn",
    "lime": "model_fn",
    "grad_cam": "split",
    "cam": "split",
    "guided_backprop": "model_fn",
    "lrp_epsilon": "sequential",
}
"""Method name -> the form of model its ``explain`` takes: ``"model_fn"``
(``images (B, H, W, C) -> logits (B, K)``), ``"split"`` (the pair
``(body_fn, head_fn)`` split at a layer) or ``"sequential"`` (a sequence of
:mod:`~jax_infodiscard.baselines.sequential` layers).

>>> set(MODEL_FORMS) == set(EXPLAINERS)
True
"""


def explain(
    name: str, model: Any, images: Array, key: PRNGKey | None = None, **options: Any
) -> Explanation:
    """Runs the explainer registered under ``name``.

    Args:
        name: a key of :data:`EXPLAINERS`.
        model: the model in the form the method takes (see module docstring).
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: a ``jax.random.key`` (required by ``smoothgrad`` and ``lime``).
        **options: keyword options of that method (``target`` included).

    Returns:
        The method's :class:`Explanation`.

    Raises:
        ValueError: for an unknown method name, or whatever the method raises.
    """
    if name not in EXPLAINERS:
        raise ValueError(
            f"unknown explainer {name!r}; available: {sorted(EXPLAINERS)}."
        )
    return EXPLAINERS[name](model, images, key, **options)
