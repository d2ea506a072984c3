"""Atomic file writes: a reader sees the old file or the new one, never half.

Every writer here writes into a temporary file in the destination's folder,
flushes it to disk (``fsync``) and then renames it over the destination with
:func:`os.replace`, which is atomic on POSIX and Windows file systems. A
process killed at any moment (``kill -9``, power loss after the ``fsync``)
leaves either the previous file intact or the complete new one; at worst a
stray hidden temporary file (``.NAME.*.tmp``) remains next to it.

The temporary file gets the permissions a plain ``open(path, "w")`` would
give (``0o666`` minus the umask), not the ``0o600`` of :mod:`tempfile`.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(folder / "a.json", {"x": np.float32(0.5), "bad": float("nan")})
    >>> (folder / "a.json").read_text()
    '{\\n  "x": 0.5,\\n  "bad": null\\n}\\n'
    >>> write_npz(folder / "a.npz", w=np.arange(3))
    >>> np.load(folder / "a.npz")["w"].tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "atomic_open",
    "atomic_path",
    "jsonable",
    "write_bytes",
    "write_figure",
    "write_json",
    "write_npz",
    "write_text",
]

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: pathlib.Path) -> None:
    """Flushes the rename itself to disk where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[pathlib.Path]:
    """A temporary path to write; it replaces ``path`` when the block succeeds.

    For writers that insist on a file name (``Figure.savefig``,
    ``CIDResult.save``). The temporary name ends with ``path``'s suffix, so
    writers that append one (``np.savez``) keep it. If the block raises, the
    temporary file is removed and ``path`` is untouched.

    Args:
      path: destination file; its folder must exist.

    Yields:
      The temporary path (same folder as ``path``, hidden name).
    """
    dest = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}"
    )
    os.close(fd)
    tmp_path = pathlib.Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", **kwargs) -> Iterator[Any]:
    """``open(path, mode)`` for writing, committed atomically on success.

    Args:
      path: destination file; its folder must exist.
      mode: ``"wb"`` or ``"w"`` (text; ``kwargs`` such as ``encoding`` and
        ``newline`` are passed to :func:`open`).

    Yields:
      The open file object of the temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def jsonable(value: Any, *, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with numpy/JAX scalars and arrays, paths and tuples made JSON.

    JSON has no NaN or infinity: non-finite floats become ``None`` (``null``).
    Arrays become nested lists.

    Args:
      value: a nest of dicts, lists, tuples, scalars and arrays.
      fallback: applied to any other object (e.g. ``repr``); by default such
        an object raises ``TypeError``.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, fallback=fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, fallback=fallback) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if hasattr(value, "__array__"):
        arr = np.asarray(value)
        return jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if fallback is not None:
        return fallback(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Writes ``obj`` as strict JSON (see :func:`jsonable`) atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    write_text(path, text + "\n")


def write_npz(path: PathLike, *, compressed: bool = True, **arrays: Any) -> None:
    """Writes ``arrays`` as an ``.npz`` archive atomically.

    Args:
      path: destination (``.npz``).
      compressed: ``np.savez_compressed`` (default) or ``np.savez``.
      **arrays: name -> array-like.
    """
    save = np.savez_compressed if compressed else np.savez
    with atomic_open(path, "wb") as fh:
        save(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def write_figure(path: PathLike, figure: Any, **savefig_kwargs: Any) -> None:
    """Writes a matplotlib figure atomically (format from ``path``'s suffix).

    Args:
      path: destination, e.g. ``.png``.
      figure: a ``matplotlib.figure.Figure``.
      **savefig_kwargs: passed to ``Figure.savefig`` (``dpi``, ...).
    """
    fmt = pathlib.Path(path).suffix.lstrip(".") or "png"
    buf = io.BytesIO()
    figure.savefig(buf, format=fmt, **savefig_kwargs)
    write_bytes(path, buf.getvalue())
