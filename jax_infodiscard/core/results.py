"""Result records of the CID and RU solvers (registered dataclass pytrees)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, ClassVar

import jax
import numpy as np

from jax_infodiscard.io import write_bytes

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
_MAPS = ("pixel", "sigma", "pixel_se")
_ERROR_BARS = ("mean_se", "pixel_se", "reproducibility", "floor_share")
"""Fields added after format 2; a file without them loads with NaN there."""
REPRODUCIBILITY_THRESHOLD = 0.5
"""Below this ``reproducibility`` a map is not reproducible at its ``beta``:
less than half of its variance over pixels is signal, the rest Monte-Carlo
noise. The predicted ``reproducibility`` runs below the measured two-run
correlation far from linear (docs/accuracy.md), so the threshold sits between
the deep conv layers' predictions (reproducible maps) and the logits' (not
reproducible; docs/design.md, "Regime", Monte-Carlo error). The map's
``mean`` with its ``mean_se`` still stands.
"""
_META = ("layers", "beta", "units", "method")
FORMAT = 4
"""Version of the result file format: 4 adds the Monte-Carlo error bars
(``mean_se``, ``pixel_se``, ``reproducibility``, ``floor_share``), 3 the
arrays' checksum. Formats 2 and 3 are read with NaN error bars; format 1,
before the regime diagnostics, is not read.
"""


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
      feature_scale: ``delta_f^2`` ``(L, B)`` float64, in the units of the
        user's features (the solver works on features scaled by a power of
        two, so features of any size fit).
      capped: sigma entries at ``max_sigma`` (ignored by the layer) ``(L, B)``.
      linearity: true budget of the closed-form (linear-regime) sigma divided
        by ``beta`` ``(L, B)``: 1 when the layer is linear over the noise.
      mean_shift: share of ``E||h(x') - f||^2`` at the solution that is the
        squared mean shift ``||E h(x') - f||^2`` ``(L, B)``.
      entropy_gain: mean of ``pixel`` minus that of the closed form rescaled
        to the same true budget ``(L, B)``, nats per sigma entry.
      mean_se: Monte-Carlo standard error of ``mean`` ``(L, B)``, nats: the
        spread of ``mean`` over keys (docs/design.md, "Regime", Monte-Carlo error).
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

        The file carries the format version (:data:`FORMAT`) and a SHA-256
        checksum of its arrays, which :meth:`load` verifies. It is written
        atomically (:mod:`jax_infodiscard.io`): an interrupted save leaves
        the old file whole.

        Raises:
          IsADirectoryError: ``path`` is a folder.
          FileNotFoundError: ``path``'s folder does not exist.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"cannot save the result to {path}: it is a folder; give a file "
                f"name such as {os.path.join(path, self.metric + '.npz')}"
            )
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"cannot save the result to {path}: folder {folder} does not exist"
            )
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        meta = {
            "format": FORMAT,
            "metric": self.metric,
            "layers": list(self.layers),
            "beta": self.beta,
            "units": self.units,
            "method": self.method,
            "checksum": checksum(arrays),
            "written_by": _writer(),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Reads a record written by :meth:`save`, checking all of it.

        Checks: the format version (format 2, without checksum, is read as
        is; format 1 and files without a version are refused naming it; a
        newer format is refused naming both versions), the metric, that
        every field is there and none else, every field's full shape (a
        per-map value ``(L, B)`` or a map of ``pixel``'s shape), the checksum
        of the arrays, and that ``mean`` and ``total`` agree with ``pixel``.

        Raises:
          FileNotFoundError: no file at ``path``.
          ResultFileError: (a ``ValueError``) anything else; one message names
            the file and the problem.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no result file at {path}")
        meta, arrays = _read(path)
        version = meta.get("format")
        if version is None:
            raise ResultFileError(
                f"{path} has no format version: it was written by "
                "jax_infodiscard 0.1.0 before format 2 (no regime diagnostics) "
                f"or by another program; this version reads formats 2-{FORMAT}. "
                "Recompute it with this version"
            )
        if not isinstance(version, int) or isinstance(version, bool):
            raise ResultFileError(f"{path}: format version {version!r} is not a number")
        if version > FORMAT:
            raise ResultFileError(
                f"{path} has result format {version}, newer than format {FORMAT} "
                f"that this version ({_writer()}) reads; upgrade jax_infodiscard"
                + (
                    f" (written by {meta['written_by']})"
                    if "written_by" in meta
                    else ""
                )
            )
        if version < 2:
            raise ResultFileError(
                f"{path} has result format {version} (jax_infodiscard before the "
                f"regime diagnostics); this version reads formats 2-{FORMAT}. "
                "Recompute it with this version"
            )
        if meta.get("metric") != cls.metric:
            raise ResultFileError(
                f"{path} holds a {meta.get('metric')!r} result, not {cls.metric!r}"
            )
        missing = [k for k in _META if k not in meta]
        if missing:
            raise ResultFileError(f"{path} is not a saved result (missing {missing})")
        optional = _ERROR_BARS if version < 4 else ()
        absent = [k for k in _ARRAYS if k not in arrays and k not in optional]
        if absent:
            raise ResultFileError(
                f"{path} (format {version}) lacks the field(s) {absent}; recompute "
                "it with this version"
            )
        unknown = sorted(set(arrays) - set(_ARRAYS))
        if unknown:
            raise ResultFileError(f"{path} has unknown field(s) {unknown}")
        if version >= 3:
            if meta.get("checksum") != checksum(arrays):
                raise ResultFileError(
                    f"{path}: the arrays do not match the checksum written with "
                    "them (the file was changed or damaged after it was saved)"
                )
        for k in _ERROR_BARS:  # a file written before the error bars
            if k not in arrays:
                like = arrays["pixel" if k == "pixel_se" else "mean"]
                arrays[k] = np.full(like.shape, np.nan, np.float32)
        _check_shapes(path, arrays, len(meta["layers"]))
        _check_summaries(path, arrays, int(meta["units"]))
        return cls(
            layers=tuple(meta["layers"]),
            beta=float(meta["beta"]),
            units=int(meta["units"]),
            method=str(meta["method"]),
            **arrays,
        )


class ResultFileError(ValueError):
    """A result file that cannot be read back as it was written."""


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes (sorted by name).

    >>> checksum({"a": np.zeros(2, np.float32)})[:12]
    'd09d709a0bc0'
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _writer() -> str:
    from jax_infodiscard import __version__

    return f"jax_infodiscard {__version__}"


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays of a result file; every failure names the file."""
    if os.path.isdir(path):
        raise ResultFileError(f"{path} is a folder, not a result file (.npz)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # zip, zlib, pickle and header errors alike
        raise ResultFileError(f"{path} is truncated or corrupt ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ResultFileError(
            f"{path} is a single .npy array, not a saved result (.npz written by "
            "CIDResult.save or RUResult.save)"
        )
    try:
        with data:
            if "__meta__" not in data.files:
                raise ResultFileError(
                    f"{path} is an .npz archive but not a saved result (no metadata)"
                )
            meta = json.loads(str(data["__meta__"]))
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
    except ResultFileError:
        raise
    except Exception as e:
        raise ResultFileError(f"{path} is truncated or corrupt ({e})") from None
    if not isinstance(meta, dict):
        raise ResultFileError(f"{path}: its metadata is not a JSON object")
    return meta, arrays


def _check_shapes(path: str, arrays: dict[str, np.ndarray], num_layers: int) -> None:
    """Every field is ``(L, B)`` or a map of ``pixel``'s full shape."""
    pixel = arrays["pixel"]
    if pixel.ndim not in (4, 5) or pixel.shape[0] != num_layers:
        raise ResultFileError(
            f"{path} is inconsistent: pixel has shape {pixel.shape}, expected "
            f"({num_layers} layers, images, H, W[, C])"
        )
    lead = pixel.shape[:2]
    for name, a in arrays.items():
        if name in _MAPS:
            ok = a.shape == pixel.shape
            want = f"pixel's shape {pixel.shape}"
        else:
            ok = a.shape in (lead, pixel.shape)
            want = f"{lead} (layers, images) or pixel's shape {pixel.shape}"
        if not ok:
            raise ResultFileError(
                f"{path} is inconsistent: field {name!r} has shape {a.shape}, "
                f"expected {want}"
            )


def _check_summaries(path: str, arrays: dict[str, np.ndarray], units: int) -> None:
    """``mean`` and ``total`` are the mean and ``units`` x sum of ``pixel``."""
    pixel = arrays["pixel"].astype(np.float64)
    axes = tuple(range(2, pixel.ndim))
    for name, want in (
        ("mean", np.mean(pixel, axis=axes)),
        ("total", np.sum(pixel, axis=axes) * units),
    ):
        got = arrays[name].astype(np.float64)
        tol = 1e-5 * (1.0 + np.abs(want)) * (1 if name == "mean" else pixel[0, 0].size)
        off = np.abs(got - want) > tol
        off |= np.isnan(got) != np.isnan(want)
        if off.any():
            l, b = (int(i) for i in np.argwhere(off)[0])
            raise ResultFileError(
                f"{path} is inconsistent: {name}[{l}, {b}] = {got[l, b]:.6g} but "
                f"the pixel maps give {want[l, b]:.6g}"
            )


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
