"""Shared pieces of the baseline explainers: result type, validation, targets.

Every explainer in :mod:`jax_infodiscard.baselines` has the calling shape::

    explain(model, images, key, *, target=None, **options) -> Explanation

where ``images`` is ``float32 (B, H, W, C)`` in ``[0, 1]``, ``key`` a
``jax.random.key`` (ignored by deterministic methods; a single key or a batch
of ``B`` keys, one per image, so that an image's result can be made
independent of its batch mates) and ``target`` a ``(B,)`` integer array of
class indices or ``None`` (the arg-max class of the unperturbed image).

This module never imports Flax: models are plain callables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard import validation
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "Explanation",
    "as_layer_model",
    "as_model_fn",
    "check_images",
    "check_positive_int",
    "check_target",
    "chunked_map",
    "chunked_sum",
    "flat_bernoulli",
    "flat_normal",
    "image_keys",
    "layer_num_classes",
    "num_classes",
    "reduce_abs_max",
    "reduce_sum",
    "resolve_target",
    "select_logit",
    "target_gradient",
    "upsample",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Explanation:
    """The result of one explainer on a batch of images.

    Attributes:
        maps: ``float32 (B, H, W)`` — one attribution map per image, channels
            reduced as documented by the method (signed sum over ``C`` for
            attributions that add up to a logit difference, ``max_c |.|`` for
            gradient-magnitude saliency, ReLU-ed class maps for CAM methods).
            Maps are never normalised, so that they can be compared across
            images and layers.
        extras: method-specific arrays, all with leading axis ``B``. Every
            method stores ``"target"`` (``int32 (B,)``, the explained classes
            after resolving ``None``).
        model_calls: number of model evaluations per image (static ``int``);
            a forward pass or a forward+backward pass counts as one.
        method: registry name of the method that produced it (static).
    """

    maps: Array
    extras: Mapping[str, Array]
    model_calls: int = dataclasses.field(metadata={"static": True})
    method: str = dataclasses.field(metadata={"static": True})


def as_model_fn(model_fn: Callable[[Array], Array]) -> Partial:
    """``model_fn`` as a :class:`jax.tree_util.Partial` (see
    :func:`jax_infodiscard.validation.as_partial`)."""
    return validation.as_partial(model_fn, "model_fn")


def check_images(images: Any) -> Array:
    """Validates a batch of images: ``float32 (B, H, W, C)``, finite."""
    return validation.check_images(images)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum`` (see :func:`validation.check_int`)."""
    return validation.check_int(name, value, minimum)


_FORWARD = jax.jit(lambda model_fn, images: model_fn(images))


def num_classes(model_fn: Partial, images: Array) -> int:
    """Number of classes ``K`` of ``model_fn`` on ``images`` (shape only).

    Raises:
        ValueError: if the model does not return logits of shape ``(B, K)``.
    """
    out = _FORWARD.eval_shape(model_fn, images)
    if not hasattr(out, "shape") or len(out.shape) != 2:
        raise ValueError(
            "model_fn must return logits of shape (B, num_classes), got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    if out.shape[0] != images.shape[0]:
        raise ValueError(
            f"model_fn returned {out.shape[0]} rows of logits for a batch of "
            f"{images.shape[0]} images."
        )
    return int(out.shape[1])


def check_target(target: Any, batch: int, classes: int) -> Array | None:
    """Validates class indices on the host.

    Args:
        target: ``None`` or integers of shape ``(B,)`` (a Python list works).
        batch: the batch size ``B``.
        classes: the number of classes ``K``.

    Returns:
        ``None`` or ``int32 (B,)``.

    Raises:
        ValueError: if ``target`` has the wrong shape, is not integral or names
            a class outside ``[0, K)`` (the offending values are listed).
    """
    if target is None:
        return None
    arr = np.asarray(target)
    if arr.shape != (batch,):
        raise ValueError(
            f"target must have shape (B,) = ({batch},), got shape {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"target must hold integer class indices, got {arr.dtype}.")
    bad = np.unique(arr[(arr < 0) | (arr >= classes)])
    if bad.size:
        raise ValueError(
            f"target class(es) {bad.tolist()} out of range: the model has "
            f"{classes} classes (valid indices 0..{classes - 1})."
        )
    return jnp.asarray(arr, dtype=jnp.int32)


def resolve_target(target: Array | None, logits: Array) -> Array:
    """``target`` or, when ``None``, the arg-max class of ``logits (B, K)``."""
    if target is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return target


def select_logit(logits: Array, target: Array) -> Array:
    """``logits[b, target[b]]`` for each ``b``: ``(B, K), (B,) -> (B,)``."""
    return jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]


def image_keys(key: PRNGKey, batch: int) -> PRNGKey:
    """One key per image (see :func:`jax_infodiscard.validation.image_keys`)."""
    if key is None:
        raise TypeError("key: this method is random, pass key=jax.random.key(seed)")
    return validation.image_keys(key, batch)


def reduce_sum(attributions: Array) -> Array:
    """Signed sum over channels: ``(B, H, W, C) -> (B, H, W)``."""
    return jnp.sum(attributions, axis=-1)


def reduce_abs_max(gradients: Array) -> Array:
    """Largest magnitude over channels (Simonyan et al., 2014): ``-> (B, H, W)``."""
    return jnp.max(jnp.abs(gradients), axis=-1)


def target_gradient(
    model_fn: Callable[[Array], Array], images: Array, target: Array | None
) -> tuple[Array, Array, Array]:
    """One forward+backward pass: the gradient of the target logit.

    Because logits of different images do not interact, the gradient of
    ``sum_b logits[b, target[b]]`` is each image's own gradient.

    Args:
        model_fn: ``(N, H, W, C) -> (N, K)``.
        images: ``float32 (N, H, W, C)``.
        target: ``int32 (N,)`` or ``None`` (arg-max of these very logits, so the
            single pass also picks the class).

    Returns:
        ``(logits (N, K), target int32 (N,), gradients (N, H, W, C))``.
    """
    logits, vjp = jax.vjp(model_fn, images)
    target = resolve_target(target, logits)
    cotangent = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
    (gradients,) = vjp(cotangent)
    return logits, target, gradients


def _slice_chunk(xs: Any, start: Array, size: int) -> Any:
    """``xs[start : start + size]`` along the leading axis of every leaf."""
    return jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), xs
    )


@functools.partial(jax.jit, static_argnames=("size",))
def _map_chunk(fn: Partial, xs: Any, start: Array, size: int) -> Any:
    """``fn`` on the ``size`` slices of ``xs`` from ``start``."""
    return fn(_slice_chunk(xs, start, size))


@functools.partial(jax.jit, static_argnames=("size",), donate_argnames=("total",))
def _add_chunk(fn: Partial, total: Any, xs: Any, start: Array, size: int) -> Any:
    """``total + fn(chunk)`` for the ``size`` slices of ``xs`` from ``start``."""
    return jax.tree_util.tree_map(jnp.add, total, fn(_slice_chunk(xs, start, size)))


@jax.jit
def _zero_output(fn: Partial, xs: Any) -> Any:
    """Zeros shaped like ``fn(xs[:1])`` (the trace of ``fn`` is cached)."""
    first = jax.tree_util.tree_map(lambda a: a[:1], xs)
    shapes = jax.eval_shape(fn, first)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _chunk_bounds(xs: Any, chunk_size: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each chunk; all sizes equal but possibly the last."""
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    check_positive_int("chunk_size", chunk_size)
    if n < 1:
        raise ValueError("xs must have a non-empty leading axis.")
    return [(start, min(chunk_size, n - start)) for start in range(0, n, chunk_size)]


def chunked_sum(fn: Callable[[Any], Any], xs: Any, chunk_size: int) -> Any:
    """``sum_c fn(chunk_c)`` over chunks of ``chunk_size`` slices of ``xs``.

    ``fn`` takes a whole chunk ``(size, ...)`` and returns its contribution
    (typically one model pass on the chunk's ``size * B`` images flattened
    into one batch, then summed over the chunk: on XLA:CPU the model on the
    flattened batch runs faster than the model vmapped over ``size``).

    Each chunk is one call of a compiled program that adds ``fn(chunk)`` into
    the running sum, whose buffer is donated; the loop over chunks runs in
    Python. XLA:CPU runs convolution gradients much slower inside
    ``lax.scan``/``while_loop`` bodies than at top level (jax-ml/jax#12868;
    measured in docs/benchmarks.md, "Known limits on CPU"),
    whereas one dispatch per chunk costs microseconds, and on GPU the chunks
    still queue asynchronously. Memory is bounded by one chunk. All full
    chunks share one program (the chunk start is a traced argument); a shorter
    last chunk compiles a second one. No padding is added, so every slice is
    evaluated exactly once — model-call counts stay exact.

    Args:
        fn: maps a chunk of ``xs`` (leading axis ``size``) to a pytree of
            arrays. Pass a :class:`jax.tree_util.Partial` of a module-level
            function: its bound arrays are traced arguments, and the programs
            are cached on the function object (a fresh lambda recompiles on
            every call).
        xs: pytree of arrays with a common leading axis ``n >= 1``.
        chunk_size: slices evaluated together (``>= 1``).

    Returns:
        The pytree sum, shaped like ``fn``'s output.

    Raises:
        ValueError: if ``chunk_size < 1`` or ``n == 0``.
    """
    fn = as_model_fn(fn)
    total = _zero_output(fn, xs)
    for start, size in _chunk_bounds(xs, chunk_size):
        total = _add_chunk(fn, total, xs, start, size)
    return total


def chunked_map(fn: Callable[[Any], Any], xs: Any, chunk_size: int) -> Any:
    """``fn`` on chunks of ``chunk_size`` slices of ``xs``, concatenated.

    Like :func:`chunked_sum` (one compiled call per chunk, exact call count),
    but ``fn`` maps a chunk ``(size, ...)`` to outputs with leading axis
    ``size`` and the chunks' outputs are concatenated, so only the model's
    intermediates, not its outputs, are bounded by the chunk.

    Args:
        fn: maps a chunk of ``xs`` to a pytree of arrays with leading axis
            ``size`` (a ``Partial``, as for :func:`chunked_sum`).
        xs: pytree of arrays with a common leading axis ``n >= 1``.
        chunk_size: slices evaluated together (``>= 1``).

    Returns:
        ``fn``'s output pytree with a leading axis ``n`` on every leaf.

    Raises:
        ValueError: if ``chunk_size < 1`` or ``n == 0``.
    """
    fn = as_model_fn(fn)
    parts = [
        _map_chunk(fn, xs, start, size) for start, size in _chunk_bounds(xs, chunk_size)
    ]
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *p: jnp.concatenate(p, axis=0), *parts)


def as_layer_model(model: Any) -> tuple[Partial, Partial]:
    """Validates a layer-split model ``(body_fn, head_fn)``.

    ``body_fn(images (B, H, W, C)) -> activations (B, h, w, k)`` at the chosen
    layer and ``head_fn(activations) -> logits (B, K)``, with
    ``head_fn(body_fn(x)) == model_fn(x)``.

    Raises:
        ValueError: if ``model`` is not a pair of callables.
    """
    if not (isinstance(model, tuple | list) and len(model) == 2):
        raise ValueError(
            "layer-based methods take the model as a pair (body_fn, head_fn), got "
            f"{type(model).__name__}."
        )
    return as_model_fn(model[0]), as_model_fn(model[1])


def layer_num_classes(body_fn: Partial, head_fn: Partial, images: Array) -> int:
    """``K`` of ``head_fn(body_fn(images))``, checking the activations' rank.

    Raises:
        ValueError: if the activations are not ``(B, h, w, k)`` or the logits
            are not ``(B, K)``.
    """
    acts = _FORWARD.eval_shape(body_fn, images)
    if not hasattr(acts, "shape") or len(acts.shape) != 4:
        raise ValueError(
            "body_fn must return activations of shape (B, h, w, k), got "
            f"{getattr(acts, 'shape', type(acts).__name__)}."
        )
    if acts.shape[0] != images.shape[0]:
        raise ValueError(
            f"body_fn returned {acts.shape[0]} rows for {images.shape[0]} images."
        )
    return num_classes(head_fn, jax.ShapeDtypeStruct(acts.shape, acts.dtype))


def upsample(maps: Array, size: tuple[int, int], method: str) -> Array:
    """Resizes ``(B, h, w)`` maps to ``(B, *size)`` with :func:`jax.image.resize`."""
    return jax.image.resize(maps, (maps.shape[0], *size), method=method)


def flat_normal(key: PRNGKey, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Standard normal draws of ``shape``, generated flat and reshaped.

    Equivalent in distribution to ``jax.random.normal(key, shape)``; drawing a
    1-D vector compiles several times faster on CPU with the (default)
    partitionable threefry implementation than a multi-dimensional draw.
    """
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def flat_bernoulli(key: PRNGKey, p: float, shape: tuple[int, ...]) -> Array:
    """Boolean Bernoulli(``p``) draws of ``shape``, generated flat (see
    :func:`flat_normal`)."""
    return jax.random.bernoulli(key, p, (math.prod(shape),)).reshape(shape)
