"""Evaluation of explanation maps: descriptive accuracy, localisation, fairness."""

from jax_infodiscard.evaluation.fairness import (
    feature_input_gradient,
    layer_fairness,
    layer_gradient,
    rescale_pair,
)
from jax_infodiscard.evaluation.metrics import (
    DEFAULT_FRACTIONS,
    descriptive_accuracy,
    importance,
    localization_recall,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "descriptive_accuracy",
    "feature_input_gradient",
    "importance",
    "layer_fairness",
    "layer_gradient",
    "localization_recall",
    "rescale_pair",
]
