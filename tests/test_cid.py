"""CID engine: the linear oracle, estimator agreement, invariances, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import convnet_features, oracle_sigma
from jax.tree_util import Partial

import jax_infodiscard as jid

BETA = 1.5e-4
_VMAP = jid.CIDConfig(layer_strategy="vmap")


def _median_rel_err(sigma, a):
    return float(np.median(np.abs(np.asarray(sigma) / oracle_sigma(a, BETA) - 1)))


# --- the exact linear oracle (DESIGN.md sec. 2) -------------------------------


def test_linearized_matches_oracle(linear_model, linear_images):
    fn, a = linear_model
    res = jid.cid(
        fn, linear_images, jax.random.key(0), config=jid.CIDConfig(method="linearized")
    )
    assert res.pixel.shape == (1, 2, 6, 5)
    for b in range(2):
        assert _median_rel_err(res.sigma[0, b], a) <= 0.01
    # Total and map are the closed form.
    h_true = np.log(oracle_sigma(a, BETA)) + 0.5 * np.log(2 * np.pi * np.e)
    np.testing.assert_allclose(res.pixel[0, 0], h_true, atol=0.01)
    np.testing.assert_allclose(res.total[0], h_true.sum() * 2, rtol=1e-3)
    np.testing.assert_allclose(res.mean[0], h_true.mean(), atol=0.01)
    np.testing.assert_allclose(res.feature_scale[0], a.sum(), rtol=1e-4)
    assert np.all(np.abs(np.log(np.asarray(res.budget) / BETA)) < 0.05)
    assert bool(res.converged.all())


def test_linearized_random_probes_close_to_oracle(linear_model, linear_images):
    # Fewer probes than feature entries: the Gaussian estimator is used.
    fn, a = linear_model
    cfg = jid.CIDConfig(method="linearized", linear_probes=4)
    res = jid.cid(fn, linear_images[:1], jax.random.key(0), config=cfg)
    err = _median_rel_err(res.sigma[0, 0], a)
    assert 0.01 < err < 0.5  # noisy but in the right place
    assert bool(res.converged.all())


@pytest.mark.parametrize(
    "cfg",
    [
        jid.CIDConfig(
            method="hybrid",
            steps=16,
            num_samples=4,
            optimizer="sgd",
            learning_rate=0.25,
        ),
        jid.CIDConfig(
            method="optimize",
            steps=300,
            num_samples=8,
            budget_samples=256,
            learning_rate=0.05,
        ),
    ],
    ids=["hybrid", "optimize"],
)
def test_optimizers_match_oracle(linear_model, linear_images, cfg):
    fn, a = linear_model
    res = jid.cid(fn, linear_images, jax.random.key(0), config=cfg)
    for b in range(2):
        assert _median_rel_err(res.sigma[0, b], a) <= 0.03
    assert np.all(np.abs(np.log(np.asarray(res.budget) / BETA)) < cfg.budget_tol)
    assert bool(res.converged.all())
    assert np.all(np.asarray(res.passes) > 0)


def test_lambda_is_linear_value_on_linear_model(linear_model, linear_images):
    fn, _ = linear_model
    res = jid.cid(
        fn, linear_images, jax.random.key(0), config=jid.CIDConfig(method="linearized")
    )
    np.testing.assert_allclose(res.lam, 2 * BETA / 30, rtol=1e-3)


# --- feature scale --------------------------------------------------------------


def _tanh_features(params, x):
    return convnet_features(params, x, act=jnp.tanh)


def test_jvp_and_limit_feature_scales_agree(convnet, small_images):
    fn = Partial(_tanh_features, convnet)
    jvp = jid.feature_scale(fn, small_images, jax.random.key(3), method="jvp")
    lim = jid.feature_scale(fn, small_images, jax.random.key(3), method="limit")
    assert jvp.shape == (3, 3)
    np.testing.assert_allclose(lim, jvp, rtol=1e-3)


def test_feature_scale_exact_on_linear_model(linear_model, linear_images):
    fn, a = linear_model
    # 7 feature entries <= 16 samples: the exact basis is used.
    d = jid.feature_scale(fn, linear_images, jax.random.key(0))
    np.testing.assert_allclose(d, np.full((1, 2), a.sum()), rtol=1e-4)


# --- invariances ----------------------------------------------------------------


def _scaled_features(params, c, x):
    return {k: c * v for k, v in convnet_features(params, x).items()}


def test_feature_rescaling_leaves_pixel_unchanged(convnet, small_images):
    key = jax.random.key(5)
    cfg = jid.CIDConfig(layer_strategy="vmap")
    base = jid.cid(Partial(convnet_features, convnet), small_images, key, config=cfg)
    scaled = jid.cid(
        Partial(_scaled_features, convnet, 37.0), small_images, key, config=cfg
    )
    np.testing.assert_allclose(scaled.pixel, base.pixel, atol=0.01)


def test_neighbour_weight_rescaling_leaves_pixel_unchanged(convnet, small_images):
    # W_l / 4 and b_l / 4, 4 W_{l+1}: the ReLU net computes the same function
    # from layer l+1 on, and layer l's features are scaled by 1/4.
    (w1, b1), (w2, b2), rest = convnet[0], convnet[1], convnet[2:]
    rescaled = [(w1 / 4, b1 / 4), (4 * w2, b2), *rest]
    key = jax.random.key(6)
    cfg = jid.CIDConfig(layer_strategy="vmap")
    base = jid.cid(Partial(convnet_features, convnet), small_images, key, config=cfg)
    res = jid.cid(Partial(convnet_features, rescaled), small_images, key, config=cfg)
    np.testing.assert_allclose(res.pixel, base.pixel, atol=0.01)
    np.testing.assert_allclose(res.lam, base.lam, rtol=1e-3)


# --- determinism and batch independence -----------------------------------------


def test_determinism_and_batch_independence(convnet, small_images):
    fn = Partial(convnet_features, convnet)
    keys = jax.random.split(jax.random.key(7), 3)
    cfg = jid.CIDConfig(layer_strategy="vmap")
    a = jid.cid(fn, small_images, keys, config=cfg)
    b = jid.cid(fn, small_images, keys, config=cfg)
    np.testing.assert_array_equal(a.pixel, b.pixel)
    # Image 1 with other companions (and at another position), same key.
    other = jnp.stack([small_images[1], 1.0 - small_images[0]])
    c = jid.cid(fn, other, jnp.stack([keys[1], keys[0]]), config=cfg)
    np.testing.assert_allclose(c.pixel[:, 0], a.pixel[:, 1], atol=1e-4)
    # A different key gives a (slightly) different estimate.
    d = jid.cid(fn, small_images, jax.random.split(jax.random.key(8), 3), config=cfg)
    assert not np.allclose(d.pixel, a.pixel)


def test_layer_strategies_agree(convnet, small_images):
    fn = Partial(convnet_features, convnet)
    key = jax.random.key(9)
    v = jid.cid(fn, small_images, key, config=jid.CIDConfig(layer_strategy="vmap"))
    p = jid.cid(fn, small_images, key, config=jid.CIDConfig(layer_strategy="per_layer"))
    np.testing.assert_allclose(v.pixel, p.pixel, atol=1e-3)


def test_chunking_gives_same_result(convnet, small_images):
    fn = Partial(convnet_features, convnet)
    key = jax.random.key(10)
    cfg = jid.CIDConfig(method="linearized", layer_strategy="vmap")
    full = jid.cid(fn, small_images, key, config=cfg)
    chunked = jid.cid(fn, small_images, key, config=cfg.replace(chunk_size=2))
    np.testing.assert_allclose(chunked.pixel, full.pixel, atol=1e-4)


def test_beta_sweep_does_not_recompile_and_orders_cid(convnet, small_images):
    from jax_infodiscard.core import engine

    fn = Partial(convnet_features, convnet)
    key = jax.random.key(11)
    cfg = jid.CIDConfig(layer_strategy="vmap")
    lo = jid.cid(fn, small_images, key, config=cfg.replace(beta=1e-5))
    size = engine._solve_group._cache_size()
    hi = jid.cid(fn, small_images, key, config=cfg.replace(beta=1e-3))
    assert engine._solve_group._cache_size() == size
    # Larger budget, more noise allowed: sigma^2 scales about linearly in beta.
    gap = np.asarray(hi.mean - lo.mean)
    np.testing.assert_allclose(gap, 0.5 * np.log(100.0), atol=0.2)


# --- ignored pixels, results I/O --------------------------------------------------


def test_ignored_pixel_is_capped_not_nan(convnet, small_images):
    def masked(params, x):
        return convnet_features(params, x.at[:, 0, 0, :].set(0.0))

    cfg = jid.CIDConfig()
    res = jid.cid(
        Partial(masked, convnet), small_images, jax.random.key(12), config=cfg
    )
    assert np.all(np.isfinite(np.asarray(res.pixel)))
    cap = np.log(cfg.max_sigma) + 0.5 * np.log(2 * np.pi * np.e)
    np.testing.assert_allclose(res.pixel[:, :, 0, 0], cap, atol=1e-4)
    assert np.all(np.asarray(res.capped) >= 1)


def test_result_save_load_round_trip(tmp_path, linear_model, linear_images):
    fn, _ = linear_model
    res = jid.cid(fn, linear_images, jax.random.key(0)).to_numpy()
    path = tmp_path / "cid.npz"
    res.save(path)
    back = jid.CIDResult.load(path)
    assert back.layers == res.layers and back.beta == res.beta
    np.testing.assert_array_equal(back.pixel, res.pixel)
    np.testing.assert_array_equal(back.converged, res.converged)
    with pytest.raises(ValueError, match="not 'ru'"):
        jid.RUResult.load(path)
    with pytest.raises(FileNotFoundError):
        jid.CIDResult.load(tmp_path / "missing.npz")


def test_result_is_a_pytree(linear_model, linear_images):
    fn, _ = linear_model
    res = jid.cid(fn, linear_images, jax.random.key(0))
    leaves = jax.tree.leaves(res)
    assert len(leaves) == 10
    doubled = jax.tree.map(lambda v: v * 2, res)
    np.testing.assert_allclose(doubled.mean, 2 * res.mean)


# --- concentration ----------------------------------------------------------------


def test_concentration_and_box_mask():
    pix = jnp.zeros((2, 4, 4)).at[:, 1:3, 1:3].set(-1.0)
    mask = jid.box_to_mask(jnp.array([[1, 1, 3, 3], [1, 1, 3, 3]]), (4, 4))
    assert mask.shape == (2, 4, 4) and int(mask[0].sum()) == 4
    np.testing.assert_allclose(jid.concentration(pix, mask), [1.0, 1.0])
    # Layers axis broadcasts against a per-image mask.
    np.testing.assert_allclose(jid.concentration(pix[None], mask), [[1.0, 1.0]])


def test_concentration_bad_masks():
    pix = jnp.zeros((4, 4))
    with pytest.raises(ValueError, match="all foreground"):
        jid.concentration(pix, jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match="all background"):
        jid.concentration(pix, jnp.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="does not match"):
        jid.concentration(pix, jnp.ones((3, 4), bool))


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, match",
    [
        (jnp.zeros((6, 5, 2)), "rank 4"),
        (jnp.full((1, 6, 5, 2), jnp.nan), "NaN"),
        (jnp.full((1, 6, 5, 2), jnp.inf), "NaN/inf"),
        (jnp.zeros((1, 6, 5, 2), jnp.int32), "floating"),
    ],
)
def test_bad_images(linear_model, images, match):
    fn, _ = linear_model
    with pytest.raises(ValueError, match=match):
        jid.cid(fn, images, jax.random.key(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=-1e-4), "beta"),
        (dict(num_samples=0), "num_samples"),
        (dict(method="magic"), "method"),
        (dict(optimizer="nope"), "optimizer"),
        (dict(budget_tol=0.0), "budget_tol"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jid.CIDConfig(**kwargs)


def test_unknown_layer(linear_model, linear_images):
    fn, _ = linear_model
    with pytest.raises(ValueError, match=r"unknown layer.*nope"):
        jid.cid(fn, linear_images, jax.random.key(0), layers=["nope"])


def test_bad_key(linear_model, linear_images):
    fn, _ = linear_model
    with pytest.raises(ValueError, match="batch of 2 keys"):
        jid.cid(fn, linear_images, jax.random.split(jax.random.key(0), 5))


# --- many devices -------------------------------------------------------------------


def test_sharded_over_four_devices_matches_one(convnet, small_images, tmp_path):
    fn = Partial(convnet_features, convnet)
    ref = jid.cid(fn, small_images, jax.random.key(13), config=_VMAP)
    np.save(tmp_path / "x.npy", np.asarray(small_images))
    script = textwrap.dedent(
        f"""
        import sys, jax, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import convnet_features, init_convnet
        from jax.tree_util import Partial
        import jax_infodiscard as jid
        assert jax.device_count() == 4, jax.devices()
        fn = Partial(convnet_features, init_convnet(jax.random.key(0)))
        x = np.load({str(tmp_path / "x.npy")!r})
        res = jid.cid(fn, x, jax.random.key(13),
                      config=jid.CIDConfig(layer_strategy="vmap"))
        np.save({str(tmp_path / "pix.npy")!r}, np.asarray(res.pixel))
        """
    )
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = np.load(tmp_path / "pix.npy")
    np.testing.assert_allclose(sharded, np.asarray(ref.pixel), atol=1e-4)


def test_control_variate_budget_never_negative():
    # Far from the linear regime the linearised network can overstate the
    # feature change so much that the control-variate estimate of the budget
    # turns negative; the solver must then use the plain Monte-Carlo mean.
    from jax_infodiscard.core.solver import Problem, measure

    x = jnp.zeros((2, 2, 1))
    layers, draws = 1, 4

    def probe(xp):  # saturating feature: ||tanh(x') - tanh(x)||^2 per draw
        return jnp.sum(jnp.tanh(xp) ** 2, axis=(2, 3, 4)), None

    def entropy(u, xp, aux):
        return u

    def linear(t):  # a Jacobian 100x too large
        return 1e4 * jnp.sum(t**2, axis=(2, 3, 4))

    u = jnp.full((layers, 2, 2), jnp.log(3.0))
    eps = jax.random.normal(jax.random.key(0), (layers, draws, 2, 2, 1))
    plain = Problem(x=x, scale=jnp.ones(layers), probe=probe, pixel_entropy=entropy)
    cv = plain._replace(linear=linear, a_hat=jnp.ones((layers, 2, 2)))
    r_plain, _ = measure(plain, u, eps)
    r_cv, _ = measure(cv, u, eps)
    assert float(r_plain[0]) > 0
    np.testing.assert_allclose(r_cv, r_plain, rtol=1e-6)
    # Near the linear regime the control variate is used (and differs).
    small = jnp.full((layers, 2, 2), jnp.log(1e-3))
    near = cv._replace(linear=lambda t: jnp.sum(t**2, axis=(2, 3, 4)))
    r_near, _ = measure(near, small, eps)
    np.testing.assert_allclose(r_near, 4 * 1e-6, rtol=1e-3)
