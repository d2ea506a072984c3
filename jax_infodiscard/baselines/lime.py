"""LIME for images (Ribeiro, Singh and Guestrin, 2016).

1. Each image is cut into superpixels (scikit-image SLIC, computed on the
   host with numpy; or user-given segments).
2. ``samples`` binary masks ``z in {0, 1}^S`` over the superpixels are drawn
   with the key (each superpixel kept with probability ``keep_probability``);
   the first mask keeps everything (the image itself). Switched-off
   superpixels are replaced by a fill (the superpixel's mean colour, as in the
   reference implementation, zeros or a constant).
3. The model scores every perturbed image (compiled chunks of
   ``internal_batch_size`` masks, each on the whole batch).
4. Masks are weighted by the exponential kernel
   ``pi(z) = sqrt(exp(-d(z)^2 / width^2))`` of the cosine distance
   ``d(z) = 1 - cos(z, 1)`` to the unperturbed image (the reference
   implementation's kernel), and a weighted ridge regression with intercept,
   ``min_c sum_n pi_n (y_n - c0 - z_n . c)^2 + ridge * |c|^2``, is solved in
   JAX.

The map paints each superpixel with its coefficient (signed, units of the
explained output per superpixel switched on).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["LimeConfig", "explain", "superpixels"]

OUTPUTS = ("logits", "probabilities")
_SEGMENT_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class LimeConfig:
    """Static settings of LIME.

    Attributes:
        samples: perturbed images per image, the unperturbed one included
            (``>= 1``; the reference budget is 5000).
        keep_probability: chance that a superpixel stays on in a mask.
        kernel_width: width of the exponential kernel on cosine distance.
        ridge: L2 penalty of the regression (``>= 0``; the reference uses 1).
        fill: ``"mean"`` (superpixel mean colour), ``"zeros"`` or a constant
            intensity for switched-off superpixels.
        output: ``"logits"`` or ``"probabilities"`` (softmax) of the target.
        internal_batch_size: masks evaluated together.
    """

    samples: int = 5000
    keep_probability: float = 0.5
    kernel_width: float = 0.25
    ridge: float = 1.0
    fill: str | float = "mean"
    output: str = "logits"
    internal_batch_size: int = 50

    def __post_init__(self):
        common.check_positive_int("samples", self.samples)
        common.check_positive_int("internal_batch_size", self.internal_batch_size)
        if not 0.0 < self.keep_probability < 1.0:
            raise ValueError(
                f"keep_probability must be in (0, 1), got {self.keep_probability}."
            )
        if not self.kernel_width > 0:
            raise ValueError(f"kernel_width must be > 0, got {self.kernel_width}.")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}.")
        if isinstance(self.fill, str) and self.fill not in ("mean", "zeros"):
            raise ValueError(
                f"fill must be 'mean', 'zeros' or a number, got {self.fill!r}."
            )
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}.")


def superpixels(
    images: Array,
    *,
    n_segments: int = 50,
    compactness: float = 10.0,
    sigma: float = 1.0,
) -> np.ndarray:
    """SLIC superpixels of each image, computed on the host.

    Args:
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        n_segments: approximate number of superpixels per image.
        compactness: SLIC colour/space trade-off (larger: squarer segments).
        sigma: Gaussian pre-smoothing in pixels.

    Returns:
        ``int32 (B, H, W)`` labels, contiguous ``0..S_b - 1`` per image.
    """
    from skimage.segmentation import slic  # host-only dependency

    host = np.asarray(images, dtype=np.float64)
    channels = host.shape[-1]
    labels = []
    for image in host:
        if channels == 1:
            seg = slic(
                image[..., 0],
                n_segments=n_segments,
                compactness=compactness,
                sigma=sigma,
                start_label=0,
                channel_axis=None,
            )
        else:
            seg = slic(
                image,
                n_segments=n_segments,
                compactness=compactness,
                sigma=sigma,
                start_label=0,
                channel_axis=-1,
                convert2lab=channels == 3,
            )
        labels.append(seg)
    return _relabel(np.stack(labels))


def _relabel(segments: np.ndarray) -> np.ndarray:
    """Contiguous labels ``0..S_b - 1`` per image, order of first label kept."""
    out = np.empty(segments.shape, np.int32)
    for b, seg in enumerate(segments):
        _, inverse = np.unique(seg, return_inverse=True)
        out[b] = inverse.reshape(seg.shape)
    return out


def _check_segments(segments, images: Array) -> np.ndarray:
    seg = np.asarray(segments)
    if seg.shape != images.shape[:3]:
        raise ValueError(
            f"segments must have shape (B, H, W) = {images.shape[:3]}, got {seg.shape}."
        )
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segments must be integer labels, got {seg.dtype}.")
    return _relabel(seg)


def _paint(values: Array, segments: Array) -> Array:
    """Paints ``values (B, S, ...)`` on ``segments (B, H, W)``: ``(B, H, W, ...)``."""
    return jax.vmap(lambda v, s: v[s])(values, segments)


def _weighted_ridge(z, y, weights, valid, ridge):
    """Weighted ridge with intercept for one image.

    ``z (N, S)``, ``y (N,)``, ``weights (N,)``, ``valid (S,)`` -> coefficients
    ``(S,)`` (zero on invalid columns), intercept and weighted R^2.
    """
    dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    total = jnp.sum(weights)
    z_mean = dot(weights, z) / total
    y_mean = jnp.dot(weights, y) / total
    zc = (z - z_mean) * valid
    yc = y - y_mean
    gram = dot(zc.T, weights[:, None] * zc)
    gram = gram + jnp.diag(ridge + (1.0 - valid))
    coef = jnp.linalg.solve(gram, dot(zc.T, weights * yc)) * valid
    intercept = y_mean - jnp.dot(z_mean, coef)
    residual = y - dot(z, coef) - intercept
    denom = jnp.dot(weights, yc**2)
    score = jnp.where(denom > 0, 1.0 - jnp.dot(weights, residual**2) / denom, 1.0)
    return coef, intercept, score


@functools.partial(jax.jit, static_argnames=("config", "max_segments"))
def _prepare(model_fn, images, segments, counts, keys, target, config, max_segments):
    """Fill image, target and masks of every image.

    Returns ``fill (B, H, W, C)``, ``target (B,)`` (arg-max of one forward
    pass when ``None``), ``valid (B, S)`` (1 on an image's own superpixels)
    and ``masks (B, samples, S)`` (float 0/1, the first one all on).
    """
    n_seg = max_segments
    valid = (jnp.arange(n_seg)[None, :] < counts[:, None]).astype(jnp.float32)

    if config.fill == "mean":

        def segment_means(image, seg):
            flat = image.reshape(-1, image.shape[-1])
            sums = jax.ops.segment_sum(flat, seg.reshape(-1), n_seg)
            area = jax.ops.segment_sum(jnp.ones(flat.shape[0]), seg.reshape(-1), n_seg)
            return sums / jnp.maximum(area, 1.0)[:, None]

        fill = _paint(jax.vmap(segment_means)(images, segments), segments)
    elif config.fill == "zeros":
        fill = jnp.zeros_like(images)
    else:
        fill = jnp.full_like(images, float(config.fill))

    if target is None:
        target = common.resolve_target(None, model_fn(images))

    draw = jax.vmap(
        lambda k: common.flat_bernoulli(
            k, config.keep_probability, (config.samples, n_seg)
        )
    )
    masks = draw(keys).at[:, 0].set(True).astype(jnp.float32) * valid[:, None, :]
    return fill, target, valid, masks


@dataclasses.dataclass(frozen=True)
class _MaskScore:
    """Explained output of the target for one mask per image.

    Hashable, so that ``Partial(_MaskScore(output), ...)`` hits the
    compilation cache of :func:`common.chunked_map` on repeated calls.
    """

    output: str

    def __call__(self, model_fn, images, fill, segments, target, masks):
        """``masks (N, B, S)`` -> target logit or probability ``(N, B)``.

        The ``N * B`` perturbed images go through the model as one batch
        (faster on CPU than vmapping the model over ``N``).
        """
        n, b = masks.shape[:2]
        pixels = jax.vmap(_paint, in_axes=(0, None))(masks, segments)[..., None]
        batch = images * pixels + fill * (1.0 - pixels)  # (N, B, H, W, C)
        logits = model_fn(batch.reshape(n * b, *images.shape[1:]))
        if self.output == "probabilities":
            logits = jax.nn.softmax(logits, axis=-1)
        return common.select_logit(logits, jnp.tile(target, n)).reshape(n, b)


@functools.partial(jax.jit, static_argnames=("config",))
def _fit(masks, y, valid, counts, segments, config):
    """Kernel weights and weighted ridge fit per image; the painted map."""
    cosine = jnp.sqrt(jnp.sum(masks, axis=-1) / counts[:, None])
    weights = jnp.sqrt(jnp.exp(-((1.0 - cosine) ** 2) / config.kernel_width**2))
    coef, intercept, score = jax.vmap(_weighted_ridge, in_axes=(0, 0, 0, 0, None))(
        masks, y, weights, valid, config.ridge
    )
    return _paint(coef, segments), coef, intercept, score


def _worker(model_fn, images, segments, counts, keys, target, config, max_segments):
    """Maps ``(B, H, W)`` and extras; masks scored in compiled chunks."""
    fill, target, valid, masks = _prepare(
        model_fn, images, segments, counts, keys, target, config, max_segments
    )
    score_mask = Partial(
        _MaskScore(config.output), model_fn, images, fill, segments, target
    )
    y = common.chunked_map(
        score_mask, jnp.swapaxes(masks, 0, 1), config.internal_batch_size
    ).T
    maps, coef, intercept, score = _fit(masks, y, valid, counts, segments, config)
    extras = {
        "coefficients": coef,
        "intercept": intercept,
        "score": score,
        "segments": segments,
        "num_segments": counts,
        "target": target,
    }
    return maps, extras


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey,
    *,
    target: Array | None = None,
    samples: int = 5000,
    segments: Array | None = None,
    n_segments: int = 50,
    compactness: float = 10.0,
    slic_sigma: float = 1.0,
    keep_probability: float = 0.5,
    kernel_width: float = 0.25,
    ridge: float = 1.0,
    fill: str | float = "mean",
    output: str = "logits",
    internal_batch_size: int = 50,
) -> common.Explanation:
    """LIME superpixel attributions of the target class.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: a ``jax.random.key`` or a ``(B,)`` batch of keys (one per image).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class of
            the unperturbed image.
        samples: masks per image, the all-on mask included.
        segments: optional integer labels ``(B, H, W)``; by default SLIC
            superpixels from :func:`superpixels` with ``n_segments``,
            ``compactness`` and ``slic_sigma``.
        n_segments: SLIC target count (ignored with ``segments``).
        compactness: SLIC compactness.
        slic_sigma: SLIC pre-smoothing in pixels.
        keep_probability: chance a superpixel stays on.
        kernel_width: kernel width on cosine distance.
        ridge: ridge penalty.
        fill: replacement for switched-off superpixels.
        output: explain ``"logits"`` (default) or ``"probabilities"``.
        internal_batch_size: masks per compiled chunk.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)`` (coefficients painted on
        their superpixels) and extras ``coefficients (B, S)`` (``S`` the
        largest superpixel count in the batch rounded up to a multiple of 16;
        zero past an image's own count), ``intercept (B,)``, ``score (B,)``
        (weighted R^2 of the fit),
        ``segments (B, H, W)``, ``num_segments (B,)`` and ``target (B,)``.
        ``model_calls = samples`` (the unperturbed image is the first sample),
        plus one forward pass when ``target`` is ``None``.

    Raises:
        ValueError: for malformed images, targets, keys, segments or settings.
    """
    config = LimeConfig(
        samples,
        keep_probability,
        kernel_width,
        ridge,
        fill,
        output,
        internal_batch_size,
    )
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    keys = common.image_keys(key, images.shape[0])
    classes = common.num_classes(model_fn, images)
    checked = common.check_target(target, images.shape[0], classes)
    if segments is None:
        common.check_positive_int("n_segments", n_segments)
        seg = superpixels(
            images, n_segments=n_segments, compactness=compactness, sigma=slic_sigma
        )
    else:
        seg = _check_segments(segments, images)
    counts = seg.reshape(seg.shape[0], -1).max(axis=1) + 1
    # Pad the superpixel axis to a multiple of 16 so that batches with
    # slightly different counts share one compiled program.
    width = -(-int(counts.max()) // _SEGMENT_BUCKET) * _SEGMENT_BUCKET
    maps, extras = _worker(
        model_fn,
        images,
        jnp.asarray(seg),
        jnp.asarray(counts, jnp.int32),
        keys,
        checked,
        config,
        width,
    )
    calls = config.samples + (1 if checked is None else 0)
    return common.Explanation(maps, extras, calls, "lime")
