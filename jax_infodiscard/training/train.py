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
import json
import math
import pathlib
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jax_infodiscard import validation
from jax_infodiscard.models import create_model, model_metadata
from jax_infodiscard.training import checkpoint as ckpt
from jax_infodiscard.training.optimizer import (
    SCHEDULES,
    all_finite,
    learning_rate,
    optimizer,
)
from jax_infodiscard.types import Array, PRNGKey

__all__ = [
    "TrainConfig",
    "augment_batch",
    "evaluate",
    "make_optimizer",
    "train",
]

_OPTIMIZERS = ("adamw", "sgd")


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
        for name in ("epochs", "batch_size", "eval_batch_size"):
            validation.check_int(name, getattr(self, name))
        validation.check_int("seed", self.seed, minimum=0)
        validation.check_int("crop_padding", self.crop_padding, minimum=0)
        if self.keep_checkpoints is not None:
            validation.check_int("keep_checkpoints", self.keep_checkpoints)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        validation.check_number("learning_rate", self.learning_rate, positive=True)
        validation.check_number("momentum", self.momentum, minimum=0, below=1)
        validation.check_number("weight_decay", self.weight_decay, minimum=0)
        validation.check_number("warmup_epochs", self.warmup_epochs, minimum=0)
        validation.check_number(
            "label_smoothing", self.label_smoothing, minimum=0, below=1
        )
        for name in ("augment", "flip", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


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
    lr = learning_rate(config.schedule, config.learning_rate, total, warmup)
    return optimizer(
        config.optimizer,
        lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
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


class _Totals(NamedTuple):
    """Per-epoch accumulators carried through the compiled step (on device).

    Attributes:
        loss: sum of the step losses, float32 ``()``.
        correct: sum of the correct predictions, float32 ``()``.
        first_bad: index of the first step whose loss, gradients or updated
            parameters held a NaN/inf, int32 ``()``; -1 while none did.
    """

    loss: Array
    correct: Array
    first_bad: Array

    @classmethod
    def zeros(cls) -> _Totals:
        return cls(jnp.zeros(()), jnp.zeros(()), jnp.full((), -1, jnp.int32))


def _optimizer(
    config: TrainConfig,
    steps_per_epoch: int,
    extra_transform: optax.GradientTransformation | None,
) -> optax.GradientTransformation:
    """:func:`make_optimizer`, chained with ``extra_transform`` when given."""
    tx = make_optimizer(config, steps_per_epoch)
    return tx if extra_transform is None else optax.chain(tx, extra_transform)


@functools.lru_cache(maxsize=16)
def _make_train_step(
    graphdef: Any,
    task: str,
    config: TrainConfig,
    steps_per_epoch: int,
    extra_transform: optax.GradientTransformation | None = None,
) -> Callable:
    """Jitted ``step(params, rest, opt_state, images, labels, batches, i, key,
    totals, loss, transform)``.

    ``images``/``labels`` are the whole training set, ``batches`` the
    ``(steps, batch_size)`` index table of the epoch, ``i`` the step and
    ``totals`` the epoch's :class:`_Totals`, returned updated with this step:
    the finiteness check costs one reduction over the gradients and the new
    parameters inside the step, and the host reads the flag only where the
    loop already reads values back. Cached, so that runs with the same model
    and settings share one compiled step (callers pass a ``config`` with
    ``seed``/``progress`` normalised). ``loss`` and ``transform`` are the
    hooks of :func:`train` (Partials or ``None``), passed as arguments so
    that their arrays (a teacher's parameters) are traced, not constants.
    """
    tx = _optimizer(config, steps_per_epoch, extra_transform)

    def step(
        params,
        rest,
        opt_state,
        all_images,
        all_labels,
        batches,
        i,
        key,
        totals,
        loss_hook=None,
        transform=None,
    ):
        idx = batches[i]
        images = all_images[idx]
        labels = all_labels[idx]
        if config.augment:
            images = augment_batch(
                key, images, padding=config.crop_padding, flip=config.flip
            )
        if transform is not None:

            def apply(x):
                # A fresh copy: the BatchNorm statistics the attack would
                # update are discarded. The state is copied inside the
                # caller's transform (jax.grad), where NNX lets the copy's
                # statistics be written; merging the step's own arrays there
                # raises TraceContextError.
                fresh = jax.tree.map(jnp.copy, rest)
                return nnx.merge(graphdef, params, fresh)(x, train=True)

            images = transform(jax.random.fold_in(key, 1), apply, images, labels)

        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            outputs = model(images, train=True)
            loss, correct, _ = _loss_and_metrics(
                task, outputs, images, labels, config.label_smoothing
            )
            if loss_hook is not None:
                loss = loss_hook(outputs, images, labels)
            return jnp.mean(loss), jnp.sum(correct)

        # nnx.value_and_grad lets BatchNorm update its statistics in place.
        (loss, correct), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
        totals = _Totals(
            totals.loss + loss,
            totals.correct + correct,
            jnp.where((totals.first_bad < 0) & ~finite, i, totals.first_bad),
        )
        return params, new_rest, opt_state, loss, totals

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
    images = np.asarray(
        validation.check_images(images, f"{name} images", unit_range=True)
    )
    if images.shape[-1] != 3:
        raise ValueError(
            f"{name} images must have shape (N, H, W, 3), got {images.shape}"
        )
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


# Settings that do not change the trained model (a run may resume with others).
_NOT_IDENTITY = ("epochs", "progress", "eval_batch_size", "keep_checkpoints")


def _run_identity(
    model: nnx.Module, config: TrainConfig, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """What identifies a training run, as stored in every checkpoint.

    The architecture, every setting that changes the trained model (seed,
    optimizer, learning rate, augmentation...; ``epochs`` separately, see
    :func:`_check_resume`) and a description of the training data that does
    not depend on its order: image count and shape, label counts and the mean
    of each channel.
    """
    arch = (
        model_metadata(model)
        if hasattr(model, "arch")
        else {"model": type(model).__name__}
    )
    settings = dataclasses.asdict(config)
    data = {
        "num_images": int(images.shape[0]),
        "image_shape": list(images.shape[1:]),
        "label_counts": np.bincount(labels).tolist(),
        "channel_mean": images.mean(axis=(0, 1, 2), dtype=np.float64).tolist(),
    }
    identity = {
        "model": arch,
        "train_config": {k: v for k, v in settings.items() if k not in _NOT_IDENTITY},
        "epochs": config.epochs,
        "data": data,
    }
    return json.loads(json.dumps(identity))  # as it reads back from the JSON


def _metadata(
    model: nnx.Module,
    config: TrainConfig,
    epoch: int,
    history: dict,
    identity: dict[str, Any],
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if hasattr(model, "arch"):
        meta.update(model_metadata(model))
    meta["epoch"] = epoch
    meta["train_config"] = dataclasses.asdict(config)
    meta["run"] = identity
    meta["history"] = history
    for key in ("test_accuracy", "test_loss", "train_loss"):
        if history.get(key):
            meta[key] = history[key][-1]
    return meta


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):  # data means: summation order
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_resume(
    meta: dict[str, Any],
    identity: dict[str, Any],
    config: TrainConfig,
    directory: pathlib.Path,
) -> None:
    """Raises ``ValueError`` unless ``meta`` is a checkpoint of this very run.

    Older checkpoints without a ``"run"`` record are compared on what they
    stored: the model name and the training configuration.
    """
    stored = meta.get("run")
    if stored is None:  # written before run records existed
        settings = dict(meta.get("train_config", {}))
        stored = {
            "model": {k: meta[k] for k in identity["model"] if k in meta},
            "train_config": {
                k: v for k, v in settings.items() if k not in _NOT_IDENTITY
            },
        }
        if "epochs" in settings:
            stored["epochs"] = settings["epochs"]
    there, here = _flatten(stored), _flatten(identity)
    differ = [
        f"{key.removeprefix('train_config.')}: {_short(there[key])} there, "
        f"{_short(here[key])} here"
        for key in here
        if key in there and key != "epochs" and not _same(there[key], here[key])
    ]
    how = (
        "use another checkpoint_dir, pass the matching arguments, or "
        "resume=False to train from scratch in this folder"
    )
    if differ:
        raise ValueError(
            f"checkpoint_dir {directory} holds another training run "
            f"({'; '.join(differ)}); {how}"
        )
    done = int(meta.get("epoch", 0))
    planned = stored.get("epochs")
    if done > config.epochs:
        raise ValueError(
            f"checkpoint_dir {directory} holds a model trained for {done} epochs, "
            f"more than the epochs={config.epochs} asked for; pass epochs="
            f"{planned or done} to load it, or use another checkpoint_dir"
        )
    if planned not in (None, config.epochs) and config.schedule != "constant":
        raise ValueError(
            f"checkpoint_dir {directory} holds a run planned for {planned} "
            f"epochs ({done} done); its {config.schedule} learning-rate schedule "
            f"depends on that length, so it cannot continue as a run of "
            f"{config.epochs}; pass epochs={planned}, or use another checkpoint_dir"
        )


def _resume(
    directory: pathlib.Path,
    net: nnx.Module,
    opt_state: Any,
    identity: dict[str, Any],
    config: TrainConfig,
) -> ckpt.Restored | None:
    """The newest intact checkpoint of this run in ``directory``, or ``None``.

    Corrupt newer steps are set aside (renamed, see
    :func:`~jax_infodiscard.training.checkpoint.set_aside_steps`) with one
    warning line; ``None`` (train from scratch) when no step is intact.

    Raises:
        ValueError: the folder holds another run (see :func:`_check_resume`).
    """
    check = functools.partial(
        _check_resume, identity=identity, config=config, directory=directory
    )
    try:
        found = ckpt.restore_newest_intact(
            directory, net, extra=opt_state, check=check, warn=False
        )
    except ckpt.CorruptCheckpointError as err:
        moved = ckpt.set_aside_steps(directory, ckpt.all_steps(directory))
        warnings.warn(
            f"{err}; training from scratch (the corrupt steps are kept as "
            f"{', '.join(moved)})",
            ckpt.CheckpointFallbackWarning,
            stacklevel=3,
        )
        return None
    if found.skipped:
        moved = ckpt.set_aside_steps(directory, [s for s, _ in found.skipped])
        warnings.warn(
            f"{ckpt.describe_skipped(directory, found.skipped)}; resuming from "
            f"step {found.step} (the corrupt steps are kept as {', '.join(moved)})",
            ckpt.CheckpointFallbackWarning,
            stacklevel=3,
        )
    return found


def _raise_if_diverged(first_bad: int, epoch: int, steps: int) -> None:
    """Raises ``FloatingPointError`` naming the first non-finite step, if any."""
    if first_bad < 0:
        return
    raise FloatingPointError(
        f"training diverged: NaN/inf in the loss, gradients or parameters at "
        f"epoch {epoch + 1}, step {first_bad + 1} of {steps} (optimizer step "
        f"{epoch * steps + first_bad + 1}); nothing of this epoch was saved. "
        "Lower learning_rate, or check the model for unstable operations"
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
    hooks: tuple[Any, Any] = (None, None),
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
        hooks: ``(loss, batch_transform)`` of :func:`train` (or ``None``s).

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
    # Committed like the state (see train): the step's outputs are committed,
    # and fresh uncommitted totals in the first call would compile it twice.
    totals = jax.device_put(_Totals.zeros(), jax.devices()[0])
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not config.progress,
        leave=False,
    )
    for i in bar:
        params, rest, opt_state, loss, totals = train_step(
            params,
            rest,
            opt_state,
            *data,
            batches,
            i,
            jax.random.fold_in(epoch_key, i + 1),
            totals,
            *hooks,
        )
        if config.progress and (i % 10 == 0 or i == steps - 1):
            loss_now, first_bad = jax.device_get((loss, totals.first_bad))
            _raise_if_diverged(int(first_bad), epoch, steps)
            bar.set_postfix(loss=f"{float(loss_now):.4f}")
    totals = jax.device_get(totals)
    bar.close()
    _raise_if_diverged(int(totals.first_bad), epoch, steps)
    record = {"epoch": epoch + 1, "train_loss": float(totals.loss) / steps}
    if classify:
        record["train_accuracy"] = float(totals.correct) / (steps * bs)
    record["epoch_seconds"] = time.perf_counter() - t0
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
    loss: Callable[[Array, Array, Array], Array] | None = None,
    batch_transform: Callable[..., Array] | None = None,
    extra_transform: optax.GradientTransformation | None = None,
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
            completed epochs. Its metadata records what identifies the run
            (``"run"``: architecture, settings, seed, a description of the
            training data and the planned ``epochs``).
        resume: continue from the newest intact checkpoint in
            ``checkpoint_dir`` (a finished run is only reloaded). It must be a
            checkpoint of the same run: same architecture, settings, seed and
            training data, at most ``config.epochs`` epochs done, and planned
            for ``config.epochs`` epochs (the cosine schedule depends on it;
            a ``"constant"`` schedule may be extended). Corrupt newer steps
            are renamed ``<step>.corrupt-<n>`` and the run resumes from the
            newest intact one (or from scratch), with one
            :class:`~jax_infodiscard.training.checkpoint.CheckpointFallbackWarning`
            line. ``False``: train from scratch; the steps already in
            ``checkpoint_dir`` are deleted when the first new one is saved.
        num_classes: classes of a model built by name (default: max label + 1).
        image_size: image side of a model built by name (default: from data).
        model_kwargs: extra options for a model built by name (``width``...).
        loss: replaces the training loss: ``loss(outputs (B, K), images (B, S,
            S, 3), labels (B,)) -> (B,)`` per-example loss, called inside the
            compiled step on the (augmented, transformed) batch, e.g.
            :func:`jax_infodiscard.training.losses.distillation_objective`.
            ``label_smoothing`` is then not applied; the reported test loss
            stays the plain loss. ``None``: cross-entropy (MSE).
        batch_transform: replaces each training batch after augmentation:
            ``batch_transform(key, apply, images, labels) -> images``, where
            ``apply(x) -> outputs`` is the current model in training mode
            (its BatchNorm updates discarded), e.g. PGD examples
            (:func:`jax_infodiscard.training.adversarial.pgd_transform`).
        extra_transform: an optax transformation chained after the optimizer,
            e.g. :func:`jax_infodiscard.models.surgery.mask_updates` to keep
            pruned weights at zero while fine-tuning. ``loss`` and
            ``batch_transform`` should be :class:`jax.tree_util.Partial`
            objects: their bound arrays (a teacher's parameters) are then
            traced arguments of the step. With any of the three hooks, the
            checkpoint's run record lists which were used (``"hooks"``); the
            callables themselves are not compared on resume, so give each
            variant its own ``checkpoint_dir``.

    Returns:
        ``(model, history)``; ``history`` maps ``"epoch"``, ``"train_loss"``,
        ``"train_accuracy"`` (classifiers), ``"test_loss"``,
        ``"test_accuracy"`` (classifiers, when ``test_data`` is given) and
        ``"epoch_seconds"`` (wall time of the training part of the epoch,
        compilation included in the first) to per-epoch lists.

    Raises:
        TypeError: ``config`` is not a :class:`TrainConfig`.
        ValueError: malformed data (NaN/inf or values outside ``[0, 1]``
            included), labels out of range, fewer training images than
            ``config.batch_size``, or a ``checkpoint_dir`` holding another run
            or more epochs than asked for (the message says what differs).
        FloatingPointError: a NaN/inf loss, gradient or parameter; the message
            names the epoch and step. Checkpoints of the completed epochs are
            kept, nothing of the failing epoch is saved.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    images, labels = _as_arrays(train_data, "train_data")
    test = None if test_data is None else _as_arrays(test_data, "test_data")
    net = _build_model(
        model,
        num_classes=int(labels.max()) + 1 if num_classes is None else num_classes,
        image_size=int(images.shape[1]) if image_size is None else image_size,
        seed=config.seed,
        model_kwargs=model_kwargs,
    )
    task = getattr(net, "task", "classification")
    _check_labels(net, task, labels, test)
    n = images.shape[0]
    steps = n // config.batch_size
    if steps == 0:
        raise ValueError(f"{n} training images < batch_size={config.batch_size}")
    tx = _optimizer(config, steps, extra_transform)
    hooks, used = _check_hooks(loss, batch_transform, extra_transform)
    identity = _run_identity(
        net, config, images, labels if task == "classification" else labels * 0
    )
    if used:  # runs without hooks keep their identity (and their checkpoints)
        identity["hooks"] = used
    directory = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
    graphdef, state, history, start_epoch, replace = _start(
        net, tx, directory, resume, identity, config
    )
    step_config = dataclasses.replace(
        config, seed=0, progress=False, keep_checkpoints=None, eval_batch_size=1
    )
    train_step = _make_train_step(graphdef, task, step_config, steps, extra_transform)
    data = (jnp.asarray(images), jnp.asarray(labels))
    # The classic threefry sampler compiles much faster on XLA:CPU than the
    # partitionable one (jax's default); shuffling/augmentation use it.
    with jax.threefry_partitionable(False):
        base_key = jax.random.key(config.seed)
        for epoch in range(start_epoch, config.epochs):
            state, record = _train_epoch(
                train_step,
                state,
                data,
                jax.random.fold_in(base_key, epoch),
                epoch=epoch,
                config=config,
                classify=task == "classification",
                hooks=hooks,
            )
            nnx.update(net, *state[:2])
            _finish_epoch(net, task, test, record, history, config)
            if directory is not None:
                replace = _save_epoch(
                    directory, net, state, epoch, history, identity, config, replace
                )
    nnx.update(net, *state[:2])
    return net, history


def _save_epoch(directory, net, state, epoch, history, identity, config, replace):
    """Checkpoints ``net`` (optimizer state ``state[2]`` as extra) after
    ``epoch`` (step ``epoch + 1``). ``replace``: the old run's steps, deleted
    before the first save of a run that replaces it (``resume=False``).
    Returns what is still to replace (``()`` once done)."""
    if replace:  # resume=False: the new run replaces the old one
        ckpt.delete_steps(directory, replace)
        replace = ()
    ckpt.save_checkpoint(
        directory,
        net,
        metadata=_metadata(net, config, epoch + 1, history, identity),
        step=epoch + 1,
        extra=state[2],
        max_to_keep=config.keep_checkpoints,
    )
    return replace


def _check_labels(net: nnx.Module, task: str, labels, test) -> None:
    """Classifier labels must lie in ``[0, num_classes)``."""
    if task != "classification":
        return
    k = int(net.num_classes)
    for name, lab in (("train", labels), ("test", None if test is None else test[1])):
        if lab is not None and (lab.min() < 0 or lab.max() >= k):
            raise ValueError(f"{name} labels must lie in [0, {k}), got {lab.max()}")


def _check_hooks(loss, batch_transform, extra_transform) -> tuple[tuple, list[str]]:
    """The step's ``(loss, batch_transform)`` as Partials, and the names of the
    hooks given."""
    hooks = (
        None if loss is None else validation.as_partial(loss, "loss"),
        None
        if batch_transform is None
        else validation.as_partial(batch_transform, "batch_transform"),
    )
    if extra_transform is not None and not isinstance(
        extra_transform, optax.GradientTransformation
    ):
        raise TypeError(
            "extra_transform must be an optax.GradientTransformation, got "
            f"{type(extra_transform).__name__}"
        )
    used = [
        name
        for name, hook in (
            ("loss", loss),
            ("batch_transform", batch_transform),
            ("extra_transform", extra_transform),
        )
        if hook is not None
    ]
    return hooks, used


def _start(net, tx, directory, resume: bool, identity: dict, config: TrainConfig):
    """The state to train from: fresh, or resumed from ``directory``.

    Returns ``(graphdef, (params, rest, opt_state), history, start_epoch,
    replace)``; ``replace`` lists the steps a run with ``resume=False``
    replaces.
    """
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    opt_state = tx.init(params)
    history: dict[str, list[float]] = {}
    start_epoch = 0
    on_disk = () if directory is None else ckpt.all_steps(directory)
    replace = on_disk if on_disk and not resume else ()
    if on_disk and resume:
        found = _resume(directory, net, opt_state, identity, config)
        if found is not None:
            nnx.update(net, nnx.state(found.model))
            graphdef, params, rest = nnx.split(net, nnx.Param, ...)
            opt_state = found.extra
            start_epoch = int(found.metadata.get("epoch", found.step))
            history = {k: list(v) for k, v in found.metadata.get("history", {}).items()}
    # Restored arrays are committed to a device, fresh ones are not; commit
    # both alike so that a resumed run reuses the compiled step.
    state = jax.device_put((params, rest, opt_state), jax.devices()[0])
    return graphdef, state, history, start_epoch, replace


def _finish_epoch(net, task: str, test, record: dict, history: dict, config) -> None:
    """Adds the test scores to the epoch's ``record`` and appends it to
    ``history`` (and prints it with ``config.progress``)."""
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
