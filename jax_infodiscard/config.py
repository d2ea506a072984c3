"""Frozen configuration records for the CID and RU solvers.

Configurations are hashable so that they can be static arguments of compiled
programs. ``beta``, the value users sweep, is passed to the compiled programs
as an array, so a sweep over ``beta`` does not recompile.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from jax_infodiscard.validation import check_int, check_number

Method = Literal["optimize", "linear"]
METHODS: tuple[str, ...] = ("optimize", "linear")
"""Names accepted by ``CIDConfig.method`` (the CLI's ``--method`` choices)."""

BudgetCenter = Literal["input", "mean"]
BUDGET_CENTERS: tuple[str, ...] = ("input", "mean")

Safeguard = Literal["auto", "always", "never"]
SAFEGUARDS: tuple[str, ...] = ("auto", "always", "never")
ControlVariate = Literal["auto", "always", "never"]
CONTROL_VARIATES: tuple[str, ...] = ("auto", "always", "never")

LayerStrategy = Literal["auto", "vmap", "per_layer"]
LAYER_STRATEGIES: tuple[str, ...] = ("auto", "vmap", "per_layer")


@dataclasses.dataclass(frozen=True)
class CIDConfig:
    """Configuration of the pixel-wise CID solver (paper Eq. 3-4).

    Attributes:
      beta: noise budget ``E||h(x') - f||^2 / delta_f^2`` that the solution
        spends (paper default ``1.5e-4``; with unit-range inputs it is the
        mean per-unit noise variance).
      method: how sigma is found (see ``jax_infodiscard.core.methods``):
        ``"optimize"`` (default) the optimum of Eq. 3-4 on the real network,
        warm-started from the closed form; ``"linear"`` the closed form of the
        locally linear network, ``sigma_i^2 = beta delta_f^2 / (n a_i)``
        (exact when the network is linear over the noise, see the result's
        ``linearity``).
      budget_center: ``"input"`` (the paper's ``f = h(x)``: the budget counts
        the mean shift ``||E h(x') - f||^2`` too) or ``"mean"`` (``f = E h(x')``:
        the budget is the feature variance only).
      probes: vector-Jacobian products for the Jacobian column norms ``a_i``
        (Rademacher probes); a layer with at most this many feature entries
        uses the exact basis instead.
      steps: fixed-point iterations of ``optimize`` (the cap with adaptive
        stopping, ``tol`` or ``rtol``).
      tol: adaptive stopping, nats of ``log sigma``: a layer of an image
        stops iterating once the root mean square over its entries of the
        Monte-Carlo standard error of ``log sigma`` (``core.solver.stopped``)
        is at most ``tol``; its answer is then the fixed point of the
        averaged ``dr/ds``. ``None``: no absolute condition.
        ``passes`` counts what each map ran.
      rtol: adaptive stopping, relative: that root mean square must also be
        at most ``rtol`` times the map's standard deviation over entries
        (two runs then correlate to about ``1 - rtol^2``). ``None``: no
        relative condition; with ``tol`` also ``None`` every map runs
        ``steps`` iterations. Maps far from linear
        (``core.solver.FAR_FROM_LINEAR``) always run ``steps`` iterations.
      samples: noise draws per iteration (antithetic pairs; even).
      step_size: initial damping ``omega_0`` of the iterations, in ``(0, 1]``;
        iteration ``t`` moves ``omega_0 / (1 + t / damping_time)`` of the way
        to the fixed point (``core.solver.damping``).
      damping_time: iterations after which the damping has halved (> 0), or
        ``None`` for a constant damping. The decay settles the iterates far
        from linear (docs/usage.md, "Methods").
      budget_samples: held draws (antithetic pairs; even) for the final budget,
        the RU map and the regime diagnostics.
      budget_tol: ``converged`` means ``|log(budget / beta)| < budget_tol``.
      level_steps: evaluations of the held draws by the secant that levels
        the answer to the budget (the first at the unshifted answer; >= 2).
      safeguard: the early-window candidate of ``optimize``
        (``core.solver``): ``"always"``, ``"never"`` or ``"auto"``, only for
        a chunk of images where the closed form spent more than
        ``core.solver.FAR_FROM_LINEAR`` times the budget at the first
        iteration (a layer far from linear; on layers closer to linear it
        never changed a map, docs/accuracy.md).
      control_variate: the linearised network as control variate of the
        iterations' budget gradients: ``"always"``, ``"never"`` (one pass per
        draw fewer) or ``"auto"``: not for a chunk of images and layer group
        whose closed form spent between ``core.solver.CV_RATIO`` and
        ``core.solver.FAR_FROM_LINEAR`` times the budget at every layer (the
        median over the chunk's images, measured on the first iteration's
        draws before the iterations; on CPU each layer is its own group;
        docs/accuracy.md). The final levelling always keeps it.
      per_channel: one sigma per input unit ``(H, W, C)`` instead of one per
        pixel shared by its channels ``(H, W)``.
      max_sigma: cap on sigma (input units). A pixel the layer ignores has an
        unbounded optimum; it is reported at the cap, ``log(max_sigma) +
        0.5 log(2 pi e)`` nats, and counted in ``CIDResult.capped``.
      min_sigma: floor on sigma (input units).
      chunk_size: images per vectorised chunk inside the compiled program
        (``None``: the engine plans the largest chunk that fits the memory).
      step_chunk: iterations per compiled call. On CPU the iterations run as a
        host loop over compiled chunks of this many unrolled steps (XLA:CPU
        runs convolution gradients inside compiled loops many times slower:
        docs/benchmarks.md); on
        accelerators all iterations run in one compiled loop. ``None``: the
        measured default for the backend.
      layer_strategy: ``"vmap"`` (all layers in one program), ``"per_layer"``
        (one program per layer; XLA drops the network above the layer) or
        ``"auto"`` (the measured best for the backend and method).
      unit_range: require images in ``[0, 1]`` (the unit the budget and
        ``max_sigma`` are meant for; catches images in ``0..255``). ``False``
        for models that expect another input range.
    """

    beta: float = 1.5e-4
    method: Method = "optimize"
    budget_center: BudgetCenter = "input"
    probes: int = 128
    steps: int = 96
    tol: float | None = None
    rtol: float | None = 0.25
    samples: int = 8
    step_size: float = 0.3
    damping_time: float | None = 4.8
    budget_samples: int = 24
    budget_tol: float = 0.05
    level_steps: int = 3
    safeguard: Safeguard = "auto"
    control_variate: ControlVariate = "auto"
    per_channel: bool = False
    max_sigma: float = 10.0
    min_sigma: float = 1e-6
    chunk_size: int | None = None
    step_chunk: int | None = None
    layer_strategy: LayerStrategy = "auto"
    unit_range: bool = True

    def __post_init__(self):
        _validate(self)

    def replace(self, **changes) -> CIDConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RUConfig(CIDConfig):
    """Configuration of the pixel-wise RU solver (paper Eq. 6-7).

    Same fields and defaults as :class:`CIDConfig`; ``method="optimize"``
    maximises the reconstruction entropy under the budget, ``"linear"``
    evaluates RU at CID's closed-form sigma.
    """

    @classmethod
    def from_cid(cls, cfg: CIDConfig, **changes) -> RUConfig:
        """The RU configuration with every field of ``cfg``, then ``changes``.

        >>> RUConfig.from_cid(CIDConfig(beta=1e-3), steps=48).beta
        0.001
        """
        if not isinstance(cfg, CIDConfig):
            raise TypeError(f"cfg must be a CIDConfig, got {type(cfg).__name__}")
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(CIDConfig)}
        return cls(**{**fields, **changes})


def _validate(cfg: CIDConfig) -> None:
    check_number("beta", cfg.beta, positive=True)
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.budget_center not in BUDGET_CENTERS:
        raise ValueError(
            f"budget_center must be one of {BUDGET_CENTERS}, got {cfg.budget_center!r}"
        )
    check_int("probes", cfg.probes)
    check_int("steps", cfg.steps, minimum=1)
    for name in ("tol", "rtol"):
        if getattr(cfg, name) is not None:
            check_number(name, getattr(cfg, name), positive=True)
    for name in ("samples", "budget_samples"):
        v = check_int(name, getattr(cfg, name), minimum=2)
        if v % 2:
            raise ValueError(f"{name} must be even (antithetic pairs), got {v}")
    check_number("step_size", cfg.step_size, positive=True, maximum=1.0)
    if cfg.damping_time is not None:
        check_number("damping_time", cfg.damping_time, positive=True)
    check_number("budget_tol", cfg.budget_tol, positive=True)
    check_int("level_steps", cfg.level_steps, minimum=2)
    if cfg.safeguard not in SAFEGUARDS:
        raise ValueError(
            f"safeguard must be one of {SAFEGUARDS}, got {cfg.safeguard!r}"
        )
    if cfg.control_variate not in CONTROL_VARIATES:
        raise ValueError(
            f"control_variate must be one of {CONTROL_VARIATES}, "
            f"got {cfg.control_variate!r}"
        )
    if not isinstance(cfg.per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {cfg.per_channel!r}")
    check_number("min_sigma", cfg.min_sigma, positive=True)
    check_number("max_sigma", cfg.max_sigma, positive=True, maximum=1e6)
    if not cfg.min_sigma < cfg.max_sigma:
        raise ValueError(
            "need min_sigma < max_sigma, got "
            f"min_sigma={cfg.min_sigma}, max_sigma={cfg.max_sigma}"
        )
    if cfg.chunk_size is not None:
        check_int("chunk_size", cfg.chunk_size)
    if cfg.step_chunk is not None:
        check_int("step_chunk", cfg.step_chunk)
    if not isinstance(cfg.unit_range, bool):
        raise TypeError(f"unit_range must be a bool, got {cfg.unit_range!r}")
    if cfg.layer_strategy not in LAYER_STRATEGIES:
        raise ValueError(
            f"layer_strategy must be one of {LAYER_STRATEGIES}, "
            f"got {cfg.layer_strategy!r}"
        )


def entropy_floor(beta: float) -> float:
    """Mean CID of the linear regime, ``0.5 log beta + 0.5 log(2 pi e)`` (nats).

    >>> round(entropy_floor(1.5e-4), 3)
    -2.983
    """
    return 0.5 * math.log(beta) + 0.5 * math.log(2 * math.pi * math.e)
