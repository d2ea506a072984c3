"""RU: agreement with CID for identity maps, the paper's toy cases, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import jax_infodiscard as jid


def identity_features(x):
    return {"id": x}


def identity_decoder(f):
    return f


def test_identity_feature_and_decoder_give_cid():
    # h = identity, g = identity: Hhat_i = log sigma_i + 0.5 log mean(delta^2)
    # + const, whose gradient equals CID's, so RU = CID up to the sampling of
    # mean(delta^2), whose log is unbiased by RU's correction: at default
    # settings the means agree to 0.01 nats.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32)
    key = jax.random.key(0)
    r = jid.ru(identity_features, identity_decoder, x, key)
    c = jid.cid(identity_features, x, key)
    np.testing.assert_allclose(r.mean, c.mean, atol=0.01)
    np.testing.assert_allclose(r.sigma, c.sigma, rtol=0.02)
    # Without the correction the map reads 1 / (2k) = 0.0104 nats low
    # (k = 16 independent pairs x 3 channels).
    assert abs(float(np.mean(r.mean - c.mean))) < 0.005


def _drop_pixel(x):
    return {"f": x.at[:, 1, 1, :].set(0.0)}


def _interpolate(f):
    neighbours = (f[:, 0, 1] + f[:, 2, 1] + f[:, 1, 0] + f[:, 1, 2]) / 4
    return f.at[:, 1, 1].set(neighbours)


def test_ignored_but_redundant_pixel_high_cid_low_ru():
    # Paper sec. 3.3 case 1: the layer ignores pixel (1, 1), which equals its
    # neighbours; a decoder that interpolates recovers it.
    x = jnp.full((1, 4, 4, 1), 0.5)
    key = jax.random.key(1)
    c = jid.cid(_drop_pixel, x, key)
    r = jid.ru(_drop_pixel, _interpolate, x, key)
    others_c = np.delete(np.asarray(c.pixel[0, 0]).ravel(), 5)
    others_r = np.delete(np.asarray(r.pixel[0, 0]).ravel(), 5)
    assert float(c.pixel[0, 0, 1, 1]) > others_c.max() + 3.0  # discarded
    assert float(r.pixel[0, 0, 1, 1]) < others_r.max() + 0.5  # yet recoverable
    assert int(c.capped[0, 0]) == 1


def _sum_features(x):
    return {"sum": jnp.sum(x, axis=(1, 2, 3))[:, None]}


def _broadcast_mean(f):
    return jnp.broadcast_to((f / 16.0)[:, :, None, None], (f.shape[0], 4, 4, 1))


def test_sum_feature_low_cid_high_ru():
    # Paper sec. 3.3 case 2: f = sum_i x_i uses every pixel, yet no pixel can
    # be reconstructed from it.
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 4, 4, 1)), jnp.float32)
    x = x.reshape(1, 4, 4, 1)
    key = jax.random.key(2)
    c = jid.cid(_sum_features, x, key)
    r = jid.ru(_sum_features, _broadcast_mean, x, key)
    # Uniform CID at the linear value: sigma^2 = beta.
    np.testing.assert_allclose(c.sigma[0, 0], np.sqrt(1.5e-4), rtol=0.02)
    err = np.abs(np.asarray(x[0, ..., 0]) - float(x.mean()))
    expected = np.log(np.maximum(err, 1e-3)) + 0.5 * np.log(2 * np.pi * np.e)
    assert float(r.mean[0, 0]) > float(c.mean[0, 0]) + 1.0
    far = err > 0.05  # where the reconstruction error dwarfs the noise
    assert far.sum() >= 8
    np.testing.assert_allclose(np.asarray(r.pixel[0, 0])[far], expected[far], atol=0.1)


def _scaled(c, x):
    return {"f": c * jnp.tanh(x - 0.5)}


def _inverse(c, f):
    return jnp.arctanh(jnp.clip(f / c, -0.999, 0.999)) + 0.5


def test_ru_invariant_to_feature_rescaling():
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 4, 4, 2)), jnp.float32)
    key = jax.random.key(3)
    a = jid.ru(Partial(_scaled, 1.0), Partial(_inverse, 1.0), x, key)
    b = jid.ru(Partial(_scaled, 25.0), Partial(_inverse, 25.0), x, key)
    np.testing.assert_allclose(b.pixel, a.pixel, atol=0.01)


def _pool(x, k):
    p = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, k, k, 1), "VALID")
    return p / k**2


def _pooled_features(x):
    return {"pool4": _pool(x, 4), "pool2": _pool(x, 2)}


def _bilinear(f):
    return jax.image.resize(f, (f.shape[0], 32, 32, f.shape[-1]), "bilinear")


def test_lambda_search_converges_with_an_imperfect_decoder():
    # Bilinear upsampling cannot restore what pooling removed: its error floor
    # makes log r much steeper than log lambda, where a slope-1 secant step
    # overshoots. With the measured secant slope every solve converges
    # (slope-1 steps: 25% of the pool2 solves at 6 iterations, 88% at 8).
    from jax_infodiscard.data import load_synthetic

    x = load_synthetic("test", 8).images
    decoders = {"pool4": _bilinear, "pool2": _bilinear}
    r = jid.ru(_pooled_features, decoders, x, jax.random.key(0))
    assert bool(np.all(r.converged))
    cfg = jid.RUConfig()
    np.testing.assert_array_less(
        np.abs(np.log(np.asarray(r.budget) / cfg.beta)), cfg.budget_tol
    )
    # the coarser feature leaves more to reconstruct
    mean = dict(zip(r.layers, np.asarray(r.mean), strict=True))
    assert np.all(mean["pool4"] > mean["pool2"] + 0.1)


def test_decoder_errors():
    x = jnp.zeros((1, 4, 4, 1))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="returns shape"):
        jid.ru(identity_features, lambda f: f[:, :2], x, key)
    with pytest.raises(ValueError, match="no decoder for layer"):
        jid.ru(identity_features, {"other": identity_decoder}, x, key, layers="id")
    with pytest.raises(ValueError, match="callable or a mapping"):
        jid.ru(identity_features, 3, x, key)


def test_trained_decoder_with_readout_on_identity_feature_gives_cid():
    # A decoder trained by the library on an identity feature: its ridge
    # readout reads the feature back (weights ~ I, the penalty chosen by
    # held-out error is tiny), and a few small steps leave the residual
    # network near zero, so g(h(x')) ~ x' and RU = CID as for the identity
    # decoder above.
    from jax_infodiscard.models.decoder import decoder_fn
    from jax_infodiscard.training.decoder import DecoderConfig, train_decoder

    rng = np.random.default_rng(4)
    # 32x32: the mean over 1,024 pixels of RU's sampled log-error is
    # within 0.003 nats of its expectation (8x8 images: 0.013).
    images = rng.uniform(size=(48, 32, 32, 3)).astype(np.float32)
    cfg = DecoderConfig(
        num_blocks=1,
        width=4,
        steps=2,
        learning_rate=1e-5,
        readout_kernel=1,
        eval_images=32,
        log_every=1,
    )
    dec, m = train_decoder(
        identity_features, "id", images, cfg, key=jax.random.key(5), progress=False
    )
    assert m.ridge_mse < 0.01 * m.constant_mse
    x = jnp.asarray(images[:2])
    key = jax.random.key(6)
    r = jid.ru(identity_features, decoder_fn(dec), x, key)
    c = jid.cid(identity_features, x, key)
    np.testing.assert_allclose(r.mean, c.mean, atol=0.01)
