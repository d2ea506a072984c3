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
    "as_partial",
    "check_finite",
    "check_images",
    "check_int",
    "check_number",
    "check_output_dir",
    "image_keys",
]


def _describe(value: Any) -> str:
    return type(value).__name__


def check_images(
    images: Any, name: str = "images", *, unit_range: bool = False
) -> Array:
    """Validates a batch of images and returns it as ``float32 (B, H, W, C)``.

    Args:
      images: array-like ``(B, H, W, C)`` of floats (NHWC).
      name: the argument's name, for messages.
      unit_range: also require every value in ``[0, 1]``.

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
            )
    return arr.astype(jnp.float32)


def as_partial(fn: Any, name: str = "feature_fn") -> Partial:
    """Wraps a callable as a :class:`jax.tree_util.Partial` (a pytree).

    Partials carry their bound arguments (e.g. model parameters) as pytree
    leaves, so compiled programs take them as traced arguments instead of
    baking them in as constants. A plain callable becomes a leafless Partial
    (its compilation is cached on the function object).

    Raises:
      TypeError: ``fn`` is not callable.
    """
    if isinstance(fn, Partial):
        return fn
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


def check_number(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite ``float`` within the given bounds.

    Raises:
      TypeError: not a real number.
      ValueError: NaN, infinite, not positive (``positive=True``) or outside
        ``[minimum, maximum]``.
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
    return v


def check_finite(name: str, tree: Any) -> None:
    """Raises ``ValueError`` naming ``name`` if any leaf holds NaN or inf."""
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(a)))} NaN/inf")


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
