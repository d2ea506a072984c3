"""Training of the RU decoders (the store of trained ones: experiments.cache).

For a feature function ``h`` and a layer ``l``, the decoder ``g_l``
(:class:`jax_infodiscard.models.decoder.Decoder`) is trained to minimise

    ``E_{x, delta} mean((g_l(h_l(x')) - x')**2)``,  ``x' = x + noise_std * delta``,

with ``delta ~ N(0, I)`` i.i.d. per input unit, i.e. on inputs perturbed at
the noise level of the CID budget (paper sec. 3.2). By default
``noise_std = sqrt(beta)`` with ``beta = 1.5e-4``: the constraint of Eq. 4 fixes
the noise budget ``E||h(x') - f||^2 / delta_f^2 = beta``, and when the feature
is about equally sensitive to every input unit (``a_i`` all equal in the
linear oracle of docs/design.md, ``sigma_i^2 = beta * delta_f^2 / (n a_i)``)
the solution has ``sigma_i^2 = beta`` for every unit, so ``beta`` is the mean
per-unit noise variance of the CID solution for unit-range inputs. Set
``noise_std`` in :class:`DecoderConfig` to train at another level.

The features are treated as constants (no gradient flows into ``h``); only the
decoder's :class:`flax.nnx.Param` variables are trained (Adam, cosine-decayed
learning rate). The decoder's fixed per-channel statistics are set once,
before training, from (a sample of) the training data: the input
normalisation from the noisy features, the output de-normalisation from the
images. Mini-batches are drawn uniformly with replacement on the device and
the noise is redrawn at every step; each step is one compiled call (see
``_train_step`` for why the loop itself is not compiled).

:func:`train_decoders` trains the decoders of several layers together: each
step draws one batch, runs the feature function once, and updates every
layer's decoder on its own MSE in the same compiled call (on the demo's
convnet about half the time of four separate runs, docs/ru.md).
:func:`train_decoder` is its one-layer case.

This module only trains: the store of trained decoders (save, the newest
intact checkpoint, train-or-load) is the model cache's,
:mod:`jax_infodiscard.experiments.cache`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.tree_util import Partial
from tqdm.auto import tqdm

from jax_infodiscard import validation
from jax_infodiscard.models.decoder import (
    Decoder,
    create_decoder,
    decoder_fn,
    dense_readout_shape,
    depth_to_space,
    readout_geometry,
    readout_inputs,
    space_to_depth,
)
from jax_infodiscard.training.optimizer import (
    SCHEDULES,
    all_finite,
    learning_rate,
    optimizer,
)
from jax_infodiscard.training.ridge import (
    RidgeStats,
    choose_dual_ridge,
    choose_ridge,
    ridge_weights,
)
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "LEARNED_NOTHING",
    "NO_INFORMATION",
    "RECOVERS",
    "RECOVERY_MARGIN",
    "UNDERTRAINED",
    "DecoderConfig",
    "DecoderMetrics",
    "reconstruction_mse",
    "ru_ceiling",
    "train_decoder",
    "train_decoders",
]

LEARNED_NOTHING = 0.8
"""A decoder whose held-out MSE is at least this share of the image variance
(the MSE of always answering the mean image) has learned (almost) nothing:
its RU maps would only show its own error."""

RECOVERY_MARGIN = 0.05
"""A decoder recovers image information from its layer when its held-out MSE
is at most ``1 - RECOVERY_MARGIN`` times that of the best constant predictor
(the mean training image); see :func:`decoder_verdict` and docs/ru.md for the
measurements behind the value."""

RECOVERS = "recovers"
NO_INFORMATION = "no recoverable information"
UNDERTRAINED = "undertrained"


def decoder_verdict(
    decoder_ratio: float,
    ridge_ratio: float | None = None,
    longer_ratio: float | None = None,
    *,
    margin: float = RECOVERY_MARGIN,
) -> str:
    """What a decoder's held-out error says about its layer (pure).

    Every ratio is a held-out MSE divided by that of the best constant
    predictor (the mean training image): 1 means no better than a constant.

    * :data:`RECOVERS` (``"recovers"``): the decoder beats the constant by
      the margin (``decoder_ratio <= 1 - margin``). RU is measured there.
    * :data:`UNDERTRAINED` (``"undertrained"``): it does not, but the ridge
      readout or a longer-trained decoder does: the layer holds information
      that this decoder failed to learn; its RU would only show its own
      error. Train longer.
    * :data:`NO_INFORMATION` (``"no recoverable information"``): neither the
      decoder, nor the ridge readout, nor a longer-trained decoder (those
      that are given) beats the constant: the layer keeps no recoverable
      image information. Then the reconstruction ignores the feature, the
      RU objective is flat in ``sigma`` and RU sits at its ceiling, the
      entropy of the pixel given nothing (:func:`ru_ceiling`): a finding
      about the layer, not a failure.

    Args:
        decoder_ratio: the decoder's held-out MSE over the constant's.
        ridge_ratio: the same for the closed-form ridge readout (``None``:
            not known).
        longer_ratio: the same for a decoder trained longer (``None``: not
            known).
        margin: the share of the constant's error a decoder must remove.

    Returns:
        One of :data:`RECOVERS`, :data:`UNDERTRAINED`, :data:`NO_INFORMATION`.

    >>> decoder_verdict(0.40, 0.55)
    'recovers'
    >>> decoder_verdict(0.99, 0.60)
    'undertrained'
    >>> decoder_verdict(0.99, 1.00, 0.98)
    'no recoverable information'
    """
    for name, value in (
        ("decoder_ratio", decoder_ratio),
        ("ridge_ratio", ridge_ratio),
        ("longer_ratio", longer_ratio),
    ):
        if value is not None:
            validation.check_number(name, value, minimum=0)
    validation.check_number("margin", margin, minimum=0, below=1)
    threshold = 1.0 - margin
    if decoder_ratio <= threshold:
        return RECOVERS
    others = [r for r in (ridge_ratio, longer_ratio) if r is not None]
    if any(r <= threshold for r in others):
        return UNDERTRAINED
    return NO_INFORMATION


def ru_ceiling(pixel_variance: Array | np.ndarray) -> np.ndarray:
    """RU at a layer that keeps no recoverable image information, in nats.

    When the reconstruction ignores the feature, the best it can answer is
    the mean image ``mu``; the error ``x_i - mu_i`` then does not depend on
    the noise, the RU objective is flat in ``sigma`` (every ``sigma`` on the
    budget is a solution) and the entropy term is that of the pixel given
    nothing: ``0.5 log(2 pi e v_i)`` with ``v_i = E (x_i - mu_i)**2`` the
    pixel's variance over the data. No decoder trained with MSE does worse
    on average, so this is RU's ceiling.

    Args:
        pixel_variance: ``v_i`` per pixel, ``(H, W)`` or ``(H, W, C)`` (in
            squared unit-range units; pass the channel mean for RU with a
            pixel-shared sigma).

    Returns:
        ``0.5 log(2 pi e v_i)`` of the same shape (float64).

    >>> float(ru_ceiling(np.array(1 / (2 * np.pi * np.e))))
    0.0
    """
    v = np.asarray(pixel_variance, np.float64)
    if np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise ValueError("pixel_variance must be finite and positive")
    return 0.5 * np.log(2.0 * np.pi * np.e * v)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder and of its training.

    Attributes:
        num_blocks: residual blocks of the decoder (paper: 6).
        width: channels of the residual blocks.
        steps: optimizer steps (mini-batches). ``0`` gives an untrained
            decoder, which :func:`check_trained` rejects.
        batch_size: images per step.
        learning_rate: peak Adam learning rate.
        schedule: ``"cosine"`` (linear warm-up, then cosine decay to 0) or
            ``"constant"``.
        warmup_steps: linear warm-up steps of the cosine schedule (capped at
            ``steps // 10``).
        beta: CID noise budget (mean per-unit noise variance, unit-range
            inputs); ``noise_std = sqrt(beta)`` unless ``noise_std`` is set.
        noise_std: explicit standard deviation of the training noise (unit
            range), overriding ``beta``.
        holdout_fraction: fraction of the images held out for the held-out
            MSE (at least one image when positive).
        eval_images: at most this many images are used to estimate the
            train and held-out MSE and the feature statistics.
        log_every: steps per progress-bar update and per entry of the loss
            history.
        readout_kernel: ``k`` of the decoder's closed-form linear readout
            (:func:`jax_infodiscard.models.decoder.readout_geometry`; odd);
            0 for the decoder without readout of earlier releases.
        ridge_images: at most this many training images give the readout's
            ridge statistics (four fifths fit it, one fifth chooses its
            penalty, then it is refitted on all of them).
        dense_readout: add to the local readout of a spatial feature a dense
            one (whole feature to whole image, ridge regression in its dual
            form on what the local readout misses;
            :func:`jax_infodiscard.models.decoder.dense_readout_shape`);
            only with a readout (``readout_kernel > 0``).

    Example:
        >>> cfg = DecoderConfig(steps=500, width=16)
        >>> round(cfg.training_noise_std, 5)  # sqrt(1.5e-4)
        0.01225
    """

    num_blocks: int = 6
    width: int = 32
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 50
    beta: float = 1.5e-4
    noise_std: float | None = None
    holdout_fraction: float = 0.1
    eval_images: int = 512
    log_every: int = 50
    readout_kernel: int = 3
    ridge_images: int = 2048
    dense_readout: bool = True

    def __post_init__(self):
        for name in (
            "num_blocks",
            "width",
            "batch_size",
            "eval_images",
            "log_every",
            "ridge_images",
        ):
            validation.check_int(name, getattr(self, name))
        for name in ("steps", "warmup_steps", "readout_kernel"):
            validation.check_int(name, getattr(self, name), minimum=0)
        if self.readout_kernel % 2 == 0 and self.readout_kernel:
            raise ValueError(
                f"readout_kernel must be 0 or odd, got {self.readout_kernel}"
            )
        validation.check_number("learning_rate", self.learning_rate, positive=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        validation.check_number("beta", self.beta, positive=True)
        if self.noise_std is not None:
            validation.check_number("noise_std", self.noise_std, minimum=0)
        validation.check_number(
            "holdout_fraction", self.holdout_fraction, minimum=0, below=1
        )
        if not isinstance(self.dense_readout, bool):
            raise ValueError(
                f"dense_readout must be a bool, got {self.dense_readout!r}"
            )

    @property
    def training_noise_std(self) -> float:
        """Standard deviation of the training noise (unit-range inputs)."""
        return float(math.sqrt(self.beta) if self.noise_std is None else self.noise_std)


@dataclasses.dataclass(frozen=True)
class DecoderMetrics:
    """What one decoder training run achieved.

    MSEs are means over every pixel and channel of ``(g(h(x')) - x')**2`` with
    fresh noise at ``noise_std`` (unit-range inputs, squared units).

    Attributes:
        layer: the layer the decoder inverts.
        steps: optimizer steps taken.
        noise_std: training noise standard deviation.
        train_mse: reconstruction MSE on (up to ``eval_images``) training
            images.
        heldout_mse: reconstruction MSE on the held-out images, ``None`` when
            nothing was held out.
        image_variance: variance of the evaluated image values (over images,
            pixels and channels): the MSE of the best constant prediction, a
            scale for the MSEs.
        loss_history: mean training loss of every ``log_every`` steps.
        steps_per_second: steady-state training speed (the first step, which
            compiles, excluded; 0 when fewer than two steps ran).
        seconds: wall time of the whole run.
        trained_with: the layers whose decoders were trained in the same run
            (:func:`train_decoders`; they share ``steps_per_second`` and
            ``seconds``); empty in metadata written before it was recorded.
        ridge_mse: held-out MSE of the closed-form ridge readout alone (the
            decoder before training); ``None`` without a readout.
        constant_mse: held-out MSE of the mean training image (the best
            constant predictor); ``None`` in metadata written before it was
            recorded.
        ridge_penalty: the readout's ridge penalty (chosen by held-out error);
            ``None`` without a readout.
        dense_penalty: the dense readout's penalty; ``None`` without one.
        kept_readout: training ended worse than the readout alone on the
            held-out images, so the decoder was reset to its readout (its
            head set to zero): a decoder never ends worse than its start.
    """

    layer: str
    steps: int
    noise_std: float
    train_mse: float
    heldout_mse: float | None
    image_variance: float
    loss_history: tuple[float, ...]
    steps_per_second: float
    seconds: float
    trained_with: tuple[str, ...] = ()
    ridge_mse: float | None = None
    constant_mse: float | None = None
    ridge_penalty: float | None = None
    dense_penalty: float | None = None
    kept_readout: bool = False

    @property
    def eval_mse(self) -> float:
        """The held-out MSE, or the train MSE when nothing was held out."""
        return self.heldout_mse if self.heldout_mse is not None else self.train_mse

    @property
    def mse_over_variance(self) -> float:
        """``eval_mse`` over the image variance: 0 for a perfect decoder,
        about 1 for one that answers the mean image.

        >>> m = DecoderMetrics("conv1", 1, 0.0, 0.02, 0.01, 0.05, (), 0.0, 0.0)
        >>> m.eval_mse, round(m.mse_over_variance, 6), m.learned_nothing
        (0.01, 0.2, False)
        """
        if self.image_variance <= 0:
            return 1.0
        return self.eval_mse / self.image_variance

    @property
    def learned_nothing(self) -> bool:
        """Whether the decoder recovers nothing of the image.

        True when its :attr:`verdict` is not :data:`RECOVERS`; in metadata of
        earlier releases, without ``constant_mse``, when
        ``mse_over_variance >= LEARNED_NOTHING``."""
        if self.constant_mse is None:
            return self.mse_over_variance >= LEARNED_NOTHING
        return self.verdict != RECOVERS

    def _over_constant(self, mse: float | None) -> float | None:
        if mse is None:
            return None
        scale = self.constant_mse if self.constant_mse else self.image_variance
        return mse / scale if scale > 0 else 1.0

    @property
    def mse_over_constant(self) -> float:
        """``eval_mse`` over the constant predictor's held-out MSE (the image
        variance when that was not recorded): 1 = no better than the mean
        image."""
        return self._over_constant(self.eval_mse)

    @property
    def ridge_over_constant(self) -> float | None:
        """``ridge_mse`` over the constant predictor's (``None`` without a
        readout)."""
        return self._over_constant(self.ridge_mse)

    @property
    def verdict(self) -> str:
        """:func:`decoder_verdict` of :attr:`mse_over_constant` and
        :attr:`ridge_over_constant`.

        >>> m = DecoderMetrics("logits", 300, 0.01, 0.05, 0.0496, 0.05, (), 1.0, 1.0,
        ...                    ridge_mse=0.0499, constant_mse=0.05)
        >>> m.verdict, m.learned_nothing
        ('no recoverable information', True)
        """
        return decoder_verdict(self.mse_over_constant, self.ridge_over_constant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the loss history becomes a list)."""
        out = dataclasses.asdict(self)
        out["loss_history"] = list(self.loss_history)
        out["trained_with"] = list(self.trained_with)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecoderMetrics:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["loss_history"] = tuple(data.get("loss_history", ()))
        data["trained_with"] = tuple(data.get("trained_with", ()))
        return cls(**data)


# --------------------------------------------------------------------------
# Validation helpers.


def _check_images(images: Any) -> np.ndarray:
    return np.asarray(validation.check_images(images, unit_range=True))


def _as_feature_fn(feature_fn: Any) -> Partial:
    return validation.as_partial(feature_fn, "feature_fn")


def _feature_shape(feature_fn: Partial, layer: str, image_shape: tuple) -> tuple:
    spec = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    out = jax.eval_shape(feature_fn, spec)
    if not isinstance(out, Mapping):
        raise ValueError(
            "feature_fn must return a dict {layer: (B, ...) array}, got "
            f"{type(out).__name__}"
        )
    if layer not in out:
        raise ValueError(f"unknown layer {layer!r}; available: {list(out)}")
    feature = out[layer]
    if not isinstance(feature, jax.ShapeDtypeStruct):
        raise ValueError(
            f"layer {layer!r}: the decoder needs a single array feature, got a "
            f"{type(feature).__name__}"
        )
    if feature.ndim not in (2, 4) or feature.shape[0] != 2:
        raise ValueError(
            f"layer {layer!r}: the decoder supports features of shape (B, d) or "
            f"(B, h, w, c); got {feature.shape} for a batch of 2"
        )
    return tuple(int(s) for s in feature.shape[1:])


# --------------------------------------------------------------------------
# Compiled workers.


def _optimizer(config: DecoderConfig) -> optax.GradientTransformation:
    if config.schedule == "constant" or config.steps == 0:
        return optimizer("adam", config.learning_rate)
    warmup = min(config.warmup_steps, config.steps // 10)
    return optimizer(
        "adam", learning_rate("cosine", config.learning_rate, config.steps, warmup)
    )


def _noisy(key: PRNGKey, x: Array, noise_std: float) -> Array:
    return x + noise_std * jax.random.normal(key, x.shape, x.dtype)


@partial(
    jax.jit,
    static_argnames=("graphdefs", "layers", "config"),
    donate_argnames=("params", "opt_state"),
)
def _train_step(
    graphdefs: tuple[nnx.GraphDef, ...],
    params: dict[str, nnx.State],
    rest: dict[str, nnx.State],
    opt_state: optax.OptState,
    feature_fn: Partial,
    images: Array,
    key: PRNGKey,
    step: Array,
    *,
    layers: tuple[str, ...],
    config: DecoderConfig,
) -> tuple[dict[str, nnx.State], optax.OptState, Array]:
    """One Adam step of the decoders of ``layers`` on a fresh batch and fresh
    noise; returns the ``(len(layers),)`` batch losses (NaN for a layer whose
    gradient or updated parameters are not finite).

    Every layer's feature comes from one forward pass of ``feature_fn`` on the
    batch, and the loss is the sum of the per-layer MSEs: the decoders share
    no parameter, so each one's gradient is that of its own MSE, and Adam (an
    elementwise update) trains each one exactly as it would alone on the same
    batches.

    The step is a single compiled call (the Python loop around it costs well
    under a millisecond per step): XLA:CPU runs the gradient convolutions
    much slower inside ``lax.fori_loop``/``lax.scan`` bodies than at top level
    (jax-ml/jax#12868; measured in docs/benchmarks.md, "Known limits on CPU"),
    so the training loop is deliberately not a compiled loop.
    """
    tx = _optimizer(config)
    k_idx, k_noise = jax.random.split(jax.random.fold_in(key, step))
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, images.shape[0])
    x_noisy = _noisy(k_noise, images[idx], config.training_noise_std)
    features = jax.lax.stop_gradient(feature_fn(x_noisy))

    def losses_fn(p):
        losses = {
            name: jnp.mean(
                jnp.square(
                    nnx.merge(graphdef, p[name], rest[name])(features[name]) - x_noisy
                )
            )
            for graphdef, name in zip(graphdefs, layers, strict=True)
        }
        return sum(losses.values()), losses

    (_, losses), grads = jax.value_and_grad(losses_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # A NaN/inf gradient or parameter makes the reported loss NaN, so that the
    # loop's existing read-back of the losses catches it at no extra sync.
    out = jnp.stack(
        [
            jnp.where(
                all_finite(grads[name]) & all_finite(params[name]),
                losses[name],
                jnp.nan,
            )
            for name in layers
        ]
    )
    return params, opt_state, out


def _raise_if_diverged(
    losses: np.ndarray, first_step: int, layers: tuple[str, ...]
) -> None:
    """``FloatingPointError`` naming the first step with a NaN/inf loss and its
    layers; ``losses`` is ``(steps, len(layers))``."""
    bad = ~np.isfinite(losses)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        names = ", ".join(repr(n) for n, b in zip(layers, bad[row], strict=True) if b)
        raise FloatingPointError(
            f"decoder training of layer {names} diverged: NaN/inf in the loss, "
            f"gradients or parameters at step {first_step + row + 1}; "
            "nothing was saved. Lower learning_rate, or check the feature "
            "function for NaN/inf values"
        )


def _padded_batches(images: np.ndarray, batch_size: int):
    """Yields ``(index, batch (batch_size, ...), mask (batch_size,))`` (numpy).

    The last batch is zero-padded to ``batch_size`` so that one compiled
    program serves every batch; ``mask`` is 1 for real images. Batching on the
    host avoids compiling an eager XLA op per slice.
    """
    n = images.shape[0]
    for i, lo in enumerate(range(0, n, batch_size)):
        batch = images[lo : lo + batch_size]
        real = batch.shape[0]
        if real < batch_size:
            pad = np.zeros((batch_size - real, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        yield i, batch, (np.arange(batch_size) < real).astype(np.float32)


@partial(jax.jit, static_argnames=("layers", "noise_std"))
def _feature_moments(
    feature_fn: Partial,
    x: Array,
    mask: Array,
    key: PRNGKey,
    index: int,
    *,
    layers: tuple[str, ...],
    noise_std: float,
) -> dict[str, tuple[Array, Array, Array]]:
    """Per layer: masked per-channel sums of ``f`` and ``f**2`` and their
    count (one forward pass for every layer)."""
    x_noisy = _noisy(jax.random.fold_in(key, index), x, noise_std)
    features = feature_fn(x_noisy)
    w = mask[:, None, None]
    out = {}
    for name in layers:
        f = features[name].astype(jnp.float32)
        f = f.reshape(f.shape[0], -1, f.shape[-1])  # (B, positions, channels)
        out[name] = (
            jnp.sum(w * f, axis=(0, 1)),
            jnp.sum(w * f**2, axis=(0, 1)),
            jnp.sum(mask) * f.shape[1],
        )
    return out


def _feature_stats(
    feature_fn: Partial,
    images: np.ndarray,
    key: PRNGKey,
    *,
    layers: tuple[str, ...],
    noise_std: float,
    batch_size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: per-channel mean and scale ``(c,)`` of the noisy features of
    ``images``.

    The scale is ``sqrt(var + 1e-4 * mean(var))`` so that constant (dead)
    channels do not blow up.
    """
    sums = jax.device_get(
        [
            _feature_moments(
                feature_fn, x, mask, key, i, layers=layers, noise_std=noise_std
            )
            for i, x, mask in _padded_batches(images, batch_size)
        ]
    )
    stats = {}
    for name in layers:
        s1, s2, count = (
            np.sum(np.stack(parts), axis=0, dtype=np.float64)
            for parts in zip(*(batch[name] for batch in sums), strict=True)
        )
        if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
            raise ValueError(
                f"feature_fn returns NaN/inf values for layer {name!r} on the "
                "(noisy) training images; the decoder cannot be trained on them"
            )
        mean = s1 / count
        var = np.maximum(s2 / count - mean**2, 0.0)
        scale = np.sqrt(var + 1e-4 * np.mean(var) + 1e-12)
        stats[name] = (mean.astype(np.float32), scale.astype(np.float32))
    return stats


@partial(jax.jit, static_argnames=("layers", "noise_std", "inputs"))
def _ridge_moments(
    feature_fn: Partial,
    x: Array,
    mask: Array,
    key: PRNGKey,
    index: int,
    stats: dict[str, tuple[Array, Array]],
    pixel_mean: Array,
    *,
    layers: tuple[str, ...],
    noise_std: float,
    inputs: tuple[int, ...],
) -> dict[str, tuple[Array, ...]]:
    """Per layer, the raw sums of one masked batch: ``P^T P``, ``P^T T``,
    ``sum T**2`` and, per readout position, ``sum P`` and ``sum T``; ``P`` the
    readout inputs of the normalised noisy features, ``T`` the noisy images
    minus ``pixel_mean`` in the readout's layout."""
    x_noisy = _noisy(jax.random.fold_in(key, index), x, noise_std)
    features = feature_fn(x_noisy)
    target = x_noisy - pixel_mean
    hi = jax.lax.Precision.HIGHEST
    out = {}
    for name, d in zip(layers, inputs, strict=True):
        mean, scale = stats[name]
        f = (features[name].astype(jnp.float32) - mean) / scale
        p = readout_inputs(f, d)
        if p.ndim == 2:
            t = target.reshape(target.shape[0], -1)
            w = mask[:, None]
        else:
            t = space_to_depth(target, x.shape[1] // p.shape[1])
            w = mask[:, None, None, None]
        p, t = w * p, w * t
        flat_p, flat_t = p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])
        out[name] = (
            jnp.matmul(flat_p.T, flat_p, precision=hi),
            jnp.matmul(flat_p.T, flat_t, precision=hi),
            jnp.sum(t * t),
            jnp.sum(p, axis=0),
            jnp.sum(t, axis=0),
        )
    return out


def _centred(raw: tuple[np.ndarray, ...], count: float) -> RidgeStats:
    """Ridge statistics of inputs and targets centred per readout position,
    from the raw sums of :func:`_ridge_moments` over ``count`` images."""
    pp, pt, tt, sum_p, sum_t = raw
    sp = sum_p.reshape(-1, sum_p.shape[-1])  # (positions, d)
    st = sum_t.reshape(-1, sum_t.shape[-1])  # (positions, o)
    return RidgeStats(
        pp - sp.T @ sp / count,
        pt - sp.T @ st / count,
        float(tt - np.sum(st * st) / count),
        count * sp.shape[0],
    )


def _ridge_sums(
    feature_fn,
    parts,
    key,
    device_stats,
    pixel_mean,
    *,
    layers,
    geometry,
    noise_std,
    batch_size,
) -> dict:
    """One pass over each part (``(("fit", images), ("val", images))``):
    per part and layer, the five ridge moments summed over its batches in
    float64 (noise keyed by ``fold_in(key, part == "val")``)."""
    raw = {}
    for part, imgs in parts:
        batches = jax.device_get(
            [
                _ridge_moments(
                    feature_fn,
                    x,
                    mask,
                    jax.random.fold_in(key, part == "val"),
                    i,
                    device_stats,
                    jnp.asarray(pixel_mean),
                    layers=layers,
                    noise_std=noise_std,
                    inputs=tuple(geometry[n][0] for n in layers),
                )
                for i, x, mask in _padded_batches(imgs, batch_size)
            ]
        )
        raw[part] = {
            name: tuple(
                np.sum([b[name][j] for b in batches], axis=0, dtype=np.float64)
                for j in range(5)
            )
            for name in layers
        }
    return raw


def _local_readout(name, fit_sums, val_sums, n_fit, n_val, pixel_mean, image_shape):
    """One layer's ridge readout from its fit and validation moment sums:
    the penalty chosen on the validation part, then weights ``(inputs,
    outputs)`` refitted on both, and the intercept ``(H, W, C)`` (the mean
    image minus the readout of the mean feature) in float32."""
    fit = _centred(fit_sums, float(n_fit))
    val = _centred(val_sums, float(n_val)) if n_val else fit
    _, penalty, _ = choose_ridge(fit, val)
    pooled = tuple(a + b for a, b in zip(fit_sums, val_sums, strict=True))
    n = float(n_fit + n_val)
    weights = ridge_weights(_centred(pooled, n), np.array([penalty]))[0]
    mean_p, mean_t = pooled[3] / n, pooled[4] / n
    bias = mean_t - mean_p @ weights  # (h, w, o) or (o,)
    if bias.ndim == 1:
        bias = bias.reshape(image_shape)
    else:
        factor = image_shape[0] // bias.shape[0]
        bias = np.asarray(depth_to_space(bias[None], factor)[0])
    bias = bias + pixel_mean
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
        raise ValueError(
            f"the ridge readout of layer {name!r} is not finite: feature_fn "
            "returns NaN/inf values for some training images"
        )
    return weights.astype(np.float32), bias.astype(np.float32), penalty


def _dense_readouts(
    feature_fn,
    parts,
    key,
    device_stats,
    out,
    dense,
    *,
    geometry,
    noise_std,
    batch_size,
    n_fit,
    image_shape,
) -> None:
    """Adds the dense readout (weights ``(h w c, H W C)``, penalty) of each
    layer in ``dense`` to ``out``, solved in its dual form on the residual of
    its local readout ``out[name]`` over the same noisy images; its intercept
    is added to the local one's."""
    local = {n: (jnp.asarray(out[n][0]), jnp.asarray(out[n][1])) for n in dense}
    rows = {n: ([], []) for n in dense}
    for part, imgs in parts:
        for i, x, mask in _padded_batches(imgs, batch_size):
            batch = jax.device_get(
                _dense_rows(
                    feature_fn,
                    x,
                    jax.random.fold_in(key, part == "val"),
                    i,
                    device_stats,
                    local,
                    layers=dense,
                    noise_std=noise_std,
                    inputs=tuple(geometry[n][0] for n in dense),
                )
            )
            real = int(mask.sum())
            for n in dense:
                rows[n][0].append(batch[n][0][:real])
                rows[n][1].append(batch[n][1][:real])
    for name in dense:
        inputs, residual = (np.concatenate(r) for r in rows.pop(name))
        weights, intercept, penalty, _ = choose_dual_ridge(inputs, residual, n_fit)
        del inputs, residual
        bias = out[name][1] + intercept.reshape(image_shape).astype(np.float32)
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
            raise ValueError(
                f"the dense readout of layer {name!r} is not finite: "
                "feature_fn returns NaN/inf values for some training images"
            )
        out[name] = (out[name][0], bias, out[name][2], weights, penalty)


def _solve_readouts(
    feature_fn: Partial,
    images: np.ndarray,
    key: PRNGKey,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    pixel_mean: np.ndarray,
    *,
    geometry: dict[str, tuple[int, int]],
    noise_std: float,
    batch_size: int,
    image_shape: tuple[int, int, int],
    dense: tuple[str, ...] = (),
) -> dict[str, tuple[Any, ...]]:
    """Per layer of ``geometry``: the ridge readout's weights ``(inputs,
    outputs)``, its intercept ``(H, W, C)``, its penalty, and the dense
    readout's weights ``(h w c, H W C)`` and penalty (``None, None`` for a
    layer not in ``dense``), from one pass over ``images`` (the first four
    fifths fit, the last fifth chooses the penalty; then refitted on all).
    Inputs and targets are centred per readout position, so the intercept is
    the mean image minus the readout of the mean feature. The dense readout
    is then solved, in its dual form (:func:`choose_dual_ridge`), on the
    residual of the local one on the same noisy images; its intercept is
    added to the local one's."""
    layers = tuple(geometry)
    n_fit = max(1, (4 * images.shape[0]) // 5)
    device_stats = {n: (jnp.asarray(m), jnp.asarray(s)) for n, (m, s) in stats.items()}
    parts = (("fit", images[:n_fit]), ("val", images[n_fit:]))
    raw = _ridge_sums(
        feature_fn,
        parts,
        key,
        device_stats,
        pixel_mean,
        layers=layers,
        geometry=geometry,
        noise_std=noise_std,
        batch_size=batch_size,
    )
    n_val = images.shape[0] - n_fit
    out = {
        name: _local_readout(
            name,
            raw["fit"][name],
            raw["val"][name],
            n_fit,
            n_val,
            pixel_mean,
            image_shape,
        )
        for name in layers
    }
    dense = tuple(name for name in layers if name in dense)
    if dense and n_fit < images.shape[0]:
        _dense_readouts(
            feature_fn,
            parts,
            key,
            device_stats,
            out,
            dense,
            geometry=geometry,
            noise_std=noise_std,
            batch_size=batch_size,
            n_fit=n_fit,
            image_shape=image_shape,
        )
    return {n: (*o, None, None) if len(o) == 3 else o for n, o in out.items()}


@partial(jax.jit, static_argnames=("layers", "noise_std", "inputs"))
def _dense_rows(
    feature_fn: Partial,
    x: Array,
    key: PRNGKey,
    index: int,
    stats: dict[str, tuple[Array, Array]],
    local: dict[str, tuple[Array, Array]],
    *,
    layers: tuple[str, ...],
    noise_std: float,
    inputs: tuple[int, ...],
) -> dict[str, tuple[Array, Array]]:
    """Per layer, for one batch (the noise of :func:`_ridge_moments`): the
    flattened normalised noisy features ``(B, h w c)`` and what the local
    readout ``(weights, intercept)`` misses of the noisy images,
    ``(B, H W C)``."""
    x_noisy = _noisy(jax.random.fold_in(key, index), x, noise_std)
    features = feature_fn(x_noisy)
    out = {}
    for name, d in zip(layers, inputs, strict=True):
        mean, scale = stats[name]
        f = (features[name].astype(jnp.float32) - mean) / scale
        weights, bias = local[name]
        pred = readout_inputs(f, d) @ weights
        pred = depth_to_space(pred, x.shape[1] // f.shape[1]) + bias
        out[name] = (
            f.reshape(f.shape[0], -1),
            (x_noisy - pred).reshape(x.shape[0], -1),
        )
    return out


@partial(jax.jit, static_argnames=("noise_std",))
def _batch_sse(
    decoders: dict[str, Partial],
    feature_fn: Partial,
    x: Array,
    mask: Array,
    key: PRNGKey,
    index: int,
    *,
    noise_std: float,
) -> dict[str, Array]:
    """Per layer (the keys of ``decoders``): masked sum over images of the
    per-image reconstruction MSE (one forward pass for every layer)."""
    x_noisy = _noisy(jax.random.fold_in(key, index), x, noise_std)
    features = feature_fn(x_noisy)
    return {
        name: jnp.sum(
            mask * jnp.mean(jnp.square(g(features[name]) - x_noisy), axis=(1, 2, 3))
        )
        for name, g in decoders.items()
    }


def _mse(
    decoders: dict[str, Partial],
    feature_fn: Partial,
    images: np.ndarray,
    key: PRNGKey,
    *,
    noise_std: float,
    batch_size: int,
) -> dict[str, float]:
    """Per layer: reconstruction MSE over ``images``; noise key
    ``fold_in(key, batch)``, the same draws for every layer."""
    sums = jax.device_get(
        [
            _batch_sse(decoders, feature_fn, x, mask, key, i, noise_std=noise_std)
            for i, x, mask in _padded_batches(images, batch_size)
        ]
    )
    return {
        name: float(np.sum([b[name] for b in sums], dtype=np.float64)) / images.shape[0]
        for name in decoders
    }


@partial(jax.jit, static_argnames=("n",))
def _split_for_training(key: PRNGKey, n: int) -> tuple[Array, ...]:
    """Keys for (init, stats, train, eval) and a permutation of ``n`` images."""
    k_split, k_init, k_stats, k_train, k_eval = jax.random.split(key, 5)
    return k_init, k_stats, k_train, k_eval, jax.random.permutation(k_split, n)


def reconstruction_mse(
    decoder: Partial | Callable[[Array], Array],
    feature_fn: Callable,
    layer: str,
    images: np.ndarray | Array,
    *,
    key: PRNGKey,
    noise_std: float,
    batch_size: int = 32,
) -> float:
    """Mean of ``(g(h(x')) - x')**2`` over images, pixels and channels.

    ``x' = x + noise_std * delta`` with a fresh draw of ``delta`` per image.

    Args:
        decoder: ``g(features) -> (B, H, W, C)``, e.g. from
            :func:`jax_infodiscard.models.decoder.decoder_fn`.
        feature_fn: ``feature_fn(images) -> {layer: (B, ...)}``.
        layer: layer whose feature is decoded.
        images: ``(N, H, W, C)`` float32 images in [0, 1].
        key: PRNG key of the noise.
        noise_std: noise standard deviation (unit range).
        batch_size: images per compiled call.

    Returns:
        The MSE as a Python float (squared unit-range units).
    """
    images = _check_images(images)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return _mse(
        {layer: _as_feature_fn(decoder)},
        _as_feature_fn(feature_fn),
        images,
        key,
        noise_std=float(noise_std),
        batch_size=int(min(batch_size, images.shape[0])),
    )[layer]


# --------------------------------------------------------------------------
# Public training API.


def train_decoder(
    feature_fn: Callable,
    layer: str,
    images: np.ndarray,
    config: DecoderConfig = DecoderConfig(),
    *,
    key: PRNGKey,
    progress: bool = True,
) -> tuple[Decoder, DecoderMetrics]:
    """Trains the RU decoder of one layer.

    The one-layer case of :func:`train_decoders` (same keys, same result).

    Args:
        feature_fn: pure feature function ``feature_fn(images (B, H, W, C)) ->
            {layer: (B, ...)}``; a :class:`jax.tree_util.Partial` (parameters
            traced, no recompilation for new parameters) or a plain callable
            (wrapped in a leafless ``Partial``).
        layer: name of the layer to invert; its feature must be a single array
            of shape ``(B, h, w, c)`` or ``(B, d)``.
        images: ``(N, H, W, C)`` float32 images in [0, 1]; a fraction
            ``config.holdout_fraction`` (chosen at random) is held out.
        config: decoder and training hyper-parameters.
        key: PRNG key (initialisation, split, batches, noise).
        progress: show a tqdm progress bar.

    Returns:
        ``(decoder, metrics)``: the trained :class:`Decoder` and its
        :class:`DecoderMetrics`.

    Raises:
        ValueError: bad images, config, unknown layer, unsupported feature,
            or features with NaN/inf values.
        FloatingPointError: a NaN/inf loss, gradient or parameter during
            training (the message names the step; nothing is saved).
    """
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty string, got {layer!r}")
    decoders, metrics = train_decoders(
        feature_fn,
        (layer,),
        images,
        config,
        key=key,
        progress=progress,
    )
    return decoders[layer], metrics[layer]


def _check_config(config: Any) -> None:
    if not isinstance(config, DecoderConfig):
        raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")


def _keep_readouts(
    decoders, ridge_mse, mses, feature_fn, eval_images, k_eval, config, eval_batch
) -> tuple[str, ...]:
    """Never end worse than the start: where training lost to the readout
    alone on the held-out images (held-out MSE above ``ridge_mse``), reset
    the decoder's head to zero in place (the readout is then the whole
    output, exactly the decoder before training) and re-measure its MSEs
    into ``mses = (train_mse, heldout_mse)``. Returns the reset layers."""
    train_mse, heldout_mse = mses
    kept = tuple(
        name
        for name in decoders
        if name in ridge_mse
        and name in heldout_mse
        and heldout_mse[name] > ridge_mse[name]
    )
    if kept:
        for name in kept:
            head = decoders[name].head
            head.kernel[...] = jnp.zeros_like(head.kernel[...])
            head.bias[...] = jnp.zeros_like(head.bias[...])
        again = _final_mse(
            {n: decoders[n] for n in kept},
            feature_fn,
            *eval_images,
            k_eval,
            config,
            eval_batch,
        )
        train_mse.update(again[0])
        heldout_mse.update(again[1])
    return kept


def _metrics(
    layers,
    config,
    mses,
    eval_images,
    history,
    steps_per_second,
    seconds,
    readouts,
    kept,
) -> dict[str, DecoderMetrics]:
    """One :class:`DecoderMetrics` per layer of a joint run.

    ``mses`` is ``(train_mse, heldout_mse, ridge_mse, constant_mse)`` (per
    layer, the last one shared); ``eval_images`` ``(N, H, W, C)`` are the
    evaluated train and held-out images (their pixel variance is the MSE
    scale); ``history`` holds, per logged step, the losses of the layers
    in order; ``seconds`` is the run's wall time.
    """
    train_mse, heldout_mse, ridge_mse, constant_mse = mses
    image_variance = float(np.var(eval_images, dtype=np.float64))
    return {
        name: DecoderMetrics(
            layer=name,
            steps=config.steps,
            noise_std=config.training_noise_std,
            train_mse=train_mse[name],
            heldout_mse=heldout_mse.get(name),
            image_variance=image_variance,
            loss_history=tuple(float(h[i]) for h in history),
            steps_per_second=steps_per_second,
            seconds=seconds,
            trained_with=layers,
            ridge_mse=ridge_mse.get(name),
            constant_mse=constant_mse,
            ridge_penalty=readouts[name][2] if name in readouts else None,
            dense_penalty=readouts[name][4] if name in readouts else None,
            kept_readout=name in kept,
        )
        for i, name in enumerate(layers)
    }


def train_decoders(
    feature_fn: Callable,
    layers: str | Sequence[str],
    images: np.ndarray,
    config: DecoderConfig = DecoderConfig(),
    *,
    key: PRNGKey,
    progress: bool = True,
) -> tuple[dict[str, Decoder], dict[str, DecoderMetrics]]:
    """Trains the RU decoders of several layers together, one per layer.

    Every step draws one batch of ``config.batch_size`` noisy images, runs
    ``feature_fn`` on it once, and takes one Adam step of every layer's
    decoder on its own MSE, in one compiled call; the held-out evaluation
    likewise shares each batch's forward pass. The decoders share no
    parameter, so each is trained as it would be alone on the same batches;
    what is shared is the forward pass of the feature network, the
    compilation and the per-step dispatch, so it takes less time than
    separate :func:`train_decoder` runs (measured by
    ``benchmarks/bench_decoders.py``, see docs/benchmarks.md, "RU decoders").

    All layers use one ``config`` (one batch size and step count) and one
    train/held-out split of ``images``. The first layer's decoder is
    initialised as :func:`train_decoder` would initialise it, the others from
    ``fold_in(k_init, i)``; the split, batches and noise depend on ``key``
    only. With one layer this is exactly :func:`train_decoder`; with several,
    each decoder differs from the one a separate run would train (same
    quality, not the same numbers).

    With a readout, a decoder whose held-out MSE after training is above its
    readout's (the decoder before training) is reset to the readout (its
    head set to zero; ``DecoderMetrics.kept_readout``): no decoder ends
    worse on the held-out images than its closed-form start.

    Args:
        feature_fn: pure feature function ``feature_fn(images (B, H, W, C)) ->
            {layer: (B, ...)}`` (as in :func:`train_decoder`); it must return
            every name of ``layers``.
        layers: a layer name or distinct names; each feature must be a single
            array of shape ``(B, h, w, c)`` or ``(B, d)``.
        images: ``(N, H, W, C)`` float32 images in [0, 1]; a fraction
            ``config.holdout_fraction`` (chosen at random, the same for every
            layer) is held out.
        config: decoder and training hyper-parameters, shared by the layers.
        key: PRNG key (initialisation, split, batches, noise).
        progress: show a tqdm progress bar.

    Returns:
        ``(decoders, metrics)``: dicts ``{layer: Decoder}`` and ``{layer:
        DecoderMetrics}`` in the order of ``layers``. ``steps_per_second`` and
        ``seconds`` are those of the joint run (shared by its layers);
        ``trained_with`` names its layers.

    Raises:
        ValueError: bad images, config or layer names (empty, duplicates),
            an unknown layer, an unsupported feature, or features with NaN/inf
            values.
        TypeError: ``layers`` is not a name or a sequence of names.
        FloatingPointError: a NaN/inf loss, gradient or parameter during
            training (the message names the step and the layers; nothing is
            saved).
    """
    start_time = time.perf_counter()
    _check_config(config)
    layers = validation.check_names("layers", layers)
    images = _check_images(images)
    feature_fn = _as_feature_fn(feature_fn)
    image_shape = tuple(images.shape[1:])
    feature_shapes = {
        name: _feature_shape(feature_fn, name, image_shape) for name in layers
    }
    k_init, k_stats, k_train, k_eval, train, hold = _holdout_split(images, config, key)
    eval_train = train[: config.eval_images]
    eval_hold = hold[: config.eval_images]
    eval_batch = min(config.batch_size, eval_train.shape[0])
    graphdefs, params, rest, initial, readouts, pixel_mean = _init_decoders(
        feature_fn,
        feature_shapes,
        image_shape,
        train,
        eval_train,
        config,
        (k_init, k_stats),
        eval_batch,
    )
    ridge_mse, constant_mse = _baseline_mse(
        initial,
        feature_fn,
        eval_train,
        eval_hold,
        pixel_mean,
        k_eval,
        config,
        eval_batch,
    )
    params, history, steps_per_second = _fit(
        graphdefs, params, rest, feature_fn, train, k_train, config, progress
    )
    decoders = {}
    for graphdef, name in zip(graphdefs, layers, strict=True):
        decoders[name] = nnx.merge(graphdef, params[name], rest[name])
        decoders[name].trained_steps = config.steps
    train_mse, heldout_mse = _final_mse(
        decoders, feature_fn, eval_train, eval_hold, k_eval, config, eval_batch
    )
    kept = _keep_readouts(
        decoders,
        ridge_mse,
        (train_mse, heldout_mse),
        feature_fn,
        (eval_train, eval_hold),
        k_eval,
        config,
        eval_batch,
    )
    metrics = _metrics(
        layers,
        config,
        (train_mse, heldout_mse, ridge_mse, constant_mse),
        np.concatenate([eval_train, eval_hold]),
        history,
        steps_per_second,
        time.perf_counter() - start_time,
        readouts,
        kept,
    )
    return decoders, metrics


def _holdout_split(images: np.ndarray, config: DecoderConfig, key: PRNGKey):
    """The keys of the phases and the train / held-out images (a random
    ``config.holdout_fraction`` of them, at least one when positive)."""
    n = images.shape[0]
    n_hold = (
        0
        if config.holdout_fraction == 0
        else max(1, round(config.holdout_fraction * n))
    )
    if n_hold >= n:
        raise ValueError(
            f"need at least one training image besides the {n_hold} held out; got "
            f"{n} images"
        )
    k_init, k_stats, k_train, k_eval, order = _split_for_training(key, n)
    order = np.asarray(order)
    train = images[np.sort(order[n_hold:])]
    hold = images[np.sort(order[:n_hold])]
    return k_init, k_stats, k_train, k_eval, train, hold


def _init_decoders(
    feature_fn, feature_shapes, image_shape, train, eval_train, config, keys, eval_batch
):
    """Fresh decoders of the layers of ``feature_shapes`` with their fixed
    statistics set from ``eval_train`` and their ridge readouts solved from
    the first ``config.ridge_images`` of ``train``.

    Returns ``(graphdefs, params, rest, initial, readouts, pixel_mean)``: the
    decoder of layer ``i`` is initialised with ``fold_in(k_init, i)`` (the
    first with ``k_init`` itself); ``initial`` maps each layer with a readout
    to its decoder function before training (the readout alone),
    ``readouts`` to ``(kernel, bias, penalty, dense kernel, dense penalty)``
    (the last two ``None`` without a dense readout), and ``pixel_mean`` is the
    mean training image ``(H, W, C)``."""
    noise_std = config.training_noise_std
    k_init, k_stats = keys
    layers = tuple(feature_shapes)
    stats = _feature_stats(
        feature_fn,
        eval_train,
        k_stats,
        layers=layers,
        noise_std=config.training_noise_std,
        batch_size=eval_batch,
    )
    image_mean = jnp.asarray(eval_train.mean(axis=(0, 1, 2)))
    image_scale = jnp.asarray(eval_train.std(axis=(0, 1, 2)) + 1e-3)
    ridge_train = train[: config.ridge_images]
    pixel_mean = ridge_train.mean(axis=0, dtype=np.float64).astype(np.float32)
    geometry = {
        name: readout_geometry(feature_shapes[name], image_shape, config.readout_kernel)
        for name in layers
    }
    geometry = {name: g for name, g in geometry.items() if g is not None}
    readouts = (
        _solve_readouts(
            feature_fn,
            ridge_train,
            jax.random.fold_in(k_stats, 1),
            stats,
            pixel_mean,
            geometry=geometry,
            noise_std=noise_std,
            batch_size=eval_batch,
            image_shape=image_shape,
            dense=tuple(
                name
                for name in geometry
                if config.dense_readout
                and dense_readout_shape(feature_shapes[name], image_shape)
            ),
        )
        if geometry
        else {}
    )
    graphdefs, params, rest, initial = [], {}, {}, {}
    for i, name in enumerate(layers):
        decoder = create_decoder(
            feature_shapes[name],
            image_shape,
            num_blocks=config.num_blocks,
            width=config.width,
            readout_kernel=config.readout_kernel,
            dense_readout=config.dense_readout,
            key=k_init if i == 0 else jax.random.fold_in(k_init, i),
        )
        mean, scale = stats[name]
        decoder.feature_mean[...] = jnp.asarray(mean)
        decoder.feature_scale[...] = jnp.asarray(scale)
        decoder.image_mean[...] = image_mean
        decoder.image_scale[...] = image_scale
        if name in readouts:
            decoder.readout[...] = jnp.asarray(readouts[name][0])
            decoder.readout_bias[...] = jnp.asarray(readouts[name][1])
            if decoder.dense is not None and readouts[name][3] is not None:
                decoder.dense[...] = jnp.asarray(readouts[name][3])
            initial[name] = decoder_fn(decoder, allow_untrained=True)
        graphdef, params[name], rest[name] = nnx.split(decoder, nnx.Param, ...)
        graphdefs.append(graphdef)
    return tuple(graphdefs), params, rest, initial, readouts, pixel_mean


def _baseline_mse(
    initial, feature_fn, eval_train, eval_hold, pixel_mean, k_eval, config, batch
):
    """Held-out MSE of the ridge readouts alone (``initial``: the decoders
    before training, whose head is 0) and of the best constant predictor
    (the mean training image); both on the held-out images, or on the
    training images when none are held out."""
    _, k_ho = jax.random.split(k_eval)
    reference = eval_hold if eval_hold.shape[0] else eval_train
    noise_std = config.training_noise_std
    ridge_mse = (
        _mse(
            initial, feature_fn, reference, k_ho, noise_std=noise_std, batch_size=batch
        )
        if initial
        else {}
    )
    constant_mse = float(
        np.mean(np.square(reference - pixel_mean), dtype=np.float64) + noise_std**2
    )
    return ridge_mse, constant_mse


def _fit(graphdefs, params, rest, feature_fn, train, k_train, config, progress):
    """The training loop: ``config.steps`` compiled steps on ``train``.

    Returns the trained ``params``, the loss history (one row per
    ``log_every`` steps) and the steps per second after the first step.
    """
    layers = tuple(params)
    train_device = jnp.asarray(train)
    opt_state = _optimizer(config).init(params)
    # The step's outputs are committed to the default device; commit its
    # inputs there too, or the second step compiles the program again (the
    # cache key holds each argument's placement).
    params, opt_state = jax.device_put((params, opt_state), jax.devices()[0])
    history: list[np.ndarray] = []
    chunk_losses: list[Array] = []
    timer_start, timed_steps = 0.0, 0
    desc = f"decoder{'s' if len(layers) > 1 else ''} {', '.join(layers)}"
    with tqdm(total=config.steps, disable=not progress, desc=desc) as bar:
        for step in range(config.steps):
            params, opt_state, loss = _train_step(
                graphdefs,
                params,
                rest,
                opt_state,
                feature_fn,
                train_device,
                k_train,
                step,
                layers=layers,
                config=config,
            )
            chunk_losses.append(loss)
            if step == 0:  # the first step compiles: time the others
                _raise_if_diverged(np.asarray(jax.device_get(loss))[None], 0, layers)
                timer_start = time.perf_counter()
            else:
                timed_steps += 1
            if len(chunk_losses) == config.log_every or step == config.steps - 1:
                losses = np.asarray(jax.device_get(chunk_losses))
                _raise_if_diverged(losses, step + 1 - len(losses), layers)
                history.append(np.mean(losses, axis=0))
                bar.update(len(chunk_losses))
                bar.set_postfix(loss=" ".join(f"{v:.3g}" for v in history[-1]))
                chunk_losses = []
    timed_seconds = time.perf_counter() - timer_start if timed_steps else 0.0
    rate = timed_steps / timed_seconds if timed_seconds > 0 else 0.0
    return params, history, rate


def _final_mse(decoders, feature_fn, eval_train, eval_hold, k_eval, config, batch):
    """Train and held-out reconstruction MSE per layer (``{}`` held out
    without held-out images); NaN/inf is an error naming the layer."""
    fns = {
        name: decoder_fn(dec, allow_untrained=True) for name, dec in decoders.items()
    }
    k_tr, k_ho = jax.random.split(k_eval)
    eval_kwargs = dict(noise_std=config.training_noise_std, batch_size=batch)
    train_mse = _mse(fns, feature_fn, eval_train, k_tr, **eval_kwargs)
    heldout_mse = (
        _mse(fns, feature_fn, eval_hold, k_ho, **eval_kwargs)
        if eval_hold.shape[0]
        else {}
    )
    for name in decoders:
        for what, mse in (
            ("train", train_mse[name]),
            ("held-out", heldout_mse.get(name)),
        ):
            if mse is not None and not math.isfinite(mse):
                raise ValueError(
                    f"the {what} reconstruction MSE of layer {name!r} is {mse}: "
                    "feature_fn returns NaN/inf values for some of those images"
                )
    return train_mse, heldout_mse
