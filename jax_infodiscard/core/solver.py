"""The shared maximum-entropy solver behind CID and RU.

One image, a group of ``L`` layers. The problem (paper Eq. 3-4 and 6-7) is

    min_u  r(u) / lambda - sum_i H_i(u)   s.t.  r(u) = beta,

with ``u = log sigma``, ``r(u) = E||h(x + sigma * delta) - f||^2 / delta_f^2``
(the noise budget) and ``H_i`` the pixel-wise entropy term: ``u_i`` for CID,
the reconstruction entropy for RU. Dividing Eq. 3 by ``lambda`` leaves its
minimiser unchanged and makes the gradient ``O(1)`` per entry.

For a fixed ``lambda``, an optax optimiser runs ``steps`` Monte-Carlo steps
inside ``lax.scan`` and the tail of the trajectory is averaged. The budget is
then measured with fixed noise draws (common random numbers across
iterations), and ``log lambda`` is updated by a bracketed secant step on
``log r`` against ``log lambda`` that falls back to bisection when it leaves
the bracket, inside a ``lax.while_loop``, until ``|log(r / beta)| <
budget_tol``. The first step assumes slope 1 (the locally linear model has
``r`` proportional to ``lambda``, exact for CID); later steps use the slope
measured between the last two iterations, which matters for RU, where ``r``
can grow much faster than ``lambda`` (an imperfect decoder's error floor
makes the entropy term flat for small sigma). Between iterations sigma is
warm-started by the linear model, ``u += (new log lambda - old log lambda) /
2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_infodiscard.config import CIDConfig, make_optimizer
from jax_infodiscard.core.features import normal
from jax_infodiscard.types import Array, PRNGKey

# probe(xp (L, N, H, W, C)) -> (dist (L, N), aux)
Probe = Callable[[Array], tuple[Array, Any]]
# pixel_entropy(u (L, *S), xp, aux) -> (L, *S), nats without the constant
PixelEntropy = Callable[[Array, Array, Any], Array]


class Problem(NamedTuple):
    """One image and ``L`` layers, as the solver sees them.

    Attributes:
      x: the image ``(H, W, C)``.
      scale: ``delta_f^2`` per layer ``(L,)``.
      probe: squared feature distances of perturbed inputs, and any auxiliary
        output the entropy term needs.
      pixel_entropy: the entropy term per sigma entry (without the constant
        ``0.5 log(2 pi e)``).
      linear: optional ``linear(t (L, N, H, W, C)) -> ||J_l t_l||^2 (L, N)``,
        the squared feature change of the linearised network.
      a_hat: optional column norms ``(L, *S)`` of the linearised network. With
        ``linear`` they form a control variate: the budget is
        ``sum_i sigma_i^2 a_i / delta_f^2`` (the linear model, exact) plus the
        Monte-Carlo mean of the nonlinear remainder
        ``||h(x') - f||^2 - ||J (x' - x)||^2``, which vanishes for a linear
        network and is small for a locally linear one.
    """

    x: Array
    scale: Array
    probe: Probe
    pixel_entropy: PixelEntropy
    linear: Callable[[Array], Array] | None = None
    a_hat: Array | None = None


class SolverState(NamedTuple):
    """State of the lambda search (every field has a leading layer axis).

    Attributes:
      it: iterations run so far, scalar int32.
      log_lam: current ``log lambda`` ``(L,)``.
      lo, hi: bracket of ``log lambda`` ``(L,)`` (``-inf``/``inf`` if open).
      u: warm start for the next iteration, ``log sigma`` ``(L, *S)``.
      u_best: last measured solution ``(L, *S)``.
      lam_best: ``log lambda`` of ``u_best`` ``(L,)``.
      r: budget measured at ``u_best`` ``(L,)``.
      pixel: entropy map at ``u_best`` ``(L, *S)``.
      done: converged ``(L,)`` bool.
      passes: model passes per layer so far ``(L,)`` int32.
      prev_lam, prev_err: ``log lambda`` and ``log(r / beta)`` of the previous
        iteration ``(L,)`` (NaN before the first), for the secant slope.
    """

    it: Array
    log_lam: Array
    lo: Array
    hi: Array
    u: Array
    u_best: Array
    lam_best: Array
    r: Array
    pixel: Array
    done: Array
    passes: Array
    prev_lam: Array
    prev_err: Array


# Bounds on the secant slope d log r / d log lambda (1 for CID's linear model).
_SLOPE_RANGE = (0.2, 20.0)


class Solution(NamedTuple):
    """Result of :func:`solve` for one image and ``L`` layers."""

    log_sigma: Array  # (L, *S)
    pixel: Array  # (L, *S) entropy term (nats, without the constant)
    lam: Array  # (L,)
    budget: Array  # (L,)
    converged: Array  # (L,) bool
    passes: Array  # (L,) int32


def _expand(v: Array, ndim: int) -> Array:
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _sigma_full(u: Array, image_shape: tuple[int, ...]) -> Array:
    """``exp(u)`` as ``(L, 1, H, W, C)`` (broadcast over channels if pixel-shared)."""
    sigma = jnp.exp(u)
    if sigma.ndim == 3:  # (L, H, W): one sigma per pixel
        sigma = sigma[..., None]
    return sigma[:, None]


def measure(problem: Problem, u: Array, eps: Array) -> tuple[Array, Array]:
    """Budget ``r`` ``(L,)`` and entropy map ``(L, *S)`` at ``u`` with draws ``eps``.

    ``eps`` is ``(L, M, H, W, C)``.
    """
    noise = _sigma_full(u, problem.x.shape) * eps
    xp = problem.x + noise
    dist, aux = problem.probe(xp)
    plain = jnp.mean(dist, axis=1) / problem.scale
    if problem.a_hat is None:
        r = plain
    else:
        axes = tuple(range(1, u.ndim))
        exact = jnp.sum(jnp.exp(2.0 * u) * problem.a_hat, axis=axes)
        rest = jnp.mean(dist - problem.linear(noise), axis=1)
        r = (exact + rest) / problem.scale
        # Far from the linear regime (large sigma, saturating features) the
        # remainder can outweigh the linear part and make the estimate
        # negative: fall back to the plain Monte-Carlo mean there.
        r = jnp.where(r > 0, r, plain)
    return r, problem.pixel_entropy(u, xp, aux)


def _objective(problem: Problem, u: Array, eps: Array, inv_lam: Array) -> Array:
    r, entropy = measure(problem, u, eps)
    return jnp.sum(r * inv_lam) - jnp.sum(entropy)


def optimize_sigma(
    problem: Problem,
    u0: Array,
    log_lam: Array,
    keys: Array,
    cfg: CIDConfig,
    log_bounds: tuple[float, float],
) -> Array:
    """Minimises ``r(u)/lambda - sum_i H_i(u)`` for fixed ``lambda``.

    Args:
      problem: the problem.
      u0: initial ``log sigma`` ``(L, *S)``.
      log_lam: ``(L,)``.
      keys: one PRNG key per layer ``(L,)``; step ``t`` draws from
        ``fold_in(key, t)``, so every call sees the same noise (common random
        numbers across bisection iterations).
      cfg: solver configuration (``steps``, ``num_samples``, optimiser).
      log_bounds: ``(log min_sigma, log max_sigma)``.

    Returns:
      The average of ``u`` over the last ``tail_fraction`` of the steps.
    """
    opt = make_optimizer(cfg)
    inv_lam = jnp.exp(-log_lam)
    shape = (cfg.num_samples, *problem.x.shape)
    tail_start = cfg.steps - max(1, round(cfg.tail_fraction * cfg.steps))
    grad_fn = jax.grad(_objective, argnums=1)

    def step(carry, t):
        u, opt_state, acc = carry
        eps = jax.vmap(lambda k: normal(jax.random.fold_in(k, t), shape))(keys)
        g = grad_fn(problem, u, eps, inv_lam)
        updates, opt_state = opt.update(g, opt_state, u)
        u = jnp.clip(u + updates, *log_bounds)
        acc = acc + jnp.where(t >= tail_start, u, 0.0)
        return (u, opt_state, acc), None

    init = (u0, opt.init(u0), jnp.zeros_like(u0))
    (_, _, acc), _ = jax.lax.scan(step, init, jnp.arange(cfg.steps))
    return acc / (cfg.steps - tail_start)


def solve(
    problem: Problem,
    u0: Array,
    log_lam0: Array,
    beta: Array,
    key: PRNGKey,
    cfg: CIDConfig,
    optimize: bool,
) -> Solution:
    """Finds ``lambda`` with ``r = beta`` and the matching sigma (one image).

    Args:
      problem: the problem for ``L`` layers.
      u0: initial ``log sigma`` ``(L, *S)``.
      log_lam0: initial ``log lambda`` ``(L,)``.
      beta: the budget, scalar.
      key: per-layer keys ``(L,)``.
      cfg: configuration.
      optimize: run the optax loop in each iteration; without it every
        iteration only rescales sigma by the linear model (the ``linearized``
        method).

    Returns:
      The :class:`Solution`.
    """
    log_bounds = (math.log(cfg.min_sigma), math.log(cfg.max_sigma))
    keys_opt = jax.vmap(lambda k: jax.random.fold_in(k, 1))(key)
    keys_budget = jax.vmap(lambda k: jax.random.fold_in(k, 2))(key)
    eps_budget = jax.vmap(lambda k: normal(k, (cfg.budget_samples, *problem.x.shape)))(
        keys_budget
    )
    log_beta = jnp.log(beta)
    draws = cfg.budget_samples + (cfg.steps * cfg.num_samples if optimize else 0)
    # A draw costs one pass, two with the control variate (forward + JVP).
    per_iter = draws * (1 if problem.a_hat is None else 2)
    num_layers = u0.shape[0]

    def body(s: SolverState) -> SolverState:
        if optimize:
            u = optimize_sigma(problem, s.u, s.log_lam, keys_opt, cfg, log_bounds)
        else:
            u = s.u
        r, pixel = measure(problem, u, eps_budget)
        err = jnp.log(r) - log_beta
        ok = jnp.abs(err) < cfg.budget_tol
        hi = jnp.where(err > 0, s.log_lam, s.hi)
        lo = jnp.where(err < 0, s.log_lam, s.lo)
        # Secant step (slope 1 until two iterations are measured), limited
        # to a factor e^4, bisection when it leaves the bracket.
        slope = (err - s.prev_err) / (s.log_lam - s.prev_lam)
        slope = jnp.where(
            jnp.isfinite(slope) & (slope > 0), jnp.clip(slope, *_SLOPE_RANGE), 1.0
        )
        cand = s.log_lam - jnp.clip(err / slope, -4.0, 4.0)
        bracketed = jnp.isfinite(lo) & jnp.isfinite(hi)
        outside = (cand <= lo) | (cand >= hi)
        cand = jnp.where(bracketed & outside, 0.5 * (lo + hi), cand)
        cand = jnp.where(jnp.isfinite(cand), cand, s.log_lam)
        active = ~s.done
        new_lam = jnp.where(ok, s.log_lam, cand)
        shift = _expand(0.5 * (new_lam - s.log_lam), u.ndim)
        u_next = jnp.clip(u + shift, *log_bounds)
        a_l = _expand(active, u.ndim)
        return SolverState(
            it=s.it + 1,
            log_lam=jnp.where(active, new_lam, s.log_lam),
            lo=jnp.where(active, lo, s.lo),
            hi=jnp.where(active, hi, s.hi),
            u=jnp.where(a_l, u_next, s.u),
            u_best=jnp.where(a_l, u, s.u_best),
            lam_best=jnp.where(active, s.log_lam, s.lam_best),
            r=jnp.where(active, r, s.r),
            pixel=jnp.where(a_l, pixel, s.pixel),
            done=s.done | ok,
            passes=s.passes + jnp.where(active, per_iter, 0),
            prev_lam=jnp.where(active, s.log_lam, s.prev_lam),
            prev_err=jnp.where(active, err, s.prev_err),
        )

    def cond(s: SolverState) -> Array:
        return (s.it < cfg.bisection_steps) & ~jnp.all(s.done)

    inf = jnp.full((num_layers,), jnp.inf, jnp.float32)
    init = SolverState(
        it=jnp.int32(0),
        log_lam=log_lam0,
        lo=-inf,
        hi=inf,
        u=u0,
        u_best=u0,
        lam_best=log_lam0,
        r=jnp.full((num_layers,), jnp.nan, jnp.float32),
        pixel=jnp.zeros_like(u0),
        done=jnp.zeros((num_layers,), bool),
        passes=jnp.zeros((num_layers,), jnp.int32),
        prev_lam=jnp.full((num_layers,), jnp.nan, jnp.float32),
        prev_err=jnp.full((num_layers,), jnp.nan, jnp.float32),
    )
    s = jax.lax.while_loop(cond, body, init)
    return Solution(
        log_sigma=s.u_best,
        pixel=s.pixel,
        lam=jnp.exp(s.lam_best),
        budget=s.r,
        converged=s.done,
        passes=s.passes,
    )
