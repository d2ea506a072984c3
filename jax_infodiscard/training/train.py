"""Training of zoo models: classification (cross-entropy) or reconstruction (MSE).

The loop is functional: the model is split once (``nnx.split``) into a static
graph, its parameters and its other state (BatchNorm statistics); a jitted
step merges them (``nnx.merge``), computes the loss and gradients, applies
the optax update and returns the new state. The data set lives on the device
for the whole run and each step gathers its batch from a per-epoch
permutation, so the host sends only indices. Randomness is explicit:
``jax.random.key(config.seed)`` is folded with the epoch (shuffling) and the
step (augmentation), so an interrupted run that resumes from a checkpoint
sees exactly the batches it would have seen.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = rng.uniform(size=(64, 8, 8, 3)).astype(np.float32)
    >>> labels = (images[..., 0].mean((1, 2)) > 0.5).astype(np.int32)
    >>> config = TrainConfig(epochs=1, batch_size=32, progress=False)
    >>> model, history = train(
    ...     "convnet", (images, labels), None, config, model_kwargs={"width": 4},
    ...     image_size=8, num_classes=2)
    >>> sorted(history)
    ['epoch', 'epoch_seconds', 'train_accuracy', 'train_loss']
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jax_infodiscard.models import create_model, model_metadata
from jax_infodiscard.training import checkpoint as ckpt
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "TrainConfig",
    "augment_batch",
    "evaluate",
    "make_optimizer",
    "train",
]

_OPTIMIZERS = ("adamw", "sgd")
_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step (the last partial batch of an epoch is
            dropped, so that every step has the same shape).
        learning_rate: peak learning rate.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"sgd"``
            (Nesterov momentum; the weight decay is added to the gradient).
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: weight decay, applied only to kernels (arrays with two
            or more axes), not to biases, BatchNorm or the input mean.
        warmup_epochs: linear warm-up from 0 to ``learning_rate`` (epochs,
            may be fractional).
        schedule: ``"cosine"`` (decay to 0 at the end) or ``"constant"``
            after the warm-up.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1)``.
        augment: random crops (reflect padding) and horizontal flips.
        crop_padding: pixels of padding for random crops (0: no crops).
        flip: random horizontal flips when ``augment``.
        seed: seed of parameter initialisation, shuffling and augmentation.
        eval_batch_size: images per evaluation batch.
        progress: show tqdm progress bars.
        keep_checkpoints: number of most recent epoch checkpoints kept
            (``None``: all).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    augment: bool = True
    crop_padding: int = 2
    flip: bool = True
    seed: int = 0
    eval_batch_size: int = 500
    progress: bool = True
    keep_checkpoints: int | None = 2

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size"):
            positive_int(name)
        if self.keep_checkpoints is not None:
            positive_int("keep_checkpoints")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.crop_padding < 0:
            raise ValueError(
                "weight_decay, warmup_epochs and crop_padding must be >= 0, got "
                f"{self.weight_decay}, {self.warmup_epochs}, {self.crop_padding}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )


# --------------------------------------------------------------------- pieces
def make_optimizer(
    config: TrainConfig, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The optax optimizer with warm-up and schedule of ``config``.

    Args:
        config: training hyper-parameters.
        steps_per_epoch: optimizer steps per epoch (sets the schedule length).

    Returns:
        An optax transformation over a parameter pytree; weight decay is
        masked to arrays with ``ndim >= 2``.
    """
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    lr = config.learning_rate
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    else:
        decay = optax.constant_schedule(lr)
    if warmup > 0:
        warm = optax.linear_schedule(0.0, lr, warmup)
        schedule = optax.join_schedules([warm, decay], [warmup])
    else:
        schedule = decay

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)

    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=True),
    )


def augment_batch(
    key: PRNGKey, images: Array, *, padding: int = 2, flip: bool = True
) -> Array:
    """Random crops (after reflect padding) and horizontal flips, per image.

    Args:
        key: PRNG key.
        images: float32 ``(B, H, W, C)``.
        padding: pixels of reflect padding on each side before cropping back
            to ``(H, W)``; 0 disables crops.
        flip: flip each image left-right with probability 1/2.

    Returns:
        Augmented images, float32 ``(B, H, W, C)``.
    """
    b, h, w, c = images.shape
    k_flip, k_crop = jax.random.split(key)
    if flip:
        do_flip = jax.random.bernoulli(k_flip, 0.5, (b,))
        images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
    if padding > 0:
        pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        padded = jnp.pad(images, pad, mode="reflect")
        offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * padding + 1)

        def crop(image: Array, offset: Array) -> Array:
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        images = jax.vmap(crop)(padded, offsets)
    return images


def _loss_and_metrics(
    task: str, outputs: Array, images: Array, labels: Array, smoothing: float
) -> tuple[Array, Array, Array]:
    """Per-example ``(loss, correct, squared_error)``, each ``(B,)`` float32."""
    if task == "reconstruction":
        err = jnp.mean((outputs - images) ** 2, axis=(1, 2, 3))
        return err, jnp.zeros_like(err), err
    targets = jax.nn.one_hot(labels, outputs.shape[-1])
    if smoothing > 0:
        targets = optax.smooth_labels(targets, smoothing)
    loss = optax.softmax_cross_entropy(outputs, targets)
    correct = (jnp.argmax(outputs, -1) == labels).astype(jnp.float32)
    return loss, correct, jnp.zeros_like(loss)


@functools.lru_cache(maxsize=16)
def _make_train_step(
    graphdef: Any, task: str, config: TrainConfig, steps_per_epoch: int
) -> Callable:
    """Jitted ``step(params, rest, opt_state, images, labels, batches, i, key)``.

    ``images``/``labels`` are the whole training set, ``batches`` the
    ``(steps, batch_size)`` index table of the epoch and ``i`` the step.
    Cached, so that runs with the same model and settings share one compiled
    step (callers pass a ``config`` with ``seed``/``progress`` normalised).
    """
    tx = make_optimizer(config, steps_per_epoch)

    def step(params, rest, opt_state, all_images, all_labels, batches, i, key):
        idx = batches[i]
        images = all_images[idx]
        labels = all_labels[idx]
        if config.augment:
            images = augment_batch(
                key, images, padding=config.crop_padding, flip=config.flip
            )

        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            outputs = model(images, train=True)
            loss, correct, _ = _loss_and_metrics(
                task, outputs, images, labels, config.label_smoothing
            )
            return jnp.mean(loss), jnp.sum(correct)

        # nnx.value_and_grad lets BatchNorm update its statistics in place.
        (loss, correct), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_rest, opt_state, loss, correct

    return jax.jit(step)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval_batches(graphdef, task, params, rest, images, labels, weights):
    """Sums of loss and correct predictions over ``(nb, bs, ...)`` batches."""

    def one(batch):
        x, y, w = batch
        model = nnx.merge(graphdef, params, rest)
        loss, correct, _ = _loss_and_metrics(task, model(x), x, y, 0.0)
        return jnp.sum(loss * w), jnp.sum(correct * w)

    losses, corrects = jax.lax.map(one, (images, labels, weights))
    return jnp.sum(losses), jnp.sum(corrects)


def evaluate(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 500,
) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) with inference-mode BatchNorm.

    Args:
        model: a zoo model (``model.task`` selects the loss).
        images: float32 ``(N, S, S, 3)`` in ``[0, 1]``.
        labels: int ``(N,)``; required for classifiers, ignored otherwise.
        batch_size: images per compiled batch.

    Returns:
        ``{"loss": mean cross-entropy (nats) or MSE, "accuracy": fraction}``;
        auto-encoders report only ``"loss"``.
    """
    task = getattr(model, "task", "classification")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    if labels is None:
        if task == "classification":
            raise ValueError("labels are required to evaluate a classifier")
        labels = np.zeros((n,), np.int32)
    labels = np.asarray(labels)
    if n == 0 or labels.shape != (n,):
        raise ValueError(
            f"need a non-empty image batch and labels of shape ({n},), got "
            f"{images.shape} and {labels.shape}"
        )
    bs = min(batch_size, n)
    nb = math.ceil(n / bs)
    pad = nb * bs - n
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
    labels = np.concatenate([labels.astype(np.int32), np.zeros(pad, np.int32)])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, correct = _eval_batches(
        graphdef,
        task,
        params,
        rest,
        jnp.asarray(images.reshape(nb, bs, *images.shape[1:])),
        jnp.asarray(labels.reshape(nb, bs)),
        jnp.asarray(weights.reshape(nb, bs)),
    )
    out = {"loss": float(loss) / n}
    if task == "classification":
        out["accuracy"] = float(correct) / n
    return out


# ---------------------------------------------------------------------- train
def _as_arrays(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` from a tuple, a mapping or a ``.images`` object."""
    if isinstance(data, Mapping):
        images, labels = (
            data.get("images", data.get("image")),
            data.get("labels", data.get("label")),
        )
    elif hasattr(data, "images"):
        images, labels = data.images, getattr(data, "labels", None)
    else:
        try:
            images, labels = data
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be (images, labels), a mapping or a data set with "
                f".images/.labels, got {type(data).__name__}"
            ) from err
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"{name} images must have shape (N, H, W, 3) with N >= 1, got "
            f"{images.shape}"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} images must be float in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} images must lie in [0, 1], got [{lo}, {hi}]")
    if labels is None:
        labels = np.zeros(images.shape[0], np.int32)
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} labels must be integers of shape ({images.shape[0]},), got "
            f"{labels.dtype} {labels.shape}"
        )
    return images.astype(np.float32), labels.astype(np.int32)


def _build_model(
    model: str | nnx.Module,
    *,
    num_classes: int,
    image_size: int,
    seed: int,
    model_kwargs: Mapping[str, Any] | None,
) -> nnx.Module:
    if isinstance(model, nnx.Module):
        return model
    return create_model(
        model,
        num_classes=num_classes,
        image_size=image_size,
        rngs=nnx.Rngs(seed),
        **dict(model_kwargs or {}),
    )


def _metadata(
    model: nnx.Module, config: TrainConfig, epoch: int, history: dict
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if hasattr(model, "arch"):
        meta.update(model_metadata(model))
    meta["epoch"] = epoch
    meta["train_config"] = dataclasses.asdict(config)
    meta["history"] = history
    for key in ("test_accuracy", "test_loss", "train_loss"):
        if history.get(key):
            meta[key] = history[key][-1]
    return meta


def _check_resume(meta: dict[str, Any], model: nnx.Module, config: TrainConfig):
    arch = getattr(model, "arch", None)
    if arch is not None and meta.get("model") not in (None, arch):
        raise ValueError(
            f"checkpoint holds model {meta.get('model')!r}, cannot resume {arch!r}"
        )
    stored = dict(meta.get("train_config", {}))
    current = dataclasses.asdict(config)
    ignore = {"progress", "eval_batch_size", "keep_checkpoints"}
    changed = sorted(
        k
        for k in current
        if k not in ignore and k in stored and stored[k] != current[k]
    )
    if changed:
        warnings.warn(
            f"resuming with a changed training configuration ({', '.join(changed)})",
            stacklevel=3,
        )


def _train_epoch(
    train_step: Callable,
    state: tuple[Any, Any, Any],
    data: tuple[Array, Array],
    epoch_key: PRNGKey,
    *,
    epoch: int,
    config: TrainConfig,
    classify: bool,
) -> tuple[tuple[Any, Any, Any], dict[str, float]]:
    """One pass over the shuffled training set.

    Args:
        train_step: from :func:`_make_train_step`.
        state: ``(params, rest, opt_state)``.
        data: the whole training set on device, ``(N, S, S, 3)`` and ``(N,)``.
        epoch_key: key of this epoch (shuffling: fold 0; step i: fold i + 1).
        epoch: 0-based epoch index (for the progress bar).
        config: training settings.
        classify: report the training accuracy.

    Returns:
        The new state and ``{"epoch", "train_loss", ["train_accuracy"],
        "epoch_seconds"}`` (mean over the epoch's steps, training mode).
    """
    params, rest, opt_state = state
    n, bs = data[0].shape[0], config.batch_size
    steps = n // bs
    perm = jax.random.permutation(jax.random.fold_in(epoch_key, 0), n)
    batches = perm[: steps * bs].reshape(steps, bs)
    t0 = time.perf_counter()
    loss_sum = jnp.zeros(())
    correct_sum = jnp.zeros(())
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not config.progress,
        leave=False,
    )
    for i in bar:
        params, rest, opt_state, loss, correct = train_step(
            params,
            rest,
            opt_state,
            *data,
            batches,
            i,
            jax.random.fold_in(epoch_key, i + 1),
        )
        loss_sum += loss
        correct_sum += correct
        if config.progress and (i % 10 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{float(loss):.4f}")
    loss_sum.block_until_ready()
    record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps}
    if classify:
        record["train_accuracy"] = float(correct_sum) / (steps * bs)
    record["epoch_seconds"] = time.perf_counter() - t0
    bar.close()
    return (params, rest, opt_state), record


def train(
    model: str | nnx.Module,
    train_data: Any,
    test_data: Any = None,
    config: TrainConfig = TrainConfig(),
    *,
    checkpoint_dir: str | pathlib.Path | None = None,
    resume: bool = True,
    num_classes: int | None = None,
    image_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nnx.Module, dict[str, list[float]]]:
    """Trains a zoo model (cross-entropy for classifiers, MSE for auto-encoders).

    Args:
        model: a registry name (built with ``nnx.Rngs(config.seed)``) or a
            module (updated in place and returned).
        train_data: ``(images, labels)`` with float32 images ``(N, S, S, 3)``
            in ``[0, 1]`` and int labels ``(N,)`` (also a mapping with
            ``images``/``labels`` keys or an object with those attributes).
            Auto-encoders ignore the labels (``None`` allowed).
        test_data: same form, evaluated after every epoch; ``None`` to skip.
        config: hyper-parameters.
        checkpoint_dir: if given, a checkpoint (model, optimizer state and
            history in the metadata) is written after every epoch, step =
            completed epochs.
        resume: continue from the latest checkpoint in ``checkpoint_dir``.
        num_classes: classes of a model built by name (default: max label + 1).
        image_size: image side of a model built by name (default: from data).
        model_kwargs: extra options for a model built by name (``width``...).

    Returns:
        ``(model, history)``; ``history`` maps ``"epoch"``, ``"train_loss"``,
        ``"train_accuracy"`` (classifiers), ``"test_loss"``,
        ``"test_accuracy"`` (classifiers, when ``test_data`` is given) and
        ``"epoch_seconds"`` (wall time of the training part of the epoch,
        compilation included in the first) to per-epoch lists.

    Raises:
        ValueError: malformed data, labels out of range, fewer training images
            than ``config.batch_size``, or a checkpoint of another model.
    """
    images, labels = _as_arrays(train_data, "train_data")
    test = None if test_data is None else _as_arrays(test_data, "test_data")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if image_size is None:
        image_size = int(images.shape[1])
    net = _build_model(
        model,
        num_classes=num_classes,
        image_size=image_size,
        seed=config.seed,
        model_kwargs=model_kwargs,
    )
    task = getattr(net, "task", "classification")
    if task == "classification":
        k = int(net.num_classes)
        for name, lab in (
            ("train", labels),
            ("test", None if test is None else test[1]),
        ):
            if lab is not None and (lab.min() < 0 or lab.max() >= k):
                raise ValueError(f"{name} labels must lie in [0, {k}), got {lab.max()}")
    n = images.shape[0]
    steps = n // config.batch_size
    if steps == 0:
        raise ValueError(f"{n} training images < batch_size={config.batch_size}")
    tx = make_optimizer(config, steps)

    history: dict[str, list[float]] = {}
    start_epoch = 0
    last = None if checkpoint_dir is None else ckpt.latest_step(checkpoint_dir)
    if resume and last is not None and last > 0:
        restored, meta = ckpt.restore_checkpoint(checkpoint_dir, net)
        _check_resume(meta, net, config)
        nnx.update(net, nnx.state(restored))
        start_epoch = int(meta.get("epoch", last))
        history = {k: list(v) for k, v in meta.get("history", {}).items()}

    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    opt_state = tx.init(params)
    if start_epoch > 0:
        opt_state = ckpt.restore_extra(checkpoint_dir, opt_state)
    step_config = dataclasses.replace(
        config, seed=0, progress=False, keep_checkpoints=None, eval_batch_size=1
    )
    train_step = _make_train_step(graphdef, task, step_config, steps)

    all_images = jnp.asarray(images)
    all_labels = jnp.asarray(labels)
    # The classic threefry sampler compiles much faster on XLA:CPU than the
    # partitionable one (jax's default); shuffling/augmentation use it.
    with jax.threefry_partitionable(False):
        base_key = jax.random.key(config.seed)
        for epoch in range(start_epoch, config.epochs):
            (params, rest, opt_state), record = _train_epoch(
                train_step,
                (params, rest, opt_state),
                (all_images, all_labels),
                jax.random.fold_in(base_key, epoch),
                epoch=epoch,
                config=config,
                classify=task == "classification",
            )
            nnx.update(net, params, rest)
            if test is not None:
                scores = evaluate(
                    net,
                    test[0],
                    test[1] if task == "classification" else None,
                    batch_size=config.eval_batch_size,
                )
                record.update({f"test_{k}": v for k, v in scores.items()})
            record["epoch_seconds"] = record.pop("epoch_seconds")  # keep it last
            for key, value in record.items():
                history.setdefault(key, []).append(value)
            if config.progress:
                tqdm.write(", ".join(f"{k}={v:.4g}" for k, v in record.items()))
            if checkpoint_dir is not None:
                ckpt.save_checkpoint(
                    checkpoint_dir,
                    net,
                    metadata=_metadata(net, config, epoch + 1, history),
                    step=epoch + 1,
                    extra=opt_state,
                    max_to_keep=config.keep_checkpoints,
                )
    nnx.update(net, params, rest)
    return net, history
