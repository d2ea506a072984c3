"""Shared type aliases and the feature-function protocol.

Conventions used across the package:

* Images are ``float32`` arrays of shape ``(B, H, W, C)`` with values in the
  unit range ``[0, 1]`` (NHWC). The noise budget ``beta`` is expressed in that
  unit.
* A *feature function* maps a batch of images to a dict of named feature maps,
  ``feature_fn(images) -> {layer_name: array}``; every value has leading axis
  ``B`` and the result for one image must not depend on the rest of the batch
  (BatchNorm runs in inference mode, no dropout).
* Feature functions that carry parameters should be a
  :class:`jax.tree_util.Partial` so that the parameters are traced arguments
  of the compiled programs rather than baked-in constants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any


class FeatureFn(Protocol):
    """``feature_fn(images: (B, H, W, C)) -> {layer: (B, ...)}``."""

    def __call__(self, images: Array) -> Mapping[str, PyTree]: ...


ModelFn = Callable[[Array], Array]
"""``model_fn(images: (B, H, W, C)) -> logits (B, num_classes)``."""
