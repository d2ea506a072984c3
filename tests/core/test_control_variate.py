"""The control variate of the iterations: on, off, and chosen per layer group."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import convnet_features
from jax.tree_util import Partial

import jax_infodiscard as jid
from jax_infodiscard.core import solver

_FIXED = jid.CIDConfig(
    layer_strategy="vmap", steps=8, probes=64, budget_samples=8, tol=None, rtol=None
)


def _square(x):
    return {"sq": x**2}


def test_auto_keeps_the_control_variate_near_linear(convnet, small_images):
    # The random ReLU net is nearly linear (start ratio about 1): "auto" runs
    # the same iterations as "always" on the same draws, and pays for the one
    # measurement that decided it.
    fn = Partial(convnet_features, convnet)
    key = jax.random.key(3)
    on = jid.cid(fn, small_images, key, config=_FIXED.replace(control_variate="always"))
    auto = jid.cid(fn, small_images, key, config=_FIXED.replace(control_variate="auto"))
    np.testing.assert_array_equal(auto.pixel, on.pixel)
    extra = _FIXED.samples * solver.DRAW_PASSES
    np.testing.assert_array_equal(auto.passes, on.passes + extra)


def test_without_it_each_iteration_costs_one_pass_per_draw_fewer(convnet, small_images):
    fn = Partial(convnet_features, convnet)
    key = jax.random.key(3)
    on = jid.cid(fn, small_images, key, config=_FIXED.replace(control_variate="always"))
    off = jid.cid(fn, small_images, key, config=_FIXED.replace(control_variate="never"))
    s, n = _FIXED.samples, _FIXED.steps
    np.testing.assert_array_equal(
        off.passes, on.passes - n * s + s * solver.DRAW_PASSES
    )
    # Near linear the control variate makes the gradients almost exact:
    # without it the maps are far noisier, and their error bars say so; the
    # level keeps it either way, so the budget still holds.
    np.testing.assert_allclose(off.budget, _FIXED.beta, rtol=_FIXED.budget_tol)

    def rms(res):
        return np.sqrt(np.mean(np.square(res.pixel_se), axis=(2, 3)))

    assert np.all(rms(off) > 2.0 * rms(on)), (rms(off), rms(on))
    assert np.all(off.reproducibility < on.reproducibility)


def test_auto_drops_it_between_near_and_far_from_linear():
    # x^2 at pixels near 0.0035: the closed form overspends the budget about
    # ten times (1 + 3 beta / (4 x^2)), between CV_RATIO and FAR_FROM_LINEAR,
    # so "auto" runs the iterations of "never".
    x = np.random.default_rng(0).uniform(0.003, 0.004, (2, 6, 6, 1))
    x = jnp.asarray(x, jnp.float32)
    cfg = _FIXED.replace(steps=16)
    key = jax.random.key(1)
    auto = jid.cid(_square, x, key, config=cfg.replace(control_variate="auto"))
    off = jid.cid(_square, x, key, config=cfg.replace(control_variate="never"))
    assert solver.CV_RATIO < float(auto.linearity.min()) <= solver.FAR_FROM_LINEAR
    np.testing.assert_array_equal(auto.pixel, off.pixel)
    np.testing.assert_array_equal(auto.passes, off.passes)


def test_auto_keeps_it_far_from_linear():
    # Pixels of x^2 near 0 overspend the budget more than FAR_FROM_LINEAR
    # times: those maps run every iteration, and keep the control variate.
    x = np.random.default_rng(0).uniform(0, 0.001, (2, 6, 6, 1))
    x = jnp.asarray(x, jnp.float32)
    cfg = _FIXED.replace(steps=16)
    key = jax.random.key(1)
    auto = jid.cid(_square, x, key, config=cfg.replace(control_variate="auto"))
    on = jid.cid(_square, x, key, config=cfg.replace(control_variate="always"))
    np.testing.assert_array_equal(auto.pixel, on.pixel)


def test_a_wrong_choice_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="control_variate"):
        jid.CIDConfig(control_variate="sometimes")
