"""Pure functions of a model's state: features, outputs, body/head splits.

Each builder calls ``nnx.split`` once (outside any ``jit``) and returns a
:class:`jax.tree_util.Partial` whose positional argument is the model state
(a pytree of arrays) and whose function re-assembles the model with
``nnx.merge`` at call time. Passed as an argument to a jitted function, the
parameters are therefore traced inputs rather than embedded constants, and
two Partials of the same architecture share one compiled program. BatchNorm
always runs on its running averages (inference mode), so the result for one
image never depends on the other images of the batch.

Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jax_infodiscard.models import create_model
    >>> model = create_model("convnet", rngs=nnx.Rngs(0))
    >>> fn = feature_fn(model, ["conv1", "logits"])
    >>> feats = jax.jit(lambda f, x: f(x))(fn, jax.numpy.zeros((2, 32, 32, 3)))
    >>> {k: v.shape for k, v in feats.items()}
    {'conv1': (2, 32, 32, 16), 'logits': (2, 10)}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from jax_infodiscard.models.adapters import adapter_advice
from jax_infodiscard.types import Array

__all__ = ["feature_fn", "layer_names", "model_fn", "split_fn"]


@dataclasses.dataclass(frozen=True)
class _Apply:
    """Hashable callable ``(state, x) -> output`` (the static part of a Partial).

    Attributes:
        graphdef: the static graph of the model (from ``nnx.split``).
        kind: ``"features"``, ``"output"`` or ``"range"``.
        layers: requested layers for ``kind="features"``.
        start: first stage for ``kind="range"``.
        stop: one past the last stage for ``kind="range"`` (None: to the end).
    """

    graphdef: Any
    kind: str
    layers: tuple[str, ...] = ()
    start: int = 0
    stop: int | None = None

    def __call__(self, state: Any, x: Array) -> Any:
        model = nnx.merge(self.graphdef, state)
        if self.kind == "features":
            feats = model.features(x)
            return {layer: feats[layer] for layer in self.layers}
        if self.kind == "output":
            return model(x)
        return model.forward_range(x, self.start, self.stop)


def _inference_split(model: Any, caller: str) -> tuple[Any, Any]:
    """``nnx.split`` of an inference view of ``model`` (the user's is unchanged).

    BatchNorm on its running averages and dropout off
    (``nnx.view(use_running_average=True, deterministic=True)``, as
    :func:`~jax_infodiscard.models.adapters.from_nnx` does), so that the output for
    one image does not depend on the rest of the batch. Zoo models pass the
    mode explicitly at every call; the view changes nothing for them.

    Raises:
        TypeError: ``model`` is not an NNX module (a Linen module: the message
            says which adapter to use instead).
    """
    if not isinstance(model, nnx.Module):
        advice = adapter_advice(model, "model_fn")
        raise TypeError(
            f"{caller} takes a Flax NNX module, got {type(model).__name__}"
            + (f"; {advice.split(': ', 1)[1]} instead" if advice else "")
        )
    view = nnx.view(
        model, use_running_average=True, deterministic=True, raise_if_not_found=False
    )
    return nnx.split(view)


def _check_zoo(model: Any) -> None:
    """Refuses a model without ``features``, saying which adapter to call."""
    if hasattr(model, "features"):
        return
    advice = adapter_advice(model, "feature_fn")
    raise TypeError(
        "feature_fn(model) takes a zoo model (jax_infodiscard.models."
        "create_model) or a module with .features(x) and .layer_names, got "
        f"{type(model).__name__}"
        + (f"; for your own model {advice.split(': ', 1)[1]}" if advice else "")
    )


def layer_names(model: nnx.Module) -> tuple[str, ...]:
    """All named layers of ``model``, input to output.

    Uses ``model.layer_names`` when present, else the keys of
    ``model.features`` evaluated abstractly on one image.
    """
    names = getattr(model, "layer_names", None)
    if names is not None:
        return tuple(names)
    size = model.image_size
    shapes = nnx.eval_shape(
        lambda m: m.features(jax.ShapeDtypeStruct((1, size, size, 3), "float32")),
        model,
    )
    return tuple(shapes)


def _check_layers(model: nnx.Module, layers: str | Sequence[str] | None) -> tuple:
    valid = layer_names(model)
    if layers is None:
        return tuple(getattr(model, "default_layers", valid))
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one layer (or be None)")
    unknown = [layer for layer in layers if layer not in valid]
    if unknown:
        raise ValueError(
            f"unknown layer(s) {unknown} for model "
            f"{getattr(model, 'arch', type(model).__name__)!r}; valid layers: "
            f"{', '.join(valid)}"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layer names in {list(layers)}")
    return layers


def feature_fn(
    model: nnx.Module, layers: str | Sequence[str] | None = None
) -> jax.tree_util.Partial:
    """Pure feature extractor ``fn(images) -> {layer: array}``.

    Args:
        model: a zoo model (or any module with ``features(x)`` and
            ``layer_names``/``default_layers``).
        layers: layer name(s) to return; ``None`` for ``model.default_layers``.

    Returns:
        A :class:`jax.tree_util.Partial` mapping float32 images
        ``(B, S, S, 3)`` in ``[0, 1]`` to ``{layer: (B, ...)}`` float32 arrays
        (inference-mode BatchNorm). Its positional argument is the model state,
        so ``jax.jit(lambda f, x: f(x))(fn, x)`` traces the parameters.

    Raises:
        ValueError: unknown, duplicate or no layer names (the message lists
            the valid names).
    """
    _check_zoo(model)
    chosen = _check_layers(model, layers)
    graphdef, state = _inference_split(model, "feature_fn")
    return jax.tree_util.Partial(_Apply(graphdef, "features", layers=chosen), state)


def model_fn(model: nnx.Module) -> jax.tree_util.Partial:
    """Pure model output ``fn(images) -> logits``.

    Args:
        model: an NNX module called as ``model(images)``: a zoo model or your
            own (not modified).

    Returns:
        A :class:`jax.tree_util.Partial` mapping float32 images
        ``(B, S, S, 3)`` to the model output, logits ``(B, num_classes)``
        for classifiers (the reconstruction ``(B, S, S, 3)`` for
        auto-encoders), with BatchNorm on its running averages and dropout
        off (the inference view :func:`~jax_infodiscard.models.adapters.from_nnx`
        uses), so that one image's output does not depend on the batch.

    Raises:
        TypeError: ``model`` is not an NNX module (for a Linen module the
            message says what to pass instead).
    """
    graphdef, state = _inference_split(model, "model_fn")
    return jax.tree_util.Partial(_Apply(graphdef, "output"), state)


def split_fn(
    model: nnx.Module, layer: str
) -> tuple[jax.tree_util.Partial, jax.tree_util.Partial]:
    """Cuts a sequential model after ``layer`` into ``body`` and ``head``.

    Args:
        model: a sequential zoo model (ConvNet, AlexNet, VGG, ResNet, ResNet
            auto-encoder).
        layer: any name of ``model.layer_names`` (aliases allowed).

    Returns:
        ``(body, head)`` Partials: ``body(images) -> activation of layer``
        ``(B, ...)`` and ``head(activation) -> model output``, so that
        ``head(body(x)) == model(x)``; the head is the identity when ``layer``
        is the output layer.

    Raises:
        ValueError: unknown layer, or a model with skip connections across
            layers (U-Net).
    """
    if not getattr(model, "sequential", False):
        raise ValueError(
            f"model {getattr(model, 'arch', type(model).__name__)!r} is not a "
            "chain of layers (skip connections) and cannot be split"
        )
    stage = model.resolve_layer(layer)
    k = model.stage_names.index(stage) + 1
    graphdef, state = _inference_split(model, "split_fn")
    body = jax.tree_util.Partial(_Apply(graphdef, "range", start=0, stop=k), state)
    head = jax.tree_util.Partial(_Apply(graphdef, "range", start=k, stop=None), state)
    return body, head
