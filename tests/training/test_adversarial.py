"""PGD-L-inf: stays in its ball and the image range, raises the loss; training hook."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from jax_infodiscard.training.adversarial import PGDConfig, pgd_linf, pgd_transform


def _mlp(params, x):
    w1, w2 = params
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    params = (
        jnp.asarray(rng.normal(size=(48, 16)) / 4, jnp.float32),
        jnp.asarray(rng.normal(size=(16, 4)), jnp.float32),
    )
    x = jnp.asarray(rng.uniform(size=(32, 4, 4, 3)), jnp.float32)
    y = jnp.argmax(_mlp(params, x), -1)  # attack the model's own predictions
    return Partial(_mlp, params), x, y


def _loss(fn, x, y):
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(fn(x), y))


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_ball_and_range_and_raises_the_loss(mlp, random_start):
    fn, x, y = mlp
    eps = 8 / 255
    adv = pgd_linf(
        fn,
        x,
        y,
        jax.random.key(1),
        epsilon=eps,
        step_size=eps / 4,
        steps=10,
        random_start=random_start,
    )
    assert adv.shape == x.shape and adv.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean, attacked = _loss(fn, x, y), _loss(fn, adv, y)
    assert attacked.mean() > clean.mean() + 0.05
    assert (attacked >= clean - 1e-4).mean() > 0.9  # per image, almost always
    # and more than a random point of the same ball does
    rnd = jnp.clip(
        x + eps * jnp.sign(jax.random.normal(jax.random.key(2), x.shape)), 0, 1
    )
    assert attacked.mean() > _loss(fn, rnd, y).mean()


def test_zero_steps_and_zero_radius_change_nothing(mlp):
    fn, x, y = mlp
    same = pgd_linf(fn, x, y, jax.random.key(0), epsilon=0.0, step_size=0.1, steps=5)
    np.testing.assert_array_equal(same, x)
    start = pgd_linf(
        fn,
        x,
        y,
        jax.random.key(0),
        epsilon=0.1,
        step_size=0.1,
        steps=0,
        random_start=False,
    )
    np.testing.assert_array_equal(start, x)


def test_config_and_transform():
    cfg = PGDConfig(epsilon=0.04, steps=10)
    assert cfg.step == pytest.approx(0.01)
    assert PGDConfig(step_size=0.003).step == 0.003
    with pytest.raises(ValueError, match="epsilon"):
        PGDConfig(epsilon=-1.0)
    with pytest.raises(TypeError, match="steps"):
        PGDConfig(steps=2.5)
    with pytest.raises(TypeError, match="PGDConfig"):
        pgd_transform({"epsilon": 0.1})
    t = pgd_transform(PGDConfig(epsilon=0.1, steps=3, random_start=False))
    apply = lambda z: z.reshape(z.shape[0], -1)[:, :2] @ jnp.array([[1.0, -1], [-1, 1]])
    x = jnp.full((1, 1, 2, 1), 0.5)
    out = jax.jit(lambda tr, k, xx: tr(k, apply, xx, jnp.array([0])))(
        t, jax.random.key(0), x
    )
    np.testing.assert_allclose(out.ravel(), [0.4, 0.6], atol=1e-6)
