"""Receptive fields read from a jaxpr, and exact column norms by colouring.

A feature whose entries each depend on a bounded window of the image (a
convolution, pooling, a residual block) has a sparse Jacobian: two pixels
farther apart than the window never reach the same feature entry. Colour the
pixels by their position modulo a period ``P`` at least the window's extent
in every spatial axis, and one colour class per ``(offset, channel)``: the
Jacobian-vector product with the sum of one class's one-hot tangents then
holds every column of that class without overlap, and each feature entry
belongs to the one pixel of the class inside its window. ``P_1 P_2 ... C``
products give every squared column norm exactly.

The window is not guessed: :func:`receptive_fields` traces the feature's
tangent map (``jax.jvp``, so custom derivative rules are what is analysed)
and propagates, primitive by primitive, a sound bound on which input rows and
columns each entry of each intermediate array can depend on. Convolutions,
windowed reductions, padding, slicing, reshapes that split an axis (pooling
written as a reshape), transposes, broadcasts and elementwise operations keep
a bound that moves with the entry's index; anything else (dense layers,
global pooling, gathers, loops, unknown primitives) joins everything its
inputs depend on into one fixed window, which is always true and, for a
global feature, as large as the image (then the colouring costs one product
per input unit and the caller falls back to random probes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jax_infodiscard.types import Array

__all__ = ["Colouring", "Reach", "coloured_norms", "plan", "receptive_fields"]


@dataclasses.dataclass(frozen=True)
class Reach:
    """Which input indices along one spatial axis an array entry can depend on.

    The entry with index ``u`` along array axis ``axis`` depends only on input
    indices in ``[scale * u + lo, scale * u + hi]``; with ``axis=None`` every
    entry depends only on ``[lo, hi]`` (``scale`` is then unused).

    >>> Reach(0, 2, -1, 2).extent
    4
    """

    axis: int | None
    scale: int
    lo: int
    hi: int

    @property
    def extent(self) -> int:
        """Width of the window in input indices."""
        return self.hi - self.lo + 1


Value = tuple[Reach, ...] | None
"""One :class:`Reach` per spatial input axis, or ``None``: no dependence."""


# ------------------------------------------------------------ reach algebra
def _fixed(r: Reach, shape: Sequence[int]) -> Reach:
    """``r`` as one window for every entry (the union over its axis)."""
    if r.axis is None:
        return r
    n = max(int(shape[r.axis]) - 1, 0)
    return Reach(None, 1, r.lo, r.scale * n + r.hi)


def _join_reach(r1: Reach, r2: Reach, shape: Sequence[int]) -> Reach:
    """A reach containing both ``r1`` and ``r2`` (of arrays of ``shape``)."""
    if r1.axis is None and r2.axis is not None:
        r1, r2 = r2, r1
    if r1.axis is None:
        return Reach(None, 1, min(r1.lo, r2.lo), max(r1.hi, r2.hi))
    if r2.axis is not None and r2.axis != r1.axis:
        r2 = _fixed(r2, shape)
    # Contain r2's window [s2 u + lo2, s2 u + hi2] (s2 = 0 when fixed) in
    # [s1 u + lo, s1 u + hi] for every u in [0, n - 1]: the difference is
    # linear in u, so its extremes are at the ends.
    s2 = 0 if r2.axis is None else r2.scale
    d = s2 - r1.scale
    ends = (0, max(int(shape[r1.axis]) - 1, 0))
    lo = min(r1.lo, *(d * u + r2.lo for u in ends))
    hi = max(r1.hi, *(d * u + r2.hi for u in ends))
    return Reach(r1.axis, r1.scale, lo, hi)


def _join(values: Sequence[Value], shape: Sequence[int]) -> Value:
    out = None
    for v in values:
        if v is None:
            continue
        out = (
            v
            if out is None
            else tuple(_join_reach(a, b, shape) for a, b in zip(out, v, strict=True))
        )
    return out


def _all_fixed(v: Value, shape: Sequence[int]) -> Value:
    return None if v is None else tuple(_fixed(r, shape) for r in v)


def _move(v: Value, in_shape, moves: dict) -> Value:
    """Map reaches to new axes: ``moves[in_axis] = (out_axis, scale, lo, hi)``.

    The new reach is ``Reach(out_axis, s * scale, lo_r + s * lo,
    hi_r + s * hi)`` for a reach ``(in_axis, s, lo_r, hi_r)``; an axis missing
    from ``moves`` is folded into a fixed window.
    """
    if v is None:
        return None
    out = []
    for r in v:
        if r.axis is None:
            out.append(r)
        elif r.axis in moves:
            axis, scale, lo, hi = moves[r.axis]
            out.append(
                Reach(axis, r.scale * scale, r.lo + r.scale * lo, r.hi + r.scale * hi)
            )
        else:
            out.append(_fixed(r, in_shape))
    return tuple(out)


def _renumber(kept: Sequence[int]) -> dict:
    return {a: (j, 1, 0, 0) for j, a in enumerate(kept)}


# -------------------------------------------------------------- primitives
_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
    conj convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc
    exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma log log1p
    logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem
    round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor
    """.split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor"
    " argmax argmin".split()
)
_WINDOWED = frozenset(
    "reduce_window_sum reduce_window_max reduce_window_min reduce_window"
    " select_and_gather_add".split()
)
_CALLS = frozenset(
    "jit pjit closed_call core_call remat checkpoint remat2 custom_jvp_call"
    " custom_vjp_call custom_vjp_call_jaxpr named_call".split()
)


def _shape(atom) -> tuple[int, ...]:
    return tuple(int(d) for d in atom.aval.shape)


def _universal(ins, in_shapes, out_shapes) -> list[Value]:
    """Sound for any primitive: every output entry may depend on every input."""
    v = _join([_all_fixed(x, s) for x, s in zip(ins, in_shapes, strict=True)], ())
    return [v for _ in out_shapes]


def _window_moves(rank, dims, strides, padding, base_dil, win_dil) -> dict:
    moves = {}
    for a in range(rank):
        if base_dil[a] != 1:
            continue
        p = int(padding[a][0])
        span = (int(dims[a]) - 1) * int(win_dil[a])
        moves[a] = (a, int(strides[a]), -p, span - p)
    return moves


def _reshape_moves(old: Sequence[int], new: Sequence[int]) -> dict:
    """Old axes that stay one axis or split into several (outer one carries it)."""
    moves: dict = {}
    if 0 in old or 0 in new:
        return moves
    i = j = 0
    while i < len(old) and j < len(new):
        if old[i] == 1:
            i += 1
            continue
        if new[j] == 1:
            j += 1
            continue
        gi, gj, po, pn = [i], [j], old[i], new[j]
        i, j = i + 1, j + 1
        while po != pn:
            if po < pn:
                if i >= len(old):
                    return moves
                po *= old[i]
                gi.append(i)
                i += 1
            else:
                if j >= len(new):
                    return moves
                pn *= new[j]
                gj.append(j)
                j += 1
        old_axes = [a for a in gi if old[a] != 1]
        if len(old_axes) == 1:
            a = old_axes[0]
            b = next(b for b in gj if new[b] != 1)
            f = old[a] // new[b]  # entries of `a` per entry of its outer axis `b`
            moves[a] = (b, f, 0, f - 1)
    return moves


def _sub_jaxpr(params):
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = params.get(name)
        if isinstance(j, jex_core.ClosedJaxpr):
            return j.jaxpr, [None] * len(j.consts)
        if isinstance(j, jex_core.Jaxpr):
            return j, []
    return None


# A primitive's rule maps the reaches of its inputs to those of its outputs:
# ``rule(eqn, ins, in_shapes, out_shapes)`` returns one Value per output, or
# None where it has no exact rule for these arguments (then `_universal`).
def _out(out_shapes) -> tuple[int, ...]:
    """The first output's shape (``()`` for a primitive without outputs)."""
    return out_shapes[0] if out_shapes else ()


def _rule_elementwise(eqn, ins, in_shapes, out_shapes):
    """Same-shape (or scalar) operands: the output entry joins theirs."""
    out = _out(out_shapes)
    shapes = [s for s, v in zip(in_shapes, ins, strict=True) if v is not None]
    if all(s in (out, ()) for s in shapes):
        return [_join(ins, out)] * len(out_shapes)
    return None


def _rule_broadcast_in_dim(eqn, ins, in_shapes, out_shapes):
    """Kept axes move to their broadcast position; size-1 axes are fixed."""
    out = _out(out_shapes)
    dims = eqn.params["broadcast_dimensions"]
    moves = {
        a: (dims[a], 1, 0, 0)
        for a in range(len(in_shapes[0]))
        if in_shapes[0][a] == out[dims[a]]
    }
    return [_join([_move(ins[0], in_shapes[0], moves), *ins[1:]], out)]


def _rule_reshape(eqn, ins, in_shapes, out_shapes):
    """An axis that stays whole or splits keeps its reach (outer axis)."""
    if eqn.params.get("dimensions") is None and len(ins) == 1:
        return [
            _move(ins[0], in_shapes[0], _reshape_moves(in_shapes[0], _out(out_shapes)))
        ]
    return None


def _rule_squeeze(eqn, ins, in_shapes, out_shapes):
    """The remaining axes are renumbered."""
    gone = {a % len(in_shapes[0]) for a in eqn.params["dimensions"]}
    kept = [a for a in range(len(in_shapes[0])) if a not in gone]
    return [_move(ins[0], in_shapes[0], _renumber(kept))]


def _rule_transpose(eqn, ins, in_shapes, out_shapes):
    """Each axis moves to its place in the permutation."""
    perm = eqn.params["permutation"]
    return [_move(ins[0], in_shapes[0], {a: (j, 1, 0, 0) for j, a in enumerate(perm)})]


def _rule_reduction(eqn, ins, in_shapes, out_shapes):
    """Reduced axes fold into a fixed window; the others are renumbered."""
    if len(ins) != 1:
        return None
    kept = [a for a in range(len(in_shapes[0])) if a not in set(eqn.params["axes"])]
    return [_move(ins[0], in_shapes[0], _renumber(kept))] * len(out_shapes)


def _rule_conv(eqn, ins, in_shapes, out_shapes):
    """Spatial axes of the image operand move by stride, padding and kernel span."""
    if ins[1] is not None:
        return None
    p = eqn.params
    lhs, rhs, outspec = p["dimension_numbers"]
    moves = {}
    for k in range(len(lhs) - 2):
        if p["lhs_dilation"][k] != 1:
            continue
        pad = int(p["padding"][k][0])
        span = (in_shapes[1][rhs[2 + k]] - 1) * int(p["rhs_dilation"][k])
        moves[lhs[2 + k]] = (
            outspec[2 + k],
            int(p["window_strides"][k]),
            -pad,
            span - pad,
        )
    return [_move(ins[0], in_shapes[0], moves)]


def _rule_windowed(eqn, ins, in_shapes, out_shapes):
    """Windowed reductions: every axis moves by its window; other operands fixed."""
    p = eqn.params
    out = _out(out_shapes)
    rank = len(out)
    moves = _window_moves(
        rank,
        p["window_dimensions"],
        p["window_strides"],
        p["padding"],
        p.get("base_dilation") or (1,) * rank,
        p.get("window_dilation") or (1,) * rank,
    )
    moved = [
        _move(v, s, moves) if s == in_shapes[0] else _all_fixed(v, s)
        for v, s in zip(ins, in_shapes, strict=True)
    ]
    return [_join(moved, out)] * len(out_shapes)


def _rule_dot_general(eqn, ins, in_shapes, out_shapes):
    """Batch then free axes of each operand move; contracted axes are fixed."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    nb = len(lb)
    lfree = [a for a in range(len(in_shapes[0])) if a not in (*lc, *lb)]
    rfree = [a for a in range(len(in_shapes[1])) if a not in (*rc, *rb)]
    lm = {a: (i, 1, 0, 0) for i, a in enumerate(lb)}
    lm |= {a: (nb + k, 1, 0, 0) for k, a in enumerate(lfree)}
    rm = {a: (i, 1, 0, 0) for i, a in enumerate(rb)}
    rm |= {a: (nb + len(lfree) + k, 1, 0, 0) for k, a in enumerate(rfree)}
    moved = [_move(ins[0], in_shapes[0], lm), _move(ins[1], in_shapes[1], rm)]
    return [_join(moved, _out(out_shapes))]


def _rule_pad(eqn, ins, in_shapes, out_shapes):
    """Axes without interior padding shift by the low padding."""
    moves = {
        a: (a, 1, -int(lo), -int(lo))
        for a, (lo, _, interior) in enumerate(eqn.params["padding_config"])
        if interior == 0
    }
    return [_join([_move(ins[0], in_shapes[0], moves), ins[1]], _out(out_shapes))]


def _rule_slice(eqn, ins, in_shapes, out_shapes):
    """Each axis shifts by its start and scales by its stride."""
    p = eqn.params
    strides = p["strides"] or (1,) * len(_out(out_shapes))
    moves = {
        a: (a, int(st), int(s), int(s))
        for a, (s, st) in enumerate(zip(p["start_indices"], strides, strict=True))
    }
    return [_move(ins[0], in_shapes[0], moves)]


def _rule_dynamic_slice(eqn, ins, in_shapes, out_shapes):
    """A slice at constant (clamped) starts; traced starts have no exact rule."""
    if not all(v is None for v in ins[1:]):
        return None
    starts = [getattr(x, "val", None) for x in eqn.invars[1:]]
    if not all(s is not None for s in starts):
        return None
    moves = {}
    for a, (s, size) in enumerate(zip(starts, eqn.params["slice_sizes"], strict=True)):
        s = min(max(int(s), 0), in_shapes[0][a] - int(size))  # lax clamps
        moves[a] = (a, 1, s, s)
    return [_move(ins[0], in_shapes[0], moves)]


def _rule_concatenate(eqn, ins, in_shapes, out_shapes):
    """Each operand shifts by its offset along the joined axis."""
    d = eqn.params["dimension"]
    offsets = np.cumsum([0] + [s[d] for s in in_shapes])
    moved = [
        _move(
            v,
            s,
            {a: (a, 1, 0, 0) for a in range(len(s)) if a != d}
            | {d: (d, 1, -int(o), -int(o))},
        )
        for v, s, o in zip(ins, in_shapes, offsets, strict=False)
    ]
    return [_join(moved, _out(out_shapes))]


def _rule_split(eqn, ins, in_shapes, out_shapes):
    """Each piece shifts by its offset along the split axis."""
    d = eqn.params["axis"]
    offsets = np.cumsum([0, *eqn.params["sizes"]])
    rank = len(in_shapes[0])
    return [
        _move(
            ins[0],
            in_shapes[0],
            {a: (a, 1, 0, 0) for a in range(rank) if a != d}
            | {d: (d, 1, int(o), int(o))},
        )
        for o in offsets[:-1]
    ]


def _rule_call(eqn, ins, in_shapes, out_shapes):
    """A call primitive: its inner jaxpr is evaluated reach by reach."""
    sub = _sub_jaxpr(eqn.params)
    if sub is not None:
        jaxpr, consts = sub
        if len(jaxpr.invars) == len(ins) and len(jaxpr.outvars) == len(out_shapes):
            return _eval(jaxpr, consts, ins)
    return None


_RULES = {
    **dict.fromkeys(_ELEMENTWISE, _rule_elementwise),
    **dict.fromkeys(_REDUCTIONS, _rule_reduction),
    **dict.fromkeys(_WINDOWED, _rule_windowed),
    **dict.fromkeys(_CALLS, _rule_call),
    "broadcast_in_dim": _rule_broadcast_in_dim,
    "reshape": _rule_reshape,
    "squeeze": _rule_squeeze,
    "transpose": _rule_transpose,
    "conv_general_dilated": _rule_conv,
    "dot_general": _rule_dot_general,
    "pad": _rule_pad,
    "slice": _rule_slice,
    "dynamic_slice": _rule_dynamic_slice,
    "concatenate": _rule_concatenate,
    "split": _rule_split,
}


def _rule(eqn, ins: list[Value]) -> list[Value]:
    """The reaches of ``eqn``'s outputs from those of its inputs ``ins``."""
    name = eqn.primitive.name
    if name == "custom_lin":
        # A custom_vjp function under jvp: traceable, but it fails when run.
        raise NotImplementedError("a custom_vjp function has no forward-mode rule")
    in_shapes = [_shape(x) for x in eqn.invars]
    out_shapes = [_shape(x) for x in eqn.outvars]
    if all(v is None for v in ins):
        return [None] * len(out_shapes)
    rule = _RULES.get(name)
    outs = None if rule is None else rule(eqn, ins, in_shapes, out_shapes)
    return _universal(ins, in_shapes, out_shapes) if outs is None else outs


def _eval(jaxpr, consts: list[Value], args: list[Value]) -> list[Value]:
    env: dict = {}

    def read(atom) -> Value:
        if isinstance(atom, jex_core.Literal):
            return None
        return env.get(atom)

    for var, v in zip(jaxpr.constvars, consts, strict=True):
        env[var] = v
    for var, v in zip(jaxpr.invars, args, strict=True):
        env[var] = v
    for eqn in jaxpr.eqns:
        outs = _rule(eqn, [read(x) for x in eqn.invars])
        for var, v in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jex_core.DropVar):
                env[var] = v
    return [read(x) for x in jaxpr.outvars]


def receptive_fields(leaves_fn, x: Array) -> list[Value]:
    """Sound receptive fields of every output leaf of ``leaves_fn`` at ``x``'s shape.

    Args:
      leaves_fn: ``z (*S, C) -> list of arrays``, one image to feature leaves.
      x: an image ``(*S, C)`` (only its shape and dtype are used).

    Returns:
      One :class:`Value` per leaf: for each spatial axis of ``x``, a
      :class:`Reach` containing every input index that an entry of the leaf's
      tangent can depend on (``None`` for a leaf that does not depend on
      ``x``).

    Raises:
      NotImplementedError: ``leaves_fn`` calls a ``jax.custom_vjp`` function
        (no forward-mode derivative); any other error of tracing ``jax.jvp``
        of ``leaves_fn`` propagates.

    >>> def fn(z):  # a 3-tap moving sum along axis 0, then stride 2
    ...     return [(z[:-2] + z[1:-1] + z[2:])[::2]]
    >>> receptive_fields(fn, jnp.zeros((9, 4, 1)))
    [(Reach(axis=0, scale=2, lo=0, hi=2), Reach(axis=1, scale=1, lo=0, hi=0))]
    """
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    closed = jax.make_jaxpr(lambda z, t: jax.jvp(leaves_fn, (z,), (t,))[1])(spec, spec)
    start = tuple(Reach(a, 1, 0, 0) for a in range(x.ndim - 1))
    consts = [None] * len(closed.consts)
    return _eval(closed.jaxpr, consts, [None, start])


# ---------------------------------------------------------------- colouring
@dataclasses.dataclass(frozen=True)
class Colouring:
    """A periodic colouring of the input for exact column norms.

    Attributes:
      periods: ``P`` per spatial axis (at most the image's side).
      fields: the receptive field of each feature leaf (see
        :func:`receptive_fields`).
      image_shape: ``(*S, C)``.
    """

    periods: tuple[int, ...]
    fields: tuple[Value, ...]
    image_shape: tuple[int, ...]

    @property
    def passes(self) -> int:
        """The number of Jacobian-vector products needed, ``prod(periods) * C``."""
        return math.prod(self.periods) * self.image_shape[-1]


def plan(fields: Sequence[Value], image_shape: Sequence[int]) -> Colouring:
    """The smallest periodic colouring that keeps every field's pixels apart.

    ``P_d = min(S_d, max over leaves of the field's extent along d)``.

    >>> c = plan([(Reach(0, 1, -1, 1), Reach(1, 1, -1, 1))], (32, 32, 3))
    >>> c.periods, c.passes
    ((3, 3), 27)
    """
    sides = tuple(int(s) for s in image_shape[:-1])
    periods = []
    for d, side in enumerate(sides):
        extents = [v[d].extent for v in fields if v is not None]
        periods.append(min(side, max(extents, default=1)))
    return Colouring(tuple(periods), tuple(fields), tuple(int(s) for s in image_shape))


def _owner_table(r: Reach, period: int, side: int, length: int) -> np.ndarray:
    """``(P, n)`` input index of the class-``p`` pixel that can reach entry ``u``.

    ``side`` (one past the last index) where no pixel of the class is inside
    the image. With ``P == side`` each class is the single pixel ``p``;
    otherwise the field ``[s u + lo, s u + hi]`` lies in the window of ``P``
    indices starting at ``s u + lo``, which holds exactly one index of each
    class.
    """
    u = np.arange(length if r.axis is not None else 1)
    cls = np.arange(period)[:, None]
    if period == side:
        return np.broadcast_to(cls, (period, u.size)).copy()
    start = (
        (r.scale * u + r.lo)[None, :] if r.axis is not None else np.full((1, 1), r.lo)
    )
    idx = start + np.mod(cls - start, period)
    return np.where((idx >= 0) & (idx < side), idx, side)


def _leaf_tables(colouring: Colouring, v: Value, shape: Sequence[int]):
    """Axes kept when summing a leaf's squares, and index tables per spatial axis.

    Returns ``(kept, tables)``: the leaf's squared entries are summed over
    every axis not in ``kept`` (keeping the order of ``kept``); ``tables[d]``
    is ``(P_d, *b)`` with ``b`` broadcastable to the summed leaf.
    """
    kept = sorted({r.axis for r in v if r.axis is not None})
    tables = []
    for d, r in enumerate(v):
        side = colouring.image_shape[d]
        t = _owner_table(
            r, colouring.periods[d], side, shape[r.axis] if r.axis is not None else 1
        )
        b = [1] * len(kept)
        if r.axis is not None:
            b[kept.index(r.axis)] = t.shape[1]
        tables.append(t.reshape(t.shape[0], *b))
    return tuple(kept), tables


def coloured_norms(
    leaves_fn,
    x: Array,
    colouring: Colouring,
    per_channel: bool,
    batch: int | None = None,
) -> Array:
    """Exact squared Jacobian column norms from ``colouring.passes`` JVPs.

    Args:
      leaves_fn: ``z (*S, C) -> list of arrays`` (the leaves ``colouring``
        was planned for).
      x: one image ``(*S, C)``.
      colouring: from :func:`plan`.
      per_channel: ``(*S, C)`` if ``True``, else summed over channels ``S``.
      batch: JVPs held in memory at once (``None``: all).

    Returns:
      float32 ``(*S, C)`` or ``S``.
    """
    sides = colouring.image_shape[:-1]
    channels = colouring.image_shape[-1]
    periods = colouring.periods
    out, lin = jax.linearize(leaves_fn, x)
    shapes = [tuple(a.shape) for a in out]
    plans = [
        None if v is None else _leaf_tables(colouring, v, s)
        for v, s in zip(colouring.fields, shapes, strict=True)
    ]
    grids = jnp.meshgrid(*[jnp.arange(s) for s in sides], indexing="ij")
    # Class k = (offset o_1, ..., o_d, channel c), channel fastest.
    classes = np.stack(
        np.unravel_index(np.arange(colouring.passes), (*periods, channels)), axis=1
    ).astype(np.int32)

    def one(cls):
        offs, c = cls[:-1], cls[-1]
        mask = jnp.ones(sides, bool)
        for d, g in enumerate(grids):
            mask &= (g % periods[d]) == offs[d]
        t = (mask[..., None] & (jnp.arange(channels) == c)).astype(x.dtype)
        outs = lin(t)
        acc = jnp.zeros(tuple(s + 1 for s in sides), jnp.float32)
        for y, leaf in zip(outs, plans, strict=True):
            if leaf is None:
                continue
            kept, tables = leaf
            sq = jnp.square(y.astype(jnp.float32))
            z = jnp.sum(sq, axis=tuple(a for a in range(sq.ndim) if a not in kept))
            idx = tuple(jnp.asarray(tab)[offs[d]] for d, tab in enumerate(tables))
            acc = acc.at[idx].add(z)
        return acc[tuple(slice(0, s) for s in sides)]

    cls = jnp.asarray(classes)
    if batch is None or batch >= colouring.passes:
        maps = jax.vmap(one)(cls)
    else:
        maps = jax.lax.map(one, cls, batch_size=batch)
    # Every class holds the exact norms of its own pixels and zeros elsewhere.
    maps = maps.reshape(-1, channels, *sides).sum(axis=0)  # (C, *S)
    a = jnp.moveaxis(maps, 0, -1)
    return a if per_channel else jnp.sum(a, axis=-1)
