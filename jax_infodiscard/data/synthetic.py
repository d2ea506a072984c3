"""Embedded synthetic data set: coloured shapes on cluttered backgrounds.

The default data set of the package needs no download. Every image shows one
foreground object whose *shape* is the class (disc, square, triangle, ...),
with random colour, size, position and rotation, painted over a textured
background (smooth colour noise, stripes, a colour gradient and per-pixel
noise) that carries small distractors (blobs and thin bars that never decide
the class). The object is painted with a hard indicator function (no
anti-aliasing), so the foreground mask is exact: ``images[mask]`` is the
object colour and nothing else, and ``boxes`` is the tight bounding box of
``masks``.

Conventions:

* ``images``: ``float32`` ``(N, H, W, 3)`` in ``[0, 1]`` (NHWC).
* ``masks``: ``bool`` ``(N, H, W)``, ``True`` on the object.
* ``boxes``: ``int32`` ``(N, 4)`` as ``(y0, x0, y1, x1)`` in pixel
  coordinates, half-open: rows ``y0 <= y < y1`` and columns ``x0 <= x < x1``
  (the same convention as ``jax_infodiscard.box_to_mask``).
* ``labels``: ``int32`` ``(N,)`` in ``[0, num_classes)``.

Generation is pure numpy, vectorised over blocks of images and deterministic
given ``(seed, config)``. Images are drawn in fixed blocks of
:data:`BLOCK_SIZE` examples, each from its own random stream, so
``make_dataset(n, seed=s)`` is a prefix of ``make_dataset(m, seed=s)`` for
``n <= m``.

A linear classifier on raw pixels does poorly on this task (about chance to
a few times chance; see :func:`ridge_classifier_accuracy`) while a small
convnet learns it, because the class is a shape at a random place, scale,
rotation and colour. ``SyntheticConfig(background_bias=p)`` makes the
background colour and stripe orientation follow the class with probability
``p``; then the background alone predicts the label, which is the setting in
which a model may stop concentrating on the foreground.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jax_infodiscard.data.transforms import batch_indices
from jax_infodiscard.validation import check_int

__all__ = [
    "BLOCK_SIZE",
    "SHAPE_NAMES",
    "SPLIT_SEEDS",
    "Dataset",
    "SyntheticConfig",
    "iterate_batches",
    "load_synthetic",
    "make_dataset",
    "ridge_classifier_accuracy",
    "tight_boxes",
]

BLOCK_SIZE = 512
"""Examples per independent random stream (fixed: changing it changes data)."""

SPLIT_SEEDS = {"train": 0, "test": 1}
"""Seeds used by :func:`load_synthetic` for each split."""

_DEFAULT_SPLIT_SIZES = {"train": 10_000, "test": 2_000}

# Number of cells of the low-resolution colour noise (per side).
_NOISE_GRID = 5
# Candidate object colours drawn per image for the contrast rejection step.
_COLOR_CANDIDATES = 16


# ---------------------------------------------------------------------------
# Shapes. Each maps canonical coordinates (u, v) -- the object frame, scaled
# so that the shape lies inside the unit disc, v pointing down -- to a boolean
# indicator of the same shape.
# ---------------------------------------------------------------------------

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.85**2


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.66


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, centroid at the origin, circumradius 0.95 (inradius 0.475).
    r, c = 0.475, np.float32(np.sqrt(3.0) / 2.0)
    return (v <= r) & (c * u - 0.5 * v <= r) & (-c * u - 0.5 * v <= r)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.28) & (av <= 0.92)) | ((av <= 0.28) & (au <= 0.92))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 >= 0.48**2) & (r2 <= 0.92**2)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five spikes: the radius limit goes linearly in angle from 0.38 (valley)
    # to 0.95 (tip).
    t = np.mod(np.arctan2(v, u) * (5.0 / (2.0 * np.pi)), 1.0)
    limit = 0.38 + 0.57 * np.abs(2.0 * t - 1.0)
    return u * u + v * v <= limit * limit


def _bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    av = np.abs(v)
    return (np.abs(u) <= 0.8) & (av >= 0.18) & (av <= 0.55)


def _letter_l(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    stem = (u >= -0.6) & (u <= -0.2) & (np.abs(v) <= 0.8)
    foot = (np.abs(u) <= 0.6) & (v >= 0.4) & (v <= 0.8)
    return stem | foot


def _letter_t(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    top = (np.abs(u) <= 0.6) & (v >= -0.8) & (v <= -0.42)
    stem = (np.abs(u) <= 0.19) & (np.abs(v) <= 0.8)
    return top | stem


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 0.9**2) & ((u - 0.45) ** 2 + v * v > 0.7**2)


_SHAPES: tuple[tuple[str, ShapeFn], ...] = (
    ("disc", _disc),
    ("square", _square),
    ("triangle", _triangle),
    ("cross", _cross),
    ("ring", _ring),
    ("star", _star),
    ("bars", _bars),
    ("letter_L", _letter_l),
    ("letter_T", _letter_t),
    ("crescent", _crescent),
)

SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in _SHAPES)
"""Class names in label order; ``num_classes=k`` uses the first ``k``."""

# Background palette and stripe angle per class, used by ``background_bias``.
_PALETTE = np.array(
    [
        [0.80, 0.25, 0.25],
        [0.25, 0.70, 0.30],
        [0.25, 0.35, 0.80],
        [0.80, 0.75, 0.25],
        [0.70, 0.30, 0.75],
        [0.25, 0.75, 0.75],
        [0.85, 0.55, 0.20],
        [0.45, 0.45, 0.45],
        [0.60, 0.80, 0.55],
        [0.35, 0.20, 0.45],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of the synthetic shapes data set.

    Sizes are fractions of ``image_size`` so that the 32 and 64 pixel
    versions look alike.

    Attributes:
        num_classes: Number of shape classes, ``2 <= num_classes <= 10``; the
            first ``num_classes`` entries of :data:`SHAPE_NAMES` are used.
        image_size: Height and width in pixels (square images), at least 16.
        min_scale: Smallest object radius as a fraction of ``image_size``.
        max_scale: Largest object radius as a fraction of ``image_size``
            (below 0.5: the object always lies fully inside the image, so its
            mask is never empty and never the whole image).
        max_distractors: Each image gets a uniform number of distractors in
            ``[0, max_distractors]`` (small blobs and thin bars, painted
            behind the object).
        texture_strength: Multiplies the amplitude of the background texture
            (smooth noise, stripes, gradient); ``0`` gives flat backgrounds.
        noise_std: Standard deviation of the per-pixel Gaussian noise added
            to the background (the object stays flat), in image units.
        min_contrast: Wanted Euclidean RGB distance between the object
            colour and the mean background colour: the colour is the first
            of 16 uniform draws that far away (else the farthest draw; for
            the default 0.45 that fallback has probability below 1e-6).
        background_bias: Probability ``p`` in ``[0, 1]`` that the background
            colour and stripe orientation are those of the image's class
            (otherwise random). ``0`` makes the background independent of the
            label.
    """

    num_classes: int = 10
    image_size: int = 32
    min_scale: float = 0.22
    max_scale: float = 0.40
    max_distractors: int = 6
    texture_strength: float = 1.0
    noise_std: float = 0.03
    min_contrast: float = 0.45
    background_bias: float = 0.0

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(_SHAPES):
            raise ValueError(
                f"num_classes must be in [2, {len(_SHAPES)}], got {self.num_classes}"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.05 <= self.min_scale <= self.max_scale < 0.5:
            raise ValueError(
                "need 0.05 <= min_scale <= max_scale < 0.5, got "
                f"min_scale={self.min_scale}, max_scale={self.max_scale}"
            )
        if not 0 <= self.max_distractors <= 100:
            raise ValueError(
                f"max_distractors must be in [0, 100], got {self.max_distractors}"
            )
        if self.texture_strength < 0 or self.noise_std < 0:
            raise ValueError(
                "texture_strength and noise_std must be >= 0, got "
                f"{self.texture_strength} and {self.noise_std}"
            )
        if not 0.0 <= self.min_contrast <= 0.8:
            raise ValueError(
                f"min_contrast must be in [0, 0.8], got {self.min_contrast}"
            )
        if not 0.0 <= self.background_bias <= 1.0:
            raise ValueError(
                f"background_bias must be in [0, 1], got {self.background_bias}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the ``num_classes`` classes, in label order."""
        return SHAPE_NAMES[: self.num_classes]


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory labelled image data set with foreground annotations.

    Attributes:
        images: ``float32`` ``(N, H, W, 3)`` in ``[0, 1]``.
        labels: ``int32`` ``(N,)``.
        masks: ``bool`` ``(N, H, W)``, ``True`` on the foreground object.
        boxes: ``int32`` ``(N, 4)``, ``(y0, x0, y1, x1)`` half-open pixel
            coordinates; the tight bounding box of ``masks``.
        class_names: Names of the classes, indexed by label.
        object_colors: ``float32`` ``(N, 3)``, the flat RGB colour of each
            object (``images[n][masks[n]]`` all equal ``object_colors[n]``).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    class_names: tuple[str, ...]
    object_colors: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def subset(self, index: np.ndarray | slice) -> Dataset:
        """Returns the examples selected by ``index`` (a slice or int array)."""
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            masks=self.masks[index],
            boxes=self.boxes[index],
            object_colors=self.object_colors[index],
        )


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight bounding boxes of boolean masks.

    Args:
        masks: ``bool`` ``(N, H, W)``; every mask must be non-empty.

    Returns:
        ``int32`` ``(N, 4)`` boxes ``(y0, x0, y1, x1)``, half-open pixel
        coordinates: the smallest box containing every ``True`` pixel.

    Raises:
        ValueError: If ``masks`` is not 3-D or some mask is empty.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    if not rows.any(axis=1).all():
        empty = np.flatnonzero(~rows.any(axis=1))
        raise ValueError(f"empty masks have no box (indices {empty[:10]})")
    h, w = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    return np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)


def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Linear interpolation weights ``(size, cells)`` from a coarse grid.

    Pixel centres ``(i + 0.5) / size`` are mapped onto ``cells`` grid nodes
    spanning ``[0, 1]``.
    """
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * (cells - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), cells - 2)
    frac = t - lo
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _pick_object_colors(
    rng: np.random.Generator, base: np.ndarray, min_contrast: float
) -> np.ndarray:
    """Random colours ``(n, 3)`` at RGB distance >= ``min_contrast`` of ``base``.

    Draws a few uniform candidates per image and keeps the first one far
    enough from the background colour (the farthest one if none is).
    """
    n = base.shape[0]
    cand = rng.random((n, _COLOR_CANDIDATES, 3), dtype=np.float32)
    dist = np.linalg.norm(cand - base[:, None, :], axis=-1)
    ok = dist >= min_contrast
    choice = np.where(ok.any(axis=1), ok.argmax(axis=1), dist.argmax(axis=1))
    return cand[np.arange(n), choice]


def _rotated_coords(
    cy: np.ndarray,
    cx: np.ndarray,
    angle: np.ndarray,
    scale_u: np.ndarray,
    scale_v: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates of every pixel centre, ``(n, S, S)`` each.

    ``u = ((x - cx) cos a + (y - cy) sin a) / scale_u`` and
    ``v = ((y - cy) cos a - (x - cx) sin a) / scale_v``; built from separable
    ``(n, 1, S)`` and ``(n, S, 1)`` parts so each costs one full-size add.
    """
    coord = np.arange(size, dtype=np.float32) + np.float32(0.5)  # centres
    dy = coord[None, :] - cy[:, None]  # (n, S)
    dx = coord[None, :] - cx[:, None]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    iu, iv = (1.0 / scale_u)[:, None], (1.0 / scale_v)[:, None]
    u = (dx * ca * iu)[:, None, :] + (dy * sa * iu)[:, :, None]
    v = (dy * ca * iv)[:, :, None] - (dx * sa * iv)[:, None, :]
    return u, v


def _render_block(
    rng: np.random.Generator,
    config: SyntheticConfig,
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    colors: np.ndarray,
) -> None:
    """Renders the first ``n`` examples of one block of ``BLOCK_SIZE``.

    ``n = len(labels)``. Every per-example parameter is drawn for the whole
    block first and the per-pixel arrays last, so the first ``n`` examples
    do not depend on ``n``. Writes into the given output views:
    ``images (n, S, S, 3) float32``, ``labels (n,) int32``,
    ``masks (n, S, S) bool`` and ``colors (n, 3) float32``.
    """
    n = labels.shape[0]
    p = _block_parameters(rng, config, n)
    np.copyto(images, _background(p, config, n).transpose(0, 2, 3, 1))
    layer, lab = _painted_layers(p, config, masks)
    palette = np.concatenate([p["d_rgb"][:n], p["obj"][:n, None, :]], axis=1)
    ex, yy, xx = np.nonzero(layer)  # palette: (n, nd + 1, 3)
    images[ex, yy, xx] = palette[ex, layer[ex, yy, xx] - 1]
    labels[...] = lab
    colors[...] = p["obj"][:n]


def _block_parameters(
    rng: np.random.Generator, config: SyntheticConfig, n: int
) -> dict[str, np.ndarray]:
    """Every random draw of a block, in a fixed order (the data set's bytes).

    Per-example parameters are drawn for the whole block (``BLOCK_SIZE``
    rows); the smooth-noise ``grid`` and the per-pixel ``noise`` last, for
    the first ``n`` examples only.
    """
    b, k, s = BLOCK_SIZE, config.num_classes, config.image_size
    f32 = np.float32
    strength = f32(config.texture_strength)
    p: dict[str, np.ndarray] = {}
    # --- object ------------------------------------------------------------
    p["lab"] = lab = rng.permutation(np.arange(b) % k).astype(np.int32)
    p["radius"] = radius = (
        rng.uniform(config.min_scale, config.max_scale, b).astype(f32) * s
    )
    p["cy"] = rng.uniform(radius, s - radius).astype(f32)
    p["cx"] = rng.uniform(radius, s - radius).astype(f32)
    p["angle"] = rng.uniform(0.0, 2.0 * np.pi, b).astype(f32)
    # --- colours -----------------------------------------------------------
    biased = rng.random(b) < config.background_bias
    base = rng.uniform(0.15, 0.85, (b, 3)).astype(f32)
    jitter = rng.uniform(-0.05, 0.05, (b, 3)).astype(f32)
    p["base"] = base = np.where(biased[:, None], _PALETTE[lab] + jitter, base)
    p["obj"] = _pick_object_colors(rng, base, config.min_contrast)
    # --- background texture: smooth, stripes, ramp ------------------------
    weights = rng.random((b, 3), dtype=f32) * strength
    p["smooth_amp"] = 0.15 * weights[:, 0]
    p["stripe_freq"] = rng.uniform(1.5, 5.0, b).astype(f32)  # cycles per image
    stripe_angle = rng.uniform(0.0, np.pi, b).astype(f32)
    class_angle = (lab * np.pi / k + rng.normal(0, 0.05, b)).astype(f32)
    p["stripe_angle"] = np.where(biased, class_angle, stripe_angle)
    p["stripe_phase"] = rng.uniform(0.0, 2.0 * np.pi, b).astype(f32)
    p["stripe_rgb"] = rng.uniform(-0.15, 0.15, (b, 3)).astype(f32) * weights[:, 1:2]
    p["ramp_angle"] = rng.uniform(0.0, 2.0 * np.pi, b).astype(f32)
    p["ramp_rgb"] = rng.uniform(-0.2, 0.2, (b, 3)).astype(f32) * weights[:, 2:3]
    # --- distractors -------------------------------------------------------
    nd = config.max_distractors
    p["n_active"] = rng.integers(0, nd + 1, b)
    p["d_blob"] = d_blob = rng.random((b, nd)) < 0.5
    p["d_cy"] = rng.uniform(0.0, s, (b, nd)).astype(f32)
    p["d_cx"] = rng.uniform(0.0, s, (b, nd)).astype(f32)
    p["d_angle"] = rng.uniform(0.0, np.pi, (b, nd)).astype(f32)
    # Blob semi-axes, or bar half-length and half-width (fractions of s).
    blob_a = rng.uniform(0.04, 0.10, (b, nd))
    blob_b = rng.uniform(0.04, 0.10, (b, nd))
    bar_a = rng.uniform(0.06, 0.15, (b, nd))
    bar_b = rng.uniform(0.015, 0.04, (b, nd))
    p["d_a"] = (np.where(d_blob, blob_a, bar_a) * s).astype(f32)
    p["d_b"] = (np.where(d_blob, blob_b, bar_b) * s).astype(f32)
    p["d_rgb"] = rng.random((b, nd, 3), dtype=f32)
    p["grid"] = rng.standard_normal((b, 3, _NOISE_GRID, _NOISE_GRID), dtype=f32)[:n]
    # --- per-pixel noise, last: the first ``n`` images' values only --------
    p["noise"] = rng.random((n, 3, s, s), dtype=f32)  # uniform in [0, 1)
    return p


def _background(p: dict[str, np.ndarray], config: SyntheticConfig, n: int):
    """The background texture of the first ``n`` examples: ``(n, 3, S, S)``.

    Channel-first float32 in ``[0, 1]``; consumes ``p["noise"]`` in place.
    """
    f32, s = np.float32, config.image_size
    interp = _interp_matrix(s, _NOISE_GRID)
    bg = interp @ p["grid"] @ interp.T  # smooth colour noise
    bg *= p["smooth_amp"][:n, None, None, None]
    bg += p["base"][:n, :, None, None]
    # Uniform noise with standard deviation noise_std: width sqrt(12) * std.
    noise = p["noise"]
    width = f32(np.sqrt(12.0) * config.noise_std)
    noise -= f32(0.5)
    noise *= width
    bg += noise
    zeros = np.zeros(n, f32)
    ones = np.ones(n, f32)
    # Stripes: u runs across the stripes, in units of the image size.
    su, _ = _rotated_coords(zeros, zeros, p["stripe_angle"][:n], ones * s, ones, s)
    su *= 2 * np.pi * p["stripe_freq"][:n, None, None]
    su += p["stripe_phase"][:n, None, None]
    stripes = np.sin(su)[:, None]
    bg += stripes * p["stripe_rgb"][:n, :, None, None]
    half = np.full(n, s / 2, f32)
    ramp, _ = _rotated_coords(half, half, p["ramp_angle"][:n], ones * s, ones, s)
    bg += ramp[:, None] * p["ramp_rgb"][:n, :, None, None]
    np.clip(bg, 0.0, 1.0, out=bg)
    return bg


def _painted_layers(p: dict[str, np.ndarray], config: SyntheticConfig, masks):
    """Which layer paints each pixel: 0 background, 1..nd distractors, nd + 1
    the object. Writes the object ``masks (n, S, S)``; returns
    ``(layer (n, S, S) int8, labels (n,) int32)``.
    """
    f32, s, nd = np.float32, config.image_size, config.max_distractors
    n = masks.shape[0]
    layer = np.zeros((n, s, s), np.int8)
    for d in range(nd):  # a handful of vectorised passes, not per image
        du, dv = _rotated_coords(
            p["d_cy"][:n, d],
            p["d_cx"][:n, d],
            p["d_angle"][:n, d],
            p["d_a"][:n, d],
            p["d_b"][:n, d],
            s,
        )
        du *= du
        dv *= dv
        dist = np.where(p["d_blob"][:n, d, None, None], du + dv, np.maximum(du, dv))
        limit = np.where(d < p["n_active"][:n], f32(1.0), f32(-1.0))[:, None, None]
        np.copyto(layer, np.int8(d + 1), where=dist <= limit)
    radius = p["radius"][:n]
    u, v = _rotated_coords(p["cy"][:n], p["cx"][:n], p["angle"][:n], radius, radius, s)
    lab = p["lab"][:n]
    for c in range(config.num_classes):  # one vectorised pass per class
        sel = lab == c
        if sel.any():
            masks[sel] = _SHAPES[c][1](u[sel], v[sel])
    np.copyto(layer, np.int8(nd + 1), where=masks)
    return layer, lab


def _block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))


def make_dataset(
    num_examples: int, *, seed: int, config: SyntheticConfig = SyntheticConfig()
) -> Dataset:
    """Generates the synthetic shapes data set.

    Deterministic: the same ``(num_examples, seed, config)`` gives the same
    bytes, and a smaller ``num_examples`` gives a prefix of a larger one.
    Labels are balanced within each block of :data:`BLOCK_SIZE` examples.

    Args:
        num_examples: Number of images ``N >= 1``.
        seed: Non-negative integer seed.
        config: Appearance of the data set.

    Returns:
        A :class:`Dataset` with ``images (N, S, S, 3) float32`` in ``[0, 1]``,
        ``labels (N,) int32``, exact ``masks (N, S, S) bool``, tight
        ``boxes (N, 4) int32`` ``(y0, x0, y1, x1)`` half-open, where
        ``S = config.image_size``.

    Raises:
        TypeError: If ``num_examples`` or ``seed`` is not an integer (``2.5``).
        ValueError: If ``num_examples < 1`` or ``seed < 0``.

    Example:
        >>> ds = make_dataset(4, seed=0)
        >>> ds.images.shape, ds.images.dtype.name, ds.masks.shape, ds.boxes.shape
        ((4, 32, 32, 3), 'float32', (4, 32, 32), (4, 4))
        >>> bool((ds.images[0][ds.masks[0]] == ds.object_colors[0]).all())
        True
    """
    num_examples = check_int("num_examples", num_examples)
    seed = check_int("seed", seed, minimum=0)
    size = config.image_size
    images = np.empty((num_examples, size, size, 3), np.float32)
    labels = np.empty((num_examples,), np.int32)
    masks = np.empty((num_examples, size, size), bool)
    colors = np.empty((num_examples, 3), np.float32)
    for block, start in enumerate(range(0, num_examples, BLOCK_SIZE)):
        sl = slice(start, min(start + BLOCK_SIZE, num_examples))
        rng = _block_rng(seed, block)
        _render_block(rng, config, images[sl], labels[sl], masks[sl], colors[sl])
    return Dataset(
        images=images,
        labels=labels,
        masks=masks,
        boxes=tight_boxes(masks),
        class_names=config.class_names,
        object_colors=colors,
    )


def load_synthetic(
    split: str = "train",
    num_examples: int | None = None,
    *,
    config: SyntheticConfig = SyntheticConfig(),
) -> Dataset:
    """The ``"train"`` or ``"test"`` split of the synthetic data set.

    The splits are :func:`make_dataset` with the fixed seeds in
    :data:`SPLIT_SEEDS` (train 0, test 1), so they are disjoint random draws.

    Args:
        split: ``"train"`` or ``"test"``.
        num_examples: Number of images; default 10,000 (train) / 2,000 (test).
        config: Appearance of the data set.

    Returns:
        A :class:`Dataset` (see :func:`make_dataset`).

    Raises:
        ValueError: For an unknown split or ``num_examples < 1``.
        TypeError: For a ``num_examples`` that is not an integer (``2.5``).
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLIT_SEEDS)}")
    if num_examples is None:
        num_examples = _DEFAULT_SPLIT_SIZES[split]
    num_examples = check_int("num_examples", num_examples)
    return make_dataset(num_examples, seed=SPLIT_SEEDS[split], config=config)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_epochs: int | None = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterates over a :class:`Dataset` in numpy batches.

    Args:
        dataset: The data set.
        batch_size: Examples per batch, ``>= 1``.
        shuffle: Visit examples in a random order, a fresh one per epoch.
        seed: Seed of the shuffling order; required when ``shuffle``.
        drop_remainder: Drop the last batch of an epoch if it is short.
        num_epochs: Passes over the data; ``None`` repeats forever.

    Yields:
        Dicts with ``"image"`` ``(B, H, W, 3) float32``, ``"label"`` ``(B,)
        int32``, ``"mask"`` ``(B, H, W) bool`` and ``"box"`` ``(B, 4) int32``
        (``(y0, x0, y1, x1)``, half-open).

    Raises:
        ValueError: For a bad ``batch_size``/``num_epochs`` or a missing seed.
    """
    batches = batch_indices(
        len(dataset),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
    )  # validates now, not at the first ``next``
    return (
        {
            "image": dataset.images[idx],
            "label": dataset.labels[idx],
            "mask": dataset.masks[idx],
            "box": dataset.boxes[idx],
        }
        for idx in batches
    )


# ---------------------------------------------------------------------------
# Diagnostics.
# ---------------------------------------------------------------------------


def ridge_classifier_accuracy(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    l2: float | Sequence[float] = 1.0,
) -> float | list[float]:
    """Test accuracy of a linear (ridge-regression) classifier on raw pixels.

    Fits one-hot targets by least squares with an L2 penalty on the
    flattened, centred pixels (closed form, float64), then predicts the
    arg-max. Used to check that the synthetic task is not linearly easy.

    Args:
        train_images: ``(N, ...)`` array, flattened per example.
        train_labels: ``(N,)`` integer labels.
        test_images: ``(M, ...)`` array with the same per-example shape.
        test_labels: ``(M,)`` integer labels.
        l2: Ridge penalty (> 0), in units of squared pixel values, or a
            sequence of penalties (the Gram matrix is then formed once).

    Returns:
        Fraction of correctly classified test examples, in ``[0, 1]``; a
        list of fractions, one per penalty, when ``l2`` is a sequence.
    """
    l2s = [float(l2)] if np.isscalar(l2) else [float(v) for v in l2]
    if not l2s or min(l2s) <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = np.asarray(train_images, np.float64).reshape(len(train_images), -1)
    xt = np.asarray(test_images, np.float64).reshape(len(test_images), -1)
    if x.shape[1] != xt.shape[1]:
        raise ValueError(
            f"train and test features differ: {x.shape[1]} vs {xt.shape[1]}"
        )
    y = np.asarray(train_labels)
    k = int(max(y.max(), np.max(test_labels))) + 1
    targets = np.eye(k)[y]
    mean_x, mean_t = x.mean(axis=0), targets.mean(axis=0)
    x -= mean_x
    xt -= mean_x
    targets -= mean_t
    n, d = x.shape
    primal = d <= n
    # primal: (X^T X + l2 I) W = X^T T; dual: W = X^T (X X^T + l2 I)^-1 T.
    gram = x.T @ x if primal else x @ x.T
    rhs = x.T @ targets if primal else targets
    eye = np.eye(gram.shape[0])
    accs = []
    for penalty in l2s:
        w = np.linalg.solve(gram + penalty * eye, rhs)
        if not primal:
            w = x.T @ w
        pred = (xt @ w + mean_t).argmax(axis=1)
        accs.append(float((pred == np.asarray(test_labels)).mean()))
    return accs[0] if np.isscalar(l2) else accs
