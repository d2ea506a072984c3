"""Tests of jax_infodiscard.evaluation: known-answer metrics and invariances."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_rescaling_invariances
from flax import nnx

import jax_infodiscard as jid
from jax_infodiscard.data import SyntheticConfig, load_synthetic
from jax_infodiscard.evaluation import (
    descriptive_accuracy,
    feature_input_gradient,
    importance,
    layer_fairness,
    layer_gradient,
    localization_recall,
)
from jax_infodiscard.experiments.measure import ru_step
from jax_infodiscard.models import create_model, feature_fn, model_fn
from jax_infodiscard.models.layers import ConvBN, Dense, GlobalAvgPool, MaxPool
from jax_infodiscard.models.surgery import next_conv, rescale_pair
from jax_infodiscard.training.decoder import DecoderConfig

S = 8


def _region_model(x):
    """Class 1 iff the mean of the top-left 4x4 block exceeds 0.5; else 0."""
    score = jnp.mean(x[:, :4, :4, :], axis=(1, 2, 3)) - 0.5
    return jnp.stack([-score, score], axis=-1)


def _region_data(n=32):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, S, S, 1)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    # Informative region: 0.9 for class 1, 0.1 for class 0; rest is noise.
    images[:, :4, :4, 0] = np.where(labels[:, None, None] == 1, 0.9, 0.1)
    return images, labels


def test_oracle_map_keeps_accuracy_random_map_loses_it():
    images, labels = _region_data()
    oracle = np.zeros((len(labels), S, S), np.float32)
    oracle[:, :4, :4] = 1.0
    anti = 1.0 - oracle  # removes the informative region first
    frac, acc_oracle, area_oracle = descriptive_accuracy(
        _region_model, images, labels, oracle, fill=0.0
    )
    _, acc_anti, area_anti = descriptive_accuracy(
        _region_model, images, labels, anti, fill=0.0
    )
    np.testing.assert_allclose(frac, np.arange(10) / 10)
    # The oracle removes 16 of 64 pixels last: accuracy 1 up to 0.75 removed.
    np.testing.assert_array_equal(acc_oracle[frac <= 0.75], 1.0)
    # The anti-oracle blanks the region once 48 pixels (0.75) are gone, and
    # every image reads class 0 (score -0.5).
    assert acc_anti[0] == 1.0
    expected_tail = float(np.mean(labels == 0))
    np.testing.assert_allclose(acc_anti[frac >= 0.8], expected_tail)
    assert area_oracle > area_anti


def test_partial_removal_matches_closed_form():
    images, labels = _region_data()
    # Remove exactly the informative region first (fraction 0.25 = 16 pixels).
    anti = np.ones((len(labels), S, S), np.float32)
    anti[:, :4, :4] = 0.0
    _, acc, area = descriptive_accuracy(
        _region_model, images, labels, anti, fractions=(0.0, 0.25), fill="zeros"
    )
    np.testing.assert_allclose(acc, [1.0, np.mean(labels == 0)])
    np.testing.assert_allclose(area, (1.0 + np.mean(labels == 0)) / 2)


def test_localization_recall_known_values():
    rng = np.random.default_rng(1)
    b = 6
    boxes = np.array([[1, 2, 5, 7]] * b)  # 4 x 5 = 20 of 64 pixels
    masks = np.asarray(jid.box_to_mask(boxes, (S, S)))
    np.testing.assert_allclose(localization_recall(masks.astype(float), boxes), 1.0)
    np.testing.assert_allclose(localization_recall(masks.astype(float), masks), 1.0)
    # Constant map: ties shared out -> exactly the box fraction.
    np.testing.assert_allclose(
        localization_recall(np.ones((b, S, S)), boxes), 20 / 64, rtol=1e-6
    )
    # Inverted mask: no top pixel in the box.
    np.testing.assert_allclose(localization_recall(1.0 - masks, boxes), 0.0)
    # Random maps: mean recall close to the box fraction.
    rand = rng.uniform(size=(400, S, S))
    rec = localization_recall(rand, np.repeat(boxes[:1], 400, 0))
    assert abs(float(jnp.mean(rec)) - 20 / 64) < 0.02
    # top_fraction = 1 selects every pixel.
    np.testing.assert_allclose(
        localization_recall(rand[:b], boxes, top_fraction=1.0), 20 / 64, rtol=1e-6
    )


def test_importance_sign_conventions():
    raw = jnp.array([[[-2.0, 1.0]]])
    np.testing.assert_allclose(importance(raw, "CID"), [[[2.0, -1.0]]])
    np.testing.assert_allclose(importance(raw, "gradient"), [[[2.0, 1.0]]])


def test_bad_inputs_raise():
    images, labels = _region_data(4)
    maps = np.zeros((4, S, S))
    with pytest.raises(ValueError, match="fractions must lie in"):
        descriptive_accuracy(_region_model, images, labels, maps, fractions=(0, 1.0))
    with pytest.raises(ValueError, match="fractions must lie in"):
        descriptive_accuracy(_region_model, images, labels, maps, fractions=(-0.1,))
    with pytest.raises(ValueError, match="increasing"):
        descriptive_accuracy(_region_model, images, labels, maps, fractions=(0.5, 0.1))
    with pytest.raises(ValueError, match="maps hold 3 images"):
        descriptive_accuracy(_region_model, images, labels, maps[:3])
    with pytest.raises(ValueError, match="spatial shape"):
        descriptive_accuracy(_region_model, images, labels, np.zeros((4, S, S - 1)))
    with pytest.raises(ValueError, match="labels must have shape"):
        descriptive_accuracy(_region_model, images, labels[:2], maps)
    with pytest.raises(ValueError, match="fill"):
        descriptive_accuracy(_region_model, images, labels, maps, fill="median")
    with pytest.raises(ValueError, match="boxes_or_masks"):
        localization_recall(maps, np.ones((4, S, S + 1), bool))
    with pytest.raises(ValueError, match="inverted or empty"):
        localization_recall(maps, np.array([[1, 1, 1, 4]] * 4))
    with pytest.raises(ValueError, match="top_fraction"):
        localization_recall(maps, np.array([[1, 1, 3, 4]] * 4), top_fraction=0.0)


def test_rescaled_model_same_outputs_same_cid_scaled_gradients():
    model = create_model("convnet", num_classes=3, image_size=S, rngs=nnx.Rngs(0))
    # Non-trivial BatchNorm statistics.
    model.conv1.bn.mean[...] = jnp.linspace(-0.1, 0.1, model.conv1.bn.mean.shape[0])
    model.conv1.bn.var[...] = jnp.linspace(0.5, 2.0, model.conv1.bn.var.shape[0])
    scaled = rescale_pair(model, "conv1", 4.0)
    x = jax.random.uniform(jax.random.key(0), (2, S, S, 3))
    np.testing.assert_allclose(model_fn(scaled)(x), model_fn(model)(x), atol=1e-5)
    f0, f1 = feature_fn(model, ["conv1"])(x), feature_fn(scaled, ["conv1"])(x)
    np.testing.assert_allclose(f1["conv1"] * 4.0, f0["conv1"], rtol=1e-5, atol=1e-6)

    cfg = jid.CIDConfig(method="linear", layer_strategy="vmap")
    layers = ("conv1", "conv2")
    key = jax.random.key(3)
    c0 = jid.cid(feature_fn(model, layers), x, key, config=cfg)
    c1 = jid.cid(feature_fn(scaled, layers), x, key, config=cfg)
    np.testing.assert_allclose(c1.pixel, c0.pixel, atol=0.01)

    target = jnp.array([0, 2])
    g0 = layer_gradient(model, "conv1", x, target)
    g1 = layer_gradient(scaled, "conv1", x, target)
    np.testing.assert_allclose(g1, 4.0 * g0, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        layer_gradient(scaled, "conv2", x, target),
        layer_gradient(model, "conv2", x, target),
        rtol=1e-4,
        atol=1e-7,
    )
    s0 = feature_input_gradient(model, "conv1", x)
    s1 = feature_input_gradient(scaled, "conv1", x)
    np.testing.assert_allclose(s1, s0 / 4.0, rtol=1e-4, atol=1e-7)


def test_next_conv_passes_through_max_and_average_pooling_only():
    rngs = nnx.Rngs(0)
    conv1, conv2 = ConvBN(3, 4, rngs=rngs), ConvBN(4, 4, rngs=rngs)
    h = jnp.abs(jax.random.normal(jax.random.key(0), (2, 4, 4, 4)))
    for pool in (MaxPool(2), GlobalAvgPool()):  # f(h / c) = f(h) / c, c > 0
        np.testing.assert_allclose(pool(h / 4.0), pool(h) / 4.0, rtol=1e-6)
        chain = types.SimpleNamespace(
            stage_names=("conv1", "pool", "conv2"),
            conv1=conv1,
            pool=pool,
            conv2=conv2,
        )
        assert next_conv(chain, "conv1") == "conv2"
    dense = types.SimpleNamespace(
        stage_names=("conv1", "fc", "conv2"),
        conv1=conv1,
        fc=Dense(4, 4, rngs=rngs),
        conv2=conv2,
    )
    with pytest.raises(ValueError, match="'fc' \\(Dense\\) follows 'conv1'"):
        next_conv(dense, "conv1")
    with pytest.raises(ValueError, match="no ConvBN stage follows 'conv2'"):
        next_conv(dense, "conv2")


def test_rescale_pair_rejects_bad_layers():
    model = create_model("convnet", num_classes=3, image_size=S, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ConvBN stage"):
        rescale_pair(model, "pool1")
    # conv5 -> pool3 (global average) -> logits (Dense): no ConvBN follows.
    with pytest.raises(ValueError, match="'logits' \\(Dense\\) follows 'conv5'"):
        rescale_pair(model, "conv5")
    with pytest.raises(ValueError, match="factor"):
        rescale_pair(model, "conv1", 0.0)


def _fairness(with_ru: bool):
    data = load_synthetic("test", 40, config=SyntheticConfig(image_size=16))
    model = create_model("convnet", num_classes=10, image_size=16, rngs=nnx.Rngs(0))
    cfg = jid.CIDConfig(
        probes=16, steps=4, samples=2, budget_samples=8, layer_strategy="vmap"
    )
    return layer_fairness(
        model,
        data.images[:2],
        data.masks[:2],
        jax.random.key(0),
        cid_config=cfg,
        ru_step=(
            ru_step(
                data.images[:2],
                jax.random.key(0),
                decoder_images=data.images[8:],
                decoder_config=DecoderConfig(
                    steps=3, width=8, num_blocks=1, batch_size=8
                ),
                cid_config=cfg,
            )
            if with_ru
            else None
        ),
    )


def test_layer_fairness_cid_survives_the_rescaling_gradients_scale():
    # Paper Sec. 3.4 on an untrained ConvNet (the invariance needs no
    # training): w/4 on conv1, 4w on conv2 leaves the network's function and
    # CID unchanged; the gradient maps w.r.t. the features scale by 4 and the
    # feature's input gradient by 1/4.
    table, fig = _fairness(with_ru=False)
    assert tuple(table["layers"]) == ("conv1", "conv2")
    assert all("ru_mean" not in q for q in table["quantities"].values())
    assert_rescaling_invariances(table)
    assert len(fig.axes) == 1


@pytest.mark.slow
def test_layer_fairness_ru_survives_the_rescaling():
    # RU too (decoders trained for each model; they normalise their input by
    # the training features' statistics, so h / c and h decode alike).
    table, _ = _fairness(with_ru=True)
    q = table["quantities"]
    for name in table["layers"]:
        assert np.isfinite(q[name]["ru_mean"]["original"]), name
    assert_rescaling_invariances(table)
