"""Distillation loss: closed forms and its use as the training loss hook."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from jax_infodiscard.training.losses import distillation_loss, distillation_objective


def _logits(seed, shape=(6, 5)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 2, jnp.float32)


def test_equals_cross_entropy_at_temperature_one_weight_zero():
    s, t = _logits(0), _logits(1)
    y = jnp.array([0, 1, 2, 3, 4, 0])
    ce = optax.softmax_cross_entropy_with_integer_labels(s, y)
    np.testing.assert_allclose(
        distillation_loss(s, t, y, temperature=1.0, weight=0.0), ce, rtol=1e-6
    )
    # weight 0 ignores the teacher whatever the temperature
    np.testing.assert_allclose(
        distillation_loss(s, t, y, temperature=7.0, weight=0.0), ce, rtol=1e-6
    )


def test_soft_term_is_scaled_kl_with_its_known_gradient():
    s, t = _logits(2), _logits(3)
    y = jnp.zeros(6, jnp.int32)
    temp = 3.0
    p_t = jax.nn.softmax(t / temp)
    kl = jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(s / temp)), axis=-1)
    got = distillation_loss(s, t, y, temperature=temp, weight=1.0)
    np.testing.assert_allclose(got, temp**2 * kl, rtol=1e-5)
    # zero when the student equals the teacher
    np.testing.assert_allclose(
        distillation_loss(t, t, y, temperature=temp, weight=1.0), 0.0, atol=1e-5
    )
    # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)); no gradient to the teacher
    g_s, g_t = jax.grad(
        lambda a, b: jnp.sum(distillation_loss(a, b, y, temperature=temp, weight=1.0)),
        argnums=(0, 1),
    )(s, t)
    np.testing.assert_allclose(
        g_s, temp * (jax.nn.softmax(s / temp) - p_t), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(g_t, 0.0)


def test_mixture_and_bad_inputs():
    s, t = _logits(4), _logits(5)
    y = jnp.arange(6) % 5
    a = distillation_loss(s, t, y, temperature=2.0, weight=0.0)
    b = distillation_loss(s, t, y, temperature=2.0, weight=1.0)
    np.testing.assert_allclose(
        distillation_loss(s, t, y, temperature=2.0, weight=0.25),
        0.75 * a + 0.25 * b,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, y, temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        distillation_loss(s, t, y, weight=1.5)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(s, t[:, :3], y)
    with pytest.raises(TypeError, match="teacher_fn"):
        distillation_objective("teacher")


def test_objective_calls_the_teacher_on_the_batch():
    w = _logits(6, (12, 5))
    teacher = Partial(lambda m, x: x.reshape(x.shape[0], -1) @ m, w)
    obj = distillation_objective(teacher, temperature=2.0, weight=0.5)
    x = jnp.asarray(np.random.default_rng(7).uniform(size=(6, 2, 2, 3)), jnp.float32)
    s, y = _logits(8), jnp.arange(6) % 5
    np.testing.assert_allclose(
        jax.jit(lambda o, *a: o(*a))(obj, s, x, y),
        distillation_loss(s, teacher(x), y, temperature=2.0, weight=0.5),
        rtol=1e-5,
    )
