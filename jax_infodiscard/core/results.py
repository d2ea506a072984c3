"""Result records of the CID and RU solvers (registered dataclass pytrees)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
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
    "linearity",
    "mean_shift",
    "entropy_gain",
    "mean_se",
    "pixel_se",
    "reproducibility",
    "floor_share",
)
_ERROR_BARS = ("mean_se", "pixel_se", "reproducibility", "floor_share")
"""Fields added after format 2; a file without them loads with NaN there."""
REPRODUCIBILITY_THRESHOLD = 0.9
"""Below this ``reproducibility`` a map is not reproducible at its ``beta``.

Two runs with different keys are expected to correlate about this much; the
logits of trained convnets, where long solves agree only to 0.66-0.89
(DESIGN.md sec. 7), fall below it, the conv layers above. The map's
``mean`` with its ``mean_se`` still stands.
"""
_META = ("layers", "beta", "units", "method")
_FORMAT = 2


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
      lam: Lagrange multiplier ``lambda`` of Eq. 3 ``(L, B)``.
      budget: ``E||h(x') - f||^2 / delta_f^2`` at the solution, measured on
        held draws ``(L, B)``; ``beta`` when the solver met the budget.
      converged: ``|log(budget / beta)| < budget_tol`` ``(L, B)`` bool.
      passes: model passes per map ``(L, B)`` int (forward, VJP and
        forward+backward each count as one), diagnostics included.
      feature_scale: ``delta_f^2`` ``(L, B)``.
      capped: sigma entries at ``max_sigma`` (ignored by the layer) ``(L, B)``.
      linearity: true budget of the closed-form (linear-regime) sigma divided
        by ``beta`` ``(L, B)``: 1 when the layer is linear over the noise.
      mean_shift: share of ``E||h(x') - f||^2`` at the solution that is the
        squared mean shift ``||E h(x') - f||^2`` ``(L, B)``.
      entropy_gain: mean of ``pixel`` minus that of the closed form rescaled
        to the same true budget ``(L, B)``, nats per sigma entry.
      mean_se: Monte-Carlo standard error of ``mean`` ``(L, B)``, nats: the
        spread of ``mean`` over keys (DESIGN.md sec. 7).
      pixel_se: Monte-Carlo standard error of each entry of ``pixel`` (same
        shape), nats: the spread of the averaged ``dr/ds`` over the
        iterations, plus the level's error from the held draws.
      reproducibility: share of the map's variance over pixels that is signal
        rather than Monte-Carlo noise ``(L, B)``, in [0, 1]: the correlation
        two runs with different keys are expected to reach.
      floor_share: share of sigma entries whose averaged ``dr/ds`` sat on the
        solver's floor (``core.solver.on_floor``) ``(L, B)``: there the map
        reports a regulariser, not the network.
      beta: the budget the solver aimed at.
      units: input units per sigma entry (``C``, or 1 with ``per_channel``).
      method: the solver method (``"optimize"`` or ``"linear"``).
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
    linearity: Any
    mean_shift: Any
    entropy_gain: Any
    mean_se: Any
    pixel_se: Any
    reproducibility: Any
    floor_share: Any
    beta: float
    units: int
    method: str = "optimize"

    metric: ClassVar[str] = ""

    def to_numpy(self):
        """The same record with every array as a host ``numpy.ndarray``."""
        return dataclasses.replace(
            self, **{k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        )

    def reproducible(self, threshold: float = REPRODUCIBILITY_THRESHOLD) -> np.ndarray:
        """``(L, B)`` bool: maps whose ``reproducibility`` reaches ``threshold``.

        A map below it is not reproducible at this ``beta`` (another key gives
        a visibly different map); show it greyed out, or use
        ``method="linear"`` with exact column norms, the deterministic
        small-noise limit. Files without error bars (NaN) count as not
        reproducible.
        """
        return np.asarray(self.reproducibility) >= threshold

    def layer(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of one layer, ``{field: array without the layer axis}``."""
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; available: {list(self.layers)}")
        i = self.layers.index(name)
        return {k: np.asarray(getattr(self, k))[i] for k in _ARRAYS}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the record to ``path`` (``.npz``; metadata as JSON inside).

        The file is written atomically: a temporary file in the same folder,
        then ``os.replace``, so an interrupted save leaves the old file whole.
        """
        meta = {
            "format": _FORMAT,
            "metric": self.metric,
            "layers": list(self.layers),
            "beta": self.beta,
            "units": self.units,
            "method": self.method,
        }
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        buf = io.BytesIO()
        np.savez_compressed(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        _atomic_write(os.fspath(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Reads a record written by :meth:`save`.

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: a truncated, corrupt or inconsistent file, or a record of
            the other metric; the message names the file and the problem.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no result file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["__meta__"]))
                arrays = {k: data[k] for k in _ARRAYS if k not in _ERROR_BARS}
                for k in _ERROR_BARS:
                    arrays[k] = data[k] if k in data else None
        except KeyError as e:
            raise ValueError(f"{path} is not a saved result (missing {e})") from e
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ValueError(f"{path} is truncated or corrupt ({e})") from e
        if meta.get("metric") != cls.metric:
            raise ValueError(
                f"{path} holds a {meta.get('metric')!r} result, not {cls.metric!r}"
            )
        missing = [k for k in _META if k not in meta]
        if missing:
            raise ValueError(f"{path} is not a saved result (missing {missing})")
        for k in _ERROR_BARS:  # a file written before the error bars
            if arrays[k] is None:
                like = arrays["pixel" if k == "pixel_se" else "mean"]
                arrays[k] = np.full(like.shape, np.nan, np.float32)
        lead = (len(meta["layers"]), arrays["pixel"].shape[1])
        bad = [k for k, v in arrays.items() if v.shape[:2] != lead]
        if arrays["pixel"].ndim < 4 or bad:
            raise ValueError(
                f"{path} is inconsistent: fields {bad or ['pixel']} do not have the "
                f"(layers, images) = {lead} leading shape"
            )
        return cls(
            layers=tuple(meta["layers"]),
            beta=float(meta["beta"]),
            units=int(meta["units"]),
            method=str(meta["method"]),
            **arrays,
        )


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _register(cls):
    return jax.tree_util.register_dataclass(
        cls, data_fields=list(_ARRAYS), meta_fields=list(_META)
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
