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
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jax_infodiscard.types import PyTree

__all__ = [
    "all_steps",
    "latest_step",
    "read_metadata",
    "restore_checkpoint",
    "restore_extra",
    "save_checkpoint",
]

_STATE = "state"
_META = "metadata"
_EXTRA = "extra"
_ITEMS = (_STATE, _META, _EXTRA)


class _HideItemMetadataWarning(logging.Filter):
    """Drops orbax's warning that an item folder has no step metadata file.

    :func:`_restore_tree` reads one item's array metadata directly from its
    folder; the step metadata file lives one level up, so orbax warns on
    every restore although nothing is missing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


@contextlib.contextmanager
def _without_item_metadata_warning():
    logger = logging.getLogger("absl")
    hide = _HideItemMetadataWarning()
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


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
    with _manager(path, create=False) as mngr:
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
        ValueError: unreadable (corrupt) metadata.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    try:
        with _manager(path, create=False) as mngr:
            restored = mngr.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
        meta = restored[_META]
    except Exception as err:
        raise ValueError(
            f"checkpoint {path / str(step)} is corrupt: cannot read its metadata "
            f"({type(err).__name__}: {err})"
        ) from err
    if not isinstance(meta, dict):
        raise ValueError(
            f"checkpoint {path / str(step)} is corrupt: metadata is not a JSON object"
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
        with ocp.StandardCheckpointer() as checkpointer:
            with _without_item_metadata_warning():
                stored_tree = checkpointer.metadata(where).item_metadata.tree
        stored = _leaf_specs(stored_tree)
    except Exception as err:
        raise ValueError(
            f"checkpoint {where} is corrupt or unreadable: cannot read its array "
            f"metadata ({type(err).__name__}: {err})"
        ) from err
    wanted = _leaf_specs(abstract)
    if stored != wanted:
        raise ValueError(
            f"checkpoint {where} does not match the template (different "
            f"architecture or sizes?): {_describe_mismatch(stored, wanted)}"
        )
    try:
        with _manager(path, create=False) as mngr:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}),
            )
    except Exception as err:
        raise ValueError(
            f"checkpoint {where} is corrupt or unreadable ({type(err).__name__}: {err})"
        ) from err
    return _from_storable(restored[item], template)


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
        ValueError: corrupt checkpoint, or state that does not match the
            template (different architecture or shapes), or metadata that
            cannot rebuild the model.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    metadata = read_metadata(path, step=step)
    if model is None:
        if builder is None:
            builder = _registry_builder
        model = nnx.eval_shape(lambda: builder(metadata))
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be an nnx.Module, got {type(model).__name__}")
    graphdef, state = nnx.split(model)
    template = nnx.to_pure_dict(state)
    restored = _restore_tree(path, step, _STATE, template)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state), metadata


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
        ValueError: corrupt checkpoint or mismatching template.
    """
    path = _as_path(directory)
    step = _resolve_step(path, step)
    if not (path / str(step) / _EXTRA).is_dir():
        raise FileNotFoundError(f"checkpoint {path / str(step)} has no extra state")
    return _restore_tree(path, step, _EXTRA, template)


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
