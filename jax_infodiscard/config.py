"""Frozen configuration records for the CID and RU solvers.

Configurations are hashable so that they can be static arguments of compiled
programs. Values that users sweep (``beta``) are passed to the compiled
programs as arrays, so a sweep over ``beta`` does not recompile.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import optax

Method = Literal["optimize", "linearized", "hybrid"]
METHODS: tuple[str, ...] = ("optimize", "linearized", "hybrid")
"""Names accepted by ``CIDConfig.method`` (the CLI's ``--method`` choices)."""
FeatureScaleMethod = Literal["jvp", "limit"]
LayerStrategy = Literal["auto", "vmap", "per_layer"]

_OPTIMIZERS = ("auto", "adam", "sgd", "rmsprop", "adabelief", "lion")


@dataclasses.dataclass(frozen=True)
class CIDConfig:
    """Configuration of the pixel-wise CID solver (paper Eq. 3-4).

    Attributes:
      beta: noise budget ``E||h(x') - f||^2 / delta_f^2`` that the solution must
        reach (paper default ``1.5e-4``; with unit-range inputs it is the mean
        per-unit noise variance).
      method: ``"linearized"`` (default: closed-form optimum of the locally
        linear network, DESIGN.md sec. 3; at the default budget it is the most
        accurate per model pass, see ``benchmarks/bench_cid.py``),
        ``"hybrid"`` (linearised warm start refined by optimisation, with the
        linearised network as a control variate) or ``"optimize"``
        (Monte-Carlo optimisation of Eq. 3 with optax from a uniform start).
      steps: optax steps per bisection iteration (``optimize``/``hybrid``).
      num_samples: Monte-Carlo noise draws per optax step (``S``).
      optimizer: an ``optax.GradientTransformation`` or one of ``"auto"``,
        ``"adam"``, ``"sgd"``, ``"rmsprop"``, ``"adabelief"``, ``"lion"``; the
        learning rate follows a cosine decay from ``learning_rate`` over
        ``steps``. ``"auto"`` is clipped SGD for ``hybrid`` (the scaled
        objective is well conditioned near the linearised optimum, and Adam's
        normalisation would turn its near-zero gradients into full steps) and
        Adam for ``optimize`` (far from the optimum at the start).
      learning_rate: peak learning rate (``None``: 0.25 for SGD, 0.05 else).
      bisection_steps: maximum number of lambda updates (bracketed secant /
        bisection on ``log lambda``).
      budget_tol: convergence tolerance ``|log(r / beta)| < budget_tol``.
      budget_samples: noise draws used to measure the achieved budget ``r``
        (common random numbers across bisection iterations).
      per_channel: one sigma per input unit ``(H, W, C)`` instead of one per
        pixel shared by its channels ``(H, W)``.
      feature_scale: ``"jvp"`` (Jacobian-vector products, exact limit) or
        ``"limit"`` (derivative-free finite differences, shrinking xi).
      scale_samples: noise draws for the ``delta_f^2`` estimate.
      linear_probes: vector-Jacobian products for the linearised column norms
        (``linearized``/``hybrid``); a layer with at most this many feature
        entries uses the exact basis instead.
      tail_fraction: fraction of the optax trajectory averaged (Polyak) into the
        solution, in ``(0, 1]``.
      max_sigma: cap on sigma (input units). A pixel the layer ignores has an
        unbounded optimum; it is reported at the cap, ``log(max_sigma) +
        0.5 log(2 pi e)`` nats, and counted in ``CIDResult.capped``.
      min_sigma: floor on sigma (input units).
      chunk_size: images per vectorised chunk inside the compiled program
        (``None``: all images of a device at once).
      layer_strategy: ``"vmap"`` (all layers in one program, one forward per
        noise draw and layer), ``"per_layer"`` (one program per layer; XLA drops
        the part of the network above the layer) or ``"auto"`` (the measured
        best for the backend, see the README).
    """

    beta: float = 1.5e-4
    method: Method = "linearized"
    steps: int = 8
    num_samples: int = 4
    learning_rate: float | None = None
    optimizer: Any = "auto"
    bisection_steps: int = 6
    budget_tol: float = 0.05
    budget_samples: int = 8
    per_channel: bool = False
    feature_scale: FeatureScaleMethod = "jvp"
    scale_samples: int = 16
    linear_probes: int = 80
    tail_fraction: float = 0.5
    max_sigma: float = 10.0
    min_sigma: float = 1e-6
    chunk_size: int | None = None
    layer_strategy: LayerStrategy = "auto"

    def __post_init__(self):
        _validate(self)

    def replace(self, **changes) -> CIDConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RUConfig(CIDConfig):
    """Configuration of the pixel-wise RU solver (paper Eq. 6-7).

    Same fields as :class:`CIDConfig`. RU has no closed form, so ``method``
    defaults to ``"hybrid"`` with more optimisation steps: the linearised CID
    solution is the warm start. The lambda search gets two more iterations
    than CID's: with an imperfect decoder ``log r`` is steeper than linear in
    ``log lambda`` and the search needs them (measured on a pooling feature
    with a bilinear decoder, 8 images: 6 iterations converged 88% of the
    solves, 8 converged all).
    """

    method: Method = "hybrid"
    steps: int = 24
    num_samples: int = 4
    bisection_steps: int = 8


def _validate(cfg: CIDConfig) -> None:
    def positive_int(name):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

    if not (isinstance(cfg.beta, (int, float)) and cfg.beta > 0):
        raise ValueError(f"beta must be a positive number, got {cfg.beta!r}")
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if not isinstance(cfg.steps, int) or cfg.steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {cfg.steps!r}")
    if cfg.method != "linearized" and cfg.steps < 1:
        raise ValueError(f"method {cfg.method!r} needs steps >= 1")
    for name in (
        "num_samples",
        "bisection_steps",
        "budget_samples",
        "scale_samples",
        "linear_probes",
    ):
        positive_int(name)
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {cfg.learning_rate!r}")
    if isinstance(cfg.optimizer, str):
        if cfg.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {cfg.optimizer!r}; choose one of {_OPTIMIZERS} "
                "or pass an optax.GradientTransformation"
            )
    elif not isinstance(cfg.optimizer, optax.GradientTransformation):
        raise ValueError(
            "optimizer must be a name or an optax.GradientTransformation, "
            f"got {type(cfg.optimizer).__name__}"
        )
    if not cfg.budget_tol > 0:
        raise ValueError(f"budget_tol must be > 0, got {cfg.budget_tol!r}")
    if cfg.feature_scale not in ("jvp", "limit"):
        raise ValueError(
            f"feature_scale must be 'jvp' or 'limit', got {cfg.feature_scale!r}"
        )
    if not 0.0 < cfg.tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction must be in (0, 1], got {cfg.tail_fraction}")
    if not 0.0 < cfg.min_sigma < cfg.max_sigma:
        raise ValueError(
            "need 0 < min_sigma < max_sigma, got "
            f"min_sigma={cfg.min_sigma}, max_sigma={cfg.max_sigma}"
        )
    if cfg.chunk_size is not None:
        positive_int("chunk_size")
    if cfg.layer_strategy not in ("auto", "vmap", "per_layer"):
        raise ValueError(
            "layer_strategy must be 'auto', 'vmap' or 'per_layer', "
            f"got {cfg.layer_strategy!r}"
        )


def make_optimizer(cfg: CIDConfig) -> optax.GradientTransformation:
    """The optax transformation of ``cfg`` with a cosine-decayed learning rate."""
    if isinstance(cfg.optimizer, optax.GradientTransformation):
        return cfg.optimizer
    name = cfg.optimizer
    if name == "auto":
        name = "adam" if cfg.method == "optimize" else "sgd"
    lr = cfg.learning_rate
    if lr is None:
        lr = 0.25 if name == "sgd" else 0.05
    schedule = optax.cosine_decay_schedule(lr, max(cfg.steps, 1), 0.1)
    return {
        "adam": lambda: optax.adam(schedule),
        "sgd": lambda: optax.chain(optax.clip(4.0), optax.sgd(schedule, momentum=0.5)),
        "rmsprop": lambda: optax.rmsprop(schedule),
        "adabelief": lambda: optax.adabelief(schedule),
        "lion": lambda: optax.lion(schedule),
    }[name]()
