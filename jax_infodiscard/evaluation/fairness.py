"""Layer fairness: rescaling two neighbouring layers (paper Sec. 3.4).

Dividing the output of layer ``l`` by ``c`` and multiplying the kernel of the
next convolution by ``c`` changes neither the network's function nor its
knowledge, only feature magnitudes. CID and concentration are invariant
(DESIGN.md sec. 2); maps built from gradients w.r.t. the features change.

For a zoo ``ConvBN`` stage ``relu(BN(conv(x)))`` with inference-mode
BatchNorm, "kernel and bias of layer ``l`` divided by ``c``" means the folded
affine map: the BatchNorm scale and offset are divided by ``c`` (identical to
dividing the folded kernel and bias). Between the two convolutions only
positively homogeneous stages (ReLU, max- or average-pooling) are allowed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

import jax_infodiscard as jid
from jax_infodiscard import baselines
from jax_infodiscard.baselines import _common
from jax_infodiscard.models import feature_fn, model_fn, split_fn
from jax_infodiscard.models.decoder import decoder_fn
from jax_infodiscard.models.layers import ConvBN, GlobalAvgPool, MaxPool
from jax_infodiscard.training.decoder import DecoderConfig, train_decoder
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "feature_input_gradient",
    "layer_fairness",
    "layer_gradient",
    "next_conv",
    "plot_fairness",
    "rescale_pair",
]


def next_conv(model: nnx.Module, layer: str) -> str:
    """The ``ConvBN`` stage after ``layer``, reached through pooling stages only.

    Max and average pooling (``MaxPool``, ``GlobalAvgPool``) are positively
    homogeneous, so a factor ``1/c`` on ``layer``'s output reaches the next
    convolution unchanged.

    Raises:
        ValueError: ``layer`` is not a ``ConvBN`` stage, a stage other than
            pooling comes before the next ``ConvBN`` stage, or none follows.
    """
    # Stages with f(h / c) = f(h) / c for c > 0: max pooling, and average
    # pooling (linear).
    homogeneous = (MaxPool, GlobalAvgPool)
    stages = tuple(model.stage_names)
    if layer not in stages or not isinstance(getattr(model, layer), ConvBN):
        convs = [s for s in stages if isinstance(getattr(model, s), ConvBN)]
        raise ValueError(f"layer must be a ConvBN stage, one of {convs}; got {layer!r}")
    for name in stages[stages.index(layer) + 1 :]:
        stage = getattr(model, name)
        if isinstance(stage, ConvBN):
            return name
        if not isinstance(stage, homogeneous):
            allowed = ", ".join(t.__name__ for t in homogeneous)
            raise ValueError(
                f"stage {name!r} ({type(stage).__name__}) follows {layer!r} before "
                "any ConvBN stage: only pooling stages, which are positively "
                f"homogeneous ({allowed}), may lie between the rescaled layer and "
                "the convolution whose kernel absorbs the factor"
            )
    raise ValueError(f"no ConvBN stage follows {layer!r}")


def rescale_pair(model: nnx.Module, layer: str, factor: float = 4.0) -> nnx.Module:
    """A copy of ``model`` with layer ``layer`` scaled by ``1/factor``.

    Layer ``l = layer``: BatchNorm scale and offset (the folded kernel and
    bias) divided by ``factor``, so its post-ReLU output is ``h_l / factor``.
    Next convolution: kernel multiplied by ``factor`` (its bias unchanged), so
    every later activation and the output are unchanged.

    Args:
        model: a zoo ConvNet/AlexNet/VGG (``ConvBN`` stages); not modified.
        layer: a ``ConvBN`` stage followed (through pooling stages) by another.
        factor: positive scale ``c``.

    Returns:
        The rescaled copy.

    Raises:
        ValueError: bad layer or factor, or BatchNorm without scale/offset.
    """
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
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
    target = _common.resolve_target(None, model_fn(model)(images))
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


def _ru_means(model, layers, images, key, decoder_config, decoder_images):
    """Mean RU per layer, with one decoder per layer trained for ``model``."""
    fn = feature_fn(model, layers)
    decoders = {}
    for i, layer in enumerate(layers):
        dec, _ = train_decoder(
            fn,
            layer,
            decoder_images,
            decoder_config,
            key=jax.random.fold_in(key, 100 + i),
            progress=False,
        )
        decoders[layer] = decoder_fn(dec)
    res = jid.ru(fn, decoders, images, key, layers=layers)
    return {layer: float(np.mean(res.mean[i])) for i, layer in enumerate(layers)}


def layer_fairness(
    model: nnx.Module,
    images,
    masks,
    key: PRNGKey,
    *,
    layer: str = "conv1",
    factor: float = 4.0,
    cid_config: jid.CIDConfig = jid.CIDConfig(method="linearized"),
    decoder_config: DecoderConfig | None = None,
    decoder_images=None,
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
        cid_config: CID configuration.
        decoder_config: when given, the table also has ``"ru_mean"``: RU with
            decoders trained (same keys) for each model's two layers on
            ``decoder_images`` (``float32 (N, H, W, C)``). The decoder
            normalises its input by the training features' statistics, so a
            decoder trained on ``h / c`` matches one trained on ``h``.

    Returns:
        ``(table, figure)``. ``table`` has ``"layers"``, ``"factor"``,
        ``"max_output_change"`` (max |logit difference|), and per layer and
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
    if decoder_config is not None:
        if decoder_images is None:
            raise ValueError("decoder_config needs decoder_images to train on")
        for m, out in ((model, before), (scaled, after)):
            ru = _ru_means(m, layers, images, key, decoder_config, decoder_images)
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
