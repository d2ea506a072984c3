"""Every input check of the library, in one place.

Public functions validate their arguments here before any compilation, and
raise a :class:`TypeError` (wrong kind of object) or :class:`ValueError`
(right kind, bad value) whose message names the argument and the problem.
Core, RU, baselines, training and the command line share these checks, so
one input is judged by one rule everywhere.
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard.types import Array

__all__ = [
    "ImageFailure",
    "NonFiniteError",
    "as_partial",
    "check_boxes",
    "check_finite",
    "check_image_shape",
    "check_images",
    "check_int",
    "check_layers",
    "check_mask",
    "check_mask_split",
    "check_names",
    "check_number",
    "check_output_dir",
    "check_pixel_map",
    "check_solution",
    "image_keys",
    "is_traced",
    "mask_values_ok",
]


def _describe(value: Any) -> str:
    return type(value).__name__


def check_images(
    images: Any, name: str = "images", *, unit_range: bool = False, hint: str = ""
) -> Array:
    """Validates a batch of images and returns it as ``float32 (B, H, W, C)``.

    Args:
      images: array-like ``(B, H, W, C)`` of floats (NHWC).
      name: the argument's name, for messages.
      unit_range: also require every value in ``[0, 1]``.
      hint: appended to the message of an out-of-range error.

    Raises:
      TypeError: ``images`` is not an array (a string, ``None``, a dict, ...).
      ValueError: wrong rank, an empty axis, a non-float dtype, NaN/inf
        values, or values outside ``[0, 1]`` with ``unit_range``.

    >>> check_images(np.zeros((2, 4, 4, 3))).dtype
    dtype('float32')
    """
    if isinstance(images, (str, bytes, dict)) or images is None:
        raise TypeError(
            f"{name} must be an array of shape (B, H, W, C), got {_describe(images)}"
        )
    try:
        arr = jnp.asarray(images)
    except TypeError as e:
        raise TypeError(
            f"{name} must be an array of shape (B, H, W, C), got {_describe(images)}"
        ) from e
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must have shape (B, H, W, C) (rank 4), got shape {arr.shape}"
        )
    if 0 in arr.shape:
        raise ValueError(f"{name} must not have an empty axis, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point in [0, 1], got {arr.dtype}")
    host = np.asarray(arr)
    finite = np.isfinite(host)
    if not finite.all():
        raise ValueError(f"{name} contain {int(np.sum(~finite))} NaN/inf value(s)")
    if unit_range:
        lo, hi = float(host.min()), float(host.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{name} must lie in the unit range [0, 1], got values in "
                f"[{lo:.4g}, {hi:.4g}]"
                + (" (0..255? divide by 255)" if 1 < hi <= 255 and lo >= 0 else "")
                + hint
            )
    return arr.astype(jnp.float32)


def as_partial(fn: Any, name: str = "feature_fn") -> Partial:
    """Wraps a callable as a :class:`jax.tree_util.Partial` (a pytree).

    Partials carry their bound arguments (e.g. model parameters) as pytree
    leaves, so compiled programs take them as traced arguments instead of
    baking them in as constants. A plain callable becomes a leafless Partial
    (its compilation is cached on the function object).

    Raises:
      TypeError: ``fn`` is not callable, or is a Flax module (the message
        names the adapter that makes a function of it).
    """
    if isinstance(fn, Partial):
        return fn
    from jax_infodiscard.models.adapters import adapter_advice  # imports us

    advice = adapter_advice(fn, name)  # a Flax model instead of a function
    if advice is not None:
        raise TypeError(advice)
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {_describe(fn)}")
    return Partial(fn)


def image_keys(key: Any, num_images: int, name: str = "key") -> Array:
    """One typed PRNG key per image: ``fold_in(key, i)``, or ``key`` if batched.

    Args:
      key: a single key (``jax.random.key`` or a raw ``uint32[2]``), or one key
        per image (``(B,)`` typed or ``(B, 2)`` raw).
      num_images: ``B``.
      name: the argument's name, for messages.

    Returns:
      ``(B,)`` typed keys. Image ``i`` of a single key uses ``fold_in(key, i)``,
      so its randomness never depends on its batch companions.

    Raises:
      TypeError: ``key`` is ``None`` or not a key.
      ValueError: a batch of keys of the wrong length.
    """
    if key is None or isinstance(key, (int, float, str)):
        raise TypeError(
            f"{name} must be a PRNG key (jax.random.key(seed)), got {_describe(key)}"
        )
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
            raise TypeError(
                f"{name} must be a PRNG key (jax.random.key(seed)), got an array "
                f"of dtype {key.dtype} and shape {key.shape}"
            )
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_images))
    if key.shape != (num_images,):
        raise ValueError(
            f"{name} must be a single key or a batch of {num_images} keys, got "
            f"shape {key.shape}"
        )
    return key


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``.

    Raises:
      TypeError: not an integer (floats such as ``2.5`` and bools included).
      ValueError: smaller than ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_names(name: str, value: Any, *, unique: bool = True) -> tuple[str, ...]:
    """One string or a non-empty sequence of strings, as a tuple.

    Args:
      name: the argument's name, for messages.
      value: ``"conv1"`` or ``["conv1", "conv2"]``.
      unique: also require the strings to be distinct.

    Raises:
      TypeError: not a string or a sequence of strings.
      ValueError: empty, an empty string, or (``unique``) duplicates.

    >>> check_names("layers", "conv1")
    ('conv1',)
    """
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"{name} must be a string or a sequence of strings, got {value!r}"
        )
    names = tuple(value)
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must contain strings only, got {bad!r}")
    if not names:
        raise ValueError(f"{name} must name at least one layer, got {names!r}")
    if "" in names:
        raise ValueError(f"{name} must not contain an empty name, got {names!r}")
    if unique and len(set(names)) != len(names):
        dups = sorted({v for v in names if names.count(v) > 1})
        raise ValueError(f"{name} has duplicate names {dups}")
    return names


def check_number(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite ``float`` within the given bounds.

    Args:
      name: the argument's name, for messages.
      value: the number to check.
      positive: require ``value > 0``.
      minimum: require ``value >= minimum``.
      maximum: require ``value <= maximum``.
      below: require ``value < below`` (a strict upper bound).

    Raises:
      TypeError: not a real number.
      ValueError: NaN, infinite, not positive (``positive=True``), outside
        ``[minimum, maximum]`` or not below ``below``.

    >>> check_number("momentum", 0.9, minimum=0, below=1)
    0.9
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    if below is not None and not v < below:
        raise ValueError(f"{name} must be < {below}, got {value!r}")
    return v


def check_finite(name: str, tree: Any) -> None:
    """Raises ``ValueError`` naming ``name`` if any leaf holds NaN or inf."""
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(a)))} NaN/inf")


def check_layers(
    feature_fn: Any, images: Array, layers: Any, name: str = "feature_fn"
) -> tuple[str, ...]:
    """Validates ``layers`` and the features ``feature_fn`` returns for them.

    Checks, on the abstract shapes and on one forward pass of at most two
    images: ``feature_fn`` returns a non-empty dict; the requested layers exist
    (``None`` means all) and are unique; every feature has the batch as its
    leading axis and a floating dtype; the features are finite; and the
    result for one image does not depend on the other images of the batch.

    Args:
      feature_fn: ``feature_fn(images (B, H, W, C)) -> {layer: (B, ...)}``.
      images: the validated images ``(B, H, W, C)``.
      layers: a name, a sequence of names, or ``None`` for every layer.
      name: the argument's name, for messages.

    Returns:
      The layer names, in the order requested (``feature_fn``'s order for
      ``None``).
    """
    if layers is not None and not isinstance(layers, str):
        if not isinstance(layers, (list, tuple)) or not all(
            isinstance(n, str) for n in layers
        ):
            raise TypeError(
                f"layers must be a layer name, a list of names or None, got {layers!r}"
            )
    spec = jax.ShapeDtypeStruct((2, *images.shape[1:]), images.dtype)
    try:
        out = jax.eval_shape(feature_fn, spec)
    except Exception as e:  # the user's function fails on a batch of images
        raise ValueError(f"{name} fails on a batch of images: {e}") from e
    if not isinstance(out, dict) or not out:
        raise TypeError(
            f"{name} must return a non-empty dict {{layer_name: array}}, got "
            f"{type(out).__name__}"
        )
    names = tuple(out)
    if layers is None:
        layers = names
    elif isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    unknown = [n for n in layers if n not in out]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; available: {list(names)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layer names in {list(layers)}")
    for layer in layers:
        leaves = jax.tree.leaves(out[layer])
        if not leaves:
            raise ValueError(f"layer {layer!r}: the feature has no arrays")
        for leaf in leaves:
            if leaf.ndim < 1 or leaf.shape[0] != 2:
                raise ValueError(
                    f"layer {layer!r}: every feature must have the batch as its "
                    f"leading axis; got shape {leaf.shape} for a batch of 2"
                )
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"layer {layer!r}: features must be floating point (a "
                    f"differentiable function of the image), got {leaf.dtype}"
                )
    x0 = images[:1]
    other = images[1:2] if images.shape[0] > 1 else 1.0 - x0
    alone = feature_fn(x0)
    together = feature_fn(jnp.concatenate([x0, other]))
    for layer in layers:
        for a, b in zip(
            jax.tree.leaves(alone[layer]), jax.tree.leaves(together[layer]), strict=True
        ):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {layer!r}: the features contain NaN/inf")
            tol = 1e-3 * (1.0 + float(np.max(np.abs(a))))
            if float(np.max(np.abs(a[0] - b[0]))) > tol:
                raise ValueError(
                    f"layer {layer!r}: the features of an image depend on the other "
                    "images of its batch (batch statistics?); run BatchNorm in "
                    "inference mode and make the feature function per-image"
                )
    return layers


class ImageFailure(ValueError):
    """Some images cannot be solved; ``failures`` lists ``(layer, image, cause)``.

    ``image`` is the index in the batch given to the solver. The ``run`` job
    records these images and goes on with the others.
    """

    def __init__(self, message: str, failures: list[tuple[str, int, str]]):
        super().__init__(message)
        self.failures = failures


class NonFiniteError(ImageFailure):
    """A solve produced NaN/inf (an infinite Jacobian, overflowing features)."""


_SOLUTION_FIELDS = ("pixel", "log_sigma", "lam", "budget")


def check_solution(
    out: dict, layers: tuple[str, ...], metric: str, images: Any = None
) -> None:
    """Refuses a solve with a zero, infinite or NaN Jacobian or non-finite maps.

    Args:
      out: the engine's outputs ``{field: (L, B, ...)}``; ``feature_scale``
        is ``delta_f^2`` of the (scaled) features, clamped below at the
        smallest normal float32.
      layers: the ``L`` layer names.
      metric: ``"cid"`` or ``"ru"``, for messages.
      images: the ``(B, H, W, C)`` images, to quote their range in messages.

    Raises:
      ImageFailure: (a ``ValueError``) a layer whose features do not depend
        on the input (zero Jacobian) at some image.
      NonFiniteError: an infinite or NaN Jacobian, or maps that are not
        finite; the message names the layer, the image and the cause, and
        ``failures`` lists every ``(layer, image, cause)``.
    """
    scale = np.asarray(out["feature_scale"], np.float64)
    dead = scale <= np.finfo(np.float32).tiny
    if dead.any():
        bad = sorted({layers[l] for l in np.nonzero(dead)[0]})
        where = ", ".join(
            f"{layers[l]!r} at image(s) {np.nonzero(dead[l])[0][:5].tolist()}"
            for l in sorted(set(np.nonzero(dead)[0]))
        )
        raise ImageFailure(
            f"layer(s) {bad}: the feature does not change with the input (zero "
            f"Jacobian: {where}); {metric.upper()} is undefined there",
            [
                (
                    layers[l],
                    int(b),
                    "zero Jacobian: the feature does not change "
                    "with the input at this image",
                )
                for l, b in zip(*np.nonzero(dead), strict=True)
            ],
        )
    failures: list[tuple[str, int, str]] = []
    jac = ~np.isfinite(scale)
    for l, b in zip(*np.nonzero(jac), strict=True):
        failures.append(
            (
                layers[l],
                int(b),
                "the Jacobian is infinite or NaN (delta_f^2 = "
                f"{scale[l, b]}): the feature function is not differentiable at "
                "this image (e.g. sqrt or log at 0)",
            )
        )
    for field in _SOLUTION_FIELDS:
        if field not in out:
            continue
        arr = np.asarray(out[field], np.float64)
        bad = ~np.isfinite(arr.reshape(arr.shape[0], arr.shape[1], -1)).all(axis=2)
        for l, b in zip(*np.nonzero(bad & ~jac), strict=True):
            jac[l, b] = True  # one record per (layer, image)
            peak = ""
            if images is not None:
                peak = f" (|pixel| up to {float(np.max(np.abs(images[b]))):.3g})"
            failures.append(
                (
                    layers[l],
                    int(b),
                    f"{field} is NaN/inf after the solve: the features overflow "
                    f"or turn NaN on noisy copies of the image{peak}",
                )
            )
    if "budget" in out:
        # A budget of exactly 0 with a non-zero Jacobian: every noisy copy
        # equals the image in float32 (the noise is below the resolution of
        # pixels this large), so the solve measured nothing.
        lost = (np.asarray(out["budget"], np.float64) == 0.0) & ~jac
        for l, b in zip(*np.nonzero(lost), strict=True):
            jac[l, b] = True
            peak = ""
            if images is not None:
                peak = f" (|pixel| up to {float(np.max(np.abs(images[b]))):.3g})"
            failures.append(
                (
                    layers[l],
                    int(b),
                    "the measured budget is 0: the noise is lost below the "
                    f"float32 resolution of the input{peak}",
                )
            )
    if failures:
        layer, image, cause = failures[0]
        more = f" ({len(failures) - 1} more (layer, image) pairs)" * (len(failures) > 1)
        raise NonFiniteError(
            f"{metric}: layer {layer!r}, image {image}: {cause}; no map is "
            f"returned{more}",
            failures,
        )


# ------------------------------------------------------------ masks and boxes
#
# These checks also run on traced values (inside ``jit``/``vmap``), where a
# value cannot be inspected on the host. There, the shape and dtype checks
# still raise at trace time; the value checks become
# :func:`jax.experimental.checkify.debug_check` calls, which raise when the
# caller runs the function under :func:`jax.experimental.checkify.checkify`
# and do nothing under plain ``jit``. The functions that use them return NaN
# for an image whose inputs failed a value check, so that a bad value never
# yields a plausible-looking number.


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a tracer (inside ``jit``, ``vmap``, ``grad``...)."""
    return isinstance(value, jax.core.Tracer)


def _as_array(value: Any, name: str, what: str) -> Array:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise TypeError(f"{name} must be {what}, got {_describe(value)}")
    try:
        return jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"{name} must be {what}, got {_describe(value)}") from e


def _debug_check(condition: Array, message: str) -> None:
    """A value check on traced data (see the note above)."""
    from jax.experimental import checkify

    checkify.debug_check(condition, message.replace("{", "(").replace("}", ")"))


def check_pixel_map(pixel_map: Any, name: str = "pixel_map") -> Array:
    """Validates a real-valued map with ``(H, W)`` trailing axes.

    Args:
      pixel_map: array-like ``(..., H, W)`` of real numbers.
      name: the argument's name, for messages.

    Returns:
      The map as a floating-point array (integers become ``float32``).

    Raises:
      TypeError: not an array.
      ValueError: fewer than two axes, a boolean or complex dtype, or NaN/inf
        values (on traced maps: a ``debug_check``, see the module note).

    >>> check_pixel_map(np.zeros((2, 3))).dtype
    dtype('float32')
    """
    arr = _as_array(pixel_map, name, "an array of shape (..., H, W)")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got shape {arr.shape}")
    if arr.dtype == jnp.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    if is_traced(arr):
        _debug_check(jnp.all(jnp.isfinite(arr)), f"{name} contains NaN/inf values")
    else:
        bad = int(np.sum(~np.isfinite(np.asarray(arr))))
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
    return arr


def check_mask(mask: Any, name: str = "foreground_mask") -> Array:
    """Validates binary masks with ``(H, W)`` trailing axes; returns them as bool.

    A mask is boolean, or integer with only the values 0 and 1. Floating-point
    masks are refused rather than thresholded: whether ``0.5`` is foreground is
    the caller's decision (``mask > 0.5``).

    Args:
      mask: array-like ``(..., H, W)``.
      name: the argument's name, for messages.

    Returns:
      ``bool (..., H, W)``. A traced integer mask with values other than 0/1
      is not caught here (it maps to ``mask == 1``); see :func:`mask_values_ok`.

    Raises:
      TypeError: not an array.
      ValueError: fewer than two axes, a non-bool non-integer dtype, or
        integer values other than 0 and 1.

    >>> check_mask(np.array([[0, 1], [1, 0]])).dtype
    dtype('bool')
    """
    arr = _as_array(mask, name, "a boolean array of shape (..., H, W)")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got shape {arr.shape}")
    if arr.dtype == jnp.bool_:
        return arr
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be boolean (or integer 0/1), got dtype {arr.dtype}; "
            "threshold it explicitly, e.g. mask > 0.5"
        )
    if is_traced(arr):
        _debug_check(mask_values_ok(arr).all(), f"{name} must hold only 0 and 1")
    else:
        host = np.asarray(arr)
        odd = np.unique(host[(host != 0) & (host != 1)])
        if odd.size:
            raise ValueError(
                f"{name} must hold only 0 and 1, got also {odd[:5].tolist()}"
            )
    return arr == 1


def mask_values_ok(mask: Array) -> Array:
    """``bool (...)``: whether each ``(H, W)`` mask holds only 0/1 (or is bool)."""
    if mask.dtype == jnp.bool_:
        return jnp.ones(mask.shape[:-2], bool)
    return jnp.all((mask == 0) | (mask == 1), axis=(-2, -1))


def check_mask_split(mask: Array, name: str = "foreground_mask") -> None:
    """Requires foreground and background pixels in every ``(H, W)`` mask.

    Args:
      mask: ``bool (..., H, W)`` (from :func:`check_mask`).
      name: the argument's name, for messages.

    Raises:
      ValueError: some mask is all background or all foreground (the indices
        of the first such masks are named); on traced masks a
        ``debug_check``.
    """
    count = jnp.sum(mask, axis=(-2, -1))
    size = mask.shape[-2] * mask.shape[-1]
    if is_traced(mask):
        _debug_check(jnp.all(count > 0), f"{name} is all background for some image")
        _debug_check(jnp.all(count < size), f"{name} is all foreground for some image")
        return
    count = np.asarray(count)
    for bad, what in ((count == 0, "background"), (count == size, "foreground")):
        if np.any(bad):
            where = [tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:3]]
            at = f" (at index {', '.join(map(str, where))})" if count.ndim else ""
            raise ValueError(f"{name} is all {what} for some image{at}")


def check_image_shape(image_shape: Any, name: str = "image_shape") -> tuple[int, int]:
    """``(H, W)`` as a pair of positive ints.

    Raises:
      TypeError: not a sequence of integers.
      ValueError: not two entries (``(H, W, C)`` included), or an entry < 1.

    >>> check_image_shape((32, 28))
    (32, 28)
    """
    if isinstance(image_shape, (str, bytes, dict)) or not hasattr(
        image_shape, "__len__"
    ):
        raise TypeError(f"{name} must be a pair (H, W), got {image_shape!r}")
    shape = tuple(image_shape)
    if len(shape) != 2:
        hint = "; pass images.shape[1:3]" if len(shape) == 3 else ""
        raise ValueError(f"{name} must be a pair (H, W), got {shape}{hint}")
    h, w = (check_int(f"{name}[{i}]", v) for i, v in enumerate(shape))
    return h, w


def check_boxes(boxes: Any, image_shape: tuple[int, int], name: str = "boxes") -> Array:
    """Validates ``(..., 4)`` boxes ``(y0, x0, y1, x1)`` inside an image.

    Boxes are whole pixels, half-open, non-empty and inside the image:
    ``0 <= y0 < y1 <= H`` and ``0 <= x0 < x1 <= W``.

    Args:
      boxes: array-like ``(..., 4)`` of integers (or integral floats).
      image_shape: ``(H, W)`` (already checked).
      name: the argument's name, for messages.

    Returns:
      The boxes as an integer array (a traced float array is returned as is).

    Raises:
      TypeError: not an array.
      ValueError: a last axis other than 4, a non-numeric dtype, NaN/inf or
        fractional coordinates, or an inverted, empty or out-of-image box (the
        first one is named); on traced boxes the value checks are
        ``debug_check`` calls.

    >>> check_boxes([[0, 1, 2, 3]], (4, 4)).tolist()
    [[0, 1, 2, 3]]
    """
    arr = _as_array(boxes, name, "an array of shape (..., 4)")
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ValueError(
            f"{name} must have shape (..., 4) as (y0, x0, y1, x1), got shape "
            f"{arr.shape}"
        )
    if arr.dtype == jnp.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.integer)
        or jnp.issubdtype(arr.dtype, jnp.floating)
    ):
        raise ValueError(f"{name} must hold pixel coordinates, got dtype {arr.dtype}")
    h, w = image_shape
    rule = f"0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}"
    if is_traced(arr):
        y0, x0, y1, x1 = (arr[..., i] for i in range(4))
        inside = (0 <= y0) & (y0 < y1) & (y1 <= h) & (0 <= x0) & (x0 < x1) & (x1 <= w)
        _debug_check(jnp.all(inside), f"{name} must satisfy {rule}")
        return arr
    host = np.asarray(arr)
    flat = host.reshape(-1, 4)

    def first(bad: np.ndarray) -> str:
        i = int(np.argmax(bad))
        index = np.unravel_index(i, host.shape[:-1]) if host.ndim > 1 else ()
        at = f"[{', '.join(str(int(j)) for j in index)}]" if index else ""
        return f"{name}{at} = {tuple(flat[i].tolist())}"

    if not np.issubdtype(host.dtype, np.integer):
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            raise ValueError(f"{first(bad)} is not finite")
        bad = (flat != np.round(flat)).any(axis=1)
        if bad.any():
            raise ValueError(f"{first(bad)} is not in whole pixels; round it first")
    y0, x0, y1, x1 = flat.T
    bad = (y1 <= y0) | (x1 <= x0)
    if bad.any():
        raise ValueError(
            f"{first(bad)} is inverted or empty (needs y0 < y1 and x0 < x1)"
        )
    bad = (y0 < 0) | (x0 < 0) | (y1 > h) | (x1 > w)
    if bad.any():
        raise ValueError(f"{first(bad)} lies outside the ({h}, {w}) image ({rule})")
    return jnp.asarray(host.astype(np.int32))


def _writable(folder: pathlib.Path) -> bool:
    """Whether a file can be created in ``folder`` (probed: exact for root and
    read-only mounts, where :func:`os.access` says yes)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_dir(path: Any, name: str = "out") -> pathlib.Path:
    """``path`` as a :class:`pathlib.Path` if it can be an output folder.

    The folder may exist (then it must be a writable directory) or not (then
    its nearest existing parent must be a writable directory, so that it can
    be created). Writability is probed with a temporary file, which is
    removed at once; nothing else is created.

    Raises:
      TypeError: not a string or path.
      ValueError: empty, an existing file, a non-writable folder, or a
        parent that is a file or not writable.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     check_output_dir(f.name, "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: out: ... is an existing file, not a folder
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path, got {_describe(path)}")
    if not str(path):
        raise ValueError(f"{name} must be a folder path, got an empty string")
    p = pathlib.Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{name}: {p} is an existing file, not a folder")
        if not _writable(p):
            raise ValueError(f"{name}: folder {p} is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: cannot create {p}: {parent} is a file")
    if not _writable(parent):
        raise ValueError(f"{name}: cannot create {p}: {parent} is not writable")
    return p
