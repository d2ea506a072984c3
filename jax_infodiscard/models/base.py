"""Base class of the model zoo: a chain of named stages.

A :class:`LayeredModel` is a sequence of named sub-modules ("stages", e.g.
``conv1``, ``pool1``, ``block2_3``, ``fc1``, ``logits``); the output of every
stage is a named feature map. Some models add *aliases* (``stage2`` names the
output of the last block of the second ResNet stage). Because the forward
pass is a plain chain, the network can be cut after any stage into a body
and a head (``head(body(x)) == model(x)``), which Grad-CAM-style explainers
need. Models with skip connections across stages (the U-Net) override
:meth:`features` and ``__call__`` and set ``sequential = False``.

Inputs are float32 ``(B, H, W, 3)`` images in ``[0, 1]`` with
``H == W == image_size``; an optional learnable per-channel centring
(:class:`~jax_infodiscard.models.layers.InputNorm`) runs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import nnx

from jax_infodiscard.models.layers import InputNorm
from jax_infodiscard.types import Array
from jax_infodiscard.validation import check_int

_SIZE_OPTIONS = ("width",)
"""Integer model options, checked to be ``>= 1`` by :meth:`LayeredModel._setup`."""

__all__ = ["LayeredModel", "check_image_size"]


def check_image_size(arch: str, image_size: int, multiple: int, minimum: int) -> None:
    """Raises ``ValueError`` unless ``image_size`` suits the architecture.

    Args:
        arch: model name (for the message).
        image_size: requested square image side in pixels.
        multiple: the side must be a multiple of this (total downsampling).
        minimum: the smallest accepted side.
    """
    if (
        not isinstance(image_size, int)
        or image_size < minimum
        or image_size % multiple != 0
    ):
        raise ValueError(
            f"model {arch!r} cannot take image_size={image_size!r}: it needs a "
            f"square side that is a multiple of {multiple} and at least {minimum}"
        )


class LayeredModel(nnx.Module):
    """A chain of named stages with named feature maps.

    Subclasses set, in ``__init__`` (after calling :meth:`_setup`), one
    attribute per stage name holding a module called as
    ``stage(h, train=...)``.

    Attributes:
        arch: registry name of the architecture (e.g. ``"resnet20"``).
        task: ``"classification"`` (``__call__`` returns logits
            ``(B, num_classes)``) or ``"reconstruction"`` (``__call__``
            returns images ``(B, H, W, 3)``).
        num_classes: number of output classes.
        image_size: side of the square input images, in pixels.
        sequential: whether :meth:`forward_range` can cut the network.
    """

    task: str = "classification"
    sequential: bool = True

    def _setup(
        self,
        *,
        arch: str,
        num_classes: int,
        image_size: int,
        stage_names: Sequence[str],
        default_layers: Sequence[str],
        aliases: Sequence[tuple[str, str]] = (),
        normalize: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        num_classes = check_int("num_classes", num_classes)
        for name, value in (model_kwargs or {}).items():
            if name in _SIZE_OPTIONS:  # before any layer is built with them
                check_int(name, value)
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self._stage_names = tuple(stage_names)
        self._aliases = tuple((str(a), str(t)) for a, t in aliases)
        names: list[str] = []
        for stage in self._stage_names:
            names.append(stage)
            names.extend(a for a, t in self._aliases if t == stage)
        self._layer_names = tuple(names)
        unknown = [n for n in default_layers if n not in self._layer_names]
        if unknown:  # programming error in a subclass
            raise ValueError(f"default layers {unknown} are not layers of {arch}")
        self._default_layers = tuple(default_layers)
        self._model_kwargs = tuple(sorted((model_kwargs or {}).items()))
        self.input_norm = InputNorm(3, rngs=rngs) if normalize else None

    # ------------------------------------------------------------------ names
    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every named feature map, ordered from input to output."""
        return self._layer_names

    @property
    def default_layers(self) -> tuple[str, ...]:
        """A subset of :attr:`layer_names` worth analysing, input to output."""
        return self._default_layers

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The cut points of the chain (layer names without aliases)."""
        return self._stage_names

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Constructor options besides ``num_classes``/``image_size``."""
        return dict(self._model_kwargs)

    @property
    def output_layer(self) -> str:
        """Name of the layer returned by ``__call__``."""
        return self._stage_names[-1]

    def resolve_layer(self, layer: str) -> str:
        """Maps an alias to its stage name; ``ValueError`` for unknown names."""
        if layer not in self._layer_names:
            raise ValueError(
                f"unknown layer {layer!r} for model {self.arch!r}; valid layers: "
                f"{', '.join(self._layer_names)}"
            )
        return dict(self._aliases).get(layer, layer)

    # ---------------------------------------------------------------- forward
    def check_input(self, x: Array) -> None:
        """Raises ``ValueError`` unless ``x`` has shape ``(B, S, S, 3)``."""
        s = self.image_size
        if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != (s, s, 3):
            raise ValueError(
                f"model {self.arch!r} expects images of shape (B, {s}, {s}, 3), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )

    def _prepare(self, x: Array) -> Array:
        self.check_input(x)
        return x if self.input_norm is None else self.input_norm(x)

    def forward_range(
        self, h: Array, start: int = 0, stop: int | None = None, *, train: bool = False
    ) -> Array:
        """Runs stages ``start <= i < stop`` of the chain.

        Args:
            h: the images ``(B, S, S, 3)`` when ``start == 0``, else the output
                of stage ``start - 1``.
            start: index of the first stage to run.
            stop: one past the last stage (default: all).
            train: BatchNorm on batch statistics (and update running ones).

        Returns:
            The output of stage ``stop - 1`` (``h`` itself if the range is empty).
        """
        if not self.sequential:
            raise ValueError(
                f"model {self.arch!r} has skip connections across layers and "
                "cannot be cut into body and head"
            )
        stop = len(self._stage_names) if stop is None else stop
        if start == 0:
            h = self._prepare(h)
        for name in self._stage_names[start:stop]:
            h = getattr(self, name)(h, train=train)
        return h

    def features(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        """All named feature maps.

        Args:
            x: float32 images ``(B, S, S, 3)`` in ``[0, 1]``.
            train: BatchNorm on batch statistics (default: running averages).

        Returns:
            ``{layer: array}`` for every name in :attr:`layer_names`, each with
            leading axis ``B``.
        """
        h = self._prepare(x)
        out: dict[str, Array] = {}
        for name in self._stage_names:
            h = getattr(self, name)(h, train=train)
            out[name] = h
        for alias, target in self._aliases:
            out[alias] = out[target]
        return {name: out[name] for name in self._layer_names}

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """The model output: logits ``(B, num_classes)`` or a reconstruction."""
        return self.forward_range(x, train=train)
