"""Regime diagnostics: how linear the network is over the noise.

Every result says which regime its layer is in, measured on held draws that
the solver never saw:

* ``linearity``: the true budget of the closed-form sigma divided by
  ``beta``. It is 1 for a network that is linear over the noise; above 1 the
  closed form spends more than the budget (ReLU rectification of zero-mean
  noise adds a mean shift that pooling sums up coherently).
* ``mean_shift`` (computed by the solver at the solution): the share of
  ``E||h(x') - f||^2`` that is ``||E h(x') - f||^2``.
* ``entropy_gain``: the solution's mean entropy minus that of the closed form
  moved by one constant in ``log sigma`` until it spends the same true budget
  as the solution (nats per sigma entry). It is what optimising on the real
  network gains over the rescaled linear shape; about 0 in the linear regime.
"""

from __future__ import annotations

import jax.numpy as jnp

from jax_infodiscard.core import solver
from jax_infodiscard.types import Array


def regime(
    problem: solver.Problem,
    u_lin: Array,
    u: Array,
    entropy: Array,
    budget: Array,
    eps: Array,
    iterations: int,
    log_bounds: tuple[float, float],
) -> tuple[dict[str, Array], int]:
    """``linearity`` and ``entropy_gain`` ``(L,)`` of one image, and their cost.

    The closed form is levelled on the draws that levelled the solution
    (common random numbers: ``entropy_gain`` is a paired difference, and the
    diagnostics draw nothing new).

    Args:
      problem: the problem.
      u_lin: the closed form ``(L, *S)``.
      u: the solution ``(L, *S)``.
      entropy: the solution's entropy map ``(L, *S)`` (nats, no constant).
      budget: the solution's budget ``(L,)`` on ``eps``.
      eps: held draws ``(L, N, H, W, C)`` (the solution's level draws).
      iterations: secant evaluations of the level (:func:`solver.level`).
      log_bounds: ``(log min_sigma, log max_sigma)``.

    Returns:
      ``({"linearity", "entropy_gain"}, passes)``.
    """
    num_draws = eps.shape[1]
    lv = solver.level(problem, u_lin, eps, budget, log_bounds, iterations)
    c, r_lin = lv.c, lv.r0
    rescaled = solver.shift(u_lin, c, log_bounds)
    passes = iterations * num_draws * solver.DRAW_PASSES
    if problem.entropy is None:
        ent_lin = rescaled
    else:
        ent_lin = solver.measure(problem, rescaled, eps)[2]
        passes += num_draws * solver.DRAW_PASSES
    axes = tuple(range(1, u.ndim))
    gain = jnp.mean(entropy, axis=axes) - jnp.mean(ent_lin, axis=axes)
    return {"linearity": r_lin / problem.beta, "entropy_gain": gain}, passes
