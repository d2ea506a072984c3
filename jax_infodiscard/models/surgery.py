"""Model surgery: function-preserving rescaling, magnitude pruning, damage.

* :func:`rescale_pair` (paper Sec. 3.4): divides layer ``l`` by ``c`` and
  multiplies the next convolution's kernel by ``c``; the network function is
  unchanged, only feature magnitudes move.
* :func:`prune` (Han et al. 2016, "Deep compression"): zeroes the
  smallest-magnitude convolution and dense kernel weights, globally or per
  layer, and returns the masks; :func:`mask_updates` (an optax
  transformation) and :func:`apply_masks` keep pruned weights at zero during
  fine-tuning; :func:`kernel_sparsity` measures the result.
* :func:`damage` (paper App. F.1): replaces one convolution of a zoo model by
  a few large filters (four 7x7 by default), which cuts the layer's output to
  that many channels.

Every function returns a new model or state and leaves its input unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_infodiscard.models.layers import ConvBN, Dense, GlobalAvgPool, MaxPool
from jax_infodiscard.types import PRNGKey, PyTree
from jax_infodiscard.validation import check_int, check_number

__all__ = [
    "apply_masks",
    "damage",
    "kernel_sparsity",
    "mask_updates",
    "next_conv",
    "prune",
    "rescale_pair",
]

# Stages with f(h / c) = f(h) / c for c > 0: max pooling, and average pooling
# (linear). A factor on a layer's output passes through them unchanged.
_HOMOGENEOUS = (MaxPool, GlobalAvgPool)


# ------------------------------------------------------------------ rescale
def _conv_stages(model: nnx.Module) -> list[str]:
    return [s for s in model.stage_names if isinstance(getattr(model, s), ConvBN)]


def next_conv(model: nnx.Module, layer: str) -> str:
    """The ``ConvBN`` stage after ``layer``, reached through pooling stages only.

    Max and average pooling (``MaxPool``, ``GlobalAvgPool``) are positively
    homogeneous, so a factor ``1/c`` on ``layer``'s output reaches the next
    convolution unchanged.

    Args:
        model: a zoo :class:`~jax_infodiscard.models.LayeredModel`.
        layer: a ``ConvBN`` stage name.

    Returns:
        The name of the next ``ConvBN`` stage.

    Raises:
        ValueError: ``layer`` is not a ``ConvBN`` stage, a stage other than
            pooling comes before the next ``ConvBN`` stage, or none follows.
    """
    stages = tuple(model.stage_names)
    if layer not in stages or not isinstance(getattr(model, layer), ConvBN):
        raise ValueError(
            f"layer must be a ConvBN stage, one of {_conv_stages(model)}; got {layer!r}"
        )
    for name in stages[stages.index(layer) + 1 :]:
        stage = getattr(model, name)
        if isinstance(stage, ConvBN):
            return name
        if not isinstance(stage, _HOMOGENEOUS):
            allowed = ", ".join(t.__name__ for t in _HOMOGENEOUS)
            raise ValueError(
                f"stage {name!r} ({type(stage).__name__}) follows {layer!r} before "
                "any ConvBN stage: only pooling stages, which are positively "
                f"homogeneous ({allowed}), may lie between the rescaled layer and "
                "the convolution whose kernel absorbs the factor"
            )
    raise ValueError(f"no ConvBN stage follows {layer!r}")


def rescale_pair(model: nnx.Module, layer: str, factor: float = 4.0) -> nnx.Module:
    """A copy of ``model`` with layer ``layer`` scaled by ``1/factor``.

    For a ``ConvBN`` stage ``relu(BN(conv(x)))`` with inference-mode
    BatchNorm, "kernel and bias of layer ``l`` divided by ``c``" means the
    folded affine map: the BatchNorm scale and offset are divided by ``c``
    (identical to dividing the folded kernel and bias), so the post-ReLU
    output is ``h_l / c``. The next convolution's kernel is multiplied by
    ``c`` (its bias unchanged), so every later activation and the output are
    unchanged (ReLU and pooling are positively homogeneous).

    Args:
        model: a zoo ConvNet/AlexNet/VGG (``ConvBN`` stages); not modified.
        layer: a ``ConvBN`` stage followed (through pooling stages) by another.
        factor: positive scale ``c``.

    Returns:
        The rescaled copy.

    Raises:
        ValueError: bad layer or factor, or BatchNorm without scale/offset.
    """
    factor = check_number("factor", factor, positive=True)
    nxt = next_conv(model, layer)
    out = nnx.clone(model)
    bn = getattr(out, layer).bn
    if bn.scale is None or bn.bias is None:
        raise ValueError(f"layer {layer!r}: BatchNorm without scale/offset")
    bn.scale[...] = bn.scale[...] / factor
    bn.bias[...] = bn.bias[...] / factor
    conv = getattr(out, nxt).conv
    conv.kernel[...] = conv.kernel[...] * factor
    return out


# ------------------------------------------------------------------ pruning
def _key(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _leaf_path(path: tuple) -> tuple:
    keys = tuple(_key(e) for e in path)
    # nnx.State leaves sit under a Variable's ``value`` attribute
    while keys and keys[-1] in ("value", "raw_value"):
        keys = keys[:-1]
    return keys


def _is_kernel(path: tuple, leaf: Any) -> bool:
    """Conv/dense kernels: Flax names them ``kernel`` (biases, BatchNorm not)."""
    keys = _leaf_path(path)
    return bool(keys) and keys[-1] == "kernel" and np.ndim(leaf) >= 2


def _params(model_or_state: Any) -> Any:
    if isinstance(model_or_state, nnx.Module):
        return nnx.state(model_or_state, nnx.Param)
    return model_or_state


def _kernels(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(str(k) for k in _leaf_path(path)): leaf
        for path, leaf in flat
        if _is_kernel(path, leaf)
    }


def prune(
    model_or_state: Any, sparsity: float, *, scope: str = "global"
) -> tuple[Any, PyTree]:
    """Magnitude pruning of convolution and dense kernels (Han et al. 2016).

    The ``round(sparsity * n)`` kernel weights of smallest ``|w|`` are set to
    zero, where ``n`` counts all kernel weights (``scope="global"``, one
    threshold for the whole network) or those of each layer
    (``scope="layer"``, every layer at the same sparsity). Ties are broken by
    position, so the count is exact. Biases, BatchNorm and input-centring
    parameters are never pruned. Weights that are already zero are pruned
    first, so pruning a pruned model further keeps its zeros.

    Args:
        model_or_state: an NNX model (its ``nnx.Param`` state is pruned), or a
            parameter pytree (an ``nnx.State``, Linen ``{"params": ...}``):
            leaves whose last key is ``kernel`` and with ``ndim >= 2`` are
            pruned.
        sparsity: fraction of kernel weights to remove, in ``[0, 1]``.
        scope: ``"global"`` or ``"layer"``.

    Returns:
        ``(pruned, masks)``: a pruned copy of the model (or the pruned
        pytree), and ``masks``, a pytree of ``bool`` arrays with the structure
        of ``nnx.state(model, nnx.Param)`` (of the pytree), True where a
        weight is kept (all True for parameters that are not kernels).

    Raises:
        ValueError: sparsity outside ``[0, 1]``, unknown scope, or no kernel.

    Example:
        >>> from flax import nnx
        >>> from jax_infodiscard.models import create_model
        >>> model = create_model("convnet", image_size=8, width=4, rngs=nnx.Rngs(0))
        >>> pruned, masks = prune(model, 0.5)
        >>> round(kernel_sparsity(pruned)["global"], 3)
        0.5
    """
    sparsity = check_number("sparsity", sparsity, minimum=0.0, maximum=1.0)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    params = _params(model_or_state)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    kernel_ids = [i for i, (p, leaf) in enumerate(flat) if _is_kernel(p, leaf)]
    if not kernel_ids:
        raise ValueError("model_or_state has no conv/dense kernel (leaf 'kernel')")
    mags = [np.abs(np.asarray(flat[i][1], np.float32)).ravel() for i in kernel_ids]
    keep = [np.ones(m.shape, bool) for m in mags]
    groups = (
        [list(range(len(mags)))]
        if scope == "global"
        else [[j] for j in range(len(mags))]
    )
    for group in groups:
        values = np.concatenate([mags[j] for j in group])
        n_prune = math.floor(sparsity * values.size + 0.5)
        order = np.argsort(values, kind="stable")[:n_prune]
        kept = np.ones(values.size, bool)
        kept[order] = False
        offsets = np.cumsum([0] + [mags[j].size for j in group])
        for j, lo, hi in zip(group, offsets[:-1], offsets[1:], strict=True):
            keep[j] = kept[lo:hi]
    # Host-side masking: no per-shape compilation; other leaves are reused.
    leaves = [leaf for _, leaf in flat]
    masks_flat = [jnp.asarray(np.ones(np.shape(leaf), bool)) for leaf in leaves]
    for j, i in enumerate(kernel_ids):
        kept = keep[j].reshape(np.shape(leaves[i]))
        masks_flat[i] = jnp.asarray(kept)
        host = np.asarray(leaves[i])
        leaves[i] = jnp.asarray(np.where(kept, host, np.zeros_like(host)))
    masks = jax.tree_util.tree_unflatten(treedef, masks_flat)
    pruned = jax.tree_util.tree_unflatten(treedef, leaves)
    if isinstance(model_or_state, nnx.Module):
        out = nnx.clone(model_or_state)
        nnx.update(out, pruned)
        return out, masks
    return pruned, masks


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with every weight whose mask is False set to zero.

    Args:
        params: a parameter pytree (e.g. ``nnx.state(model, nnx.Param)``).
        masks: ``bool`` pytree of the same structure (from :func:`prune`).

    Returns:
        The masked pytree (same structure and dtypes).
    """
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def mask_updates(masks: PyTree) -> optax.GradientTransformation:
    """Optax transformation that zeroes the updates of pruned weights.

    Chain it *after* the optimizer (``optax.chain(tx, mask_updates(masks))``):
    momentum, Adam moments and decoupled weight decay then never move a
    pruned weight, so pruned weights stay exactly zero during fine-tuning.

    Args:
        masks: ``bool`` pytree with the structure of the parameters being
            optimized (from :func:`prune`).

    Returns:
        A stateless ``optax.GradientTransformation``.
    """

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return apply_masks(updates, masks), state

    return optax.GradientTransformation(init_fn, update_fn)


def kernel_sparsity(model_or_state: Any) -> dict[str, float]:
    """Fraction of zero weights per kernel and over all kernels.

    Args:
        model_or_state: an NNX model or a parameter pytree (as :func:`prune`).

    Returns:
        ``{"global": float, path: float, ...}`` with one entry per kernel,
        ``path`` ``/``-separated (``"conv1/conv/kernel"``).
    """
    kernels = _kernels(_params(model_or_state))
    zeros = {k: int(np.sum(np.asarray(v) == 0)) for k, v in kernels.items()}
    total = sum(int(np.size(v)) for v in kernels.values())
    out = {"global": sum(zeros.values()) / max(total, 1)}
    out.update({k: zeros[k] / np.size(kernels[k]) for k in kernels})
    return out


# ------------------------------------------------------------------- damage
def _stride(conv: nnx.Conv) -> int:
    s = conv.strides
    s = (s, s) if isinstance(s, int) else tuple(s)
    if s[0] != s[1]:
        raise ValueError(f"damage needs a square stride, got {s}")
    return int(s[0])


def _consumer(model: nnx.Module, layer: str) -> str:
    """The next stage with weights, through pooling stages only."""
    stages = tuple(model.stage_names)
    for name in stages[stages.index(layer) + 1 :]:
        stage = getattr(model, name)
        if isinstance(stage, (ConvBN, Dense)):
            return name
        if not isinstance(stage, _HOMOGENEOUS):
            raise ValueError(
                f"stage {name!r} ({type(stage).__name__}) consumes {layer!r}: "
                "damage needs the next stage with weights (ConvBN or Dense) to "
                "follow through pooling stages only (ConvNet, AlexNet, VGG)"
            )
    raise ValueError(f"no ConvBN or Dense stage follows {layer!r}")


def _refitted_consumer(nxt, num_filters, old_channels, consumer, layer, rngs):
    """The stage ``consumer`` rebuilt to read ``num_filters`` channels instead
    of ``old_channels``: a ``ConvBN`` gets a fresh kernel (its BatchNorm is
    kept), a ``Dense`` a fresh kernel of ``per_channel * num_filters`` inputs
    (its bias is kept); new weights are drawn from ``rngs``."""
    if isinstance(nxt, ConvBN):
        fresh = ConvBN(
            num_filters,
            nxt.conv.out_features,
            kernel=nxt.conv.kernel_size[0],
            stride=_stride(nxt.conv),
            relu=nxt.relu,
            rngs=rngs,
        )
        fresh.bn = nxt.bn  # same output channels: keep the BatchNorm
        return fresh
    linear = nxt.linear
    per_channel, rest = divmod(linear.in_features, old_channels)
    if rest:
        raise ValueError(
            f"stage {consumer!r} takes {linear.in_features} inputs, not a "
            f"multiple of the {old_channels} channels of {layer!r}"
        )
    fresh = Dense(
        per_channel * num_filters, linear.out_features, relu=nxt.relu, rngs=rngs
    )
    if linear.bias is not None:
        fresh.linear.bias[...] = linear.bias[...]
    return fresh


def damage(
    model: nnx.Module,
    layer: str,
    num_filters: int = 4,
    kernel_size: int = 7,
    *,
    key: PRNGKey,
) -> nnx.Module:
    """Replaces one convolution by a few large filters (paper App. F.1).

    The paper revises a VGG-16/19 convolution to "four 7x7x512 filters with
    padding=3": the layer keeps its input, and its output shrinks to
    ``num_filters`` channels. Here the ``ConvBN`` stage ``layer`` becomes a
    ``kernel_size x kernel_size`` convolution with ``num_filters`` outputs
    ("SAME" padding, i.e. 3 for 7x7; same stride and ReLU) and a fresh
    BatchNorm. The next stage with weights consumes fewer channels, so its
    kernel is re-initialised with the new input size: the next ``ConvBN``'s
    convolution kernel (its BatchNorm is kept) or the next ``Dense`` layer's
    kernel (its bias is kept). Every other parameter is copied unchanged. As
    in the paper, the damaged model is then trained (from scratch or
    fine-tuned); ``create_model(name, damage=[(layer, num_filters,
    kernel_size)])`` builds the damaged architecture directly, and the model
    metadata records the damage, so checkpoints rebuild it.

    Args:
        model: a zoo ConvNet, AlexNet or VGG; not modified.
        layer: the ``ConvBN`` stage to replace (e.g. ``"conv5_3"``).
        num_filters: output channels of the new convolution.
        kernel_size: side of its square filters.
        key: PRNG key of the re-initialised parameters.

    Returns:
        The damaged copy; ``model_kwargs["damage"]`` lists every damage as
        ``(layer, num_filters, kernel_size)``.

    Raises:
        ValueError: ``layer`` is not a ``ConvBN`` stage or its output reaches
            a stage other than pooling before the next ``ConvBN``/``Dense``.
        TypeError: non-integer ``num_filters`` or ``kernel_size``.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from jax_infodiscard.models import create_model
        >>> model = create_model("convnet", image_size=8, width=4, rngs=nnx.Rngs(0))
        >>> hurt = damage(model, "conv3", key=jax.random.key(1))
        >>> hurt.conv3.conv.kernel.shape
        (7, 7, 8, 4)
    """
    num_filters = check_int("num_filters", num_filters)
    kernel_size = check_int("kernel_size", kernel_size)
    stages = tuple(getattr(model, "stage_names", ()))
    if layer not in stages or not isinstance(getattr(model, layer), ConvBN):
        convs = _conv_stages(model) if stages else []
        raise ValueError(f"layer must be a ConvBN stage, one of {convs}; got {layer!r}")
    consumer = _consumer(model, layer)
    out = nnx.clone(model)
    old = getattr(out, layer)
    in_channels = old.conv.in_features
    old_channels = old.conv.out_features
    # Same sampler as create_model (fast to compile on XLA:CPU).
    with jax.threefry_partitionable(False):
        rngs = nnx.Rngs(key)
        setattr(
            out,
            layer,
            ConvBN(
                in_channels,
                num_filters,
                kernel=kernel_size,
                stride=_stride(old.conv),
                relu=old.relu,
                rngs=rngs,
            ),
        )
        fresh = _refitted_consumer(
            getattr(out, consumer), num_filters, old_channels, consumer, layer, rngs
        )
        setattr(out, consumer, fresh)
    record = (
        *dict(out.model_kwargs).get("damage", ()),
        (layer, num_filters, kernel_size),
    )
    out._model_kwargs = tuple(sorted({**out.model_kwargs, "damage": record}.items()))
    return out


def apply_damage(
    model: nnx.Module, specs: Sequence[Sequence[Any]], *, rngs: nnx.Rngs
) -> nnx.Module:
    """Applies ``damage`` for each ``(layer, num_filters, kernel_size)`` in order.

    Used by :func:`~jax_infodiscard.models.create_model` (``damage=``) so that
    a damaged model rebuilds from its metadata.

    Raises:
        TypeError: a spec that is not a ``(str, int, int)`` triple.
    """
    for spec in specs:
        if isinstance(spec, str) or len(spec) != 3 or not isinstance(spec[0], str):
            raise TypeError(
                "damage must be a list of (layer, num_filters, kernel_size) "
                f"triples, got {spec!r}"
            )
        model = damage(model, spec[0], spec[1], spec[2], key=rngs.params())
    return model
