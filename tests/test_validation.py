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
