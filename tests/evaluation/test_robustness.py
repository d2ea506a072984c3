"""Minimal-L2 attack: on the decision boundary, minimal for linear models."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from jax_infodiscard.evaluation.robustness import _margin, minimal_l2_attack


def _linear(w, b, x):
    return x.reshape(x.shape[0], -1) @ w.T + b


def _mlp(params, x):
    w1, w2 = params
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def test_two_class_linear_attack_is_exact():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2,)), jnp.float32)
    fn = Partial(_linear, w, b)
    x = jnp.asarray(rng.uniform(size=(5, 2, 2, 3)), jnp.float32)
    res = minimal_l2_attack(fn, x, top_k=1)
    z = np.asarray(fn(x))
    dw = np.asarray(w[1] - w[0])
    expect = np.abs(z[:, 1] - z[:, 0]) / np.linalg.norm(dw)  # distance to the plane
    np.testing.assert_allclose(res.norm[:, 0], expect, rtol=1e-4)
    assert res.success.all() and res.iterations == 1
    # the perturbation is along +-(w_t - w_y)
    p = res.perturbation[:, 0].reshape(5, -1)
    cos = np.abs(p @ dw) / (np.linalg.norm(p, axis=1) * np.linalg.norm(dw))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)


def test_nonlinear_attack_lands_on_the_boundary():
    rng = np.random.default_rng(1)
    params = (
        jnp.asarray(rng.normal(size=(48, 32)) / 3, jnp.float32),
        jnp.asarray(rng.normal(size=(32, 6)), jnp.float32),
    )
    fn = Partial(_mlp, params)
    x = jnp.asarray(rng.uniform(size=(8, 4, 4, 3)), jnp.float32)
    k = 3
    res = minimal_l2_attack(fn, x, top_k=k, bisection_steps=24)
    assert res.perturbation.shape == (8, k, 4, 4, 3)
    assert res.success.mean() > 0.9
    z = np.asarray(fn(x))
    # targets: the k most probable classes other than the prediction
    np.testing.assert_array_equal(res.source, z.argmax(1))
    np.testing.assert_array_equal(res.targets, np.argsort(-z, 1)[:, 1 : k + 1])
    ok = res.success
    # on the adversarial side, and within 1e-3 logits of the boundary
    assert (res.margin[ok] >= 0).all() and (res.margin[ok] < 1e-3).all()
    # just short of the returned point the prediction has not flipped yet
    xs = np.repeat(np.asarray(x), k, 0)
    p = res.perturbation.reshape(8 * k, 4, 4, 3)
    tg = jnp.asarray(res.targets.reshape(-1))
    before = np.asarray(_margin(fn(jnp.asarray(xs + 0.99 * p)), tg))
    after = np.asarray(_margin(fn(jnp.asarray(xs + 1.01 * p)), tg))
    assert (before[ok.ravel()] < 0).all() and (after[ok.ravel()] > 0).all()
    np.testing.assert_allclose(
        res.norm[ok],
        np.linalg.norm(p.reshape(8 * k, -1), axis=1)[ok.ravel()],
        rtol=1e-5,
    )
    assert np.isfinite(res.robustness()) and res.robustness() > 0


def test_bad_arguments():
    fn = Partial(_linear, jnp.ones((3, 12)), jnp.zeros(3))
    x = jnp.zeros((2, 2, 2, 3))
    with pytest.raises(ValueError, match="top_k"):
        minimal_l2_attack(fn, x, top_k=3)
    with pytest.raises(TypeError, match="logit_fn"):
        minimal_l2_attack("f", x)
    with pytest.raises(ValueError, match="shape"):
        minimal_l2_attack(Partial(lambda x: x[:, 0, 0, 0]), x)
    with pytest.raises(TypeError, match="top_k"):
        minimal_l2_attack(fn, x, top_k=1.5)
