"""Jacobian column norms and the closed form of the linear regime.

At small noise a network is locally linear, ``h(x + e) ~ f + J e``, and the
optimum of Eq. 3-4 is closed-form (docs/design.md, "Solver"): with ``a_i`` the
squared norm of the Jacobian columns of sigma entry ``i``,
``delta_f^2 = sum_i a_i``, ``lambda = 2 beta / n`` and
``sigma_i^2 = lambda delta_f^2 / (2 a_i) = beta delta_f^2 / (n a_i)``.

``a_i = E_v[(J^T v)_i^2]`` for probes ``v`` with independent unit-variance
entries, so ``K`` vector-Jacobian products give every column norm at once.
Rademacher probes have a lower variance than Gaussian ones
(``2 (a_i^2 - sum_k J_ki^4) / K`` against ``2 a_i^2 / K``). Two exact ways
replace them where they cost at most ``K`` passes: the basis vectors of a
feature with at most ``K`` entries, and, for a feature with a bounded
receptive field (convolutions, pooling, residual blocks),
Jacobian-vector products along a periodic colouring of the input
(:mod:`jax_infodiscard.core.colouring`; ``P_1 P_2 C`` products for a field of
at most ``P_1 x P_2`` pixels).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jax_infodiscard.core import colouring as _colouring
from jax_infodiscard.core.features import grouped_features, image_features, sq_norm
from jax_infodiscard.types import Array, FeatureFn, PRNGKey


def feature_sizes(
    feature_fn: FeatureFn, layers: tuple[str, ...], x: Array
) -> list[int]:
    """Number of feature entries of each layer for one image (static ints)."""
    out = jax.eval_shape(lambda z: image_features(feature_fn, layers, z), x)
    return [sum(math.prod(a.shape) for a in jax.tree.leaves(out[n])) for n in layers]


NORM_MODES = ("auto", "probes", "basis", "colouring")
"""How :func:`column_norms` computes the norms (``mode``)."""


def colouring_plan(
    feature_fn: FeatureFn, layer: str, x: Array
) -> _colouring.Colouring | None:
    """The exact colouring of one layer at ``x``'s shape, or ``None``.

    ``None`` when the layer's tangent map cannot be traced (a function without
    forward-mode derivatives, for example). Static: it depends on shapes only.

    >>> fn = lambda x: {"blur": x[:, 1:] + x[:, :-1]}
    >>> colouring_plan(fn, "blur", jnp.zeros((8, 8, 3))).passes
    6
    """
    try:
        fields = _colouring.receptive_fields(_leaves_fn(feature_fn, layer), x)
    except (TypeError, ValueError, NotImplementedError):
        return None
    return _colouring.plan(fields, x.shape)


def _leaves_fn(feature_fn: FeatureFn, layer: str):
    def leaves(z):
        out = image_features(feature_fn, (layer,), z)[layer]
        return [a.astype(jnp.float32) for a in jax.tree.leaves(out)]

    return leaves


def column_norms(
    feature_fn: FeatureFn,
    layer: str,
    x: Array,
    key: PRNGKey,
    num_probes: int,
    per_channel: bool,
    probe_batch: int | None = None,
    mode: str = "auto",
) -> tuple[Array, int]:
    """Squared Jacobian column norms of one layer at one image.

    Three ways, chosen by ``mode``: ``"probes"`` (``K`` Rademacher VJPs, an
    unbiased estimate), ``"basis"`` (one VJP per feature entry, exact) and
    ``"colouring"`` (one JVP per colour class of the input, exact; see
    :mod:`jax_infodiscard.core.colouring`). ``"auto"`` (the default) takes
    the cheaper exact way when it needs at most ``K`` passes (the basis on a
    tie), else the probes.

    Args:
      feature_fn: feature function.
      layer: layer name.
      x: one image ``(H, W, C)``.
      key: PRNG key of the probes.
      num_probes: ``K``, the number of vector-Jacobian products.
      per_channel: ``True`` for one entry per input unit ``(H, W, C)``;
        otherwise channels are summed, ``(H, W)``.
      probe_batch: VJPs (or JVPs) held in memory at once (``None``: all);
        smaller batches run in a compiled loop, which bounds memory on large
        images.
      mode: one of :data:`NORM_MODES`.

    Returns:
      ``(a, passes)``: ``a`` of shape ``(H, W)`` or ``(H, W, C)`` (float32) and
      the number of model passes used (``K`` backward passes for the probes,
      the feature size for the basis, the number of colour classes, forward
      passes, for the colouring).

    Raises:
      ValueError: an unknown ``mode``; ``"colouring"`` for a feature whose
        tangent map cannot be traced; ``"probes"`` without a ``key``.

    >>> w = jnp.arange(1.0, 7.0).reshape(1, 2, 3, 1)
    >>> fn = lambda x: {"lin": (x * w).reshape(x.shape[0], -1)}
    >>> a, passes = column_norms(fn, "lin", jnp.zeros((2, 3, 1)), None, 8, False)
    >>> a.tolist(), passes
    ([[1.0, 4.0, 9.0], [16.0, 25.0, 36.0]], 6)

    A 3-tap filter along rows: 3 JVPs give the exact norms of 64 columns.

    >>> fn = lambda x: {"f": x[:, 1:-1] - 0.5 * (x[:, :-2] + x[:, 2:])}
    >>> a, passes = column_norms(fn, "f", jnp.zeros((8, 8, 1)), None, 16, False)
    >>> a[:, 0].tolist(), passes
    ([0.25, 1.25, 1.5, 1.5, 1.5, 1.5, 1.25, 0.25], 3)
    """
    way, plan, m = _norms_way(feature_fn, layer, x, num_probes, mode)
    if way == "colouring":
        a = _colouring.coloured_norms(
            _leaves_fn(feature_fn, layer), x, plan, per_channel, probe_batch
        )
        return a, plan.passes
    if mode == "probes" and key is None:
        raise ValueError("mode='probes' needs a PRNG key (key=None given)")

    def flat_features(z):
        flat, _ = ravel_pytree(image_features(feature_fn, (layer,), z)[layer])
        return flat.astype(jnp.float32)

    flat, vjp = jax.vjp(flat_features, x)
    if way == "basis":
        probes, weight, passes = jnp.eye(m, dtype=flat.dtype), 1.0, m
    else:
        probes = jax.random.rademacher(key, (num_probes, m), flat.dtype)
        weight, passes = 1.0 / num_probes, num_probes

    def squares(v):
        return jnp.square(vjp(v)[0])

    if probe_batch is None or probe_batch >= probes.shape[0]:
        sq = jax.vmap(squares)(probes)  # (K, H, W, C)
    else:
        sq = jax.lax.map(squares, probes, batch_size=probe_batch)
    a = weight * jnp.sum(sq, axis=0)
    if not per_channel:
        a = jnp.sum(a, axis=-1)
    return a, passes


def _norms_way(feature_fn: FeatureFn, layer: str, x: Array, num_probes: int, mode: str):
    """Which way :func:`column_norms` takes: ``(way, plan, m)`` with ``way``
    one of ``"probes"``, ``"basis"``, ``"colouring"``, the colouring plan
    (or ``None``) and the feature size ``m``. Static: it depends on shapes
    and the tangent map's structure only."""
    if mode not in NORM_MODES:
        raise ValueError(f"mode must be one of {NORM_MODES}, got {mode!r}")
    m = sum(
        math.prod(a.shape)
        for a in jax.tree.leaves(
            jax.eval_shape(lambda z: image_features(feature_fn, (layer,), z)[layer], x)
        )
    )
    plan = None
    # A colouring takes at least C passes: it cannot beat a basis of <= C.
    if mode == "colouring" or (mode == "auto" and m > x.shape[-1]):
        plan = colouring_plan(feature_fn, layer, x)
        if plan is None and mode == "colouring":
            raise ValueError(
                f"mode='colouring': the tangent map of layer {layer!r} cannot be "
                "traced (jax.jvp fails); use mode='probes' or 'basis'"
            )
    if mode == "colouring" or (
        mode == "auto"
        and plan is not None
        and plan.passes <= num_probes
        and (m > num_probes or plan.passes < m)
    ):
        return "colouring", plan, m
    if mode == "basis" or (mode == "auto" and m <= num_probes):
        return "basis", None, m
    return "probes", None, m


def exact_norms(
    feature_fn: FeatureFn, layer: str, x: Array, num_probes: int, mode: str = "auto"
) -> bool:
    """Whether :func:`column_norms` with these arguments is exact (the basis
    or the colouring) rather than a random-probe estimate.

    >>> fn = lambda x: {"f": x[:, 1:-1] - 0.5 * (x[:, :-2] + x[:, 2:])}
    >>> exact_norms(fn, "f", jnp.zeros((8, 8, 1)), 16)
    True
    """
    return _norms_way(feature_fn, layer, x, num_probes, mode)[0] != "probes"


def closed_form(
    a: Array, scale: Array, beta: Array, log_min: float, log_max: float
) -> Array:
    """``log sigma_i = 0.5 log(beta delta_f^2 / (n a_i))``, clipped.

    Args:
      a: column norms ``(L, *S)``.
      scale: ``delta_f^2`` per layer ``(L,)``.
      beta: the budget, scalar.
      log_min: lower clip of ``log sigma``.
      log_max: upper clip of ``log sigma`` (entries with ``a_i = 0`` land here).

    Returns:
      ``(L, *S)`` float32.
    """
    n = math.prod(a.shape[1:])
    expand = (slice(None),) + (None,) * (a.ndim - 1)
    num = jnp.log(beta) + jnp.log(scale)[expand] - math.log(n)
    u = 0.5 * (num - jnp.log(jnp.maximum(a, jnp.finfo(a.dtype).tiny)))
    return jnp.clip(u, log_min, log_max)


def linear_distortion(feature_fn: FeatureFn, layers: tuple[str, ...], x: Array):
    """``t (L, N, H, W, C) -> ||J_l t[l, n]||^2 (L, N)`` at image ``x``.

    The network is linearised once (``jax.linearize``); each call costs one
    Jacobian-vector product per row. It is the solver's control variate: its
    mean is known exactly, ``sum_i s_i a_i``.
    """
    xs = jnp.broadcast_to(x, (len(layers), 1, *x.shape))
    _, lin = jax.linearize(lambda z: grouped_features(feature_fn, layers, z), xs)

    def apply(t):
        out = jax.vmap(lin, in_axes=1)(t[:, :, None])  # {l: (N, 1, ...)}
        return jnp.stack(
            [sq_norm(jax.tree.map(lambda a: a[:, 0], out[n])) for n in layers]
        )

    return apply
