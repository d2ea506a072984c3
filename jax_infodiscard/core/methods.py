"""How sigma is found: a small table from method name to what the solver runs.

``"linear"`` is the closed form of the locally linear network (docs/design.md,
"Oracles", "Solver"): ``sigma_i^2 = beta delta_f^2 / (n a_i)`` with ``lambda = 2 beta /
n``. It costs the column norms only and is exact while the network is linear
over the noise; its measured budget (``linearity``) says how far from linear
the layer is.

``"optimize"`` is the optimum of Eq. 3-4 on the real network (``core.solver``):
the closed form is the start, the averaged fixed point runs ``steps``
iterations, and held draws set the level so that the true budget is met.
"""

from __future__ import annotations

from typing import NamedTuple


class Method(NamedTuple):
    """What the solver runs for one method.

    Attributes:
      iterate: run the averaged fixed-point iterations of ``core.solver``.
      level: move the answer by one constant in ``log sigma`` until held draws
        meet the budget (otherwise the budget is only measured).
    """

    iterate: bool
    level: bool


METHOD_TABLE: dict[str, Method] = {
    "linear": Method(iterate=False, level=False),
    "optimize": Method(iterate=True, level=True),
}
