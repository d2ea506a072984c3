"""Concentration (paper Eq. 5) and box masks: values, and every bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jax_infodiscard.core.concentration import box_to_mask, concentration


def _maps_and_masks():
    """Two 4x4 maps: background 1 and foreground 3 (image 0), 0 and -2 (image 1)."""
    mask = np.zeros((2, 4, 4), bool)
    mask[:, 1:3, 1:3] = True
    maps = np.where(mask, [[[3.0]], [[-2.0]]], [[[1.0]], [[0.0]]])
    return jnp.asarray(maps, jnp.float32), mask


def test_closed_form_and_broadcast():
    maps, mask = _maps_and_masks()
    np.testing.assert_allclose(concentration(maps, mask), [-2.0, 2.0])
    # A layers axis broadcasts against per-image masks.
    stacked = jnp.stack([maps, 2 * maps])
    np.testing.assert_allclose(concentration(stacked, mask), [[-2, 2], [-4, 4]])
    # Integer 0/1 masks mean the same as boolean ones.
    np.testing.assert_array_equal(
        concentration(maps, mask.astype(np.int32)), concentration(maps, mask)
    )
    # The same under jit, with the mask traced.
    np.testing.assert_allclose(jax.jit(concentration)(maps, mask), [-2.0, 2.0])


def test_float_and_non_binary_masks_are_refused():
    maps, mask = _maps_and_masks()
    with pytest.raises(ValueError, match=r"foreground_mask must be boolean.*float32"):
        concentration(maps, mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"only 0 and 1, got also \[2\]"):
        concentration(maps, 2 * mask.astype(np.int32))
    with pytest.raises(TypeError, match="foreground_mask"):
        concentration(maps, None)


def test_nan_map_names_the_argument():
    maps, mask = _maps_and_masks()
    with pytest.raises(ValueError, match="pixel_map contains 1 NaN/inf"):
        concentration(maps.at[0, 0, 0].set(jnp.nan), mask)
    with pytest.raises(ValueError, match="pixel_map contains 2 NaN/inf"):
        concentration(maps.at[1, 0, :2].set(jnp.inf), mask)
    with pytest.raises(ValueError, match="pixel_map must hold real numbers"):
        concentration(maps > 0, mask)


def test_one_sided_masks_raise_and_name_the_image():
    maps, mask = _maps_and_masks()
    with pytest.raises(ValueError, match=r"all background .*index \(1,\)"):
        concentration(maps, _set(mask, 1, False))
    with pytest.raises(ValueError, match=r"all foreground .*index \(0,\)"):
        concentration(maps, _set(mask, 0, True))
    with pytest.raises(ValueError, match="does not match"):
        concentration(maps, mask[:, :3])
    with pytest.raises(ValueError, match="does not broadcast"):
        concentration(maps, np.concatenate([mask, mask]))


def _set(mask, i, value):
    out = mask.copy()
    out[i] = value
    return out


def test_bad_values_under_jit_give_nan_or_a_checkify_error():
    maps, mask = _maps_and_masks()
    one_sided = _set(mask, 1, False)
    nan_map = maps.at[0, 2, 2].set(jnp.nan)
    twos = _set(mask.astype(np.int32), 0, 2)
    jitted = jax.jit(concentration)
    # Plain jit cannot raise on traced values: the bad image is NaN, the
    # other one keeps its exact value.
    for m, x, bad in ((one_sided, maps, 1), (mask, nan_map, 0), (twos, maps, 0)):
        out = np.asarray(jitted(x, m))
        assert np.isnan(out[bad]) and out[1 - bad] == [-2.0, 2.0][1 - bad]
    # Under checkify the same checks raise with the eager message.
    checked = checkify.checkify(jitted)
    for m, x, message in (
        (one_sided, maps, "foreground_mask is all background"),
        (_set(mask, 0, True), maps, "foreground_mask is all foreground"),
        (mask, nan_map, "pixel_map contains NaN/inf"),
        (twos, maps, "foreground_mask must hold only 0 and 1"),
    ):
        err, _ = checked(x, m)
        assert message in err.get()
    err, out = checked(maps, mask)
    assert err.get() is None
    np.testing.assert_allclose(out, [-2.0, 2.0])
    # A float mask is refused at trace time, also under jit.
    with pytest.raises(ValueError, match="must be boolean"):
        jitted(maps, mask.astype(np.float32))


def test_box_to_mask_values():
    mask = box_to_mask(np.array([[1, 0, 3, 2], [0, 0, 4, 3]]), (4, 3))
    assert mask.dtype == jnp.bool_ and mask.shape == (2, 4, 3)
    np.testing.assert_array_equal(mask[0], [[0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert bool(mask[1].all())  # the whole image is a valid box
    # Whole-number floats are accepted, numpy ints for the shape too.
    np.testing.assert_array_equal(
        box_to_mask(np.array([1.0, 0.0, 3.0, 2.0]), (np.int64(4), 3)), mask[0]
    )
    # Traced boxes: the same masks.
    traced = jax.jit(box_to_mask, static_argnums=1)(jnp.array([1, 0, 3, 2]), (4, 3))
    np.testing.assert_array_equal(traced, mask[0])


@pytest.mark.parametrize(
    ("boxes", "shape", "error", "message"),
    [
        ([1, 0, 3, 2], (8,), ValueError, r"image_shape must be a pair \(H, W\)"),
        ([1, 0, 3, 2], (8, 8, 3), ValueError, r"pass images.shape\[1:3\]"),
        ([1, 0, 3, 2], (0, 8), ValueError, r"image_shape\[0\] must be >= 1"),
        ([1, 0, 3, 2], 8, TypeError, "image_shape must be a pair"),
        ([1, 0, 3, 2], (8.0, 8), TypeError, "must be an integer"),
        ([1, 0, 3], (8, 8), ValueError, r"shape \(\.\.\., 4\)"),
        (5, (8, 8), ValueError, r"shape \(\.\.\., 4\)"),
        (None, (8, 8), TypeError, "boxes must be an array"),
        ([[0, 0, 2, 2], [3, 1, 9, 4]], (8, 8), ValueError, r"boxes\[1\] = .*outside"),
        ([-1, 0, 2, 2], (8, 8), ValueError, "outside the"),
        ([4, 0, 2, 2], (8, 8), ValueError, "inverted or empty"),
        ([2, 2, 2, 5], (8, 8), ValueError, "inverted or empty"),
        ([np.nan, 0, 2, 2], (8, 8), ValueError, "not finite"),
        ([0.5, 0, 2, 2], (8, 8), ValueError, "whole pixels"),
        ([True, False, True, True], (8, 8), ValueError, "pixel coordinates"),
    ],
)
def test_box_to_mask_bad_inputs(boxes, shape, error, message):
    with pytest.raises(error, match=message):
        box_to_mask(np.asarray(boxes) if boxes is not None else None, shape)


def test_bad_traced_boxes_raise_under_checkify():
    fn = checkify.checkify(jax.jit(box_to_mask, static_argnums=1))
    err, _ = fn(jnp.array([3, 1, 9, 4]), (8, 8))
    assert "boxes must satisfy 0 <= y0 < y1 <= 8" in err.get()
    err, _ = fn(jnp.array([1, 1, 3, 4]), (8, 8))
    assert err.get() is None
