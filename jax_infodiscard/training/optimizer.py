"""What the training loops (classifier and decoders) share.

The one optimizer factory: a learning-rate schedule (:func:`learning_rate`:
linear warm-up from 0, then a cosine decay to 0 or a constant) and an optax
optimizer around it (:func:`optimizer`: Adam, AdamW or Nesterov SGD, weight
decay masked to the kernels); and the one divergence check of a training
step (:func:`all_finite`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["OPTIMIZERS", "SCHEDULES", "all_finite", "learning_rate", "optimizer"]

SCHEDULES = ("cosine", "constant")
"""Shapes of the learning rate after the warm-up."""

OPTIMIZERS = ("adam", "adamw", "sgd")
"""Optimizers of :func:`optimizer`."""


def learning_rate(
    schedule: str, peak: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then
    ``"cosine"`` (decay to 0 at ``total_steps``) or ``"constant"``.

    >>> lr = learning_rate("cosine", 1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(lr(s)), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = min(int(warmup_steps), int(total_steps))
    if schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
    else:
        after = optax.constant_schedule(peak)
    if warmup <= 0:
        return after
    warm = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([warm, after], [warmup])


def _kernels(params: Any) -> Any:
    """Weight-decay mask: arrays with two or more axes (not biases, norms)."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def optimizer(
    name: str,
    lr: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """``"adam"``, ``"adamw"`` (decoupled weight decay) or ``"sgd"`` (Nesterov
    momentum, the weight decay added to the gradient) with learning rate
    ``lr``; weight decay applies to arrays with ``ndim >= 2`` only."""
    if name == "adam":
        return optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay, mask=_kernels)
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=_kernels),
            optax.sgd(lr, momentum=momentum, nesterov=True),
        )
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def all_finite(tree: Any) -> jax.Array:
    """``bool ()``: every floating-point leaf of ``tree`` is finite.

    >>> bool(all_finite({"w": jnp.ones(2), "n": jnp.arange(2)}))
    True
    >>> bool(all_finite([jnp.array([1.0, jnp.nan])]))
    False
    """
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
