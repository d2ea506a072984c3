"""jax_infodiscard: layer-wise and pixel-wise information discarding in JAX.

Implements the metrics of "Quantification and Analysis of Layer-wise and
Pixel-wise Information Discarding" (ICML 2022): pixel-wise CID,
concentration and reconstruction uncertainty (RU), as compiled, vectorised
JAX programs.
"""

from jax_infodiscard.config import CIDConfig, RUConfig
from jax_infodiscard.core.cid import cid, feature_scale
from jax_infodiscard.core.concentration import box_to_mask, concentration
from jax_infodiscard.core.results import CIDResult, RUResult
from jax_infodiscard.core.ru import ru

__version__ = "0.1.0"

__all__ = [
    "CIDConfig",
    "CIDResult",
    "RUConfig",
    "RUResult",
    "box_to_mask",
    "cid",
    "concentration",
    "feature_scale",
    "ru",
]
