"""Feature functions of your own model: Flax NNX, Flax Linen or a plain function.

Each adapter returns a :class:`jax.tree_util.Partial` mapping float images
``(B, H, W, C)`` to ``{layer: (B, ...)}``, the form :func:`jax_infodiscard.cid`
and :func:`jax_infodiscard.ru` take. The model parameters are the Partial's
bound argument, a pytree of arrays: passed to a jitted function they are
traced inputs, so a second model of the same architecture reuses the compiled
program instead of baking new constants into a new one.

* :func:`from_nnx`: an NNX module and the paths of the submodules whose
  outputs are the layers (``"block2/conv"``, ``"layers/0"``). The user's
  class is not changed: inside the feature function, on a private copy of the
  model (``nnx.merge``), each requested submodule gets a subclass of its own
  class whose ``__call__`` calls the original and records the output with
  ``Module.sow(nnx.Intermediate, ...)``; :func:`flax.nnx.capture` collects the
  records. Flax's ``nnx.capture(..., method_outputs=...)`` would record every
  method of every module, but it patches each module *class* in place, skips
  inherited ``__call__`` methods and, in flax 0.12.8, breaks a class that
  calls one of its ``staticmethod`` s through ``self`` (``TypeError``), so it is
  not used.
* :func:`from_linen`: a Linen module, its variables and submodule names,
  through ``Module.apply(..., capture_intermediates=filter)``.
* :func:`from_apply`: a plain ``apply_fn(params, images) -> dict``.

Inference mode: CID and RU need the features of one image to be independent
of the rest of the batch, so BatchNorm must use its running averages and
dropout must be off. :func:`from_nnx` makes an ``nnx.view`` of the model with
``use_running_average=True`` and ``deterministic=True`` (the user's model is
left as it is); keyword arguments such as ``train=False`` are passed to the
model call. :func:`from_linen` passes its keyword arguments to
``module.apply`` (e.g. ``train=False``) and runs with no mutable collection
other than the captured intermediates, so a module that would update its
``batch_stats`` raises flax's error instead of silently using batch
statistics.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    ...         self.head = nnx.Linear(4, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.head(jax.nn.relu(self.conv(x)).mean((1, 2)))
    >>> fn = from_nnx(Net(nnx.Rngs(0)), ["conv", "head"])
    >>> feats = jax.jit(lambda f, x: f(x))(fn, jnp.zeros((2, 8, 8, 3)))
    >>> {k: v.shape for k, v in feats.items()}
    {'conv': (2, 8, 8, 4), 'head': (2, 2)}
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx, traverse_util

from jax_infodiscard.validation import check_names

__all__ = ["adapter_advice", "from_apply", "from_linen", "from_nnx"]

_TAG = "__infodiscard_output__"


def _layer_map(layers: Any) -> tuple[tuple[str, str], ...]:
    """``((output name, submodule path), ...)`` from names or ``{name: path}``."""
    if isinstance(layers, Mapping):
        names = check_names("layers", tuple(layers))
        paths = check_names("layers values", tuple(layers.values()), unique=False)
        return tuple(zip(names, paths, strict=True))
    names = check_names("layers", layers)
    return tuple((n, n) for n in names)


def _hashable_kwargs(kwargs: Mapping[str, Any], name: str) -> tuple:
    items = tuple(sorted(kwargs.items()))
    try:
        hash(items)
    except TypeError as e:
        raise TypeError(
            f"{name} keyword arguments are compiled in as static values and must "
            f"be hashable (bools, numbers, strings): {e}"
        ) from e
    return items


# ------------------------------------------------------------- which adapter
_OUTPUT_FNS = ("model_fn", "logit_fn", "teacher_fn")
"""Argument names that take a function ``images -> model output``."""


def _is_linen(obj: Any) -> bool:
    linen = sys.modules.get("flax.linen")  # not imported: obj is no Linen module
    return linen is not None and isinstance(obj, linen.Module)


def _example_paths(model: nnx.Module, limit: int = 4) -> str:
    found = [p for p, _ in nnx.iter_modules(model) if p]
    paths = [_path_str(p) for p in sorted(found, key=len)]  # outermost first
    shown = ", ".join(repr(p) for p in paths[:limit])
    return shown + (", ..." if len(paths) > limit else "") if paths else "(none)"


def adapter_advice(obj: Any, name: str = "feature_fn") -> str | None:
    """Which call turns the model ``obj`` into the function ``name`` takes.

    Args:
        obj: what was passed where a function of the images was expected.
        name: the argument: ``"feature_fn"`` (``images -> {layer: array}``),
            or ``"model_fn"``, ``"logit_fn"``, ``"teacher_fn"``
            (``images -> model output``).

    Returns:
        One line naming the adapter to call, or ``None`` when ``obj`` is
        not a Flax module (NNX or Linen) or ``name`` is none of the above.

    >>> from flax import nnx
    >>> adapter_advice(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))  # doctest: +ELLIPSIS
    'feature_fn must be a function of the images, not the NNX module Linear ...'
    >>> adapter_advice(len) is None
    True
    """
    if name != "feature_fn" and name not in _OUTPUT_FNS:
        return None
    if isinstance(obj, nnx.Module):
        kind = "NNX"
        if name in _OUTPUT_FNS:
            call = "jax_infodiscard.models.model_fn(model)"
        elif hasattr(obj, "features") and hasattr(obj, "layer_names"):
            call = "jax_infodiscard.models.feature_fn(model)"
        else:
            call = (
                "jax_infodiscard.models.from_nnx(model, layers), layers among its "
                f"submodule paths {_example_paths(obj)}"
            )
    elif _is_linen(obj):
        kind = "Linen"
        call = (
            "jax.tree_util.Partial(module.apply, variables)"
            if name in _OUTPUT_FNS
            else "jax_infodiscard.models.from_linen(module, variables, layers)"
        )
    else:
        return None
    return (
        f"{name} must be a function of the images, not the {kind} module "
        f"{type(obj).__name__} itself: pass {call}"
    )


def _unknown(kind: str, missing: Sequence[str], available: Sequence[str]) -> ValueError:
    return ValueError(
        f"unknown {kind} path(s) {list(missing)}; available paths: "
        f"{', '.join(available) if available else '(none)'}"
    )


def _single_output(name: str, path: str, values: tuple) -> Any:
    if len(values) != 1:
        raise ValueError(
            f"layer {name!r}: the submodule at {path!r} was called {len(values)} "
            "times in one forward pass; a layer must be the output of exactly "
            "one call (use from_apply for shared modules)"
        )
    out = values[0]
    if not isinstance(out, jax.Array):
        raise TypeError(
            f"layer {name!r}: the submodule at {path!r} returns "
            f"{type(out).__name__}, not an array; name a submodule whose output "
            "is one array"
        )
    return out


# ---------------------------------------------------------------------- NNX
def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


@functools.cache
def _tapped(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` sows its output (cached per class)."""

    def __call__(self, *args, **kwargs):
        out = super(tapped, self).__call__(*args, **kwargs)
        self.sow(nnx.Intermediate, _TAG, out)
        return out

    tapped = type(cls.__name__, (cls,), {"__call__": __call__})
    tapped.__qualname__ = cls.__qualname__
    tapped.__module__ = cls.__module__
    return tapped


@dataclasses.dataclass(frozen=True)
class _NNXFeatures:
    """Hashable ``(state, images) -> {layer: array}`` for an NNX module.

    Attributes:
        graphdef: the static graph of the model in inference mode.
        layers: ``((output name, path parts), ...)``.
        kwargs: keyword arguments of the model call, as sorted items.
    """

    graphdef: Any
    layers: tuple[tuple[str, tuple], ...]
    kwargs: tuple = ()

    def __call__(self, state: Any, images: jax.Array) -> dict[str, jax.Array]:
        model = nnx.merge(self.graphdef, state)  # a private copy
        modules = dict(nnx.iter_modules(model))
        for path in {p for _, p in self.layers}:
            module = modules[path]
            module.__class__ = _tapped(type(module))
        _, captured = nnx.capture(model, nnx.Intermediate)(images, **dict(self.kwargs))
        values = {
            tuple(path[:-1]): var.get_value()
            for path, var in nnx.to_flat_state(captured)
            if path[-1] == _TAG
        }
        return {
            name: _single_output(name, _path_str(path), values.get(path, ()))
            for name, path in self.layers
        }


def _module_paths(model: nnx.Module, layers: Any) -> Any:
    """``layers`` with each submodule object replaced by its path in ``model``."""
    if isinstance(layers, nnx.Module):
        layers = [layers]
    if isinstance(layers, str | bytes) or not hasattr(layers, "__iter__"):
        return layers  # checked (and refused if need be) by _layer_map
    is_map = isinstance(layers, Mapping)
    items = list(layers.items()) if is_map else list(enumerate(layers))
    if not any(isinstance(v, nnx.Module) for _, v in items):
        return layers
    paths = {id(m): _path_str(p) for p, m in nnx.iter_modules(model) if p}

    def path(where: Any, value: Any) -> Any:
        if not isinstance(value, nnx.Module):
            return value
        if id(value) not in paths:
            what = "the model itself" if value is model else "not a submodule of it"
            raise ValueError(
                f"layers[{where!r}]: this {type(value).__name__} is {what}; pass "
                f"a submodule object or path, e.g. {_example_paths(model)}"
            )
        return paths[id(value)]

    resolved = [(k, path(k, v)) for k, v in items]
    return dict(resolved) if is_map else [v for _, v in resolved]


def from_nnx(
    model: nnx.Module,
    layers: str | nnx.Module | Sequence[str | nnx.Module] | Mapping[str, Any],
    **kwargs: Any,
) -> jax.tree_util.Partial:
    """Feature function of a Flax NNX module, at the outputs of its submodules.

    Args:
        model: an ``nnx.Module`` called as ``model(images, **kwargs)``; not
            modified.
        layers: submodule path(s), ``/``-separated attribute names and list
            indices as in ``nnx.iter_modules`` (``"block2/conv"``,
            ``"layers/0"``), or the submodule objects themselves
            (``model.block2.conv``; the layer is then named by its path); or
            ``{output name: path or submodule}`` to name them.
        **kwargs: static keyword arguments of the model call (e.g.
            ``train=False``); they must be hashable.

    Returns:
        A :class:`jax.tree_util.Partial` mapping images ``(B, H, W, C)`` to
        ``{layer: (B, ...)}``, the output of each named submodule's
        ``__call__``, with BatchNorm on running averages and dropout off
        (``nnx.view(use_running_average=True, deterministic=True)``). Its
        bound argument is the model state (``nnx.split``), traced under jit.

    Raises:
        TypeError: ``model`` is not a callable ``nnx.Module``, or a keyword
            argument is not hashable.
        ValueError: a path names no submodule (the message lists every
            submodule path), an object is not a submodule of ``model``, or
            duplicate/empty layer names. When called: a
            submodule called more than once, or never, in the forward pass.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> model = nnx.Sequential(
        ...     nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
        >>> fn = from_nnx(model, {"hidden": "layers/0", "out": "layers/1"})
        >>> {k: v.shape for k, v in fn(jnp.ones((5, 3))).items()}
        {'hidden': (5, 4), 'out': (5, 2)}
        >>> sorted(from_nnx(model, [model.layers[1]])(jnp.ones((5, 3))))
        ['layers/1']
    """
    if _is_linen(model):
        raise TypeError(
            f"from_nnx takes a Flax NNX module; for the Linen module "
            f"{type(model).__name__} call from_linen(module, variables, layers)"
        )
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(
            f"model must be a callable flax.nnx.Module, got {type(model).__name__}"
        )
    pairs = _layer_map(_module_paths(model, layers))
    view = nnx.view(
        model, use_running_average=True, deterministic=True, raise_if_not_found=False
    )
    paths = {_path_str(p): p for p, _ in nnx.iter_modules(view) if p}
    missing = [path for _, path in pairs if path not in paths]
    if missing:
        raise _unknown("submodule", missing, sorted(paths))
    graphdef, state = nnx.split(view)
    apply = _NNXFeatures(
        graphdef,
        tuple((name, paths[path]) for name, path in pairs),
        _hashable_kwargs(kwargs, "from_nnx"),
    )
    return jax.tree_util.Partial(apply, state)


# -------------------------------------------------------------------- Linen
def _linen_path(path: str) -> str:
    """``"layers/0/conv"`` -> ``"layers_0/conv"`` (Linen names list items so)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class _LinenFeatures:
    """Hashable ``(variables, images) -> {layer: array}`` for a Linen module.

    Attributes:
        module: the Linen module (a hashable dataclass).
        layers: ``((output name, Linen path), ...)``.
        kwargs: keyword arguments of ``module.apply``, as sorted items.
    """

    module: Any
    layers: tuple[tuple[str, str], ...]
    kwargs: tuple = ()

    def _apply(self, variables, images, capture):
        _, state = self.module.apply(
            variables,
            images,
            capture_intermediates=capture,
            mutable=["intermediates"],
            **dict(self.kwargs),
        )
        flat = traverse_util.flatten_dict(
            dict(state.get("intermediates", {})), keep_empty_nodes=False
        )
        return {
            "/".join(k[:-1]): v for k, v in flat.items() if k and k[-1] == "__call__"
        }

    def __call__(self, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
        targets = {path for _, path in self.layers}

        def wanted(module, method: str) -> bool:
            return method == "__call__" and "/".join(module.path) in targets

        values = self._apply(variables, images, wanted)
        missing = sorted(targets - set(values))
        if missing:
            every: list[str] = []  # every submodule path, found abstractly
            jax.eval_shape(
                lambda v, x: every.extend(self._apply(v, x, True)),
                variables,
                jax.ShapeDtypeStruct(images.shape, images.dtype),
            )
            raise _unknown("Linen submodule", missing, sorted(p for p in every if p))
        return {
            name: _single_output(name, path, values[path]) for name, path in self.layers
        }


def from_linen(
    module: Any,
    variables: Any,
    layers: str | Sequence[str] | Mapping[str, str],
    **kwargs: Any,
) -> jax.tree_util.Partial:
    """Feature function of a Flax Linen module, at the outputs of submodules.

    Args:
        module: a ``flax.linen.Module``.
        variables: its variables, e.g. ``module.init(key, x)`` (``params``
            and, with BatchNorm, ``batch_stats``).
        layers: submodule name path(s) as in ``variables["params"]``,
            ``/``-separated (``"Conv_0"``, ``"block1/conv"``); a list item may
            be written ``"layers/0"`` or ``"layers_0"``. Or ``{output name:
            path}``.
        **kwargs: static keyword arguments of ``module.apply`` (e.g.
            ``train=False`` so that BatchNorm uses ``batch_stats`` and dropout
            is off); they must be hashable.

    Returns:
        A :class:`jax.tree_util.Partial` mapping images ``(B, H, W, C)`` to
        ``{layer: (B, ...)}``, each the output of the submodule's
        ``__call__`` (captured with ``capture_intermediates``). Its bound
        argument is ``variables``, traced under jit.

    Raises:
        TypeError: ``module`` is not a Linen module or a keyword argument is
            not hashable.
        ValueError: duplicate or empty layer names; when called, a path that
            names no submodule called in the forward pass (the message lists
            every such path).
    """
    import flax.linen as nn  # Linen is imported only when asked for

    if not isinstance(module, nn.Module):
        raise TypeError(
            f"module must be a flax.linen.Module, got {type(module).__name__}"
        )
    pairs = tuple((name, _linen_path(path)) for name, path in _layer_map(layers))
    apply = _LinenFeatures(module, pairs, _hashable_kwargs(kwargs, "from_linen"))
    return jax.tree_util.Partial(apply, variables)


# -------------------------------------------------------------------- apply
@dataclasses.dataclass(frozen=True)
class _ApplyFeatures:
    """``(params, images) -> dict`` around a user function, checking the dict."""

    apply_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]]

    def __call__(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        out = self.apply_fn(params, images)
        if not isinstance(out, Mapping):
            raise TypeError(
                "apply_fn(params, images) must return a dict {layer: (B, ...)}, "
                f"got {type(out).__name__}"
            )
        return dict(out)


def from_apply(
    apply_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]], params: Any
) -> jax.tree_util.Partial:
    """Feature function of a plain ``apply_fn(params, images) -> {layer: array}``.

    Args:
        apply_fn: pure function of a parameter pytree and images
            ``(B, H, W, C)`` returning ``{layer: (B, ...)}``, batch-independent
            (inference mode). Pass the same function object each time: the
            compiled program is cached on it.
        params: the parameter pytree (traced under jit).

    Returns:
        A :class:`jax.tree_util.Partial` ``images -> {layer: (B, ...)}``.

    Raises:
        TypeError: ``apply_fn`` is not callable; when called, it returns
            something other than a mapping.

    Example:
        >>> import jax.numpy as jnp
        >>> fn = from_apply(lambda p, x: {"scaled": p["w"] * x}, {"w": 2.0})
        >>> float(fn(jnp.ones((1, 2, 2, 3)))["scaled"].sum())
        24.0
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
    return jax.tree_util.Partial(_ApplyFeatures(apply_fn), params)
