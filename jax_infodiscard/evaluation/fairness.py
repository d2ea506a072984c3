"""Layer fairness: rescaling two neighbouring layers (paper Sec. 3.4).

Dividing the output of layer ``l`` by ``c`` and multiplying the kernel of the
next convolution by ``c`` changes neither the network's function nor its
knowledge, only feature magnitudes. CID and concentration are invariant
(docs/design.md, "Oracles"); maps built from gradients w.r.t. the features change.

The rescaling itself (:func:`~jax_infodiscard.models.surgery.rescale_pair`)
is model surgery and lives in :mod:`jax_infodiscard.models.surgery`; this
module measures which quantities survive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

import jax_infodiscard as jid
from jax_infodiscard import baselines
from jax_infodiscard.baselines import common
from jax_infodiscard.models import feature_fn, model_fn, split_fn
from jax_infodiscard.models.surgery import next_conv, rescale_pair
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "feature_input_gradient",
    "layer_fairness",
    "layer_gradient",
    "plot_fairness",
]


@jax.jit
def _layer_gradient(body, head, images, target):
    acts, pull = jax.vjp(body, images)
    del pull
    logits, head_vjp = jax.vjp(head, acts)
    (grads,) = head_vjp(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
    return jnp.sum(jnp.abs(grads), axis=-1)


def layer_gradient(model: nnx.Module, layer: str, images, target) -> Array:
    """``sum_k |d y_t / d h_l|`` at every position of layer ``l`` (B, h, w).

    The paper's gradient map ``dLoss/df`` of a feature (logit units per unit
    activation).
    """
    body, head = split_fn(model, layer)
    return _layer_gradient(body, head, jnp.asarray(images), jnp.asarray(target))


@jax.jit
def _feature_input_gradient(fn, images):
    def total(x):
        return sum(jnp.sum(v) for v in jax.tree.leaves(fn(x)))

    return jnp.max(jnp.abs(jax.grad(total)(images)), axis=-1)


def feature_input_gradient(model: nnx.Module, layer: str, images) -> Array:
    """Gradient saliency of a layer's feature: ``max_c |d sum(h_l) / d x|``.

    Returns ``float32 (B, H, W)`` (feature units per unit intensity).
    """
    return _feature_input_gradient(feature_fn(model, layer), jnp.asarray(images))


def _measure(model, layers, images, masks, key, cid_config):
    target = common.resolve_target(None, model_fn(model)(images))
    res = jid.cid(feature_fn(model, layers), images, key, config=cid_config)
    conc = np.asarray(jid.concentration(res.pixel, masks))
    out = {}
    for i, layer in enumerate(layers):
        pair = split_fn(model, layer)
        out[layer] = {
            "cid_mean": float(np.mean(res.mean[i])),
            "concentration": float(np.mean(conc[i])),
            "gradient_wrt_feature": float(
                jnp.mean(layer_gradient(model, layer, images, target))
            ),
            "feature_input_gradient": float(
                jnp.mean(feature_input_gradient(model, layer, images))
            ),
            "grad_cam": float(
                jnp.mean(
                    baselines.explain("grad_cam", pair, images, target=target).maps
                )
            ),
            "cam": float(
                jnp.mean(
                    baselines.explain(
                        "cam", pair, images, target=target, validate=False
                    ).maps
                )
            ),
        }
    return out


def layer_fairness(
    model: nnx.Module,
    images,
    masks,
    key: PRNGKey,
    *,
    layer: str = "conv1",
    factor: float = 4.0,
    cid_config: jid.CIDConfig = jid.CIDConfig(),
    ru_step: Callable[[nnx.Module, tuple[str, ...]], Mapping[str, float]] | None = None,
) -> tuple[dict, Figure]:
    """Measures which quantities survive the ``w/c, c*w`` rescaling.

    Args:
        model: zoo ConvNet/AlexNet/VGG.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        masks: ``bool (B, H, W)`` foreground masks (for concentration).
        key: PRNG key of the CID solver (the same for both models).
        layer: the rescaled layer ``l``; ``l`` and the next convolution are
            analysed.
        factor: the scale ``c``.
        cid_config: CID configuration (default: the library default, `CIDConfig()`).
        ru_step: when given, the table also has ``"ru_mean"``:
            ``ru_step(model, layers) -> {layer: mean RU}`` of each model
            (for example
            :func:`jax_infodiscard.experiments.measure.ru_step`, which
            trains decoders for each model; a decoder normalises its input
            by the training features' statistics, so one trained on ``h / c``
            matches one trained on ``h``).

    Returns:
        ``(table, figure)``. ``table`` has ``"layers"``, ``"factor"``,
        ``"max_output_change"`` (max \\|logit difference\\|), and per layer and
        quantity ``{"original", "rescaled", "ratio"}``; the figure shows
        ``log_c(ratio)`` per quantity (0 = invariant; for CID and
        concentration the ratio is of values in nats).
    """
    images = jnp.asarray(images, jnp.float32)
    masks = jnp.asarray(masks, bool)
    layers = (layer, next_conv(model, layer))
    scaled = rescale_pair(model, layer, factor)
    change = float(jnp.max(jnp.abs(model_fn(model)(images) - model_fn(scaled)(images))))
    before = _measure(model, layers, images, masks, key, cid_config)
    after = _measure(scaled, layers, images, masks, key, cid_config)
    if ru_step is not None:
        for m, out in ((model, before), (scaled, after)):
            ru = ru_step(m, layers)
            for name in layers:
                out[name] = {"ru_mean": ru[name], **out[name]}
    table: dict = {
        "layers": list(layers),
        "factor": factor,
        "max_output_change": change,
        "quantities": {},
    }
    for name in layers:
        table["quantities"][name] = {
            q: {
                "original": before[name][q],
                "rescaled": after[name][q],
                "ratio": after[name][q] / before[name][q]
                if before[name][q] != 0
                else float("nan"),
            }
            for q in before[name]
        }
    return table, plot_fairness(table)


def plot_fairness(table: dict) -> Figure:
    """Bar plot of ``log_c(rescaled / original)`` per quantity and layer."""
    layers = table["layers"]
    quantities = list(table["quantities"][layers[0]])
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(layers)
    x = np.arange(len(quantities))
    base = np.log(table["factor"])
    for i, layer in enumerate(layers):
        ratios = np.array(
            [table["quantities"][layer][q]["ratio"] for q in quantities], float
        )
        heights = np.log(np.abs(ratios)) / base
        ax.bar(x + i * width, heights, width, label=layer)
        for xi, h, r in zip(x + i * width, heights, ratios, strict=True):
            # Invariant quantities have no visible bar: print every ratio.
            ax.annotate(
                f"x{r:.3g}",
                (xi, h),
                xytext=(0, 3 if h >= 0 else -10),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x + width * (len(layers) - 1) / 2, quantities, rotation=20)
    ax.set_ylabel(f"log_{table['factor']:g}(rescaled / original)")
    ax.set_title(
        f"w/{table['factor']:g} on {layers[0]}, {table['factor']:g}w on {layers[1]}"
    )
    ax.legend()
    return fig
