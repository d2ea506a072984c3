"""The maximum-entropy solver shared by CID and RU (one image, ``L`` layers).

The problem (paper Eq. 3-4 and 6-7) is, with ``s_i = sigma_i^2``,

    max_s  sum_i H_i(s)   s.t.  r(s) = E||h(x + sigma delta) - f||^2 / delta_f^2 = beta,

``H_i = 0.5 log s_i`` for CID and the reconstruction entropy for RU. Its
stationarity condition is ``dr/ds_i = dH/ds_i / lambda``. In the linear regime
``dr/ds_i = a_i / delta_f^2`` is a constant (the Jacobian column norms), and
the condition is solved in closed form (``core.linear``). On a real network
``q_i = dr/ds_i`` also carries the nonlinear part, above all the mean shift
that ReLU rectification of zero-mean noise adds up through pooling.

``optimize`` solves the stationarity condition as a damped fixed point with
averaged gradients (a dual-averaging scheme):

* ``q`` is the running average of Monte-Carlo estimates of ``dr/ds``
  (pathwise gradients over ``samples`` antithetic draws per iteration),
  weighted ``w_t = 2 / (t + 3)`` so that early iterates are forgotten, started
  from the linear model ``a / delta_f^2``;
* each iteration moves ``log sigma`` a fraction ``omega_t`` of the way to the
  fixed point ``s_i = (dH/ds_i s_i) / (2 mu q_i)``, where ``mu = 1 / lambda``
  is driven by the measured budget (``mu *= r / beta``); the damping decays,
  ``omega_t = step_size / (1 + t / damping_time)`` (:func:`damping`);
* the answer is the average of the iterates over the second half (Polyak),
  moved by one constant in ``log sigma`` until held draws meet the budget;
  with adaptive stopping (:func:`stopped`) a map stops once the Monte-Carlo
  error of its averaged ``dr/ds`` is small, absolutely or against the map's
  spread, and answers the fixed point of that average (:func:`fixed_point`);
* safeguard: the average of an early window of iterates (``early_window``)
  is levelled to the budget on the same draws too, and the one of the two
  with the larger entropy is returned (per layer). On layers far from linear
  (logits of a trained net) the long run can settle on a worse point than an
  early one, whose averaged ``dr/ds`` still remembers the linear model. The
  engine runs it only where the closed form overspent the budget at the
  first iteration (``State.start_ratio``; ``CIDConfig.safeguard``).

Averaging the gradient rather than taking the logarithm of each noisy estimate
keeps the scheme unbiased: a per-iteration Newton step on ``log(q / mean q)``
drifts towards noisy pixels (``E log q_hat < log q``). With exact gradients the
distance to the fixed point shrinks by ``1 - omega_t`` per iteration for
linear entries and ``1 - 2 omega_t`` for purely quadratic ones; the decaying
``omega_t`` trades that speed for iterates that settle under noisy gradients.
The linear model is the start, so a linear network is solved exactly at the
first iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_infodiscard.core.features import normal, sq_norm
from jax_infodiscard.types import Array, PRNGKey

# deviations(xp (L, N, H, W, C)) -> ({layer: pytree (N, ...)} as a tuple, aux)
Deviations = Callable[[Array], tuple[tuple[Any, ...], Any]]
# entropy(u (L, *S), aux) -> (L, *S) nats without the constant
Entropy = Callable[[Array, Any], Array]

# Salts for fold_in on a layer's key: every random quantity has its own.
SALT_PROBES, SALT_STEPS, SALT_BUDGET = 1, 2, 3

# Floor on the averaged gradient, relative to the linear model's: a pixel
# whose estimated dr/ds is tiny or negative moves at most sqrt(50)x above
# its linear sigma per fixed point (and never above max_sigma).
_Q_FLOOR = 0.02
SE_CAP = 0.25 * math.log(1.0 / _Q_FLOOR)
"""Cap on the standard error of one entry's ``log sigma`` (nats). Where the
averaged ``dr/ds`` sits at or below the floor, its spread is large against
the floored value and the first-order error ``0.5 sd(q) / q`` explodes; the
entry itself moves at most ``0.5 log(1 / _Q_FLOOR)`` between the floor and
the linear model's ``dr/ds``, and a standard deviation is at most half a
range."""
FAR_FROM_LINEAR = 30.0
"""A map whose first iteration, at the closed form, spent more than this
multiple of the budget (``State.start_ratio``) is far from linear: its
``dr/ds`` moves with sigma, so the averaged fixed point drifts for long, and
the adaptive stopping rule (:func:`stopped`), which measures noise, does not
stop it; the engine runs the early-window safeguard for it
(``CIDConfig.safeguard="auto"``). On the trained demo convnet conv1-conv5 sit
below (about 1-20) and the logits above (docs/accuracy.md)."""
CV_RATIO = 2.0
"""``control_variate="auto"``: the iterations drop the linearised network as
control variate where the closed form spent more than this multiple of the
budget but at most :data:`FAR_FROM_LINEAR` times (``State.start_ratio``,
median over the images of a chunk), at every layer of a compiled group. Near
linear it makes the gradients almost exact; in between its pass buys less
than it costs; far from linear the maps run every iteration and the control
variate still serves their near-linear entries (docs/accuracy.md)."""
DRAW_PASSES = 2
"""Model passes per noise draw: the network at ``x'`` (forward, or forward and
backward in an iteration) and the linearised network (JVP, or JVP and its
transpose): the control variate."""
_E_FLOOR = 1e-3


class Problem(NamedTuple):
    """One image and ``L`` layers, as the solver sees them.

    Attributes:
      x: the image ``(H, W, C)``.
      scale: ``delta_f^2`` per layer ``(L,)``.
      a: Jacobian column norms ``(L, *S)`` (``sum a = scale``).
      beta: the budget, scalar.
      deviations: feature deviations ``h_l(x'_n) - f_l`` of perturbed inputs
        (and any auxiliary output the entropy term needs).
      entropy: the RU entropy term per sigma entry, or ``None`` for CID
        (``H = log sigma``).
      linear: ``linear(t (L, N, H, W, C)) -> ||J_l t_ln||^2 (L, N)``, the
        squared feature change of the linearised network, whose mean
        ``sum_i s_i a_i`` is known: the control variate of every budget
        estimate (exact for a linear network); ``None``: no control variate
        (the plain Monte-Carlo mean, one pass per draw fewer).
      center_mean: budget about ``E h(x')`` (variance only) instead of ``f``.
    """

    x: Array
    scale: Array
    a: Array
    beta: Array
    deviations: Deviations
    entropy: Entropy | None
    linear: Callable[[Array], Array] | None
    center_mean: bool


class State(NamedTuple):
    """State of ``optimize`` (leading layer axis ``L`` everywhere but ``t``).

    Attributes:
      t: iterations run, scalar int32.
      u: current ``log sigma`` ``(L, *S)``.
      q: averaged ``dr/ds`` ``(L, *S)``.
      e: averaged ``s dH/ds`` ``(L, *S)`` (ones for CID).
      log_mu: ``log(1 / lambda)`` ``(L,)``.
      acc: sum of the iterates of the second half ``(L, *S)``.
      count: iterates summed into ``acc``, scalar int32.
      early: sum of the iterates of the early window ``(L, *S)``
        (:func:`early_window`).
      m2: averaged square of the per-iteration ``dr/ds`` estimates, with the
        weights of ``q`` ``(L, *S)``: ``(m2 - q^2) v`` is the variance of
        ``q`` with the drift of the iterates counted as noise (the stopping
        rule's, :func:`stopped`).
      g_last: the last per-iteration estimate of ``dr/ds`` ``(L, *S)``.
      d2: averaged half squared difference of successive per-iteration
        estimates of ``dr/ds``, with the weights of ``q`` ``(L, *S)``: their
        variance, blind to a slow drift of the iterates.
      v: sum of the squared averaging weights of ``q`` since its last restart
        ``(L,)``: ``Var(q) ~ d2 v`` (:func:`pixel_se`).
      done: the layer stopped (adaptive stopping, :func:`stopped`) ``(L,)``.
      steps_run: iterations the layer ran ``(L,)`` int32.
      start_ratio: the budget of the first iteration (at the closed form)
        over ``beta`` ``(L,)``: a first, noisy ``linearity``. Without the
        control variate the engine measures it before the iterations, with
        it, on the same draws.
    """

    t: Array
    u: Array
    q: Array
    e: Array
    log_mu: Array
    acc: Array
    count: Array
    early: Array
    m2: Array
    g_last: Array
    d2: Array
    v: Array
    done: Array
    steps_run: Array
    start_ratio: Array


def damping(t, step_size: float, damping_time: float | None):
    """Damping ``omega_t = step_size / (1 + t / damping_time)`` of iteration ``t``.

    The damping halves after ``damping_time`` iterations
    (``CIDConfig.damping_time``, default 4.8), thirds
    after twice that, and so on (a Robbins-Monro schedule): the first
    iterations move fast from the linear start, later ones less and less, so
    that the iterates settle instead of oscillating about the fixed point.
    With a constant damping (``damping_time=None``) the oscillation biases the
    averaged ``dr/ds`` wherever it is convex in ``sigma`` (measured at the
    logits of the trained demo convnet, docs/usage.md, "Methods"). The
    schedule counts iterations, not a fraction of the run: one that decays
    over the run's length (``damping_time = steps / 20``) left short solves
    far from the fixed point (docs/benchmarks.md, "Short solves").

    >>> [round(float(damping(t, 0.3, 4.8)), 3) for t in (0, 48, 95)]
    [0.3, 0.027, 0.014]
    >>> round(float(damping(95, 0.3, None)), 3)  # constant
    0.3
    """
    t = jnp.asarray(t, jnp.float32)
    if damping_time is None:
        return jnp.full_like(t, step_size)
    return step_size / (1.0 + t / damping_time)


def early_window(total_steps: int) -> tuple[int, int]:
    """Iterations ``[start, stop)`` averaged into the early candidate.

    ``[k // 2, k)`` with ``k = max(2, total_steps // 16)``: the second half of
    the first sixteenth of the run (iterations 3-5 of 96).

    >>> early_window(96), early_window(4)
    ((3, 6), (1, 2))
    """
    k = max(2, total_steps // 16)
    return k // 2, k


def antithetic(key: PRNGKey, num: int, shape: tuple[int, ...]) -> Array:
    """``num`` standard-normal draws of ``shape``: ``d_1..d_P, -d_1..-d_P``."""
    d = normal(key, (num // 2, *shape))
    return jnp.concatenate([d, -d])


def layer_draws(keys: Array, salt: int, index, num: int, shape) -> Array:
    """Antithetic draws ``(L, num, *shape)``, one stream per layer key."""

    def one(k):
        k = jax.random.fold_in(jax.random.fold_in(k, salt), index)
        return antithetic(k, num, shape)

    return jax.vmap(one)(keys)


def pairs_subset(eps: Array, num: int) -> Array:
    """The first ``num / 2`` antithetic pairs of draws ``(L, N, ...)`` (``num`` even).

    >>> d = antithetic(jax.random.key(0), 6, (1,))[None]
    >>> bool((pairs_subset(d, 4)[0, :2] == -pairs_subset(d, 4)[0, 2:]).all())
    True
    """
    half, keep = eps.shape[1] // 2, num // 2
    return jnp.concatenate([eps[:, :keep], eps[:, half : half + keep]], axis=1)


def sigma_full(u: Array) -> Array:
    """``exp(u)`` as ``(L, 1, H, W, C)`` (broadcast over channels if shared)."""
    sigma = jnp.exp(u)
    if sigma.ndim == 3:  # (L, H, W): one sigma per pixel
        sigma = sigma[..., None]
    return sigma[:, None]


def budget_terms(dev: Any) -> tuple[Array, Array]:
    """``E||d||^2`` and an unbiased ``||E d||^2`` from antithetic draws.

    Args:
      dev: one layer's deviations ``d_n = h(x'_n) - f``, a pytree with leading
        axis ``N`` whose halves are the ``+delta`` and ``-delta`` draws.

    Returns:
      ``(mean_n ||d_n||^2, msq)``; ``msq`` estimates the squared mean shift
      from the ``P = N / 2`` independent pair means ``p_k`` as
      ``(P ||mean p||^2 - mean ||p_k||^2) / (P - 1)``.
    """
    dist = sq_norm(dev)
    half = dist.shape[0] // 2
    pairs = jax.tree.map(lambda d: 0.5 * (d[:half] + d[half:]), dev)
    mean_pair = jax.tree.map(lambda p: jnp.mean(p, axis=0, keepdims=True), pairs)
    m2 = sq_norm(mean_pair)[0]
    msq = (half * m2 - jnp.mean(sq_norm(pairs))) / (half - 1)
    return jnp.mean(dist), msq


def measure(problem: Problem, u: Array, eps: Array):
    """Budget, mean-shift share and entropy at ``u`` (:func:`measure_se`)."""
    r, share, entropy, _ = measure_se(problem, u, eps)
    return r, share, entropy


def measure_se(problem: Problem, u: Array, eps: Array):
    """Budget and what comes with it at ``u`` with draws ``eps (L, N, H, W, C)``.

    The budget is the Monte-Carlo mean of ``||h(x') - f||^2`` with the
    linearised network as control variate: ``mean(dist) - c (mean(lin) -
    sum_i s_i a_i)``, ``c`` the variance-minimising coefficient estimated from
    the same draws (held fixed for gradients). It is exact for a linear
    network (``c = 1``) and falls back to the plain mean where the
    linearisation says nothing (``c = 0``).

    Returns:
      ``(r, mean_shift, entropy, log_r_se)``: the budget ``(L,)``, the
      mean-shift share of ``E||h(x') - f||^2`` ``(L,)``, the entropy map
      ``(L, *S)`` (``u`` for CID) without the constant ``0.5 log(2 pi e)``,
      and the standard error of ``log r`` ``(L,)`` from the spread of the
      control-variate-corrected antithetic pairs.
    """
    noise = sigma_full(u) * eps
    xp = problem.x + noise
    dev, aux = problem.deviations(xp)
    dist, msq = _stack_terms(dev)
    tiny = jnp.finfo(jnp.float32).tiny
    if problem.linear is None:  # no control variate: the plain mean
        lin = jnp.zeros((*dist.shape, eps.shape[1]), dist.dtype)
        coef = jnp.zeros_like(dist)
        total = dist
    else:
        lin = problem.linear(noise)  # (L, N)
        exact = jnp.sum(jnp.exp(2.0 * u) * problem.a, axis=tuple(range(1, u.ndim)))
        coef = jax.lax.stop_gradient(_cv_coefficient(dev, lin))
        total = dist - coef * (jnp.mean(lin, axis=1) - exact)
    if problem.center_mean:
        total = total - msq
    r = jnp.maximum(total, tiny) / problem.scale
    share = jnp.clip(msq / jnp.maximum(dist, tiny), 0.0, 1.0)
    entropy = u if problem.entropy is None else problem.entropy(u, aux)
    log_r_se = _pair_se(dev, lin, coef) / jnp.maximum(total, tiny)
    return r, share, entropy, jax.lax.stop_gradient(log_r_se)


def _pair_se(dev: tuple[Any, ...], lin: Array, coef: Array) -> Array:
    """Standard error ``(L,)`` of the control-variate budget mean over pairs."""
    dist = jnp.stack([sq_norm(d) for d in dev])  # (L, N)
    half = dist.shape[1] // 2
    y = dist - coef[:, None] * lin
    p = 0.5 * (y[:, :half] + y[:, half:])
    return jnp.std(p, axis=1, ddof=1) / math.sqrt(half)


def _cv_coefficient(dev: tuple[Any, ...], lin: Array) -> Array:
    """Per layer, ``Cov(dist, lin) / Var(lin)`` over antithetic pairs, in [0, 1]."""
    dist = jnp.stack([sq_norm(d) for d in dev])  # (L, N)
    half = dist.shape[1] // 2
    p = 0.5 * (dist[:, :half] + dist[:, half:])
    q = 0.5 * (lin[:, :half] + lin[:, half:])
    p = p - jnp.mean(p, axis=1, keepdims=True)
    q = q - jnp.mean(q, axis=1, keepdims=True)
    var = jnp.mean(q * q, axis=1)
    coef = jnp.mean(p * q, axis=1) / jnp.maximum(var, jnp.finfo(jnp.float32).tiny)
    return jnp.clip(jnp.where(var > 0, coef, 1.0), 0.0, 1.0)


def _stack_terms(dev: tuple[Any, ...]) -> tuple[Array, Array]:
    terms = [budget_terms(d) for d in dev]
    return jnp.stack([t[0] for t in terms]), jnp.stack([t[1] for t in terms])


def averaging_weight(t: Array, total_steps: int) -> Array:
    """Weight of iteration ``t``'s gradient in the running average.

    A burn-in of ``total_steps // 4`` iterations forgets fast (weight 1/2:
    the start can be far from the optimum, and gradients measured there are
    stale once it moved); afterwards the average restarts with weights
    growing like ``t - burn_in`` (``2 / (k + 2)`` at the ``k``-th iteration
    after the burn-in), which averages the noise down like ``1 / sqrt(k)``.
    """
    burn_in = total_steps // 4
    k = (t - burn_in).astype(jnp.float32)
    return jnp.where(t < burn_in, 0.5, 2.0 / (k + 2.0))


def init_state(a: Array, scale: Array, beta: Array, u0: Array) -> State:
    """The state at the closed form ``u0`` (column norms ``a``, its ``mu``)."""
    n = math.prod(u0.shape[1:])
    num_layers = u0.shape[0]
    return State(
        t=jnp.int32(0),
        u=u0,
        q=a / _expand(scale, u0.ndim),
        e=jnp.ones_like(u0),
        log_mu=jnp.full((num_layers,), math.log(n)) - jnp.log(2.0 * beta),
        acc=jnp.zeros_like(u0),
        count=jnp.int32(0),
        early=jnp.zeros_like(u0),
        m2=jnp.square(a / _expand(scale, u0.ndim)),
        g_last=a / _expand(scale, u0.ndim),
        d2=jnp.zeros_like(u0),
        v=jnp.ones((num_layers,), jnp.float32),
        done=jnp.zeros((num_layers,), bool),
        steps_run=jnp.zeros((num_layers,), jnp.int32),
        start_ratio=jnp.ones((num_layers,), jnp.float32),
    )


def _expand(v: Array, ndim: int) -> Array:
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def step(
    problem: Problem,
    state: State,
    keys: Array,
    *,
    samples: int,
    step_size: float,
    damping_time: float | None,
    total_steps: int,
    log_bounds: tuple[float, float],
    tol: float | None = None,
    rtol: float | None = None,
) -> State:
    """One averaged fixed-point iteration (see the module docstring).

    Args:
      problem: the problem.
      state: the current state.
      keys: per-layer keys ``(L,)``; iteration ``t`` draws from them with
        ``SALT_STEPS`` and ``t``.
      samples: antithetic draws per iteration.
      step_size: initial damping ``omega_0`` (:func:`damping`).
      damping_time: iterations until the damping halves (:func:`damping`;
        ``None``: constant).
      total_steps: iterations of the whole run (the second half is averaged).
      log_bounds: ``(log min_sigma, log max_sigma)``.
      tol: adaptive stopping (:func:`stopped`): a layer whose root mean
        square :func:`pixel_se` fell below ``tol`` keeps its state from then
        on (``None``: no absolute condition).
      rtol: adaptive stopping, relative condition (:func:`stopped`); with
        ``tol`` and ``rtol`` both ``None`` every layer runs every iteration.

    Returns:
      The next state.
    """
    new = _step(
        problem,
        state,
        keys,
        samples=samples,
        step_size=step_size,
        damping_time=damping_time,
        total_steps=total_steps,
        log_bounds=log_bounds,
    )
    if tol is None and rtol is None:
        return new._replace(steps_run=state.steps_run + 1)
    frozen = state.done

    def keep(old, nxt):
        if old.ndim == 0:
            return nxt
        return jnp.where(_expand(frozen, old.ndim), old, nxt)

    new = State(*(keep(o, n) for o, n in zip(state, new, strict=True)))
    new = new._replace(steps_run=state.steps_run + (~frozen).astype(jnp.int32))
    done = stopped(problem, new, tol, rtol, total_steps, log_bounds)
    return new._replace(done=frozen | done)


def stopped(
    problem: Problem,
    state: State,
    tol: float | None,
    rtol: float | None,
    total_steps: int,
    log_bounds: tuple[float, float],
) -> Array:
    """Adaptive stopping rule ``(L,)``.

    With ``e`` the root mean square over entries of :func:`pixel_se` (drift
    counted, so that a map whose iterates still move does not stop) and
    ``d`` the standard deviation over entries of the fixed point's ``log
    sigma`` (:func:`fixed_point`), a map stops once ``e <= tol`` (absolute,
    nats) and ``e <= rtol d`` (relative: the map's noise is at most a share
    ``rtol^2`` of its variance over entries, so two runs correlate to about
    ``1 - rtol^2``); a ``None`` condition is not checked. Checked after the
    burn-in of the averaged ``dr/ds`` (:func:`averaging_weight`) and four
    more iterations, so that the spread of the per-iteration estimates is
    measured on at least four of them. A map far from linear
    (:data:`FAR_FROM_LINEAR`) never stops early.
    """
    axes = tuple(range(1, state.u.ndim))
    se = pixel_se(problem, state, drift=True)
    rms = jnp.sqrt(jnp.mean(jnp.square(se), axis=axes))
    ok = (state.t >= total_steps // 4 + 4) & (state.start_ratio <= FAR_FROM_LINEAR)
    if tol is not None:
        ok = ok & (rms <= tol)
    if rtol is not None:
        spread = jnp.std(fixed_point(problem, state, log_bounds), axis=axes)
        ok = ok & (rms <= rtol * spread)
    return ok


def fixed_point(problem: Problem, state: State, log_bounds) -> Array:
    """``log sigma`` at the fixed point of the averaged ``dr/ds`` ``(L, *S)``.

    The answer of a layer stopped by :func:`stopped` (its level is set
    afterwards on held draws): the target of the iterations at the averaged
    ``q``, whose error is :func:`pixel_se`.
    """
    target = _target(state.e, state.log_mu, floored_q(problem, state.q))
    return jnp.clip(target, *log_bounds)


def _target(e: Array, log_mu: Array, q: Array) -> Array:
    """The fixed point ``log sigma_i = 0.5 log((s dH/ds)_i / (2 mu q_i))``.

    ``e`` and ``q`` are ``(L, *S)`` (``q`` floored), ``log_mu`` is ``(L,)``.
    """
    return 0.5 * (
        jnp.log(jnp.maximum(e, _E_FLOOR))
        - math.log(2.0)
        - _expand(log_mu, e.ndim)
        - jnp.log(q)
    )


def _step(
    problem: Problem,
    state: State,
    keys: Array,
    *,
    samples: int,
    step_size: float,
    damping_time: float | None,
    total_steps: int,
    log_bounds: tuple[float, float],
) -> State:
    u = state.u
    eps = layer_draws(keys, SALT_STEPS, state.t, samples, problem.x.shape)
    s = jnp.exp(2.0 * u)

    def budget(v):
        r, _, ent = measure(problem, v, eps)
        return r, ent

    (r, ent), vjp = jax.vjp(budget, u)
    (g,) = vjp((jnp.ones_like(r), jnp.zeros_like(ent)))
    w = averaging_weight(state.t, total_steps)
    g_q = g / (2.0 * s)
    q = (1.0 - w) * state.q + w * g_q
    m2 = (1.0 - w) * state.m2 + w * jnp.square(g_q)
    d2 = (1.0 - w) * state.d2 + w * 0.5 * jnp.square(g_q - state.g_last)
    v = jnp.square(1.0 - w) * state.v + jnp.square(w)
    if problem.entropy is None:
        e = state.e
    else:
        (ge,) = vjp((jnp.zeros_like(r), jnp.ones_like(ent)))
        e = (1.0 - w) * state.e + w * 0.5 * ge  # s dH/ds = 0.5 dH/du
    log_mu = state.log_mu + jnp.log(r / problem.beta)
    q_c = floored_q(problem, q)
    target = _target(e, log_mu, q_c)
    omega = damping(state.t, step_size, damping_time)
    u = jnp.clip((1.0 - omega) * u + omega * target, *log_bounds)
    if problem.linear is None:  # measured before the iterations, with it
        start_ratio = state.start_ratio
    else:
        start_ratio = jnp.where(state.t == 0, r / problem.beta, state.start_ratio)
    tail = state.t >= total_steps - max(1, total_steps // 2)
    start, stop = early_window(total_steps)
    window = (state.t >= start) & (state.t < stop)
    return State(
        t=state.t + 1,
        u=u,
        q=q,
        e=e,
        log_mu=log_mu,
        acc=state.acc + jnp.where(tail, u, 0.0),
        count=state.count + tail.astype(jnp.int32),
        early=state.early + jnp.where(window, u, 0.0),
        m2=m2,
        g_last=g_q,
        d2=d2,
        v=v,
        done=state.done,
        steps_run=state.steps_run,
        start_ratio=start_ratio,
    )


def floored_q(problem: Problem, q: Array) -> Array:
    """``q`` kept above ``_Q_FLOOR`` times the linear model's ``dr/ds``."""
    q_lin = problem.a / _expand(problem.scale, q.ndim)
    return jnp.maximum(q, _Q_FLOOR * q_lin + jnp.finfo(jnp.float32).tiny)


def on_floor(problem: Problem, q: Array) -> Array:
    """Share of sigma entries whose averaged ``dr/ds`` sits on ``_Q_FLOOR`` ``(L,)``.

    There the map reports the floor (a regulariser), not the network: their
    noise cancels other entries' mean shift, so ``dr/ds <= 0`` on average.
    """
    q_lin = problem.a / _expand(problem.scale, q.ndim)
    low = q <= _Q_FLOOR * q_lin
    return jnp.mean(low.astype(jnp.float32), axis=tuple(range(1, q.ndim)))


def pixel_se(problem: Problem, state: State, drift: bool = False) -> Array:
    """Monte-Carlo standard error of ``log sigma`` per entry ``(L, *S)``.

    See docs/design.md ("Regime", Monte-Carlo error). With ``q`` the weighted
    mean of the per-iteration estimates ``g_t`` of ``dr/ds``, ``d2`` that of
    ``0.5 (g_t - g_{t-1})^2`` and ``v`` the sum of the squared weights,
    ``Var(q) ~ d2 v`` (draws independent across iterations; successive
    differences do not count the slow drift of the iterates as noise), and
    ``u = log sigma ~ -0.5 log q + const`` gives ``se = 0.5 sqrt(Var(q)) / q``
    (``q`` floored as in the iterations).
    With ``drift=True`` the spread is ``m2 - q^2`` instead: the estimates'
    spread about their average, which also counts the drift of ``dr/ds``
    while the iterates still move (a bound for the stopping rule, which must
    not stop a map that has not settled; the reported error bars use the
    successive differences).
    Zero where the estimates do not vary (a linear network).
    """
    spread = jnp.maximum(state.m2 - jnp.square(state.q), 0.0) if drift else state.d2
    var = spread * _expand(state.v, state.q.ndim)
    se = 0.5 * jnp.sqrt(var) / floored_q(problem, state.q)
    return jnp.minimum(se, SE_CAP)


def shift(u: Array, c: Array, log_bounds: tuple[float, float]) -> Array:
    """``u + c`` per layer, clipped; entries at the cap stay there.

    An entry at ``max_sigma`` is one the layer ignores (or nearly): moving the
    level of the others must not pull it off the cap.
    """
    capped = u >= log_bounds[1] - 1e-4
    return jnp.where(capped, u, jnp.clip(u + _expand(c, u.ndim), *log_bounds))


class Level(NamedTuple):
    """What :func:`level` returns (each ``(L,)``).

    Attributes:
      c: the shift of ``log sigma`` (the best point evaluated).
      r: its budget.
      mean_shift: its mean-shift share.
      r0: the budget at the unshifted ``u`` (the first evaluation).
      log_r_se: the standard error of ``log r`` at ``c`` on these draws; the
        level's own error is about ``0.5 log_r_se`` (``d log r / dc = 2`` in
        the linear regime).
    """

    c: Array
    r: Array
    mean_shift: Array
    r0: Array
    log_r_se: Array


def level(
    problem: Problem,
    u: Array,
    eps: Array,
    target: Array,
    log_bounds: tuple[float, float],
    iterations: int,
) -> Level:
    """The constant ``c (L,)`` with ``r(u + c) = target`` on the draws ``eps``.

    A secant on ``log r`` against ``c`` (first slope 2, the linear model's),
    with common random numbers. Costs ``iterations`` evaluations of every
    draw.
    """
    log_t = jnp.broadcast_to(jnp.log(target), u.shape[:1])

    def at(c):
        v = shift(u, c, log_bounds)
        r, share, _, r_se = measure_se(problem, v, eps)
        return r, share, r_se

    def body(i, carry):
        c, err, c_prev, err_prev, best, r0 = carry
        slope = (err - err_prev) / (c - c_prev)
        slope = jnp.where(jnp.isfinite(slope), jnp.clip(slope, 0.5, 8.0), 2.0)
        step = jnp.where(jnp.isfinite(err), jnp.clip(err / slope, -3.0, 3.0), 0.0)
        c_new = c - step
        r_new, share_new, se_new = at(c_new)
        err_new = jnp.log(r_new) - log_t
        better = (i == 0) | (jnp.abs(err_new) < jnp.abs(jnp.log(best[1]) - log_t))
        best = tuple(
            jnp.where(better, new, old)
            for new, old in zip((c_new, r_new, share_new, se_new), best, strict=True)
        )
        r0 = jnp.where(i == 0, r_new, r0)
        return c_new, err_new, c, err, best, r0

    # The first iteration evaluates c = 0 (err is NaN, so it does not move).
    zero = jnp.zeros(u.shape[:1], jnp.float32)
    nan = jnp.full_like(zero, jnp.nan)
    init = (zero, nan, nan, nan, (zero, zero + 1.0, zero, zero), zero)
    *_, (c, r, share, r_se), r0 = jax.lax.fori_loop(0, iterations, body, init)
    return Level(c, r, share, r0, r_se)
