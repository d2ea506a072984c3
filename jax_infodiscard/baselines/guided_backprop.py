"""Guided backpropagation (Springenberg et al., 2015) for arbitrary JAX models.

Guided backpropagation changes the backward pass of every ReLU: the gradient
passes only where both the ReLU's input is positive (as for the ordinary
gradient) *and* the incoming gradient is positive.

Because ``model_fn`` is an arbitrary function, the ReLUs are found in its
jaxpr: ``model_fn`` is traced with :func:`jax.make_jaxpr` and re-evaluated by a
small interpreter that replaces every ``max(x, 0)`` equation (either operand
order; the zero may be a literal, a zero constant or a broadcast of one) by a
:func:`jax.custom_vjp` guided ReLU. Sub-jaxprs of ``jit``/``pjit``,
``closed_call``, ``remat``/``checkpoint`` and of custom-derivative calls that
contain a ReLU (``jax.nn.relu`` is a ``custom_jvp`` around ``max``) are
interpreted recursively; all other equations, custom-derivative calls without
a ReLU included (their own rules are kept), are bound unchanged. ReLUs inside
``scan``/``while``/``cond`` bodies are *not* replaced: a warning is issued.

The map follows the gradient-saliency convention ``max_c |.|``; the guided
gradient is kept signed in ``extras["gradients"]``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["explain", "guided_fn"]

MODEL_CALLS = 1

_CALL_PRIMITIVES = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "remat2"}
)
_CUSTOM_PRIMITIVES = frozenset(
    {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
)
_ZERO_PRESERVING = frozenset(
    {
        "broadcast_in_dim",
        "convert_element_type",
        "reshape",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
    }
)
_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """``max(x, 0)`` whose VJP is ``g * (x > 0) * (g > 0)``."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def _is_zero_value(value: Any) -> bool:
    try:
        arr = np.asarray(value)
    except (
        jax.errors.TracerArrayConversionError,
        jax.errors.ConcretizationTypeError,
        TypeError,
    ):
        return False
    return arr.dtype != object and arr.size > 0 and not np.any(arr)


def _sub_jaxpr(eqn) -> tuple[Any, Sequence[Any]] | None:
    """The ``(jaxpr, consts)`` an equation calls, if it calls exactly one."""
    for name in _JAXPR_PARAMS:
        sub = eqn.params.get(name)
        if isinstance(sub, jex_core.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jex_core.Jaxpr):
            return sub, ()
    return None


def _relu_operand(eqn, zeros: set) -> int | None:
    """Index of the non-zero operand of a ``max(x, 0)`` equation, else None."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return None
    flags = [_atom_is_zero(v, zeros) for v in eqn.invars]
    if flags == [False, True]:
        return 0
    if flags == [True, False]:
        return 1
    return None


def _atom_is_zero(atom, zeros: set) -> bool:
    if isinstance(atom, jex_core.Literal):
        return _is_zero_value(atom.val)
    return atom in zeros


def _contains_relu(jaxpr, consts: Sequence[Any] = ()) -> bool:
    """Whether a jaxpr (or any jaxpr nested in its equations) has a ReLU."""
    zeros = {
        v for v, c in zip(jaxpr.constvars, consts, strict=False) if _is_zero_value(c)
    }
    for eqn in jaxpr.eqns:
        if _relu_operand(eqn, zeros) is not None:
            return True
        if eqn.primitive.name in _ZERO_PRESERVING and all(
            _atom_is_zero(v, zeros) for v in eqn.invars
        ):
            zeros.update(eqn.outvars)
        if any(_contains_relu(*sub) for sub in _nested_jaxprs(eqn)):
            return True
    return False


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        invals = [*subfuns, *invals]
    with eqn.ctx.manager if hasattr(eqn, "ctx") else contextlib.nullcontext():
        return eqn.primitive.bind(*invals, **params)


def _eval_guided(jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """Evaluates ``jaxpr`` with every ReLU replaced by :func:`guided_relu`."""
    env: dict[Any, Any] = {}
    zeros: set = set()

    def read(atom):
        return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
        if _is_zero_value(value):
            zeros.add(var)
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        relu_at = _relu_operand(eqn, zeros)
        sub = _sub_jaxpr(eqn)
        if relu_at is not None:
            out = guided_relu(invals[relu_at])
            shape = eqn.outvars[0].aval.shape
            outs = [jnp.broadcast_to(out, shape).astype(eqn.outvars[0].aval.dtype)]
        elif (
            sub is not None
            and (
                name in _CALL_PRIMITIVES
                or (name in _CUSTOM_PRIMITIVES and _contains_relu(*sub))
            )
            and len(sub[0].invars) == len(invals)
        ):
            outs = _eval_guided(sub[0], sub[1], invals)
        else:
            if any(_contains_relu(*nested) for nested in _nested_jaxprs(eqn)):
                warnings.warn(
                    f"guided_backprop: ReLUs inside a '{name}' primitive are not "
                    "replaced (control flow is bound unchanged); their backward "
                    "pass is the ordinary gradient.",
                    stacklevel=2,
                )
            result = _bind(eqn, invals)
            outs = list(result) if eqn.primitive.multiple_results else [result]
        if name in _ZERO_PRESERVING and all(
            _atom_is_zero(v, zeros) for v in eqn.invars
        ):
            zeros.update(eqn.outvars)
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _nested_jaxprs(eqn) -> list[tuple[Any, Sequence[Any]]]:
    """Every ``(jaxpr, consts)`` held in an equation's params."""
    found = []
    for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, jex_core.ClosedJaxpr):
                found.append((item.jaxpr, item.consts))
            elif isinstance(item, jex_core.Jaxpr):
                found.append((item, ()))
    return found


def guided_fn(model_fn: Callable[[Array], Array], images: Array) -> Callable:
    """``model_fn`` rebuilt with guided ReLUs, for inputs shaped like ``images``.

    The forward values are unchanged; only the backward pass of ReLUs differs.
    Parameters carried by a :class:`jax.tree_util.Partial` stay arguments of
    the rebuilt function (they are not frozen into the jaxpr).

    Args:
        model_fn: any traceable function of one array.
        images: an example input (array or tracer), for shapes and dtypes.

    Returns:
        A function ``x -> model_fn(x)`` with guided ReLU backward passes.
    """
    model_fn = common.as_model_fn(model_fn)
    leaves, treedef = jax.tree_util.tree_flatten(model_fn)

    def flat(leaves, x):
        return jax.tree_util.tree_unflatten(treedef, leaves)(x)

    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(leaves, images)
    out_tree = jax.tree_util.tree_structure(out_shape)

    def rebuilt(x):
        flat_args = [*jax.tree_util.tree_leaves(leaves), x]
        outs = _eval_guided(closed.jaxpr, closed.consts, flat_args)
        return jax.tree_util.tree_unflatten(out_tree, outs)

    return rebuilt


@jax.jit
def _worker(model_fn, images, target):
    fn = guided_fn(model_fn, images)
    logits, target, gradients = common.target_gradient(fn, images, target)
    maps = common.reduce_abs_max(gradients)
    return maps, {"gradients": gradients, "logits": logits, "target": target}


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
) -> common.Explanation:
    """Guided-backpropagation saliency of the target logit.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``, any JAX
            function; ReLUs written as ``jnp.maximum(x, 0)`` or
            ``jax.nn.relu`` are guided.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.

    Returns:
        :class:`Explanation` with ``maps (B, H, W) = max_c |guided gradient|``
        and extras ``gradients (B, H, W, C)`` (signed), ``logits (B, K)``
        and ``target (B,)``; ``model_calls = 1``.

    Raises:
        ValueError: for malformed images or targets.
    """
    del key
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    classes = common.num_classes(model_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(model_fn, images, target)
    return common.Explanation(maps, extras, MODEL_CALLS, "guided_backprop")
