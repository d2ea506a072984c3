"""Tests of the training loop, augmentation, optimizer and evaluation."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_infodiscard.models import create_model
from jax_infodiscard.training import checkpoint as ckpt
from jax_infodiscard.training.train import (
    TrainConfig,
    augment_batch,
    evaluate,
    make_optimizer,
    train,
)


def toy_data(n: int, seed: int = 0, size: int = 8):
    """Class 1 has a bright 4x4 square in the top-left corner."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.5, size=(n, size, size, 3)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int32)
    images[labels == 1, :4, :4, :] += 0.5
    return images, labels


FAST = TrainConfig(
    epochs=3,
    batch_size=16,
    learning_rate=1e-2,
    warmup_epochs=0.5,
    progress=False,
    augment=False,
)
CONVNET = {"model_kwargs": {"width": 4}}


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAST.epochs = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("learning_rate", float("inf"), ValueError, "learning_rate must be finite"),
        ("learning_rate", float("nan"), ValueError, "learning_rate must be finite"),
        ("learning_rate", 0.0, ValueError, "learning_rate must be > 0"),
        ("weight_decay", float("nan"), ValueError, "weight_decay must be finite"),
        ("weight_decay", -1e-4, ValueError, "weight_decay must be >= 0"),
        ("momentum", 1.0, ValueError, "momentum must be < 1"),
        ("warmup_epochs", float("inf"), ValueError, "warmup_epochs must be finite"),
        ("label_smoothing", float("nan"), ValueError, "label_smoothing"),
        ("epochs", 2.5, TypeError, "epochs must be an integer"),
        ("seed", -1, ValueError, "seed must be >= 0"),
        ("crop_padding", -2, ValueError, "crop_padding must be >= 0"),
        ("learning_rate", "0.1", TypeError, "learning_rate must be a number"),
        ("augment", 1, TypeError, "augment must be a bool"),
    ],
)
def test_bad_config_values_fail_at_construction(field, value, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**{field: value})


def test_bad_nan_pixel_in_the_data_is_refused():
    images, labels = toy_data(32)
    images[5, 2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"train_data images contain 1 NaN/inf"):
        train("convnet", (images, labels), None, FAST, **CONVNET)
    clean, _ = toy_data(32)
    with pytest.raises(ValueError, match=r"test_data images contain 1 NaN/inf"):
        train("convnet", (clean, labels), (images, labels), FAST, **CONVNET)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train("convnet", (clean, labels), None, {"epochs": 1}, **CONVNET)


class _Poisoned(nnx.Module):
    """A linear classifier whose logits are NaN for an image whose pixel
    ``(0, 0)`` has red value exactly 1 (``0 * log(0)``), finite otherwise."""

    num_classes = 2

    def __init__(self, *, rngs):
        self.linear = nnx.Linear(8 * 8 * 3, 2, rngs=rngs)

    def __call__(self, x, train=False):
        poison = jnp.log1p(-x[:, 0, 0, :1])  # -inf where the pixel is 1
        return self.linear(x.reshape(x.shape[0], -1)) + 0.0 * poison


@pytest.mark.parametrize("progress", [False, True])
def test_nan_loss_stops_training_naming_the_step(tmp_path, progress):
    images, labels = toy_data(64)
    config = dataclasses.replace(FAST, progress=progress)
    # The epoch-0 batches, drawn as train() draws them.
    with jax.threefry_partitionable(False):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
        batches = np.asarray(jax.random.permutation(key, 64)).reshape(4, 16)
    images[batches[2, 5], 0, 0, 0] = 1.0  # in the third step of epoch 1
    model = _Poisoned(rngs=nnx.Rngs(0))
    before = np.asarray(model.linear.kernel[...])
    with pytest.raises(
        FloatingPointError, match=r"epoch 1, step 3 of 4 \(optimizer step 3\)"
    ):
        train(model, (images, labels), None, config, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(model.linear.kernel[...], before)  # untouched
    assert ckpt.all_steps(tmp_path) == ()  # nothing of the failed epoch saved


def test_augment_identity_flip_and_crop():
    x = jax.random.uniform(jax.random.key(0), (6, 5, 5, 2))
    key = jax.random.key(1)
    np.testing.assert_array_equal(augment_batch(key, x, padding=0, flip=False), x)
    flipped = augment_batch(key, x, padding=0, flip=True)
    is_same = jnp.all(flipped == x, axis=(1, 2, 3))
    is_flip = jnp.all(flipped == x[:, :, ::-1], axis=(1, 2, 3))
    assert bool(jnp.all(is_same | is_flip))
    many = augment_batch(key, jnp.tile(x[:1], (64, 1, 1, 1)), padding=0, flip=True)
    n_flip = int(jnp.sum(jnp.all(many == x[:1, :, ::-1], axis=(1, 2, 3))))
    assert 16 < n_flip < 48  # about half
    cropped = augment_batch(key, x, padding=1, flip=False)
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    for i in range(6):  # every output is one of the 9 windows of its image
        windows = [padded[i, a : a + 5, b : b + 5] for a in range(3) for b in range(3)]
        assert any(np.array_equal(cropped[i], w) for w in windows)
    other = augment_batch(jax.random.key(2), x, padding=1, flip=True)
    assert not np.array_equal(other, cropped)


def test_weight_decay_only_on_kernels():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    config = TrainConfig(
        epochs=1,
        learning_rate=0.1,
        weight_decay=0.5,
        warmup_epochs=0,
        schedule="constant",
    )
    for optimizer in ("adamw", "sgd"):
        tx = make_optimizer(dataclasses.replace(config, optimizer=optimizer), 10)
        state = tx.init(params)
        zero = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zero, state, params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["bias"], 1.0)
        assert float(new["kernel"][0, 0]) < 1.0


def test_schedule_warms_up_and_decays():
    config = TrainConfig(epochs=2, learning_rate=1.0, warmup_epochs=1, optimizer="sgd",
                         momentum=0.0, weight_decay=0.0)  # fmt: skip
    tx = make_optimizer(config, 4)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    steps = []
    for _ in range(8):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        steps.append(-float(updates["w"]))
    assert steps[0] == 0.0 and steps[1] < steps[2] < steps[3]  # warm-up
    assert abs(max(steps) - 1.0) < 1e-6
    assert steps[4] > steps[5] > steps[6] > steps[7]  # cosine decay


def test_training_lowers_the_loss_and_learns():
    data = toy_data(96)
    model, history = train("convnet", data, toy_data(64, seed=1), FAST, **CONVNET)
    assert history["epoch"] == [1, 2, 3]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["test_accuracy"][-1] >= 0.9
    scores = evaluate(model, *toy_data(64, seed=1), batch_size=64)
    assert scores["accuracy"] == pytest.approx(history["test_accuracy"][-1])


def test_training_compiles_its_step_once(caplog):
    """The first step of an epoch must not compile a second program."""
    # Settings no other test uses: the compiled step is cached per settings.
    cfg = dataclasses.replace(FAST, epochs=2, batch_size=24, learning_rate=7e-3)
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        train("convnet", toy_data(48), None, cfg, **CONVNET)
    compiled = [
        r
        for r in caplog.records
        if "Finished XLA compilation of jit(step)" in r.getMessage()
    ]
    assert len(compiled) == 1


def test_evaluate_matches_manual_and_ignores_padding():
    model = create_model(
        "convnet", num_classes=2, image_size=8, width=4, rngs=nnx.Rngs(0)
    )
    images, labels = toy_data(10)
    logits = model(jnp.asarray(images))
    manual_acc = float(np.mean(np.argmax(logits, -1) == labels))
    manual_loss = float(
        np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    )
    for bs in (10, 3):
        scores = evaluate(model, images, labels, batch_size=bs)
        assert scores["accuracy"] == pytest.approx(manual_acc)
        assert scores["loss"] == pytest.approx(manual_loss, rel=1e-5)


RESUME = dataclasses.replace(FAST, augment=True, keep_checkpoints=None)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-epoch run with every epoch's checkpoint: (folder, data, model, history)."""
    folder = tmp_path_factory.mktemp("run")
    data = toy_data(64)
    model, history = train(
        "convnet", data, None, RESUME, checkpoint_dir=folder, **CONVNET
    )
    assert ckpt.all_steps(folder) == (1, 2, 3)
    return folder, data, model, history


def _copy(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run[0], folder)
    return folder


def test_resume_reproduces_uninterrupted_run(finished_run, tmp_path):
    _, data, full, hist_full = finished_run
    folder = _copy(finished_run, tmp_path)
    # forget the last epoch, then resume from epoch 2
    shutil.rmtree(folder / "3")
    resumed, hist = train(
        "convnet", data, None, RESUME, checkpoint_dir=folder, **CONVNET
    )
    assert hist["epoch"] == [1, 2, 3]
    np.testing.assert_array_equal(hist["train_loss"], hist_full["train_loss"])
    x = jnp.asarray(data[0][:8])
    np.testing.assert_array_equal(resumed(x), full(x))  # bit-identical
    # a finished run only reloads
    again, hist_again = train(
        "convnet", data, None, RESUME, checkpoint_dir=folder, **CONVNET
    )
    assert hist_again["epoch"] == [1, 2, 3]
    np.testing.assert_array_equal(again(x), resumed(x))
    meta = ckpt.read_metadata(folder)
    assert meta["model"] == "convnet" and meta["epoch"] == 3
    assert meta["run"]["train_config"]["seed"] == 0 and meta["run"]["epochs"] == 3
    assert meta["run"]["data"]["num_images"] == 64


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _largest_file(folder):
    return max(
        (p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


@pytest.mark.parametrize(
    ("corrupt", "resumed_from"),
    [
        ({3: "truncate"}, 2),
        ({3: "delete"}, 2),
        ({3: "delete", 2: "truncate"}, 1),
    ],
    ids=["truncated", "deleted", "two-corrupt"],
)
def test_corrupt_latest_checkpoint_falls_back_with_one_warning_line(
    finished_run, tmp_path, capfd, corrupt, resumed_from
):
    _, data, full, hist_full = finished_run
    folder = _copy(finished_run, tmp_path)
    for step, how in corrupt.items():
        target = _largest_file(folder / str(step) / "state")
        _truncate(target) if how == "truncate" else target.unlink()
    capfd.readouterr()
    with pytest.warns(ckpt.CheckpointFallbackWarning) as record:
        resumed, hist = train(
            "convnet", data, None, RESUME, checkpoint_dir=folder, **CONVNET
        )
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and len(message) < 600
    steps = ", ".join(str(s) for s in sorted(corrupt, reverse=True))
    assert f"step{'s' if len(corrupt) > 1 else ''} {steps} in" in message
    assert f"resuming from step {resumed_from}" in message
    assert "is missing" in message or "bytes" in message
    _, err = capfd.readouterr()
    assert err == "", err  # no orbax or TensorStore output
    # The same model as resuming from the intact step: the uninterrupted run.
    x = jnp.asarray(data[0][:8])
    np.testing.assert_array_equal(resumed(x), full(x))
    np.testing.assert_array_equal(hist["train_loss"], hist_full["train_loss"])
    # The corrupt steps were set aside and rewritten; the folder reads clean.
    assert ckpt.all_steps(folder) == (1, 2, 3)
    assert sorted(p.name for p in folder.glob("*.corrupt-*")) == [
        f"{s}.corrupt-0" for s in sorted(corrupt)
    ]
    for step in (1, 2, 3):
        assert ckpt.verify_checkpoint(folder, step)


def test_every_step_corrupt_trains_from_scratch(finished_run, tmp_path):
    _, data, full, _ = finished_run
    folder = _copy(finished_run, tmp_path)
    for step in (1, 2, 3):
        (folder / str(step) / "metadata" / "metadata").unlink()
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="training from scratch"):
        again, hist = train(
            "convnet", data, None, RESUME, checkpoint_dir=folder, **CONVNET
        )
    assert hist["epoch"] == [1, 2, 3]
    x = jnp.asarray(data[0][:8])
    np.testing.assert_array_equal(again(x), full(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 2}, r"trained for 3 epochs, more than the epochs=2 .*epochs=3"),
        ({"epochs": 4}, r"planned for 3 epochs .*cosine.*pass epochs=3"),
        ({"seed": 1}, r"another training run \(seed: 0 there, 1 here\)"),
        ({"learning_rate": 0.02}, r"learning_rate: 0.01 there, 0.02 here"),
        ({"data": 48}, r"data.num_images: 64 there, 48 here"),
        ({"data": "other"}, r"data.channel_mean"),
        ({"width": 8}, r"model.model_kwargs.width: 4 there, 8 here"),
    ],
)
def test_resume_refuses_another_run(finished_run, tmp_path, change, message):
    _, data, _, _ = finished_run
    folder = _copy(finished_run, tmp_path)
    change = dict(change)
    if "data" in change:
        what = change.pop("data")
        data = toy_data(what) if isinstance(what, int) else toy_data(64, seed=3)
    kwargs = {"model_kwargs": {"width": change.pop("width", 4)}}
    config = dataclasses.replace(RESUME, **change)
    with pytest.raises(ValueError, match=message) as info:
        train("convnet", data, None, config, checkpoint_dir=folder, **kwargs)
    assert "another checkpoint_dir" in str(info.value)
    assert ckpt.all_steps(folder) == (1, 2, 3)  # nothing touched


def test_resume_false_replaces_the_old_run(finished_run, tmp_path):
    _, data, _, _ = finished_run
    folder = _copy(finished_run, tmp_path)
    # Starting over: the old steps go when the first new one is saved, so the
    # folder never mixes two runs.
    reseeded = dataclasses.replace(RESUME, seed=5)
    train(
        "convnet", data, None, reseeded, checkpoint_dir=folder, resume=False, **CONVNET
    )
    assert ckpt.all_steps(folder) == (1, 2, 3)
    for step in (1, 2, 3):
        meta = ckpt.read_metadata(folder, step=step)
        assert meta["run"]["train_config"]["seed"] == 5


@pytest.mark.slow
def test_constant_schedule_run_can_be_extended(tmp_path):
    """Slow: two step configurations compile."""
    data = toy_data(64)
    constant = dataclasses.replace(RESUME, schedule="constant", epochs=2)
    train("convnet", data, None, constant, checkpoint_dir=tmp_path, **CONVNET)
    longer = dataclasses.replace(constant, epochs=3)
    extended, hist = train(
        "convnet", data, None, longer, checkpoint_dir=tmp_path, **CONVNET
    )
    straight, hist_straight = train("convnet", data, None, longer, **CONVNET)
    assert hist["epoch"] == [1, 2, 3]
    np.testing.assert_array_equal(hist["train_loss"], hist_straight["train_loss"])
    x = jnp.asarray(data[0][:8])
    np.testing.assert_array_equal(extended(x), straight(x))


def test_evaluate_autoencoder_reports_mse():
    model = create_model("resnet8_ae", image_size=8, width=2, rngs=nnx.Rngs(0))
    # a zero output kernel makes the reconstruction the constant sigmoid(bias)
    model.recon.conv.kernel[...] = jnp.zeros_like(model.recon.conv.kernel[...])
    model.recon.conv.bias[...] = jnp.array([0.0, 1.0, -1.0])
    images, _ = toy_data(6)
    scores = evaluate(model, images, batch_size=4)
    assert sorted(scores) == ["loss"]
    constant = 1 / (1 + np.exp(-np.array([0.0, 1.0, -1.0])))
    assert scores["loss"] == pytest.approx(np.mean((constant - images) ** 2), rel=1e-5)


@pytest.mark.slow
def test_autoencoder_trains_with_mse():
    images, _ = toy_data(32)
    config = dataclasses.replace(FAST, epochs=2, learning_rate=3e-3)
    model, history = train(
        "resnet20_ae",
        (images, None),
        (images[:16], None),
        config,
        model_kwargs={"width": 2},
    )
    assert "train_accuracy" not in history and "test_accuracy" not in history
    assert history["train_loss"][-1] < history["train_loss"][0]
    recon = model(jnp.asarray(images[:16]))
    mse = float(jnp.mean((recon - images[:16]) ** 2))
    assert mse == pytest.approx(history["test_loss"][-1], rel=1e-4)


def test_bad_data_raise():
    images, labels = toy_data(32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train("convnet", (images * 3, labels), None, FAST, **CONVNET)
    with pytest.raises(ValueError, match="labels must be integers"):
        train("convnet", (images, labels[:5]), None, FAST, **CONVNET)
    with pytest.raises(ValueError, match="batch_size"):
        train("convnet", (images[:8], labels[:8]), None, FAST, **CONVNET)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train(
            "convnet",
            (images, labels),
            (images, labels + 1),
            FAST,
            num_classes=2,
            **CONVNET,
        )
