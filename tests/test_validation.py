"""The shared input checks of validation.py: accepted values and messages."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jax_infodiscard import validation as v


def test_check_number_bounds():
    assert v.check_number("x", 3) == 3.0 and isinstance(v.check_number("x", 3), float)
    assert v.check_number("m", np.float32(0.5), minimum=0, below=1) == 0.5
    for value, kwargs, message in (
        (math.inf, {}, "x must be finite"),
        (math.nan, {}, "x must be finite"),
        (0.0, {"positive": True}, "x must be > 0"),
        (-1, {"minimum": 0}, "x must be >= 0"),
        (2, {"maximum": 1}, "x must be <= 1"),
        (1.0, {"below": 1}, "x must be < 1"),
    ):
        with pytest.raises(ValueError, match=message):
            v.check_number("x", value, **kwargs)
    for value in ("1", None, True, [1.0]):
        with pytest.raises(TypeError, match="x must be a number"):
            v.check_number("x", value)


def test_check_int():
    assert v.check_int("n", np.int64(3)) == 3
    assert v.check_int("n", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        v.check_int("n", 0)
    for value in (2.0, 2.5, True, "2", None):
        with pytest.raises(TypeError, match="n must be an integer"):
            v.check_int("n", value)


def test_check_pixel_map():
    assert v.check_pixel_map(np.ones((2, 2), np.int32)).dtype == jnp.float32
    assert v.check_pixel_map(np.ones((3, 2, 2), np.float64)).shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"m must have shape \(\.\.\., H, W\)"):
        v.check_pixel_map(np.ones(4), "m")
    with pytest.raises(ValueError, match="m contains 2 NaN/inf"):
        v.check_pixel_map(np.array([[np.nan, 1.0], [np.inf, 0.0]]), "m")
    with pytest.raises(ValueError, match="real numbers"):
        v.check_pixel_map(np.ones((2, 2), bool), "m")
    with pytest.raises(TypeError, match="m must be an array"):
        v.check_pixel_map("map", "m")


def test_check_mask_and_split():
    ints = np.array([[[0, 1], [1, 0]]])
    np.testing.assert_array_equal(v.check_mask(ints), ints.astype(bool))
    np.testing.assert_array_equal(v.check_mask(ints.astype(bool)), ints.astype(bool))
    with pytest.raises(ValueError, match=r"mk must be boolean .*float32.*mask > 0.5"):
        v.check_mask(ints.astype(float), "mk")
    with pytest.raises(ValueError, match=r"only 0 and 1, got also \[-1, 3\]"):
        v.check_mask(np.array([[0, 3], [-1, 1]]))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        v.check_mask(np.array([True, False]))
    v.check_mask_split(jnp.asarray(ints.astype(bool)))
    masks = np.zeros((2, 3, 2, 2), bool)
    masks[..., 0, 0] = True
    masks[1, 2] = True  # image (1, 2) is all foreground
    with pytest.raises(ValueError, match=r"all foreground .*index \(1, 2\)"):
        v.check_mask_split(jnp.asarray(masks))
    masks[1, 2] = False
    with pytest.raises(ValueError, match=r"all background .*index \(1, 2\)"):
        v.check_mask_split(jnp.asarray(masks))


def test_traced_mask_checks_are_debug_checks():
    def split_ok(mask):
        v.check_mask_split(v.check_mask(mask))
        return jnp.sum(mask)

    # Plain jit: no error, nothing to raise on.
    assert int(jax.jit(split_ok)(jnp.zeros((2, 2), jnp.int32))) == 0
    err, _ = checkify.checkify(jax.jit(split_ok))(jnp.zeros((2, 2), jnp.int32))
    assert "foreground_mask is all background" in err.get()
    err, _ = checkify.checkify(jax.jit(split_ok))(jnp.array([[0, 2], [1, 0]]))
    assert "foreground_mask must hold only 0 and 1" in err.get()
    seen = []
    jax.jit(lambda x: seen.append(v.is_traced(x)) or x)(1.0)
    assert seen == [True] and not v.is_traced(jnp.ones(2))


def test_check_image_shape():
    assert v.check_image_shape([4, np.int32(5)]) == (4, 5)
    with pytest.raises(ValueError, match=r"pair \(H, W\), got \(4, 4, 3\); pass"):
        v.check_image_shape((4, 4, 3))
    with pytest.raises(ValueError, match=r"pair \(H, W\), got \(4,\)"):
        v.check_image_shape((4,))
    with pytest.raises(TypeError, match="pair"):
        v.check_image_shape(4)
    with pytest.raises(ValueError, match=r"image_shape\[1\] must be >= 1"):
        v.check_image_shape((4, 0))


def test_check_boxes():
    boxes = v.check_boxes(np.array([[0.0, 1.0, 2.0, 3.0]]), (4, 4))
    assert boxes.dtype == jnp.int32 and boxes.tolist() == [[0, 1, 2, 3]]
    batch = np.array([[[0, 0, 4, 4], [1, 1, 2, 2]], [[0, 0, 1, 1], [2, 3, 5, 4]]])
    with pytest.raises(
        ValueError, match=r"boxes\[1, 1\] = \(2, 3, 5, 4\) lies outside"
    ):
        v.check_boxes(batch, (4, 4))
    with pytest.raises(ValueError, match=r"b = \(2, 0, 1, 3\) is inverted"):
        v.check_boxes([2, 0, 1, 3], (4, 4), "b")
    with pytest.raises(ValueError, match="not finite"):
        v.check_boxes([0, 0, np.inf, 3], (4, 4))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        v.check_boxes(np.zeros((2, 3)), (4, 4))


def test_check_images_unit_range_and_finite():
    x = np.full((1, 2, 2, 3), 0.5, np.float32)
    assert v.check_images(x, unit_range=True).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match=r"im contain 1 NaN/inf"):
        v.check_images(np.where(np.arange(12).reshape(x.shape) == 3, np.nan, x), "im")
    with pytest.raises(ValueError, match=r"unit range \[0, 1\]"):
        v.check_images(x + 1, unit_range=True)
    with pytest.raises(TypeError, match=r"\(B, H, W, C\)"):
        v.check_images(None)


# ----------------------------------------- issue 23: finite or a named error


def _tanh_features(w, s, x):
    """``s * tanh(W x)``: ``s`` is a leaf, so every scale shares one compile."""
    return {"t": s * jnp.tanh(x.reshape(x.shape[0], -1) @ w.T)}


_W = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4 * 3 * 2)), jnp.float32)
_X = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 4, 3, 2)), jnp.float32)
_CFG = dict(steps=2, probes=8, samples=2, budget_samples=4, step_chunk=2)


def _cid(fn, images, **changes):
    import warnings

    import jax_infodiscard as jid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget warnings of a 2-step solve
        cfg = jid.CIDConfig(**(_CFG | changes))
        return jid.cid(fn, images, jax.random.key(0), config=cfg)


def test_features_times_1e20_and_1e_minus20_give_the_same_maps():
    from jax.tree_util import Partial

    ref = _cid(Partial(_tanh_features, _W, jnp.float32(1.0)), _X)
    for s in (1e20, 1e-20):
        res = _cid(Partial(_tanh_features, _W, jnp.float32(s)), _X)
        assert np.isfinite(res.pixel).all()
        np.testing.assert_allclose(res.pixel, ref.pixel, atol=1e-4)
        # delta_f^2 in the user's units: s^2 times that of the unscaled features
        np.testing.assert_allclose(
            res.feature_scale, ref.feature_scale * np.float64(s) ** 2, rtol=1e-4
        )


def test_public_feature_scale_is_scale_free():
    from jax.tree_util import Partial

    import jax_infodiscard as jid

    key = jax.random.key(0)
    ref = jid.feature_scale(Partial(_tanh_features, _W, jnp.float32(1.0)), _X, key)
    for s in (1e20, 1e-20):
        got = jid.feature_scale(Partial(_tanh_features, _W, jnp.float32(s)), _X, key)
        assert np.isfinite(got).all() and (got > 0).all()
        np.testing.assert_allclose(got, np.asarray(ref) * np.float64(s) ** 2, rtol=1e-4)


def test_layer_exponents_are_powers_of_two_near_the_feature_size():
    from jax_infodiscard.core.features import layer_exponents

    fn = lambda x: {"big": x * 3e20, "small": x * 1e-30, "zero": (x - 0.5) * 1e25}
    exps = layer_exponents(fn, ("big", "small", "zero"), jnp.full((2, 2, 1), 0.5))
    # 1.5e20 = 2^67.0; 5e-31 = 2^-100.7 (clipped to -100); features of 0: the
    # Jacobian-vector product's size, 1e25 * rms(cos(0..3)) ~ 2^82.9
    assert exps == {"big": 67, "small": -100, "zero": 83}


def test_images_in_0_255_are_refused_unless_unit_range_is_off():
    fn = lambda x: {"t": jnp.tanh(x)}
    with pytest.raises(ValueError, match=r"unit range \[0, 1\].*0\.\.255.*unit_range"):
        _cid(fn, _X * 255)
    with pytest.raises(TypeError, match="unit_range must be a bool"):
        _cid(fn, _X, unit_range="no")


def test_pixels_of_1e38_end_in_an_error_naming_layer_image_and_cause():
    fn = lambda x: {"relu": 2.0 * jax.nn.relu(x - 0.3)}
    images = _X.at[1].multiply(1e38)
    with pytest.raises(
        v.NonFiniteError, match=r"layer 'relu', image 1: .*float32 resolution .*e\+37"
    ):
        _cid(fn, images, unit_range=False, method="linear")


def test_an_infinite_jacobian_ends_in_an_error_naming_layer_image_and_cause():
    fn = lambda x: {"sqrt": jnp.sqrt(x)}
    with pytest.raises(
        v.NonFiniteError, match=r"layer 'sqrt', image 1: .*Jacobian is infinite"
    ) as e:
        _cid(fn, _X.at[1, 0, 0, 0].set(0.0), method="linear")
    assert e.value.failures[0][:2] == ("sqrt", 1)


def test_check_solution_names_every_failure_and_the_zero_jacobian():
    out = {
        "feature_scale": np.array([[1.0, np.inf, 2.0]]),
        "pixel": np.zeros((1, 3, 2, 2)),
        "budget": np.array([[1.0, 1.0, np.nan]]),
    }
    with pytest.raises(v.NonFiniteError) as e:
        v.check_solution(out, ("a",), "ru")
    assert [f[:2] for f in e.value.failures] == [("a", 1), ("a", 2)]
    assert "budget is NaN/inf" in e.value.failures[1][2]
    assert "(1 more (layer, image) pairs)" in str(e.value)
    out["feature_scale"] = np.array([[1.0, np.finfo(np.float32).tiny, 2.0]])
    with pytest.raises(
        v.ImageFailure, match=r"zero Jacobian: 'a' at image\(s\) \[1\]"
    ) as e:
        v.check_solution(out, ("a",), "cid")
    assert [f[:2] for f in e.value.failures] == [("a", 1)]
    v.check_solution({"feature_scale": np.ones((2, 3))}, ("a", "b"), "cid")


def _tanh_scaled(c, x):
    return {"f": c * jnp.tanh(x - 0.5)}


def _tanh_inverse(c, f):
    return jnp.arctanh(jnp.clip(f / c, -0.999, 0.999)) + 0.5


def test_ru_with_features_times_1e20_gives_the_same_maps():
    # The decoder sees the user's features: the engine undoes its scaling.
    import warnings

    from jax.tree_util import Partial

    import jax_infodiscard as jid

    cfg = jid.RUConfig(**_CFG)
    out = []
    for c in (1.0, 1e20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = jid.ru(
                Partial(_tanh_scaled, jnp.float32(c)),
                Partial(_tanh_inverse, jnp.float32(c)),
                _X,
                jax.random.key(3),
                config=cfg,
            )
        assert np.isfinite(res.pixel).all()
        out.append(res)
    np.testing.assert_allclose(out[1].pixel, out[0].pixel, atol=1e-4)
