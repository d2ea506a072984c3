"""Training objectives beyond plain cross-entropy: knowledge distillation.

:func:`distillation_loss` is Hinton et al. (2015)'s objective, per example::

    (1 - w) * CE(softmax(s), y) + w * T^2 * KL(softmax(t / T) || softmax(s / T))

for student logits ``s``, teacher logits ``t``, labels ``y``, temperature
``T`` and weight ``w``. The ``T^2`` factor keeps the soft term's gradient at
the scale of the hard term's when ``T`` changes: the gradient of the soft
term with respect to ``s`` is ``w * T * (softmax(s / T) - softmax(t / T))``.
At ``w = 0`` the loss is the cross-entropy, whatever ``T``.

:func:`distillation_objective` packs a teacher and these settings into the
``loss`` hook of :func:`jax_infodiscard.training.train` (a
:class:`jax.tree_util.Partial`, so the teacher's parameters are traced
arguments of the compiled training step, not constants baked into it). The
teacher sees the same (augmented) batch as the student, in inference mode.

Example:
    >>> import jax.numpy as jnp
    >>> s = jnp.array([[2.0, 0.0, -1.0]])
    >>> y = jnp.array([0])
    >>> float(distillation_loss(s, s, y, temperature=1.0, weight=0.0)[0]) == float(
    ...     optax.softmax_cross_entropy_with_integer_labels(s, y)[0])
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from jax_infodiscard import validation
from jax_infodiscard.types import Array

__all__ = ["distillation_loss", "distillation_objective"]


def distillation_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    temperature: float | Array = 4.0,
    weight: float | Array = 0.9,
) -> Array:
    """Per-example distillation loss (nats).

    Args:
      student_logits: float ``(B, K)``.
      teacher_logits: float ``(B, K)`` (treated as constants: no gradient
        flows into them).
      labels: int ``(B,)`` in ``[0, K)``.
      temperature: softmax temperature ``T > 0`` of the soft term.
      weight: ``w`` in ``[0, 1]``, the share of the soft term.

    Returns:
      float32 ``(B,)``: ``(1 - w) CE + w T^2 KL(teacher_T || student_T)``.

    Raises:
      ValueError: mismatched shapes; (concrete values) ``T <= 0`` or ``w``
        outside ``[0, 1]``.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            "student_logits and teacher_logits must both have shape (B, K), got "
            f"{student_logits.shape} and {teacher_logits.shape}"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({student_logits.shape[0]},), got {labels.shape}"
        )
    if not validation.is_traced(temperature):
        validation.check_number("temperature", float(temperature), positive=True)
    if not validation.is_traced(weight):
        validation.check_number("weight", float(weight), minimum=0.0, maximum=1.0)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    hard = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
    log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return (1.0 - weight) * hard + weight * temperature**2 * kl


def _distill(
    teacher_fn: Partial,
    temperature: Array,
    weight: Array,
    outputs: Array,
    images: Array,
    labels: Array,
) -> Array:
    return distillation_loss(
        outputs,
        teacher_fn(images),
        labels,
        temperature=temperature,
        weight=weight,
    )


def distillation_objective(
    teacher_fn: Partial, *, temperature: float = 4.0, weight: float = 0.9
) -> Partial:
    """The ``loss`` hook of :func:`~jax_infodiscard.training.train` for distillation.

    Args:
      teacher_fn: the teacher's logits, ``teacher_fn(images (B, S, S, 3)) ->
        (B, K)``; typically :func:`jax_infodiscard.models.model_fn` of a
        trained model (inference-mode BatchNorm).
      temperature: ``T > 0``.
      weight: ``w`` in ``[0, 1]``.

    Returns:
      A Partial ``loss(outputs (B, K), images (B, S, S, 3), labels (B,)) ->
      (B,)`` (see :func:`distillation_loss`).

    Raises:
      TypeError: ``teacher_fn`` is not callable.
      ValueError: bad ``temperature`` or ``weight``.
    """
    teacher_fn = validation.as_partial(teacher_fn, "teacher_fn")
    temperature = validation.check_number("temperature", temperature, positive=True)
    weight = validation.check_number("weight", weight, minimum=0.0, maximum=1.0)
    return Partial(_distill, teacher_fn, jnp.float32(temperature), jnp.float32(weight))
