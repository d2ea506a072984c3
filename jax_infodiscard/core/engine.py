"""One compiled program per metric: images x layers, chunked and sharded.

The engine turns a per-image, per-layer-group solver into a jitted program
over a batch of images: ``vmap`` (or ``lax.map`` in chunks of
``chunk_size`` images) over the image axis, and ``shard_map`` over all local
devices when there is more than one. Randomness is keyed per image and per
layer (``fold_in(key_image, layer_index)``), so a result does not depend on
the batch companions of its image, nor on the layer strategy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jax_infodiscard.config import CIDConfig
from jax_infodiscard.core.feature_scale import jvp_scale, limit_scale
from jax_infodiscard.core.features import (
    grouped_features,
    image_features,
    normal,
    sq_norm,
)
from jax_infodiscard.core.linearized import column_norms, linear_log_sigma
from jax_infodiscard.core.solver import Problem, solve
from jax_infodiscard.types import Array, FeatureFn, PRNGKey, PyTree

# make_problem(feature_fn, extra, layers, x, base, scale) -> Problem
MakeProblem = Callable[..., Problem]

ENTROPY_CONSTANT = 0.5 * math.log(2.0 * math.pi * math.e)
"""``0.5 log(2 pi e)``: entropy of a unit Gaussian minus ``log sigma`` (nats)."""

# Salts for fold_in: every random quantity of a (image, layer) has its own.
_SALT_SCALE, _SALT_LINEAR, _SALT_SOLVER = 11, 12, 13


def sigma_shape(image_shape: tuple[int, ...], per_channel: bool) -> tuple[int, ...]:
    """Shape of sigma for one image: ``(H, W)`` or ``(H, W, C)``."""
    return tuple(image_shape) if per_channel else tuple(image_shape[:2])


def feature_scales(
    feature_fn: FeatureFn,
    layers: tuple[str, ...],
    x: Array,
    layer_keys: Array,
    method: str,
    num_samples: int,
) -> tuple[Array, Array]:
    """``delta_f^2`` ``(L,)`` and its cost in passes ``(L,)`` for one image.

    With ``method="jvp"``, a layer with at most ``num_samples`` feature entries
    is computed exactly from the basis (``||J||_F^2`` by vector-Jacobian
    products); the others use ``num_samples`` random JVPs.
    """
    keys = jax.vmap(lambda k: jax.random.fold_in(k, _SALT_SCALE))(layer_keys)
    deltas = jax.vmap(lambda k: normal(k, (num_samples, *x.shape)))(keys)
    if method == "limit":
        base = image_features(feature_fn, layers, x)
        scale, passes = limit_scale(feature_fn, layers, x, deltas, base)
        return scale, jnp.full((len(layers),), passes, jnp.int32)
    sizes = feature_sizes(feature_fn, layers, x)
    mc = [l for l, m in enumerate(sizes) if m > num_samples]
    scale = [None] * len(layers)
    passes = [num_samples] * len(layers)
    if mc:
        sub = tuple(layers[l] for l in mc)
        est = jvp_scale(feature_fn, sub, x, deltas[jnp.array(mc)])
        for j, l in enumerate(mc):
            scale[l] = est[j]
    for l, m in enumerate(sizes):
        if m <= num_samples:
            a, passes[l] = column_norms(feature_fn, layers[l], x, keys[l], m, False)
            scale[l] = jnp.sum(a)
    return jnp.stack(scale), jnp.array(passes, jnp.int32)


def feature_sizes(feature_fn: FeatureFn, layers: tuple[str, ...], x: Array):
    """Number of feature entries of each layer for one image (static ints)."""
    out = jax.eval_shape(lambda z: image_features(feature_fn, layers, z), x)
    return [sum(math.prod(a.shape) for a in jax.tree.leaves(out[n])) for n in layers]


def linear_distortion(feature_fn: FeatureFn, layers: tuple[str, ...], x: Array):
    """``t (L, N, H, W, C) -> ||J_l t[l, n]||^2 (L, N)`` at image ``x``.

    The network is linearised once (``jax.linearize``); each call costs one
    JVP per row.
    """
    xs = jnp.broadcast_to(x, (len(layers), 1, *x.shape))
    _, lin = jax.linearize(lambda z: grouped_features(feature_fn, layers, z), xs)

    def apply(t):
        out = jax.vmap(lin, in_axes=1)(t[:, :, None])  # {l: (N, 1, ...)}
        return jnp.stack(
            [sq_norm(jax.tree.map(lambda a: a[:, 0], out[n])) for n in layers]
        )

    return apply


def _solve_image(
    make_problem: MakeProblem,
    feature_fn: FeatureFn,
    extra: PyTree,
    layers: tuple[str, ...],
    layer_ids: tuple[int, ...],
    cfg: CIDConfig,
    beta: Array,
    x: Array,
    key: PRNGKey,
) -> dict[str, Array]:
    """Solves one image for a group of layers; every output has a layer axis."""
    layer_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.array(layer_ids))
    s_shape = sigma_shape(x.shape, cfg.per_channel)
    n = math.prod(s_shape)
    num_layers = len(layers)
    log_lam0 = jnp.full((num_layers,), math.log(2.0 / n)) + jnp.log(beta)
    log_min, log_max = math.log(cfg.min_sigma), math.log(cfg.max_sigma)
    base = image_features(feature_fn, layers, x)
    if cfg.method in ("linearized", "hybrid"):
        # delta_f^2 = sum_i a_i from the same VJPs: a common fluctuation of the
        # probe estimate then cancels in sigma_i^2 = beta delta_f^2 / (n a_i).
        lin_keys = jax.vmap(lambda k: jax.random.fold_in(k, _SALT_LINEAR))(layer_keys)
        norms, counts = zip(
            *[
                column_norms(
                    feature_fn, name, x, lin_keys[l], cfg.linear_probes, cfg.per_channel
                )
                for l, name in enumerate(layers)
            ],
            strict=True,
        )
        a_hat = jnp.stack(norms)
        scale = jnp.sum(a_hat, axis=tuple(range(1, a_hat.ndim)))
        scale = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
        cost = jnp.array(counts, jnp.int32)
        u0 = linear_log_sigma(a_hat, scale, log_lam0, log_min, log_max)
        problem = make_problem(feature_fn, extra, layers, x, base, scale)
        problem = problem._replace(
            linear=linear_distortion(feature_fn, layers, x), a_hat=a_hat
        )
    else:
        scale, cost = feature_scales(
            feature_fn, layers, x, layer_keys, cfg.feature_scale, cfg.scale_samples
        )
        scale = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
        u0 = jnp.full((num_layers, *s_shape), 0.5 * jnp.log(beta), jnp.float32)
        u0 = jnp.clip(u0, log_min, log_max)
        problem = make_problem(feature_fn, extra, layers, x, base, scale)
    solver_keys = jax.vmap(lambda k: jax.random.fold_in(k, _SALT_SOLVER))(layer_keys)
    sol = solve(
        problem,
        u0,
        log_lam0,
        beta,
        solver_keys,
        cfg,
        optimize=cfg.method != "linearized",
    )
    axes = tuple(range(1, sol.log_sigma.ndim))
    return {
        "log_sigma": sol.log_sigma,
        "pixel": sol.pixel + ENTROPY_CONSTANT,
        "lam": sol.lam,
        "budget": sol.budget,
        "converged": sol.converged,
        "passes": sol.passes + cost,
        "feature_scale": scale,
        "capped": jnp.sum(sol.log_sigma >= log_max - 1e-5, axis=axes),
    }


def _map_images(fn, images: Array, keys: Array, chunk_size: int | None):
    """``vmap`` over images, or ``lax.map`` in chunks of ``chunk_size``."""
    if chunk_size is None or chunk_size >= images.shape[0]:
        return jax.vmap(fn)(images, keys)
    return jax.lax.map(lambda xk: fn(*xk), (images, keys), batch_size=chunk_size)


@partial(jax.jit, static_argnames=("make_problem", "layers", "layer_ids", "cfg"))
def _solve_group(
    make_problem, feature_fn, extra, images, keys, beta, *, layers, layer_ids, cfg
):
    fn = partial(
        _solve_image, make_problem, feature_fn, extra, layers, layer_ids, cfg, beta
    )
    devices = jax.local_devices()  # each process solves its own images
    if len(devices) == 1:
        return _map_images(fn, images, keys, cfg.chunk_size)
    mesh = Mesh(np.array(devices), ("batch",))
    spec = PartitionSpec("batch")
    sharded = jax.shard_map(
        lambda im, ks: _map_images(fn, im, ks, cfg.chunk_size),
        mesh=mesh,
        in_specs=(spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    return sharded(images, keys)


def run(
    make_problem: MakeProblem,
    feature_fn: FeatureFn,
    extra: PyTree,
    images: Array,
    keys: Array,
    layers: tuple[str, ...],
    cfg: CIDConfig,
    strategy: str,
) -> dict[str, Array]:
    """Runs the solver on every image and layer; outputs are ``(L, B, ...)``.

    Pads the batch to a multiple of the device count when sharding.
    """
    num_images = images.shape[0]
    num_dev = jax.local_device_count()
    pad = (-num_images) % num_dev
    if pad:
        images = jnp.concatenate([images, jnp.repeat(images[-1:], pad, axis=0)])
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
    beta = jnp.float32(cfg.beta)
    static_cfg = cfg.replace(beta=1.0, layer_strategy="auto")
    if strategy == "vmap":
        groups = [(layers, tuple(range(len(layers))))]
    else:
        groups = [((name,), (i,)) for i, name in enumerate(layers)]
    outs = [
        _solve_group(
            make_problem,
            feature_fn,
            extra,
            images,
            keys,
            beta,
            layers=names,
            layer_ids=ids,
            cfg=static_cfg,
        )
        for names, ids in groups
    ]
    merged = {k: jnp.concatenate([o[k] for o in outs], axis=1) for k in outs[0]}
    return {k: jnp.moveaxis(v[:num_images], 1, 0) for k, v in merged.items()}
