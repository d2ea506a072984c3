"""Orbax checkpoints of Flax NNX modules with a JSON metadata record.

A checkpoint directory holds one sub-directory per integer ``step`` (for
training: the number of completed epochs). Each step stores three items:

* ``state``: every variable of the module (parameters, BatchNorm statistics,
  ...) as a nested dict of arrays (``nnx.to_pure_dict``); PRNG key arrays are
  stored as their raw ``uint32`` key data and re-wrapped on restore;
* ``metadata``: a JSON object chosen by the caller (model name, number of
  classes, image size, accuracy, ...);
* ``extra`` (optional): any pytree of arrays, e.g. an optax optimizer state,
  read back with :func:`restore_extra`.

After orbax has finished a step, :func:`save_checkpoint` records the size and
CRC-32 of every file of the step folder in ``_FILE_DIGESTS.json`` (written
atomically; cheap beside orbax's own writing). Every read checks the
files it needs against that record first, so a truncated, deleted or altered
file is reported as a one-line :class:`CorruptCheckpointError` before orbax
touches it (orbax itself answers such files with pages of TensorStore
specifications and asyncio tracebacks). Steps
written before this record existed are read without the check; their read
errors are shortened to one line too.

:func:`restore_newest_intact` restores the newest step that reads back intact
and warns in one line (:class:`CheckpointFallbackWarning`) about the newer
corrupt steps it skipped; training resume and the RU decoder cache use it.

Example:
    >>> import tempfile
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> directory = tempfile.mkdtemp()
    >>> _ = save_checkpoint(directory, model, metadata={"name": "lin"}, step=4)
    >>> latest_step(directory)
    4
    >>> restored, meta = restore_checkpoint(
    ...     directory, nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    >>> meta["name"]
    'lin'
    >>> bool((restored.kernel[...] == model.kernel[...]).all())
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import warnings
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jax_infodiscard.io import write_text
from jax_infodiscard.types import PyTree

__all__ = [
    "CheckpointFallbackWarning",
    "CorruptCheckpointError",
    "Restored",
    "all_steps",
    "delete_steps",
    "describe_skipped",
    "latest_step",
    "read_metadata",
    "restore_checkpoint",
    "restore_extra",
    "restore_newest_intact",
    "save_checkpoint",
    "set_aside_steps",
    "verify_checkpoint",
]

_STATE = "state"
_META = "metadata"
_EXTRA = "extra"
_ITEMS = (_STATE, _META, _EXTRA)
_DIGESTS = "_FILE_DIGESTS.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint step whose files cannot be read back as they were written.

    Attributes:
        step: the step (``None`` when unknown).
        reason: what is wrong, one line (e.g. ``"state/d/1a2b: 600 of 1323
            bytes"``).
    """

    def __init__(self, path: pathlib.Path, step: int | None, reason: str):
        self.path, self.step, self.reason = path, step, reason
        super().__init__(f"checkpoint {path} is corrupt: {reason}")


class CheckpointFallbackWarning(UserWarning):
    """Newer corrupt steps were skipped in favour of an older intact one."""


class _HideItemMetadataWarning(logging.Filter):
    """Drops orbax's warning that an item folder has no step metadata file.

    :func:`_restore_tree` reads one item's array metadata directly from its
    folder; the step metadata file lives one level up, so orbax warns on
    every restore although nothing is missing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


class _HideOrbaxLogs(logging.Filter):
    """Drops orbax's log records below CRITICAL while a read is attempted.

    A failed read is reported once, as a :class:`CorruptCheckpointError`;
    orbax would add its own warnings and errors for each file it tried.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def _without_item_metadata_warning():
    with _filtered_absl(_HideItemMetadataWarning()):
        yield


@contextlib.contextmanager
def _quiet_orbax():
    with _filtered_absl(_HideOrbaxLogs()):
        yield


@contextlib.contextmanager
def _filtered_absl(hide: logging.Filter):
    logger = logging.getLogger("absl")
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


def _one_line(err: BaseException, limit: int = 200) -> str:
    """``"Type: first line of the message"``, at most ``limit`` characters."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_path(directory: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(directory).expanduser().resolve()


def _manager(
    directory: pathlib.Path, *, create: bool, max_to_keep: int | None = None
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=_ITEMS)


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _to_storable(tree: PyTree) -> PyTree:
    """Replaces typed PRNG keys by their ``uint32`` key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: PyTree) -> PyTree:
    """``ShapeDtypeStruct`` template of ``tree`` as stored on disk."""

    # Restore onto this process's first device, not onto the device recorded
    # at save time (which another process of a multi-process run may own).
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        if _is_key(x):
            shape = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=local)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=local)

    return jax.tree.map(leaf, tree)


def _from_storable(restored: PyTree, template: PyTree) -> PyTree:
    """Re-wraps key data where ``template`` holds typed PRNG keys."""

    def leaf(x: Any, t: Any) -> Any:
        if not _is_key(t):
            return x
        if isinstance(t, jax.Array):
            impl = jax.random.key_impl(t)
        else:  # ShapeDtypeStruct from nnx.eval_shape: the impl lives on the dtype
            impl = t.dtype._impl
        return jax.random.wrap_key_data(x, impl=impl)

    return jax.tree.map(leaf, restored, template)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON")


def _clean_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), default=_json_default))
    except TypeError as err:
        raise ValueError(f"metadata is not JSON-serialisable: {err}") from err


def all_steps(directory: str | pathlib.Path) -> tuple[int, ...]:
    """Steps saved under ``directory``, ascending.

    Args:
        directory: checkpoint directory.

    Returns:
        Tuple of ints; empty when the directory is missing or holds no
        finished checkpoint.
    """
    path = _as_path(directory)
    if not path.is_dir():
        return ()
    with _quiet_orbax(), _manager(path, create=False) as mngr:
        return tuple(sorted(int(s) for s in mngr.all_steps()))


def latest_step(directory: str | pathlib.Path) -> int | None:
    """Largest step saved under ``directory``.

    Args:
        directory: checkpoint directory.

    Returns:
        The step (int), or ``None`` when the directory is missing or empty.
    """
    steps = all_steps(directory)
    return steps[-1] if steps else None


def _crc32(path: pathlib.Path) -> int:
    """CRC-32 of a file's bytes (catches corruption; much faster than
    SHA-256)."""
    value = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            value = zlib.crc32(chunk, value)
    return value


def _write_digests(step_dir: pathlib.Path) -> None:
    """Records ``{relative path: [bytes, crc32]}`` of every file of a step."""
    files = {
        p.relative_to(step_dir).as_posix(): [p.stat().st_size, _crc32(p)]
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and not p.name.startswith((_DIGESTS, f".{_DIGESTS}"))
    }
    write_text(step_dir / _DIGESTS, json.dumps({"crc32": files}))


def verify_checkpoint(
    directory: str | pathlib.Path, step: int, *, under: str = ""
) -> bool:
    """Checks the files of one step against the digests saved with it.

    Args:
        directory: checkpoint directory.
        step: the step to check.
        under: only check the files below this sub-folder of the step (e.g.
            ``"metadata"``); ``""`` checks every file.

    Returns:
        ``True`` when every recorded file is present with its size and
        CRC-32; ``False`` when the step has no digest record (written by an
        older version: nothing to check against).

    Raises:
        FileNotFoundError: the step folder does not exist.
        CorruptCheckpointError: a missing, truncated or altered file, or an
            unreadable digest record (the message names the file).
    """
    path = _as_path(directory)
    step_dir = path / str(step)
    if not step_dir.is_dir():
        raise FileNotFoundError(f"no checkpoint for step {step} in {path}")
    record_path = step_dir / _DIGESTS
    if not record_path.exists():
        return False
    try:
        record = json.loads(record_path.read_text())["crc32"]
        items = [(str(k), int(v[0]), int(v[1])) for k, v in record.items()]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CorruptCheckpointError(
            step_dir, step, f"its file digest record is unreadable ({_one_line(err)})"
        ) from err
    prefix = f"{under.strip('/')}/" if under else ""
    for rel, size, digest in items:
        if not rel.startswith(prefix):
            continue
        file = step_dir / rel
        if not file.is_file():
            raise CorruptCheckpointError(step_dir, step, f"{rel} is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CorruptCheckpointError(
                step_dir, step, f"{rel} has {actual} of its {size} bytes"
            )
        if _crc32(file) != digest:
            raise CorruptCheckpointError(
                step_dir, step, f"{rel} does not match its recorded CRC-32"
            )
    return True


def save_checkpoint(
    directory: str | pathlib.Path,
    model: nnx.Module,
    *,
    metadata: Mapping[str, Any],
    step: int = 0,
    extra: PyTree | None = None,
    max_to_keep: int | None = None,
) -> pathlib.Path:
    """Saves every variable of ``model`` plus a JSON metadata record.

    Saving a step that already exists replaces it.

    Args:
        directory: checkpoint directory (created if missing).
        model: the NNX module whose full state is saved.
        metadata: JSON-serialisable mapping (numpy scalars/arrays are turned
            into lists); use it for what is needed to rebuild the model, e.g.
            ``{"model": "resnet20", "num_classes": 10, "image_size": 32}``.
        step: non-negative integer step (e.g. completed epochs).
        extra: optional pytree of arrays saved alongside (optimizer state).
        max_to_keep: keep only this many most recent steps (``None``: all).

    Returns:
        Path of the step directory that was written.

    Raises:
        ValueError: negative step, non-module model or non-JSON metadata.
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be an nnx.Module, got {type(model).__name__}")
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    step = int(step)
    meta = _clean_metadata(metadata)
    path = _as_path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = _to_storable(nnx.to_pure_dict(nnx.state(model)))
    items: dict[str, Any] = {
        _STATE: ocp.args.StandardSave(state),
        _META: ocp.args.JsonSave(meta),
    }
    if extra is not None:
        items[_EXTRA] = ocp.args.StandardSave(_to_storable(extra))
    with _manager(path, create=True, max_to_keep=max_to_keep) as mngr:
        if step in mngr.all_steps():
            shutil.rmtree(path / str(step))
            mngr.reload()
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
        mngr.wait_until_finished()
    if (path / str(step)).is_dir():  # max_to_keep may have dropped it already
        _write_digests(path / str(step))
    return path / str(step)


def _resolve_step(path: pathlib.Path, step: int | None) -> int:
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    steps = all_steps(path)
    if not steps:
        raise FileNotFoundError(f"no checkpoint found in {path}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {path}; available steps: {steps}"
        )
    return int(step)


def read_metadata(
    directory: str | pathlib.Path, *, step: int | None = None
) -> dict[str, Any]:
    """Reads only the JSON metadata of a checkpoint.

    Args:
        directory: checkpoint directory.
        step: step to read; ``None`` for the latest.

    Returns:
        The metadata dict given to :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: missing directory or step.
        CorruptCheckpointError: unreadable (corrupt) metadata.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    return _read_metadata(path, step)


def _read_metadata(path: pathlib.Path, step: int) -> dict[str, Any]:
    verify_checkpoint(path, step, under=_META)
    try:
        with _quiet_orbax(), _manager(path, create=False) as mngr:
            restored = mngr.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
        meta = restored[_META]
    except Exception as err:
        raise CorruptCheckpointError(
            path / str(step), step, f"cannot read its metadata ({_one_line(err)})"
        ) from err
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(
            path / str(step), step, "its metadata is not a JSON object"
        )
    return meta


def _key_str(entry: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_specs(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{'a/b/0': (shape, dtype)}`` for every leaf of ``tree``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(_key_str(k) for k in path): (
            tuple(leaf.shape),
            np.dtype(leaf.dtype).name,
        )
        for path, leaf in flat
    }


def _describe_mismatch(stored: dict, wanted: dict) -> str:
    problems = [f"missing in checkpoint: {k}" for k in wanted if k not in stored]
    problems += [f"unexpected in checkpoint: {k}" for k in stored if k not in wanted]
    problems += [
        f"{k}: checkpoint has shape {stored[k][0]} {stored[k][1]}, "
        f"template has {wanted[k][0]} {wanted[k][1]}"
        for k in wanted
        if k in stored and stored[k] != wanted[k]
    ]
    shown = "; ".join(problems[:6])
    more = f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""
    return shown + more


def _restore_tree(path: pathlib.Path, step: int, item: str, template: PyTree) -> Any:
    """Checks the stored structure against ``template``, then restores it."""
    where = path / str(step) / item
    abstract = _abstract(template)
    try:
        with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
            stored_tree = checkpointer.metadata(where).item_metadata.tree
        stored = _leaf_specs(stored_tree)
    except Exception as err:
        raise CorruptCheckpointError(
            path / str(step),
            step,
            f"cannot read the array metadata of {item!r} ({_one_line(err)})",
        ) from err
    wanted = _leaf_specs(abstract)
    if stored != wanted:
        raise ValueError(
            f"checkpoint {where} does not match the template (different "
            f"architecture or sizes?): {_describe_mismatch(stored, wanted)}"
        )
    try:
        with _quiet_orbax(), _manager(path, create=False) as mngr:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}),
            )
    except Exception as err:
        raise CorruptCheckpointError(
            path / str(step), step, f"cannot read {item!r} ({_one_line(err)})"
        ) from err
    return _from_storable(restored[item], template)


def _template(
    model: nnx.Module | None,
    builder: Callable[[dict[str, Any]], nnx.Module] | None,
    metadata: dict[str, Any],
) -> nnx.Module:
    if model is None:
        model = nnx.eval_shape(lambda: (builder or _registry_builder)(metadata))
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be an nnx.Module, got {type(model).__name__}")
    return model


def _load_step(
    path: pathlib.Path,
    step: int,
    model: nnx.Module | None,
    builder: Callable[[dict[str, Any]], nnx.Module] | None,
    extra: PyTree | None,
    check: Callable[[dict[str, Any]], None] | None,
) -> tuple[nnx.Module, dict[str, Any], PyTree | None]:
    """Verifies, then reads one step: ``(model, metadata, extra or None)``."""
    verify_checkpoint(path, step)
    metadata = _read_metadata(path, step)
    if check is not None:
        check(metadata)
    graphdef, state = nnx.split(_template(model, builder, metadata))
    restored = _restore_tree(path, step, _STATE, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restored)
    restored_extra = None
    if extra is not None:
        if not (path / str(step) / _EXTRA).is_dir():
            raise CorruptCheckpointError(
                path / str(step), step, f"the {_EXTRA!r} folder is missing"
            )
        restored_extra = _restore_tree(path, step, _EXTRA, extra)
    return nnx.merge(graphdef, state), metadata, restored_extra


def restore_checkpoint(
    directory: str | pathlib.Path,
    model: nnx.Module | None = None,
    *,
    step: int | None = None,
    builder: Callable[[dict[str, Any]], nnx.Module] | None = None,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Restores a module saved by :func:`save_checkpoint`.

    The template ``model`` is only used for its structure (it may be an
    abstract module from ``nnx.eval_shape``) and is not modified; a new
    module holding the restored arrays is returned.

    Args:
        directory: checkpoint directory.
        model: template module with the same structure as the saved one. When
            ``None`` the module is rebuilt from the metadata, with ``builder``
            if given, else with the model registry
            (:func:`jax_infodiscard.models.create_model` called with
            ``metadata["model"]``, ``num_classes``, ``image_size`` and
            ``model_kwargs``).
        step: step to restore; ``None`` for the latest.
        builder: ``builder(metadata) -> nnx.Module`` used when ``model`` is
            ``None``; only its structure is used (it runs under
            ``nnx.eval_shape``, so no parameters are initialised).

    Returns:
        ``(model, metadata)``.

    Raises:
        FileNotFoundError: missing directory, empty directory or missing step.
        CorruptCheckpointError: a corrupt step (a missing, truncated or
            unreadable file); :func:`restore_newest_intact` falls back to an
            older step instead.
        ValueError: state that does not match the template (different
            architecture or shapes), or metadata that cannot rebuild the model.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    model, metadata, _ = _load_step(path, step, model, builder, None, None)
    return model, metadata


def restore_extra(
    directory: str | pathlib.Path, template: PyTree, *, step: int | None = None
) -> PyTree:
    """Restores the ``extra`` pytree saved with :func:`save_checkpoint`.

    Args:
        directory: checkpoint directory.
        template: pytree with the structure, shapes and dtypes of the saved
            ``extra`` (e.g. ``tx.init(params)``); arrays or
            ``jax.ShapeDtypeStruct`` leaves.
        step: step to restore; ``None`` for the latest.

    Returns:
        A pytree with the structure of ``template``.

    Raises:
        FileNotFoundError: missing directory/step, or no ``extra`` saved.
        CorruptCheckpointError: corrupt files.
        ValueError: mismatching template.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    if not (path / str(step) / _EXTRA).is_dir():
        raise FileNotFoundError(f"checkpoint {path / str(step)} has no extra state")
    verify_checkpoint(path, step, under=_EXTRA)
    return _restore_tree(path, step, _EXTRA, template)


class Restored(NamedTuple):
    """What :func:`restore_newest_intact` found.

    Attributes:
        step: the step restored.
        model: the restored module.
        metadata: its metadata.
        extra: the restored ``extra`` pytree (``None`` unless asked for).
        skipped: ``(step, reason)`` of the newer corrupt steps passed over.
    """

    step: int
    model: nnx.Module
    metadata: dict[str, Any]
    extra: PyTree | None
    skipped: tuple[tuple[int, str], ...]


def _reasons(skipped) -> str:
    if len(skipped) == 1:
        return skipped[0][1]
    return "; ".join(f"step {s}: {reason}" for s, reason in skipped)


def describe_skipped(
    directory: str | pathlib.Path, skipped: tuple[tuple[int, str], ...] | list
) -> str:
    """One line naming the corrupt steps and why, e.g. for a warning.

    >>> describe_skipped("/ck", [(3, "state/d/ab is missing")])
    'checkpoint step 3 in /ck is corrupt (state/d/ab is missing)'
    """
    steps = ", ".join(str(s) for s, _ in skipped)
    reasons = _reasons(skipped)
    noun = "step" if len(skipped) == 1 else "steps"
    verb = "is" if len(skipped) == 1 else "are"
    return f"checkpoint {noun} {steps} in {directory} {verb} corrupt ({reasons})"


def restore_newest_intact(
    directory: str | pathlib.Path,
    model: nnx.Module | None = None,
    *,
    builder: Callable[[dict[str, Any]], nnx.Module] | None = None,
    extra: PyTree | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    warn: bool = True,
) -> Restored:
    """Restores the newest step that reads back intact, skipping corrupt ones.

    Steps are tried newest first. A step is corrupt when a file is missing,
    truncated or altered (see :func:`verify_checkpoint`) or orbax cannot read
    it. When newer steps were skipped, one
    :class:`CheckpointFallbackWarning` line names them and the reason.

    Args:
        directory: checkpoint directory.
        model: template module, as for :func:`restore_checkpoint`.
        builder: as for :func:`restore_checkpoint`.
        extra: template of the ``extra`` pytree to restore from the same step
            (``None``: do not restore it); a step without it is corrupt.
        check: called with the metadata of each step before its arrays are
            read; a ``ValueError`` it raises (e.g. "another run") propagates
            instead of falling back.
        warn: emit the warning (callers that say more themselves pass
            ``False`` and use :func:`describe_skipped`).

    Returns:
        A :class:`Restored`.

    Raises:
        FileNotFoundError: missing or empty directory.
        CorruptCheckpointError: every step is corrupt (``err.reason`` lists
            them).
        ValueError: a template mismatch, or what ``check`` raises.
    """
    path = _as_path(directory)
    steps = all_steps(path)
    if not steps:
        _resolve_step(path, None)  # raises the FileNotFoundError
    skipped: list[tuple[int, str]] = []
    for step in reversed(steps):
        try:
            restored, metadata, restored_extra = _load_step(
                path, step, model, builder, extra, check
            )
        except CorruptCheckpointError as err:
            skipped.append((step, err.reason))
            continue
        if skipped and warn:
            warnings.warn(
                f"{describe_skipped(path, skipped)}; using step {step}",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return Restored(step, restored, metadata, restored_extra, tuple(skipped))
    raise CorruptCheckpointError(
        path, None, f"no step reads back intact ({_reasons(skipped)})"
    )


def set_aside_steps(
    directory: str | pathlib.Path, steps: tuple[int, ...] | list[int]
) -> list[str]:
    """Renames step folders to ``<step>.corrupt-<n>``, out of orbax's sight.

    Used for corrupt steps that a resumed run is about to write again: orbax
    no longer lists them (so ``max_to_keep`` cannot prefer them to new steps),
    and their files stay on disk for inspection.

    Returns:
        The new folder names.
    """
    path = _as_path(directory)
    names = []
    for step in steps:
        n = 0
        while (path / f"{step}.corrupt-{n}").exists():
            n += 1
        os.replace(path / str(step), path / f"{step}.corrupt-{n}")
        names.append(f"{step}.corrupt-{n}")
    return names


def delete_steps(
    directory: str | pathlib.Path, steps: tuple[int, ...] | list[int]
) -> None:
    """Deletes the given step folders (missing ones are ignored)."""
    path = _as_path(directory)
    for step in steps:
        shutil.rmtree(path / str(step), ignore_errors=True)


def _registry_builder(metadata: dict[str, Any]) -> nnx.Module:
    from jax_infodiscard.models import create_model

    name = metadata.get("model")
    if not isinstance(name, str):
        raise ValueError(
            "cannot rebuild the model: metadata has no 'model' name; pass a "
            "template model or builder= to restore_checkpoint"
        )
    return create_model(
        name,
        num_classes=int(metadata.get("num_classes", 10)),
        image_size=int(metadata.get("image_size", 32)),
        rngs=nnx.Rngs(0),
        **dict(metadata.get("model_kwargs", {})),
    )
