"""Tests of the training loop, augmentation, optimizer and evaluation."""

from __future__ import annotations

import dataclasses
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


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = toy_data(64)
    config = dataclasses.replace(FAST, augment=True, keep_checkpoints=None)
    full, hist_full = train(
        "convnet", data, None, config, checkpoint_dir=tmp_path, **CONVNET
    )
    assert ckpt.all_steps(tmp_path) == (1, 2, 3)
    # forget the last epoch, then resume from epoch 2
    shutil.rmtree(tmp_path / "3")
    resumed, hist = train(
        "convnet", data, None, config, checkpoint_dir=tmp_path, **CONVNET
    )
    assert hist["epoch"] == [1, 2, 3]
    np.testing.assert_allclose(hist["train_loss"], hist_full["train_loss"], rtol=1e-5)
    x = jnp.asarray(data[0][:8])
    np.testing.assert_allclose(resumed(x), full(x), rtol=1e-4, atol=1e-5)
    # a finished run only reloads
    again, hist_again = train(
        "convnet", data, None, config, checkpoint_dir=tmp_path, **CONVNET
    )
    assert hist_again["epoch"] == [1, 2, 3]
    np.testing.assert_array_equal(again(x), resumed(x))
    meta = ckpt.read_metadata(tmp_path)
    assert meta["model"] == "convnet" and meta["epoch"] == 3


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
