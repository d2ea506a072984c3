"""Orchestration only: validate, group layers, chunk, batch, shard, assemble.

One entry path serves CID and RU (:func:`compute`). For each group of layers
the engine runs three compiled programs over a chunk of images, each
``vmap``-ped over the images and ``shard_map``-ped over the local devices:

1. ``init``: features of the clean images, Jacobian column norms, the closed
   form and the solver state;
2. ``steps``: the iterations of ``optimize``. On CPU they run as a host loop
   over compiled chunks of ``step_chunk`` unrolled iterations (XLA:CPU runs
   convolution gradients inside compiled loops many times slower than at top
   level: docs/benchmarks.md); on accelerators all iterations run in one
   compiled loop;
3. ``finish``: the level that meets the budget on held draws, the maps and
   the regime diagnostics.

Every random quantity of an (image, layer) is keyed by
``fold_in(image_key, crc32(layer name))``, so a result depends neither on the
batch companions of its image nor on which other layers are requested.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jax_infodiscard.config import CIDConfig
from jax_infodiscard.core import diagnostics, memory, solver
from jax_infodiscard.core.features import image_features, normalise
from jax_infodiscard.core.linear import (
    closed_form,
    column_norms,
    exact_norms,
    linear_distortion,
)
from jax_infodiscard.core.methods import METHOD_TABLE
from jax_infodiscard.types import Array, FeatureFn, PRNGKey, PyTree
from jax_infodiscard.validation import (
    as_partial,
    check_images,
    check_layers,
    check_solution,
)
from jax_infodiscard.validation import image_keys as _image_keys

ENTROPY_CONSTANT = 0.5 * math.log(2.0 * math.pi * math.e)
"""``0.5 log(2 pi e)``: entropy of a unit Gaussian minus ``log sigma`` (nats)."""

LINEARITY_WARNING = 1.2
"""``method="linear"`` warns for layers whose mean ``linearity`` exceeds this."""

# Iterations per compiled call on CPU (host loop), measured with
# benchmarks/bench_cid.py: see the README, "Speed of the solver on CPU".
_CPU_STEP_CHUNK = 2
# Iterations per compiled call on accelerators with adaptive stopping (the
# host checks the stopping rule between calls).
_TOL_STEP_CHUNK = 8


class Metric(NamedTuple):
    """What differs between CID and RU (everything else is shared).

    Attributes:
      name: ``"cid"`` or ``"ru"`` (for messages).
      result: the result class (:class:`CIDResult` or :class:`RUResult`).
      deviations: ``deviations(feature_fn, extra, layers, x, base)`` returning
        the :data:`solver.Deviations` function of one image.
      entropy: ``entropy(x)`` returning the :data:`solver.Entropy` term of
        image ``x``, or ``None`` for CID.
    """

    name: str
    result: Any
    deviations: Callable[..., solver.Deviations]
    entropy: Callable[..., solver.Entropy] | None


@dataclasses.dataclass(frozen=True)
class Static:
    """The static part of a configuration: what the compiled programs need.

    ``beta``, ``chunk_size`` and ``layer_strategy`` are not here, so sweeping
    them does not recompile.
    """

    metric: Metric
    layers: tuple[str, ...]
    method: str
    center_mean: bool
    probes: int
    steps: int
    samples: int
    step_size: float
    damping_time: float | None
    budget_samples: int
    budget_tol: float
    per_channel: bool
    log_bounds: tuple[float, float]
    probe_batch: int | None = None
    tol: float | None = None
    rtol: float | None = None
    level_steps: int = 3
    safeguard: bool = True
    control_variate: str = "always"

    @classmethod
    def of(
        cls,
        metric: Metric,
        layers: tuple[str, ...],
        cfg: CIDConfig,
        probe_batch: int | None = None,
    ) -> Static:
        return cls(
            metric=metric,
            layers=layers,
            method=cfg.method,
            center_mean=cfg.budget_center == "mean",
            probes=cfg.probes,
            steps=cfg.steps,
            samples=cfg.samples,
            step_size=cfg.step_size,
            damping_time=cfg.damping_time,
            budget_samples=cfg.budget_samples,
            budget_tol=cfg.budget_tol,
            per_channel=cfg.per_channel,
            log_bounds=(math.log(cfg.min_sigma), math.log(cfg.max_sigma)),
            probe_batch=probe_batch,
            tol=cfg.tol,
            rtol=cfg.rtol,
            level_steps=cfg.level_steps,
            safeguard=cfg.safeguard != "never",
            control_variate=cfg.control_variate,
        )


class Context(NamedTuple):
    """What ``init`` computes once per image and layer group (a pytree)."""

    base: PyTree  # {layer: features of the clean image}
    a: Array  # (L, *S) column norms
    scale: Array  # (L,) delta_f^2
    u_lin: Array  # (L, *S) closed form
    keys: Array  # (L,) typed keys
    passes: Array  # (L,) int32, passes spent in init
    exact: Array  # (L,) bool, column norms exact (basis, colouring), not probes


def layer_id(name: str) -> int:
    """A stable 31-bit id of a layer name (its CRC-32), for ``fold_in``.

    >>> layer_id("logits")
    910044543
    """
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def _problem(st: Static, fn, extra, beta, x, ctx: Context) -> solver.Problem:
    """The one place where a :class:`solver.Problem` is built."""
    entropy = None if st.metric.entropy is None else st.metric.entropy(x)
    return solver.Problem(
        x=x,
        scale=ctx.scale,
        a=ctx.a,
        beta=beta,
        deviations=st.metric.deviations(fn, extra, st.layers, x, ctx.base),
        entropy=entropy,
        linear=linear_distortion(fn, st.layers, x),
        center_mean=st.center_mean,
    )


def _init_image(st: Static, fn, extra, beta, x, key):
    keys = jnp.stack([jax.random.fold_in(key, layer_id(n)) for n in st.layers])
    base = image_features(fn, st.layers, x)
    norms, counts = zip(
        *[
            column_norms(
                fn,
                name,
                x,
                jax.random.fold_in(keys[l], solver.SALT_PROBES),
                st.probes,
                st.per_channel,
                st.probe_batch,
            )
            for l, name in enumerate(st.layers)
        ],
        strict=True,
    )
    a = jnp.stack(norms)
    scale = jnp.sum(a, axis=tuple(range(1, a.ndim)))
    scale = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
    u_lin = closed_form(a, scale, beta, *st.log_bounds)
    exact = [exact_norms(fn, name, x, st.probes) for name in st.layers]
    ctx = Context(
        base, a, scale, u_lin, keys, jnp.array(counts, jnp.int32), jnp.array(exact)
    )
    state = solver.init_state(a, scale, beta, u_lin)
    if st.control_variate != "always" and METHOD_TABLE[st.method].iterate:
        # The first iteration's budget, with the control variate and on its
        # draws, measured here: it decides the control variate ("auto") and
        # which maps are far from linear.
        eps = solver.layer_draws(keys, solver.SALT_STEPS, 0, st.samples, x.shape)
        r, _, _ = solver.measure(_problem(st, fn, extra, beta, x, ctx), u_lin, eps)
        state = state._replace(start_ratio=r / beta)
        ctx = ctx._replace(passes=ctx.passes + st.samples * solver.DRAW_PASSES)
    return ctx, state


def _steps_image(st: Static, num_steps: int, unroll: bool, fn, extra, beta, x, ctx, s):
    problem = _problem(st, fn, extra, beta, x, ctx)
    if st.control_variate == "never":
        problem = problem._replace(linear=None)
    body = partial(
        solver.step,
        problem,
        keys=ctx.keys,
        samples=st.samples,
        step_size=st.step_size,
        damping_time=st.damping_time,
        total_steps=st.steps,
        log_bounds=st.log_bounds,
        tol=st.tol,
        rtol=st.rtol,
    )
    if unroll:
        for _ in range(num_steps):
            s = body(s)
        return s
    return jax.lax.fori_loop(0, num_steps, lambda _, v: body(v), s)


def _finish_image(st: Static, fn, extra, beta, x, ctx: Context, s: solver.State):
    problem = _problem(st, fn, extra, beta, x, ctx)
    method = METHOD_TABLE[st.method]
    m = st.budget_samples
    eps = solver.layer_draws(ctx.keys, solver.SALT_BUDGET, 0, m, x.shape)
    n = math.prod(ctx.u_lin.shape[1:])
    ndim = ctx.u_lin.ndim
    if method.iterate:
        u = s.acc / jnp.maximum(s.count, 1).astype(jnp.float32)
        if _adaptive(st):  # stopped layers: the averaged fixed point
            stop = s.done.reshape(s.done.shape + (1,) * (ndim - 1))
            u = jnp.where(stop, solver.fixed_point(problem, s, st.log_bounds), u)
        log_lam = -s.log_mu
    else:
        u = ctx.u_lin
        log_lam = jnp.full(ctx.scale.shape, math.log(2.0 / n)) + jnp.log(beta)
    passes = ctx.passes
    if method.iterate:
        # RU differentiates its entropy term too: one more backward per draw.
        extra_backward = 0 if st.metric.entropy is None else 1
        draw = solver.DRAW_PASSES - (st.control_variate == "never")
        per_step = st.samples * (draw + extra_backward)
        passes = passes + s.steps_run * per_step
    level_se = jnp.zeros(ctx.scale.shape, jnp.float32)
    level_passes = st.level_steps * m * solver.DRAW_PASSES
    if method.level:
        c, r, share, _, log_r_se = solver.level(
            problem, u, eps, beta, st.log_bounds, st.level_steps
        )
        level_se = 0.5 * log_r_se
        u = solver.shift(u, c, st.log_bounds)
        log_lam = log_lam + 2.0 * c
        passes = passes + level_passes
    if st.metric.entropy is not None or not method.level:
        r, share, entropy = solver.measure(problem, u, eps)
        passes = passes + m * solver.DRAW_PASSES
    else:
        entropy = u
    start, stop = solver.early_window(st.steps)
    if st.safeguard and method.iterate and method.level and stop <= st.steps:
        # The safeguard of solver.py: the early window's average, levelled on
        # the same draws, replaces the answer where it has more entropy.
        u2 = s.early / float(stop - start)
        c2, r2, share2, _, log_r_se2 = solver.level(
            problem, u2, eps, beta, st.log_bounds, st.level_steps
        )
        u2 = solver.shift(u2, c2, st.log_bounds)
        passes = passes + level_passes
        if st.metric.entropy is None:
            entropy2 = u2
        else:
            r2, share2, entropy2 = solver.measure(problem, u2, eps)
            passes = passes + m * solver.DRAW_PASSES
        axes = tuple(range(1, ndim))
        take = jnp.mean(entropy2, axis=axes) > jnp.mean(entropy, axis=axes)
        wide = take.reshape(take.shape + (1,) * (ndim - 1))
        u, entropy = jnp.where(wide, u2, u), jnp.where(wide, entropy2, entropy)
        r, share = jnp.where(take, r2, r), jnp.where(take, share2, share)
        log_lam = jnp.where(take, -s.log_mu + 2.0 * c2, log_lam)
        level_se = jnp.where(take, 0.5 * log_r_se2, level_se)
    errors = _error_bars(st, problem, ctx, s, u, entropy, level_se, method.iterate)
    diag, diag_passes = diagnostics.regime(
        problem,
        ctx.u_lin,
        u,
        entropy,
        r,
        solver.pairs_subset(eps, _diagnostic_draws(m)),
        st.level_steps,
        st.log_bounds,
    )
    axes = tuple(range(1, ndim))
    return {
        "log_sigma": u,
        "pixel": entropy + ENTROPY_CONSTANT,
        "lam": jnp.exp(log_lam),
        "budget": r,
        "converged": jnp.abs(jnp.log(r / beta)) < st.budget_tol,
        "passes": passes + diag_passes,
        "feature_scale": ctx.scale,
        "capped": jnp.sum(u >= st.log_bounds[1] - 1e-4, axis=axes),
        "mean_shift": share,
        **errors,
        **diag,
    }


def _adaptive(st: Static | CIDConfig) -> bool:
    """Whether adaptive stopping is on (``tol`` or ``rtol`` set)."""
    return st.tol is not None or st.rtol is not None


def _diagnostic_draws(budget_samples: int) -> int:
    """Held draws of the regime diagnostics: half the level's (even, >= 2)."""
    return max(2, budget_samples // 4 * 2)


def _error_bars(st: Static, problem, ctx: Context, s, u, entropy, level_se, iterate):
    """``mean_se``, ``pixel_se``, ``reproducibility`` and ``floor_share`` of one image.

    The per-entry error ``se_i`` of ``log sigma`` is :func:`solver.pixel_se`
    plus the error of random-probe column norms (``0.5 sqrt(2 / (K C))`` times
    the linear model's share of ``dr/ds``; 0 with exact norms); the level adds
    ``level_se`` (``(L,)``, 0 for the closed form) to every entry. With
    ``d_i = dH_i / du_i`` (1 for CID), the map's error is
    ``d_i (e_i - sum_j p_j e_j + level)``: the level absorbs the
    budget-weighted mean (``p_j = s_j q_j / sum s q``) of the entry errors.
    Hence ``Var(mean) = (mean d)^2 level_se^2 + sum_i (d_i / n - mean(d)
    p_i)^2 se_i^2`` (entries independent); the probe errors count with
    ``a_i / delta_f^2`` in place of ``p_i`` (the level sees the same column
    norms, and ``delta_f^2 = sum a``). ``reproducibility`` is
    ``1 - mean((d se)^2) / Var_i(map)`` (the level does not move a
    correlation).
    """
    ndim = u.ndim
    axes = tuple(range(1, ndim))
    n = math.prod(u.shape[1:])
    # Random probes: relative error about sqrt(2 / (K C)) in each a_i summed
    # over C channels (sqrt(2 / K) per unit: docs/design.md, "Regime",
    # Monte-Carlo error); it enters dr/ds through the control variate, in
    # proportion to the linear model's share of dr/ds. Exact norms (basis,
    # colouring): none.
    random = 1.0 - ctx.exact.astype(jnp.float32)
    units = 1 if st.per_channel else problem.x.shape[-1]
    rel = math.sqrt(2.0 / (max(st.probes, 1) * units))
    probe = _expand(random * 0.5 * rel, ndim)
    q_lin = problem.a / _expand(problem.scale, ndim)
    if iterate:
        q = solver.floored_q(problem, s.q)
        se = solver.pixel_se(problem, s)
        se_probe = probe * q_lin / q
        floor = solver.on_floor(problem, s.q)
    else:
        q = q_lin
        se = jnp.zeros_like(u)
        se_probe = jnp.broadcast_to(probe, u.shape)
        floor = jnp.zeros(ctx.scale.shape, jnp.float32)
    capped = u >= st.log_bounds[1] - 1e-4
    se = jnp.where(capped, 0.0, se)
    se_probe = jnp.where(capped, 0.0, se_probe)
    d = jnp.ones_like(u) if st.metric.entropy is None or not iterate else 2.0 * s.e
    d = jnp.abs(d)
    weight = jnp.exp(2.0 * u) * q
    p = weight / jnp.maximum(
        jnp.sum(weight, axis=axes, keepdims=True), jnp.finfo(jnp.float32).tiny
    )
    d_bar = jnp.mean(d, axis=axes, keepdims=True)
    lvl = _expand(level_se, ndim)
    mean_var = jnp.square(d_bar[(slice(None),) + (0,) * (ndim - 1)] * level_se)
    mean_var = mean_var + jnp.sum(jnp.square((d / n - d_bar * p) * se), axis=axes)
    # The level is set on the same noisy column norms (delta_f^2 = sum a): in
    # the linear regime the mean moves by sum_i (1 / n - a_i / delta_f^2) e_i.
    share = problem.a / _expand(problem.scale, ndim)
    mean_var = mean_var + jnp.sum(
        jnp.square((d / n - d_bar * share) * se_probe), axis=axes
    )
    se = jnp.sqrt(jnp.square(se) + jnp.square(se_probe))
    noise = jnp.mean(jnp.square(d * se), axis=axes)
    spread = jnp.var(entropy, axis=axes)
    repro = jnp.where(
        spread > 0,
        jnp.clip(1.0 - noise / jnp.maximum(spread, jnp.finfo(jnp.float32).tiny), 0, 1),
        1.0,
    )
    return {
        "mean_se": jnp.sqrt(mean_var),
        "pixel_se": d * jnp.sqrt(jnp.square(se) + jnp.square(lvl)),
        "reproducibility": repro,
        "floor_share": floor,
    }


def _expand(v: Array, ndim: int) -> Array:
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _over_images(fn_one: Callable, *args):
    """``vmap`` over the leading (image) axis, ``shard_map`` over local devices."""
    mapped = jax.vmap(fn_one)
    devices = jax.local_devices()
    if len(devices) == 1:
        return mapped(*args)
    spec = PartitionSpec("batch")
    return jax.shard_map(
        mapped,
        mesh=Mesh(np.array(devices), ("batch",)),
        in_specs=tuple(spec for _ in args),
        out_specs=spec,
        check_vma=False,
    )(*args)


@partial(jax.jit, static_argnames=("st",))
def _init_program(fn, extra, images, keys, beta, *, st: Static):
    return _over_images(partial(_init_image, st, fn, extra, beta), images, keys)


@partial(
    jax.jit, static_argnames=("st", "num_steps", "unroll"), donate_argnames=("state",)
)
def _steps_program(fn, extra, images, ctx, state, beta, *, st, num_steps, unroll):
    one = partial(_steps_image, st, num_steps, unroll, fn, extra, beta)
    return _over_images(one, images, ctx, state)


@partial(jax.jit, static_argnames=("st",))
def _finish_program(fn, extra, images, ctx, state, beta, *, st: Static):
    return _over_images(partial(_finish_image, st, fn, extra, beta), images, ctx, state)


PROGRAMS = (_init_program, _steps_program, _finish_program)
"""The compiled programs (their caches tell whether a call recompiled)."""


def _backend() -> str:
    return jax.default_backend()


def step_chunk(cfg: CIDConfig) -> tuple[int, bool]:
    """Iterations per compiled call and whether they are unrolled.

    CPU: a host loop over compiled chunks of ``cfg.step_chunk`` (default
    measured) unrolled iterations. Accelerators: one compiled loop
    (``cfg.step_chunk`` iterations per call if given, else all of them, or
    chunks of ``_TOL_STEP_CHUNK`` with adaptive stopping, ``cfg.tol`` or
    ``cfg.rtol``). The host loop stops once every map of the chunk has
    stopped.
    """
    if _backend() == "cpu":
        return (cfg.step_chunk or _CPU_STEP_CHUNK), True
    if _adaptive(cfg):
        return (cfg.step_chunk or _TOL_STEP_CHUNK), False
    return (cfg.step_chunk or cfg.steps), False


def _run_group(st: Static, cfg: CIDConfig, fn, extra, images, keys, beta):
    ctx, state = _init_program(fn, extra, images, keys, beta, st=st)
    if st.control_variate == "auto":
        # Per layer, the median over the chunk's images; one program serves
        # the group, so a layer close to linear keeps it for all.
        median = np.median(np.asarray(state.start_ratio), axis=0)  # (L,)
        between = (median > solver.CV_RATIO) & (median <= solver.FAR_FROM_LINEAR)
        drop = bool(np.all(between))
        st = dataclasses.replace(st, control_variate="never" if drop else "always")
    if METHOD_TABLE[st.method].iterate:
        chunk, unroll = step_chunk(cfg)
        done = 0
        while done < st.steps:
            n = min(chunk, st.steps - done)
            state = _steps_program(
                fn, extra, images, ctx, state, beta, st=st, num_steps=n, unroll=unroll
            )
            done += n
            if _adaptive(st) and bool(np.all(np.asarray(state.done))):
                break
        if cfg.safeguard == "auto":
            far = np.asarray(state.start_ratio) > solver.FAR_FROM_LINEAR
            st = dataclasses.replace(st, safeguard=bool(np.any(far)))
    return _finish_program(fn, extra, images, ctx, state, beta, st=st)


def resolve_strategy(cfg: CIDConfig, num_layers: int) -> str:
    """The layer strategy: ``cfg.layer_strategy`` or the measured default.

    ``optimize`` runs one program per layer on CPU (XLA drops the network above
    each layer, and the layers need different step counts to converge); the
    closed form runs all layers in one vmapped program. On accelerators one
    vmapped program is used (see the README, "Speed of the solver").
    """
    if cfg.layer_strategy != "auto":
        return cfg.layer_strategy
    if num_layers == 1 or not METHOD_TABLE[cfg.method].iterate:
        return "vmap"
    return "per_layer" if _backend() == "cpu" else "vmap"


def _pad(x: Array, size: int) -> Array:
    """``x`` with its last row repeated up to ``size`` rows."""
    pad = size - x.shape[0]
    if not pad:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])


def run(
    metric: Metric,
    feature_fn: FeatureFn,
    extra: PyTree,
    images: Array,
    keys: Array,
    layers: tuple[str, ...],
    cfg: CIDConfig,
    on_group: Callable[[tuple[str, ...], dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Solves every image and layer; outputs are host arrays ``(L, B, ...)``.

    Images run in chunks (a host loop) of ``cfg.chunk_size`` or, with
    ``None``, of the size that :func:`memory.plan` finds to fit the free
    memory; each chunk is padded to the chunk size (one compilation) and to a
    multiple of the local device count. ``on_group(layers, outputs)``, when
    given, is called after each layer group of each chunk with its host
    outputs ``(B_chunk, L_group, ...)`` (real images only).
    """
    strategy = resolve_strategy(cfg, len(layers))
    groups = [layers] if strategy == "vmap" else [(name,) for name in layers]
    num = images.shape[0]
    devices = jax.local_device_count()
    probe_batch = None
    if cfg.chunk_size is None:
        plan = memory.plan(
            feature_fn,
            images[0],
            num_images=-(-num // devices),
            layers_per_program=len(groups[0]),
            probes=cfg.probes,
            samples=cfg.samples,
            budget_samples=cfg.budget_samples,
        )
        size, probe_batch = plan.chunk_size * devices, plan.probe_batch
    else:
        size = cfg.chunk_size
    size = min(size, num)
    size += (-size) % devices
    beta = jnp.float32(cfg.beta)
    chunks = []
    for start in range(0, num, size):
        im = _pad(images[start : start + size], size)
        ks = _pad(keys[start : start + size], size)
        n_real = min(size, num - start)
        outs = []
        for g in groups:
            out = _run_group(
                Static.of(metric, g, cfg, probe_batch),
                cfg,
                feature_fn,
                extra,
                im,
                ks,
                beta,
            )
            outs.append(out)
            if on_group is not None:
                on_group(g, {k: np.asarray(v)[:n_real] for k, v in out.items()})
        merged = {
            k: np.concatenate([np.asarray(o[k]) for o in outs], axis=1) for k in outs[0]
        }
        chunks.append({k: v[:n_real] for k, v in merged.items()})
    return {
        k: np.moveaxis(np.concatenate([c[k] for c in chunks]), 0, 1) for k in chunks[0]
    }


def compute(
    metric: Metric,
    feature_fn: FeatureFn,
    images: Any,
    key: PRNGKey,
    layers: Sequence[str] | str | None,
    config: CIDConfig,
    extra: PyTree = None,
    check_extra: Callable[..., PyTree] | None = None,
    on_group: Callable[[tuple[str, ...], dict[str, np.ndarray]], None] | None = None,
):
    """The entry path of :func:`cid` and :func:`ru`: validate, run, assemble, warn.

    Args:
      metric: CID or RU.
      feature_fn: the feature function.
      images: ``(B, H, W, C)`` images.
      key: a key or one per image.
      layers: layer names or ``None``.
      config: the solver configuration.
      extra: metric-specific inputs (RU: the decoders).
      check_extra: validates ``extra`` given ``(feature_fn, extra, images,
        layers)`` and returns it prepared (RU's decoder check).
      on_group: progress callback of :func:`run`.

    Returns:
      A result record of class ``metric.result``.
    """
    if not isinstance(config, CIDConfig):
        raise TypeError(
            f"config must be a {metric.result.__name__[:-6]}Config, got "
            f"{type(config).__name__}"
        )
    images = check_images(
        images,
        unit_range=config.unit_range,
        hint="; pass a config with unit_range=False if the model expects another "
        "input range",
    )
    fn = as_partial(feature_fn)
    names = check_layers(fn, images, layers)
    keys = _image_keys(key, images.shape[0])
    if check_extra is not None:
        extra = check_extra(fn, extra, images, names)
    # Scale-free features (a power of two per layer), and back to the user's
    # units after the finite check (validation.check_solution).
    fn, extra, scale = normalise(fn, names, images[0], extra)
    out = run(metric, fn, extra, images, keys, names, config, on_group)
    check_solution(out, names, metric.name, images)
    out["feature_scale"] = np.asarray(out["feature_scale"], np.float64) * (
        scale[:, None] ** 2
    )
    result = assemble(metric.result, names, out, config, images.shape[-1])
    _check_and_warn(result, config, metric.name)
    return result


def assemble(cls, layers, out: dict, cfg: CIDConfig, channels: int):
    """Builds a result record from the engine's ``(L, B, ...)`` outputs."""
    pixel = out["pixel"]
    units = 1 if cfg.per_channel else channels
    spatial = tuple(range(2, pixel.ndim))
    return cls(
        layers=tuple(layers),
        pixel=pixel,
        mean=np.mean(pixel, axis=spatial),
        total=np.sum(pixel, axis=spatial) * units,
        sigma=np.exp(out["log_sigma"]),
        lam=out["lam"],
        budget=out["budget"],
        converged=out["converged"],
        passes=out["passes"],
        feature_scale=out["feature_scale"],
        capped=out["capped"],
        linearity=out["linearity"],
        mean_shift=out["mean_shift"],
        entropy_gain=out["entropy_gain"],
        mean_se=out["mean_se"],
        pixel_se=out["pixel_se"],
        reproducibility=out["reproducibility"],
        floor_share=out["floor_share"],
        beta=float(cfg.beta),
        units=units,
        method=cfg.method,
    )


def _check_and_warn(result, cfg: CIDConfig, metric: str) -> None:
    """Warnings for doubtful maps (errors: validation.check_solution)."""
    lin = np.asarray(result.linearity).mean(axis=1)
    if cfg.method == "linear":
        far = [f"{n} ({v:.2f})" for n, v in zip(result.layers, lin, strict=True)]
        far = [f for f, v in zip(far, lin, strict=True) if v > LINEARITY_WARNING]
        if far:
            warnings.warn(
                f"{metric}: method='linear' far from the linear regime at layer(s) "
                f"{', '.join(far)} (linearity = true budget of the closed form / "
                "beta); the closed form spends more than the budget there: use "
                "method='optimize'",
                UserWarning,
                stacklevel=3,
            )
    elif not np.asarray(result.converged).all():
        conv = np.asarray(result.converged)
        rows = [
            f"{n} ({int((~conv[l]).sum())}/{conv.shape[1]})"
            for l, n in enumerate(result.layers)
            if not conv[l].all()
        ]
        warnings.warn(
            f"{metric}: the budget was not met within budget_tol for "
            f"{', '.join(rows)} maps; see result.budget and result.converged",
            UserWarning,
            stacklevel=3,
        )
