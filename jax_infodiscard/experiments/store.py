"""A chunked array store for data-set runs: Zarr (format 2) via tensorstore.

Why Zarr v2 through tensorstore:

* users open it without this library: ``zarr.open_group(path)`` (zarr-python
  2 or 3), ``xarray.open_zarr(path)`` (every array carries the
  ``_ARRAY_DIMENSIONS`` attribute xarray reads), or tensorstore itself;
* tensorstore is already installed (orbax depends on it), so the library
  needs no new dependency;
* results stream in chunk by chunk: a shard of images is one chunk along
  the image axis, written as its own files, so a shard is either fully
  written or rewritten on resume, and processes of a multi-process run
  write disjoint chunks of the same arrays without locks;
* the same code writes to a local disk or a shared file system (NFS,
  Filestore, GCS FUSE) that all hosts of a cluster see.

Layout of a store ``NAME.zarr/``: a Zarr group whose ``.zattrs`` hold the
metadata (layers, beta, units, data set, ...), and one array per field,
e.g. ``pixel`` ``(L, N, H, W) float32``, ``mean`` ``(L, N)``, ``converged``
``(L, N) bool``, ``label`` ``(N,) int32``; chunks are
``(1, shard_size, ...)``. Images not yet computed read as NaN (floats) or
0/False.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from jax_infodiscard import io

__all__ = ["ArrayStore", "dims_for", "disk_full", "is_disk_full"]

_COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1}
_DIMS = ("layer", "image", "y", "x", "channel")


def dims_for(ndim: int, *, per_layer: bool) -> list[str]:
    """xarray dimension names of an array (``_ARRAY_DIMENSIONS``)."""
    names = list(_DIMS) if per_layer else list(_DIMS[1:])
    return names[:ndim]


class ArrayStore:
    """A Zarr group of arrays written chunk by chunk.

    Args:
      path: the group folder (``.../cid.zarr``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._arrays: dict[str, ts.TensorStore] = {}

    def _spec(self, name: str) -> dict[str, Any]:
        return {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(self.path / name)},
        }

    def write_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Creates the group (``.zgroup``) and sets its attributes."""
        self.path.mkdir(parents=True, exist_ok=True)
        io.write_json(self.path / ".zgroup", {"zarr_format": 2})
        io.write_json(self.path / ".zattrs", dict(attrs))

    def attrs(self) -> dict[str, Any]:
        """The group's attributes (``{}`` before :meth:`write_attrs`)."""
        try:
            return json.loads((self.path / ".zattrs").read_text())
        except FileNotFoundError:
            return {}

    def array(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        dims: list[str],
    ) -> ts.TensorStore:
        """Opens array ``name``, creating it if missing.

        Safe when several processes create the same array at once: the
        metadata is written with a conditional write, and an existing array
        must have the same shape, dtype and chunks.
        """
        if name in self._arrays:
            return self._arrays[name]
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            fill: Any = "NaN"
        elif dtype.kind == "b":
            fill = False
        else:
            fill = 0
        spec = self._spec(name) | {
            "metadata": {
                "shape": list(shape),
                "chunks": list(chunks),
                "dtype": dtype.str,
                "compressor": _COMPRESSOR,
                "fill_value": fill,
                "order": "C",
            }
        }
        try:
            arr = ts.open(spec, create=True, open=True).result()
        except ValueError as e:
            if is_disk_full(e):
                raise disk_full(self.path / name) from e
            raise ValueError(
                f"array {self.path / name} exists with another shape, dtype or "
                f"chunking than this run needs ({str(e).splitlines()[0]}); "
                "start over with --overwrite"
            ) from None
        zattrs = self.path / name / ".zattrs"
        if not zattrs.exists():
            io.write_json(zattrs, {"_ARRAY_DIMENSIONS": dims})
        self._arrays[name] = arr
        return arr

    def names(self) -> list[str]:
        """Names of the arrays in the group."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if (p / ".zarray").exists())

    def write(self, target: ts.TensorStore, name: str, index, values) -> None:
        """Writes ``values`` into ``target[index]`` (array ``name``).

        Raises:
          OSError: ``ENOSPC`` when the disk is full, naming the array.
        """
        try:
            target[index].write(values).result()
        except ValueError as e:
            if is_disk_full(e):
                raise disk_full(self.path / name) from e
            raise

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of array ``name``."""
        return tuple(ts.open(self._spec(name), open=True).result().shape)

    def read(self, name: str, index=None) -> np.ndarray:
        """Array ``name`` (or ``name[index]``) as numpy."""
        arr = ts.open(self._spec(name), open=True).result()
        if index is not None:
            arr = arr[index]
        return np.asarray(arr.read().result())


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (an ``OSError`` or tensorstore's) is a full disk."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "No space left" in text


def disk_full(path: str | os.PathLike) -> OSError:
    """The error of a full disk while writing ``path``: names it and the fix."""
    return OSError(
        errno.ENOSPC,
        f"no space left on device while writing {path}: free some space (or "
        "choose another --out), then rerun the same command with --resume; "
        "finished shards are kept and checked",
        os.fspath(path),
    )
