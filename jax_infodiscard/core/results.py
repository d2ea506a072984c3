"""Result records of the CID and RU solvers (registered dataclass pytrees)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

import jax
import numpy as np

_ARRAYS = (
    "pixel",
    "mean",
    "total",
    "sigma",
    "lam",
    "budget",
    "converged",
    "passes",
    "feature_scale",
    "capped",
)


@dataclasses.dataclass(frozen=True)
class _Result:
    """Pixel-wise information discarding of ``L`` layers on ``B`` images.

    Attributes:
      layers: the ``L`` layer names.
      pixel: pixel-wise entropy map ``(L, B, H, W)`` in nats per input unit
        (``(L, B, H, W, C)`` with ``per_channel``).
      mean: per-pixel mean of ``pixel`` ``(L, B)`` (the paper's plotted unit,
        "normalised by the pixel number").
      total: ``sum_i pixel_i * units_i`` ``(L, B)`` in nats (``units_i = C``
        for a pixel-shared sigma).
      sigma: noise scales ``(L, B, H, W)`` (or ``(L, B, H, W, C)``), input units.
      lam: Lagrange multiplier ``lambda`` ``(L, B)``.
      budget: achieved ``E||h(x') - f||^2 / delta_f^2`` ``(L, B)``.
      converged: ``|log(budget / beta)| < budget_tol`` ``(L, B)`` bool.
      passes: model passes per map ``(L, B)`` int (forward, JVP, VJP and
        forward+backward each count as one).
      feature_scale: ``delta_f^2`` ``(L, B)``.
      capped: sigma entries at ``max_sigma`` (ignored by the layer) ``(L, B)``.
      beta: the budget the solver aimed at.
      units: input units per sigma entry (``C``, or 1 with ``per_channel``).
    """

    layers: tuple[str, ...]
    pixel: Any
    mean: Any
    total: Any
    sigma: Any
    lam: Any
    budget: Any
    converged: Any
    passes: Any
    feature_scale: Any
    capped: Any
    beta: float
    units: int

    metric: ClassVar[str] = ""

    def to_numpy(self):
        """The same record with every array as a host ``numpy.ndarray``."""
        return dataclasses.replace(
            self, **{k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        )

    def layer(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of one layer, ``{field: array without the layer axis}``."""
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; available: {list(self.layers)}")
        i = self.layers.index(name)
        return {k: np.asarray(getattr(self, k))[i] for k in _ARRAYS}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the record to ``path`` (``.npz``; metadata as JSON inside)."""
        meta = {
            "metric": self.metric,
            "layers": list(self.layers),
            "beta": self.beta,
            "units": self.units,
        }
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        with open(path, "wb") as f:
            np.savez_compressed(f, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Reads a record written by :meth:`save`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"no result file at {path}")
        with np.load(path, allow_pickle=False) as data:
            try:
                meta = json.loads(str(data["__meta__"]))
                arrays = {k: data[k] for k in _ARRAYS}
            except KeyError as e:
                raise ValueError(f"{path} is not a saved result (missing {e})") from e
        if meta["metric"] != cls.metric:
            raise ValueError(
                f"{path} holds a {meta['metric']!r} result, not {cls.metric!r}"
            )
        return cls(
            layers=tuple(meta["layers"]),
            beta=float(meta["beta"]),
            units=int(meta["units"]),
            **arrays,
        )


def _register(cls):
    return jax.tree_util.register_dataclass(
        cls, data_fields=list(_ARRAYS), meta_fields=["layers", "beta", "units"]
    )


@_register
@dataclasses.dataclass(frozen=True)
class CIDResult(_Result):
    __doc__ = "Pixel-wise CID (paper Eq. 2-4). " + (_Result.__doc__ or "")
    metric: ClassVar[str] = "cid"


@_register
@dataclasses.dataclass(frozen=True)
class RUResult(_Result):
    __doc__ = (
        "Pixel-wise reconstruction uncertainty (paper Eq. 6-7); ``pixel`` is "
        "``Hhat_i`` at the solution. " + (_Result.__doc__ or "")
    )
    metric: ClassVar[str] = "ru"
