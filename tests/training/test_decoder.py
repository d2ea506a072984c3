"""RU decoder: architecture (shapes, upsampling), training, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.tree_util import Partial

from jax_infodiscard.experiments.cache import (
    cached_decoder_layers,
    check_trained,
    decoder_checkpoint_path,
    load_decoder,
    load_or_train_decoder,
    load_or_train_decoders,
    save_decoders,
)
from jax_infodiscard.models.decoder import (
    Decoder,
    SubpixelConvTranspose,
    create_decoder,
    decoder_fn,
    dense_readout_shape,
    depth_to_space,
    num_upsampling_blocks,
    readout_geometry,
    space_to_depth,
    vector_seed_shape,
)
from jax_infodiscard.training.decoder import (
    NO_INFORMATION,
    RECOVERS,
    UNDERTRAINED,
    DecoderConfig,
    DecoderMetrics,
    decoder_verdict,
    reconstruction_mse,
    ru_ceiling,
    train_decoder,
    train_decoders,
)

_apply = jax.jit(lambda fn, x: fn(x))


def smooth_images(n: int, size: int = 8, channels: int = 3, seed: int = 0):
    """Unit-range images: random 4x4 grids, upsampled and box-blurred (numpy)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(size=(n, 4, 4, channels))
    rep = size // 4
    x = np.repeat(np.repeat(low, rep, axis=1), rep, axis=2)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(pad[:, i : i + size, j : j + size] for i in range(3) for j in range(3))
    return (blur / 9).astype(np.float32)


def random_decoder(feature_shape, image_shape, *, num_blocks, width, seed=0):
    """A decoder with random (numpy) parameters, built without any XLA compile.

    The residual branches start at zero in a fresh decoder; random values make
    every path of the network matter.
    """
    abstract = nnx.eval_shape(
        lambda: Decoder(
            feature_shape,
            image_shape,
            num_blocks=num_blocks,
            width=width,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, params, stats = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda p: jnp.asarray(0.2 * rng.normal(size=p.shape), jnp.float32), params
    )
    stats = jax.tree.map(lambda s: jnp.ones(s.shape, jnp.float32), stats)
    return nnx.merge(graphdef, params, stats)


def identity_features(x):
    return {"id": x}


def two_layer_features(x):
    pooled = jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    return {"id": x, "pool": pooled / 4, "vec": x.reshape(x.shape[0], -1)}


# --------------------------------------------------------------------------
# Architecture.


@pytest.mark.parametrize(
    ("feature_shape", "image_shape", "expected"),
    [
        ((32, 32, 8), (32, 32, 3), 0),  # stride 1
        ((16, 16, 8), (32, 32, 3), 1),  # stride 2
        ((8, 8, 8), (32, 32, 3), 2),  # stride 4
        ((4, 4, 8), (32, 32, 3), 3),  # stride 8
        ((2, 2, 8), (32, 32, 3), 4),  # stride 16
        ((7, 7, 8), (32, 32, 3), 3),  # 7 -> 56, then resized to 32
        ((4, 8, 8), (32, 32, 3), 3),  # anisotropic: the larger ratio wins
        ((10,), (32, 32, 3), 3),  # vector -> 4x4 seed
        ((10,), (28, 28, 1), 2),  # vector -> 7x7 seed
        ((10,), (7, 9, 3), 0),  # odd sides: full-size seed
    ],
)
def test_num_upsampling_blocks(feature_shape, image_shape, expected):
    assert num_upsampling_blocks(feature_shape, image_shape) == expected


def test_vector_seed_shape():
    assert vector_seed_shape((32, 32, 3)) == (4, 4)
    assert vector_seed_shape((32, 32, 3), num_blocks=1) == (16, 16)
    assert vector_seed_shape((28, 28, 1)) == (7, 7)
    assert vector_seed_shape((224, 224, 3)) == (28, 28)
    assert vector_seed_shape((6, 6, 3)) == (6, 6)  # 3x3 would be under 4x4


@pytest.mark.parametrize(
    "feature_shape",
    [(16, 16, 5), (8, 8, 5), (4, 4, 5), (2, 2, 5), (3, 3, 5), (12,)],
    ids=["stride1", "stride2", "stride4", "stride8", "nonpow2", "vector"],
)
def test_output_shape(feature_shape):
    dec = nnx.eval_shape(
        lambda: Decoder(
            feature_shape, (16, 16, 3), num_blocks=4, width=4, rngs=nnx.Rngs(0)
        )
    )
    g = decoder_fn(dec, allow_untrained=True)
    spec = jax.ShapeDtypeStruct((7, *feature_shape), jnp.float32)
    out = jax.eval_shape(lambda g, f: g(f), g, spec)
    assert out.shape == (7, 16, 16, 3)
    assert out.dtype == jnp.float32


def test_upsampling_blocks_built_and_outputs_independent_of_batch():
    dec = random_decoder((4, 4, 5), (16, 16, 2), num_blocks=3, width=4)
    assert dec.num_upsampling == 2
    kinds = [type(block.conv1).__name__ for block in dec.blocks]
    assert kinds == ["SubpixelConvTranspose", "SubpixelConvTranspose", "Conv"]
    assert [block.shortcut is None for block in dec.blocks] == [False, False, True]
    g = decoder_fn(dec, allow_untrained=True)
    f = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4, 4, 5)), jnp.float32)
    full = np.asarray(_apply(g, f))
    assert full.shape == (5, 16, 16, 2)
    assert np.all(np.isfinite(full)) and np.std(full) > 0
    one = np.asarray(_apply(g, jnp.concatenate([f[2:3], f[2:3]])))[0]
    np.testing.assert_allclose(one, full[2], rtol=1e-5, atol=1e-5)


def test_create_decoder_initialisation():
    key = jax.random.key(0)
    kw = dict(num_blocks=2, width=4, key=key)
    d1 = create_decoder((4, 4, 5), (8, 8, 3), **kw)
    d2 = create_decoder((4, 4, 5), (8, 8, 3), **kw)
    leaves1, leaves2 = jax.tree.leaves(nnx.state(d1)), jax.tree.leaves(nnx.state(d2))
    for a, b in zip(leaves1, leaves2, strict=True):
        np.testing.assert_array_equal(a, b)  # same key, same parameters
    for block in d1.blocks:  # residual branches start at zero
        assert not np.any(block.conv2.kernel[...])
    kernel = np.asarray(d1.blocks[1].conv1.kernel[...])
    np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (9 * 4)), rtol=0.25)
    np.testing.assert_array_equal(d1.feature_scale[...], np.ones(5))


def test_subpixel_shortcut_is_exactly_a_2x2_transposed_conv():
    cin, cout = 3, 5
    zeros = nnx.initializers.zeros
    ct = nnx.ConvTranspose(
        cin, cout, (2, 2), strides=(2, 2), kernel_init=zeros, rngs=nnx.Rngs(0)
    )
    sp = SubpixelConvTranspose(cin, cout, 1, kernel_init=zeros, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    ct.kernel[...] = jnp.asarray(rng.normal(size=(2, 2, cin, cout)), jnp.float32)
    kernel = np.asarray(ct.kernel[...])[::-1, ::-1]  # flax does not flip
    sp.conv.kernel[...] = jnp.asarray(
        kernel.transpose(2, 0, 1, 3).reshape(1, 1, cin, 4 * cout)
    )
    sp.conv.bias[...] = jnp.asarray(
        np.tile(np.random.default_rng(0).normal(size=cout), 4)
    )
    ct.bias[...] = sp.conv.bias[...][:cout]
    x = jnp.asarray(rng.normal(size=(2, 4, 6, cin)), jnp.float32)
    np.testing.assert_allclose(sp(x), ct(x), atol=1e-5)


def test_depth_to_space_layout():
    x = jnp.arange(2 * 3 * 4 * 8).reshape(2, 3, 4, 8)
    y = np.asarray(depth_to_space(x))
    assert y.shape == (2, 6, 8, 2)
    # channel (2a + b) * c + o of (i, j) -> channel o of (2i + a, 2j + b)
    assert y[1, 2 * 2 + 1, 2 * 3 + 0, 1] == x[1, 2, 3, (2 * 1 + 0) * 2 + 1]


def test_too_much_downsampling_raises():
    with pytest.raises(ValueError, match=r"needs 4 stride-2 upsampling blocks"):
        Decoder((2, 2, 8), (32, 32, 3), num_blocks=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"num_blocks >= 6"):
        create_decoder((1, 1, 8), (64, 64, 3), num_blocks=5, key=jax.random.key(0))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="feature_shape must be"):
        num_upsampling_blocks((8, 8), (32, 32, 3))
    with pytest.raises(ValueError, match="image_shape must be"):
        num_upsampling_blocks((8, 8, 3), (32, 32))
    with pytest.raises(ValueError, match="positive integers"):
        num_upsampling_blocks((0, 8, 3), (32, 32, 3))
    dec = random_decoder((4, 4, 5), (8, 8, 3), num_blocks=2, width=4)
    g = decoder_fn(dec, allow_untrained=True)
    with pytest.raises(ValueError, match=r"expects features of shape \(B, 4, 4, 5\)"):
        jax.eval_shape(g, jax.ShapeDtypeStruct((2, 4, 4, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"got \(4, 4, 5\)"):
        jax.eval_shape(g, jax.ShapeDtypeStruct((4, 4, 5), jnp.float32))
    # A module whose output no longer matches its declared image shape.
    dec.image_shape = (8, 8, 4)
    with pytest.raises(ValueError, match=r"output shape \(8, 8, 3\) does not match"):
        decoder_fn(dec, allow_untrained=True)


# --------------------------------------------------------------------------
# Training and checkpoints.

# 1000 steps of a tiny decoder on an identity feature of 96 smooth 8x8 images:
# measured held-out MSE 0.0016-0.0018 x the image variance (train 0.001 x;
# two data/key seeds; 2 CPU cores, ~5 s after compilation); bound 0.01 x.
TINY = DecoderConfig(
    num_blocks=2,
    width=16,
    steps=1000,
    batch_size=16,
    learning_rate=1e-2,
    eval_images=64,
    log_every=100,
    readout_kernel=0,  # the residual network alone (the readout is tested below)
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images = smooth_images(96)
    ckpt = tmp_path_factory.mktemp("decoders")
    dec, metrics = load_or_train_decoder(
        identity_features,
        "id",
        images,
        TINY,
        key=jax.random.key(0),
        checkpoint_dir=ckpt,
        progress=False,
    )
    return images, ckpt, dec, metrics


def test_config_defaults_and_validation():
    cfg = DecoderConfig()
    assert cfg.num_blocks == 6
    assert math.isclose(cfg.training_noise_std, math.sqrt(1.5e-4))
    assert DecoderConfig(noise_std=0.05).training_noise_std == 0.05
    for bad in (
        {"schedule": "linear"},
        {"beta": 0.0},
        {"holdout_fraction": 1.0},
        {"width": 0},
        {"steps": -1},
    ):
        with pytest.raises(ValueError):
            DecoderConfig(**bad)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("beta", math.inf, ValueError, "beta must be finite"),
        ("beta", math.nan, ValueError, "beta must be finite"),
        ("noise_std", math.inf, ValueError, "noise_std must be finite"),
        ("noise_std", -0.1, ValueError, "noise_std must be >= 0"),
        ("learning_rate", math.nan, ValueError, "learning_rate must be finite"),
        ("holdout_fraction", math.nan, ValueError, "holdout_fraction must be finite"),
        ("steps", 2.5, TypeError, "steps must be an integer"),
        ("width", "8", TypeError, "width must be an integer"),
    ],
)
def test_bad_config_values_fail_at_construction(field, value, error, message):
    with pytest.raises(error, match=message):
        DecoderConfig(**{field: value})


def test_training_reconstructs_identity_feature(trained):
    images, _, dec, m = trained
    assert isinstance(m, DecoderMetrics)
    assert m.steps == TINY.steps and len(m.loss_history) == 10
    assert m.loss_history[-1] < 0.02 * m.loss_history[0]
    assert m.heldout_mse < 0.01 * m.image_variance
    assert m.train_mse < 0.01 * m.image_variance
    assert m.steps_per_second > 0
    np.testing.assert_allclose(m.image_variance, np.var(images), rtol=0.2)
    # The reported held-out MSE agrees with an independent evaluation.
    mse = reconstruction_mse(
        decoder_fn(dec),
        identity_features,
        "id",
        images,
        key=jax.random.key(5),
        noise_std=TINY.training_noise_std,
    )
    assert m.train_mse / 2 < mse < 2 * m.heldout_mse + 1e-4


def test_checkpoint_round_trip_gives_identical_outputs(trained):
    images, ckpt, dec, metrics = trained
    assert decoder_checkpoint_path(ckpt, "id").is_dir()
    restored, meta = load_decoder(ckpt, "id")
    check_trained(meta)
    assert meta["layer"] == "id" and meta["steps"] == TINY.steps
    assert tuple(meta["feature_shape"]) == (8, 8, 3)
    assert DecoderMetrics.from_dict(meta["metrics"]) == metrics
    f = jnp.asarray(images[:4])
    np.testing.assert_array_equal(
        _apply(decoder_fn(restored), f), _apply(decoder_fn(dec), f)
    )
    np.testing.assert_array_equal(restored.feature_scale[...], dec.feature_scale[...])

    # A matching checkpoint is reused: no training, same metrics and outputs.
    again, m2 = load_or_train_decoder(
        identity_features,
        "id",
        images,
        TINY,
        key=jax.random.key(9),
        checkpoint_dir=ckpt,
        progress=False,
    )
    assert m2 == metrics
    np.testing.assert_array_equal(
        _apply(decoder_fn(again), f), _apply(decoder_fn(dec), f)
    )


def test_untrained_and_missing_decoders(trained):
    images, ckpt, _, _ = trained
    with pytest.raises(FileNotFoundError, match="no decoder checkpoint"):
        load_decoder(ckpt, "conv9")
    # Another configuration does not match the saved one: it is trained
    # (0 steps here) and saved next to it.
    untrained_cfg = dataclasses.replace(TINY, steps=0)
    _, m0 = load_or_train_decoder(
        identity_features,
        "id",
        images,
        untrained_cfg,
        key=jax.random.key(1),
        checkpoint_dir=ckpt,
        progress=False,
    )
    assert m0.steps == 0 and m0.loss_history == ()
    assert m0.heldout_mse > 0.5 * m0.image_variance  # far from reconstructing
    dec0, meta0 = load_decoder(ckpt, "id", step=0)
    with pytest.raises(ValueError, match="untrained"):
        check_trained(meta0)
    # An untrained decoder cannot become an RU decoder function.
    assert dec0.trained_steps == 0
    with pytest.raises(ValueError, match="untrained"):
        decoder_fn(dec0)
    with pytest.raises(ValueError, match="untrained"):
        decoder_fn(create_decoder((8, 8, 3), (8, 8, 3), key=jax.random.key(0)))
    latest_dec, latest = load_decoder(ckpt, "id")
    assert latest["steps"] == TINY.steps == latest_dec.trained_steps
    with pytest.raises(ValueError, match="not describe an RU decoder"):
        check_trained({"model": "convnet"})


def test_training_input_errors():
    images = smooth_images(4)
    cfg = dataclasses.replace(TINY, steps=0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        train_decoder(identity_features, "nope", images, cfg, key=key)
    with pytest.raises(ValueError, match="unit range"):
        train_decoder(identity_features, "id", images * 3, cfg, key=key)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        train_decoder(identity_features, "id", images[0], cfg, key=key)
    with pytest.raises(ValueError, match="single array feature"):
        train_decoder(
            lambda x: {"pair": (x, x)}, "pair", images, cfg, key=key, progress=False
        )
    with pytest.raises(ValueError, match="DecoderConfig"):
        train_decoder(identity_features, "id", images, {"steps": 1}, key=key)
    with pytest.raises(ValueError, match="at least one training image"):
        train_decoder(identity_features, "id", images[:1], cfg, key=key)


def test_feature_normalisation_makes_decoder_scale_invariant():
    # The decoder input is normalised with the statistics of the training
    # features, so the same initial decoder sees the same input whether the
    # feature is x or 1000 x - 7: identical reconstructions and MSE.
    images = smooth_images(24)
    cfg = dataclasses.replace(TINY, steps=0, eval_images=16)

    def scaled(x):
        return {"id": 1000.0 * x - 7.0}

    key = jax.random.key(3)
    d1, m1 = train_decoder(
        identity_features, "id", images, cfg, key=key, progress=False
    )
    d2, m2 = train_decoder(Partial(scaled), "id", images, cfg, key=key, progress=False)
    np.testing.assert_allclose(
        d2.feature_scale[...], 1000.0 * d1.feature_scale[...], rtol=1e-4
    )
    np.testing.assert_allclose(m1.heldout_mse, m2.heldout_mse, rtol=1e-3)
    x = jnp.asarray(images[:3])
    np.testing.assert_allclose(
        _apply(decoder_fn(d1, allow_untrained=True), x),
        _apply(decoder_fn(d2, allow_untrained=True), 1000.0 * x - 7.0),
        atol=1e-4,
    )


# --------------------------------------------------------------------------
# Several layers trained together.


def _outputs(decoder, features):
    return np.asarray(_apply(decoder_fn(decoder, allow_untrained=True), features))


def test_joint_training_trains_each_layer_as_it_would_alone():
    # The first layer of a joint run gets train_decoder's initialisation,
    # batches and noise, and the decoders share no parameter: the same
    # decoder up to float rounding (measured max abs difference ~1e-6 after
    # 40 steps). The pooled layer first, then the identity first.
    images = smooth_images(48)
    cfg = dataclasses.replace(TINY, steps=40, eval_images=32, log_every=10)
    key = jax.random.key(4)
    feats = two_layer_features(jnp.asarray(images[:4]))
    for order in (("pool", "id"), ("id", "pool")):
        decs, metrics = train_decoders(
            two_layer_features, order, images, cfg, key=key, progress=False
        )
        assert list(decs) == list(order) == list(metrics)
        alone, m_alone = train_decoder(
            two_layer_features, order[0], images, cfg, key=key, progress=False
        )
        np.testing.assert_allclose(
            _outputs(decs[order[0]], feats[order[0]]),
            _outputs(alone, feats[order[0]]),
            atol=1e-4,
        )
        m = metrics[order[0]]
        assert m.trained_with == order and m_alone.trained_with == (order[0],)
        np.testing.assert_allclose(m.loss_history, m_alone.loss_history, rtol=1e-4)
        np.testing.assert_allclose(m.heldout_mse, m_alone.heldout_mse, rtol=1e-4)
        # Shared: the run's speed and time, the split (so the image variance).
        other = metrics[order[1]]
        assert other.seconds == m.seconds and other.steps == cfg.steps
        assert other.image_variance == m.image_variance
        assert len(other.loss_history) == 4


def test_a_decoder_run_compiles_its_step_once():
    # The first step's inputs must be placed like the outputs it returns (the
    # next step's inputs), or the second step compiles again: 10 s per run on
    # a CPU for the demo's four decoders. It happens when the network's
    # parameters are committed to a device, as a trained or restored model's
    # are. A config no other test uses, so the compiled program is new here.
    from jax_infodiscard.models import create_model, feature_fn
    from jax_infodiscard.training import decoder as decoder_training

    model = create_model("convnet", rngs=nnx.Rngs(0))
    fn = jax.device_put(feature_fn(model), jax.devices()[0])
    cfg = dataclasses.replace(TINY, steps=3, width=8, eval_images=16, log_every=1)
    images = smooth_images(24, size=32)
    before = decoder_training._train_step._cache_size()
    train_decoders(
        fn, ("conv1", "logits"), images, cfg, key=jax.random.key(9), progress=False
    )
    assert decoder_training._train_step._cache_size() - before == 1


def test_joint_training_quality_matches_separate_training(trained):
    # TINY's 1000 steps: each layer reaches the bound of the one-layer test
    # (identity: measured 0.0016-0.0018 x the image variance alone); the
    # pooled layer (a 4x4 feature, one upsampling block) measured 0.03 x.
    images, _, _, alone = trained
    decs, metrics = train_decoders(
        two_layer_features,
        ["id", "pool"],
        images,
        TINY,
        key=jax.random.key(0),
        progress=False,
    )
    assert decs["pool"].num_upsampling == 1
    m_id, m_pool = metrics["id"], metrics["pool"]
    assert m_id.heldout_mse < 0.01 * m_id.image_variance
    np.testing.assert_allclose(m_id.heldout_mse, alone.heldout_mse, rtol=0.1)
    assert m_pool.heldout_mse < 0.1 * m_pool.image_variance
    for m in (m_id, m_pool):
        assert m.loss_history[-1] < 0.1 * m.loss_history[0]


def test_joint_checkpoints_round_trip_and_are_reused(tmp_path):
    images = smooth_images(32)
    cfg = dataclasses.replace(TINY, steps=20, eval_images=16, log_every=10)
    key = jax.random.key(2)
    decs, metrics = load_or_train_decoders(
        two_layer_features,
        ("id", "pool"),
        images,
        cfg,
        key=key,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    feats = two_layer_features(jnp.asarray(images[:3]))
    # What will be reused, as the demo announces it: the config must match.
    assert cached_decoder_layers(tmp_path, ("vec", "pool", "id"), cfg) == (
        "pool",
        "id",
    )
    other = dataclasses.replace(cfg, steps=21)
    assert cached_decoder_layers(tmp_path, ("pool", "id"), other) == ()
    for name in ("id", "pool"):
        restored, meta = load_decoder(tmp_path, name)
        check_trained(meta)
        assert meta["layer"] == name and meta["steps"] == 20
        assert DecoderMetrics.from_dict(meta["metrics"]) == metrics[name]
        np.testing.assert_array_equal(
            _outputs(restored, feats[name]), _outputs(decs[name], feats[name])
        )
        # The one-layer loader reuses a decoder trained together with others.
        again, m = load_or_train_decoder(
            two_layer_features,
            name,
            images,
            cfg,
            key=jax.random.key(9),
            checkpoint_dir=tmp_path,
            progress=False,
        )
        assert m == metrics[name] and m.trained_with == ("id", "pool")
        np.testing.assert_array_equal(
            _outputs(again, feats[name]), _outputs(decs[name], feats[name])
        )
    # Only the missing layer is trained (alone); the others are read back.
    decs2, metrics2 = load_or_train_decoders(
        two_layer_features,
        ["vec", "pool", "id"],
        images,
        cfg,
        key=jax.random.key(9),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert list(decs2) == ["vec", "pool", "id"]
    assert metrics2["vec"].trained_with == ("vec",)
    assert metrics2["pool"] == metrics["pool"] and metrics2["id"] == metrics["id"]
    assert decoder_checkpoint_path(tmp_path, "vec").is_dir()
    # Metrics written before `trained_with` existed still load.
    old = metrics["id"].to_dict()
    del old["trained_with"]
    assert DecoderMetrics.from_dict(old).trained_with == ()


def test_joint_training_argument_errors(tmp_path):
    images = smooth_images(8)
    key = jax.random.key(0)
    kw = dict(key=key, progress=False)
    with pytest.raises(ValueError, match="at least one layer"):
        train_decoders(two_layer_features, [], images, UNTRAINED, **kw)
    with pytest.raises(ValueError, match="duplicate"):
        train_decoders(two_layer_features, ["id", "id"], images, UNTRAINED, **kw)
    with pytest.raises(TypeError, match="strings only"):
        train_decoders(two_layer_features, ["id", 3], images, UNTRAINED, **kw)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        train_decoders(two_layer_features, ["id", "nope"], images, UNTRAINED, **kw)
    with pytest.raises(ValueError, match="DecoderConfig"):
        train_decoders(two_layer_features, ["id"], images, {"steps": 1}, **kw)
    with pytest.raises(ValueError, match="DecoderConfig"):
        load_or_train_decoders(
            two_layer_features, "id", images, None, checkpoint_dir=tmp_path, **kw
        )
    with pytest.raises(ValueError, match="non-empty string"):
        train_decoder(two_layer_features, ["id"], images, UNTRAINED, **kw)


def test_joint_divergence_names_the_layer_and_saves_nothing(tmp_path):
    n = 64
    images = 0.5 * smooth_images(n)
    images[-1, 0, 0, 0] = 0.99  # the only pixel above 0.9

    def half_poisoned(x):  # 'bad' is NaN for the last image only; 'id' is fine
        return {"id": x, "bad": x + 0.0 * jnp.log(0.9 - x[:, :1, :1, :1])}

    config = dataclasses.replace(
        TINY, steps=40, eval_images=8, holdout_fraction=0.0, log_every=10
    )
    with pytest.raises(FloatingPointError) as err:
        load_or_train_decoders(
            half_poisoned,
            ("id", "bad"),
            images,
            config,
            key=jax.random.key(0),
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert "layer 'bad' diverged" in str(err.value) and "'id'" not in str(err.value)
    for name in ("id", "bad"):
        assert not decoder_checkpoint_path(tmp_path, name).exists()


# --------------------------------------------------------------------------
# Slow: the embedded data set.


@pytest.mark.slow
def test_decoder_reconstructs_embedded_data_better_than_upsampling():
    """Stride-4 average pooling of the synthetic shapes: the decoder must beat
    bilinear upsampling of the pooled image (a context-free inverse) on images
    it never saw. Measured (800 steps, width 16, ~2.5 min on 2 CPU cores):
    MSE 0.85 x the bilinear MSE and 0.14 x the image variance."""
    from jax_infodiscard.data.synthetic import make_dataset

    train_images = make_dataset(640, seed=0).images
    test_images = make_dataset(128, seed=1).images

    def pooled(x):
        p = jax.lax.reduce_window(
            x, 0.0, jax.lax.add, (1, 4, 4, 1), (1, 4, 4, 1), "VALID"
        )
        return {"pool4": p / 16}

    cfg = DecoderConfig(width=16, steps=800, batch_size=32, learning_rate=1e-2)
    dec, m = train_decoder(
        pooled, "pool4", train_images, cfg, key=jax.random.key(0), progress=False
    )
    assert dec.num_upsampling == 2
    mse = reconstruction_mse(
        decoder_fn(dec),
        pooled,
        "pool4",
        test_images,
        key=jax.random.key(1),
        noise_std=cfg.training_noise_std,
    )
    up = jax.image.resize(pooled(test_images)["pool4"], test_images.shape, "bilinear")
    bilinear = float(np.mean((np.asarray(up) - test_images) ** 2))
    assert mse < 0.9 * bilinear
    assert mse < 0.2 * np.var(test_images)
    np.testing.assert_allclose(mse, m.heldout_mse, rtol=0.2)


# --------------------------------------------------------------------------
# Never silent: NaN features and losses, cache folders, corrupt checkpoints.

UNTRAINED = dataclasses.replace(TINY, steps=0, eval_images=16)


def test_nan_features_are_refused_naming_the_layer():
    images = smooth_images(8)

    def nan_features(x):
        return {"id": x * jnp.nan}

    with pytest.raises(ValueError, match="NaN/inf values for layer 'id'"):
        train_decoder(
            nan_features, "id", images, UNTRAINED, key=jax.random.key(0), progress=False
        )


def test_nan_loss_stops_decoder_training_naming_the_step(tmp_path):
    from jax_infodiscard.training.decoder import _split_for_training

    n, key = 64, jax.random.key(0)
    images = 0.5 * smooth_images(n)
    images[-1, 0, 0, 0] = 0.99  # the only pixel above 0.9

    def poisoned(x):  # NaN for the last image, exact identity for the others
        return {"id": x + 0.0 * jnp.log(0.9 - x[:, :1, :1, :1])}

    config = dataclasses.replace(
        TINY, steps=40, eval_images=8, holdout_fraction=0.0, log_every=10
    )
    # The steps that sample the last image, drawn as train_decoder draws them
    # (no hold-out: the training images are the images in order, and the
    # statistics use only the first 8).
    k_train = _split_for_training(key, n)[2]
    sampled = [
        n - 1
        in jax.random.randint(
            jax.random.split(jax.random.fold_in(k_train, step))[0],
            (config.batch_size,),
            0,
            n,
        )
        for step in range(config.steps)
    ]
    first = sampled.index(True) + 1
    assert 1 < first < config.steps  # the key makes the test meaningful
    with pytest.raises(
        FloatingPointError, match=rf"layer 'id' diverged: .* at step {first};"
    ):
        load_or_train_decoder(
            poisoned,
            "id",
            images,
            config,
            key=key,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert not decoder_checkpoint_path(tmp_path, "id").exists()  # nothing saved


def _named_features(x):
    return {"a/b": x, "a_b": 0.5 * x}


def test_cache_folders_of_similar_layer_names_do_not_collide(tmp_path):
    images = smooth_images(16)
    key = jax.random.key(0)
    paths = {decoder_checkpoint_path(tmp_path, n) for n in ("a/b", "a_b", "a:b")}
    assert len(paths) == 3
    trained = {}
    for i, layer in enumerate(("a/b", "a_b")):
        trained[layer] = load_or_train_decoder(
            _named_features,
            layer,
            images,
            UNTRAINED,
            key=jax.random.fold_in(key, i),
            checkpoint_dir=tmp_path,
            progress=False,
        )[1]
    for layer in ("a/b", "a_b"):  # each reads back its own decoder
        _, meta = load_decoder(tmp_path, layer)
        assert meta["layer"] == layer
        assert DecoderMetrics.from_dict(meta["metrics"]) == trained[layer]
    assert trained["a/b"] != trained["a_b"]


def test_pre_hash_cache_folders_are_not_read(tmp_path):
    # The folder names without the hash (an unreleased format) are ignored.
    images = smooth_images(16)
    load_or_train_decoder(
        _named_features,
        "a/b",
        images,
        UNTRAINED,
        key=jax.random.key(0),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    legacy = tmp_path / "decoder_a_b"  # the old name of both layers
    decoder_checkpoint_path(tmp_path, "a/b").rename(legacy)
    with pytest.raises(FileNotFoundError, match="no decoder checkpoint for layer"):
        load_decoder(tmp_path, "a/b")


def _truncate_largest(folder):
    target = max(
        (p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_corrupt_decoder_cache_falls_back_with_one_warning_line(
    trained, tmp_path, capfd, how
):
    import shutil

    from jax_infodiscard.training.checkpoint import CheckpointFallbackWarning

    images, ckpt, _, _ = trained
    key = jax.random.key(1)
    kwargs = dict(key=key, checkpoint_dir=tmp_path, progress=False)
    _, original = load_or_train_decoder(
        identity_features, "id", images, UNTRAINED, **kwargs
    )
    folder = decoder_checkpoint_path(tmp_path, "id")
    # A corrupt step of this configuration is trained again, identically.
    state = folder / "0" / "state"
    if how == "truncate":
        _truncate_largest(state)
    else:
        next(
            p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"
        ).unlink()
    capfd.readouterr()
    with pytest.warns(CheckpointFallbackWarning) as record:
        _, metrics = load_or_train_decoder(
            identity_features, "id", images, UNTRAINED, **kwargs
        )
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message
    assert (
        "step 0 in" in message and "training the decoder of layer 'id' again" in message
    )
    assert capfd.readouterr().err == ""  # no orbax or TensorStore output
    assert metrics == dataclasses.replace(
        original, seconds=metrics.seconds, steps_per_second=metrics.steps_per_second
    )
    _, meta = load_decoder(tmp_path, "id", step=0)  # rewritten intact
    # load_decoder falls back to the newest intact step.
    shutil.copytree(
        decoder_checkpoint_path(ckpt, "id") / str(TINY.steps), folder / str(TINY.steps)
    )
    _truncate_largest(folder / str(TINY.steps) / "state")
    with pytest.warns(CheckpointFallbackWarning) as record:
        _, meta = load_decoder(tmp_path, "id")
    assert len(record) == 1 and meta["steps"] == 0
    assert f"step {TINY.steps} in" in str(record[0].message)
    assert "using step 0" in str(record[0].message)


# --------------------------------------------------------------------------
# Closed-form linear readout and the decoder verdict.

READOUT = dataclasses.replace(TINY, steps=0, readout_kernel=3, eval_images=64)


def linear_layers(x):
    """A stride-2 rearrangement, a 4x4-pooled vector and a constant."""
    pooled = jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    return {
        "s2d": 3.0 * space_to_depth(x, 2) - 1.0,
        "pooled": pooled.reshape(x.shape[0], -1),
        "none": jnp.zeros((x.shape[0], 4)),
    }


def test_readout_geometry_and_layout():
    assert readout_geometry((4, 4, 12), (8, 8, 3), 3) == (108, 12)
    assert readout_geometry((4, 4, 12), (8, 8, 3), 0) is None
    assert readout_geometry((3, 4, 12), (8, 8, 3), 3) is None  # unequal strides
    assert readout_geometry((4, 4, 1024), (8, 8, 3), 3) == (1024, 12)  # k -> 1
    with pytest.raises(ValueError, match="readout_kernel must be 0 or odd"):
        readout_geometry((4, 4, 12), (8, 8, 3), 2)
    with pytest.raises(ValueError, match="readout_kernel must be 0 or odd"):
        DecoderConfig(readout_kernel=4)
    x = np.arange(2 * 6 * 6 * 2.0).reshape(2, 6, 6, 2)
    np.testing.assert_array_equal(depth_to_space(space_to_depth(x, 3), 3), x)


def test_decoder_starts_as_its_ridge_readout():
    # Before training the decoder is the ridge readout plus the mean image
    # (its head starts at zero): its held-out MSE is the readout's. A stride-2
    # rearrangement of the image is read back almost exactly (the ridge
    # layout matches the decoder's), a pooled vector as well as 4x4 pooling
    # allows, a constant feature not at all.
    images = smooth_images(120, size=8)
    decs, metrics = train_decoders(
        linear_layers,
        ("s2d", "pooled", "none"),
        images,
        READOUT,
        key=jax.random.key(0),
        progress=False,
    )
    for name, m in metrics.items():
        assert m.ridge_mse == pytest.approx(m.heldout_mse, rel=1e-5), name
        assert m.ridge_penalty is not None and m.ridge_penalty > 0
    assert metrics["s2d"].ridge_mse < 0.01 * metrics["s2d"].constant_mse
    assert metrics["pooled"].ridge_mse < 0.5 * metrics["pooled"].constant_mse
    assert metrics["none"].ridge_mse == pytest.approx(
        metrics["none"].constant_mse, rel=0.02
    )
    assert metrics["s2d"].verdict == RECOVERS
    assert metrics["none"].verdict == NO_INFORMATION
    assert metrics["none"].learned_nothing and not metrics["s2d"].learned_nothing
    # The readout weights of the rearrangement invert it: 1 / (3 x scale) on
    # the centre position, ~0 elsewhere.
    dec = decs["s2d"]
    w = np.asarray(dec.readout[...]).reshape(3, 3, 12, 12)
    centre = w[1, 1] * 3.0 / np.asarray(dec.feature_scale[...])[:, None]
    # (Smooth images: neighbouring positions correlate, so the ridge penalty
    # shares a little weight out; measured diagonal 0.93-0.99.)
    np.testing.assert_allclose(np.diag(centre), 1.0, atol=0.12)
    np.testing.assert_allclose(centre - np.diag(np.diag(centre)), 0.0, atol=0.1)
    assert np.abs(w[0, 0]).max() < 0.1 * np.abs(w[1, 1]).max()


def mirrored(x):
    # Each 2x2 pixel block sits at the point-mirrored feature position: a 3x3
    # neighbourhood of feature positions misses it at the border, the whole
    # feature does not.
    return {"mirror": space_to_depth(x[:, ::-1, ::-1], 2)}


def test_dense_readout_reads_what_the_local_one_misses():
    assert dense_readout_shape((4, 4, 12), (8, 8, 3)) == (192, 192)
    assert dense_readout_shape((12,), (8, 8, 3)) is None  # dense already
    assert dense_readout_shape((32, 32, 128), (32, 32, 3)) is None  # > 2**26
    images = smooth_images(160, size=8)
    ratios = {}
    for dense in (False, True):
        decs, metrics = train_decoders(
            mirrored,
            "mirror",
            images,
            dataclasses.replace(READOUT, dense_readout=dense),
            key=jax.random.key(0),
            progress=False,
        )
        m = metrics["mirror"]
        ratios[dense] = m.ridge_mse / m.constant_mse
        assert (decs["mirror"].dense is not None) == dense
        assert (m.dense_penalty is not None) == dense
        assert m.ridge_mse == pytest.approx(m.heldout_mse, rel=1e-5)  # the start
    assert ratios[False] > 0.3, ratios  # the corners are out of reach
    assert ratios[True] < 0.05, ratios


def test_training_never_ends_worse_than_the_readout():
    # A learning rate far too high wrecks the residual network; the decoder
    # falls back to its readout (head zero) and says so.
    images = smooth_images(96, size=8)
    cfg = dataclasses.replace(
        READOUT, steps=30, learning_rate=0.3, schedule="constant", log_every=10
    )
    decs, metrics = train_decoders(
        two_layer_features, "pool", images, cfg, key=jax.random.key(2), progress=False
    )
    m = metrics["pool"]
    assert m.kept_readout
    assert m.heldout_mse == pytest.approx(m.ridge_mse, rel=1e-6)
    assert not np.any(np.asarray(decs["pool"].head.kernel[...]))
    assert DecoderMetrics.from_dict(m.to_dict()) == m


def test_trained_decoder_keeps_its_readout_and_round_trips(tmp_path):
    images = smooth_images(96, size=8)
    cfg = dataclasses.replace(READOUT, steps=60, log_every=20)
    dec, m = train_decoder(
        two_layer_features,
        "pool",
        images,
        cfg,
        key=jax.random.key(1),
        progress=False,
    )
    save_decoders(tmp_path, {"pool": dec}, {"pool": m}, cfg)
    assert m.heldout_mse <= m.ridge_mse * 1.02
    restored, meta = load_decoder(tmp_path, "pool")
    assert meta["config"]["readout_kernel"] == 3
    assert DecoderMetrics.from_dict(meta["metrics"]) == m
    f = two_layer_features(jnp.asarray(images[:3]))["pool"]
    np.testing.assert_array_equal(
        _apply(decoder_fn(restored), f), _apply(decoder_fn(dec), f)
    )


def test_decoder_verdict_rule():
    assert decoder_verdict(0.5) == RECOVERS
    assert decoder_verdict(0.95) == RECOVERS  # exactly at the margin
    assert decoder_verdict(0.96) == NO_INFORMATION
    assert decoder_verdict(0.99, ridge_ratio=0.7) == UNDERTRAINED
    assert decoder_verdict(0.99, longer_ratio=0.7) == UNDERTRAINED
    assert decoder_verdict(0.99, 0.98, 0.97) == NO_INFORMATION
    assert decoder_verdict(0.9, margin=0.2) == NO_INFORMATION
    with pytest.raises(ValueError, match="margin"):
        decoder_verdict(0.5, margin=1.0)
    with pytest.raises(ValueError, match="decoder_ratio"):
        decoder_verdict(math.nan)
    # Metadata of earlier releases (no constant_mse): the old rule.
    old = DecoderMetrics("l", 10, 0.0, 0.05, 0.045, 0.05, (), 1.0, 1.0)
    assert old.constant_mse is None and old.learned_nothing  # 0.9 >= 0.8
    assert DecoderMetrics.from_dict({**old.to_dict()}) == old


def test_ru_ceiling_is_the_gaussian_entropy_of_the_pixel():
    v = np.array([[0.01, 0.04]])
    np.testing.assert_allclose(
        ru_ceiling(v), 0.5 * np.log(2 * np.pi * np.e * v), rtol=1e-12
    )
    assert ru_ceiling(v)[0, 1] - ru_ceiling(v)[0, 0] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="pixel_variance"):
        ru_ceiling(np.array([0.0]))


def _dense_ridge_ratio(fit_f, fit_x, held_f, held_x) -> float:
    """Held-out MSE / variance of a ridge regression from the whole
    standardised feature to the whole image (numpy, dual form), its penalty
    the best of a grid on the held-out images (optimistic for the baseline)."""
    mu, sd = fit_f.mean(0), fit_f.std(0) + 1e-6
    a, b = (fit_f - mu) / sd, (held_f - mu) / sd
    y_mean = fit_x.mean(0)
    kernel, cross = a @ a.T, b @ a.T
    evals, evecs = np.linalg.eigh(kernel)
    rotated = evecs.T @ (fit_x - y_mean)
    best = np.inf
    for rel in 10.0 ** np.arange(-4.0, 3.01, 0.5):
        lam = rel * np.mean(np.diag(kernel))
        alpha = evecs @ (rotated / (np.maximum(evals, 0) + lam)[:, None])
        best = min(best, np.mean((cross @ alpha + y_mean - held_x) ** 2))
    return float(best / np.var(held_x))


@pytest.mark.slow
def test_decoders_at_the_demo_budget_stay_near_the_dense_ridge_baseline(
    trained_convnet,
):
    # Issue 21: at the demo's budget (300 steps) every decoder is within 0.02
    # of a dense ridge regression from the whole standardised feature (its
    # penalty the best on the held-out images: optimistic for the baseline),
    # or better; and training never ends worse than the decoder's readout.
    from jax_infodiscard.data import load_synthetic

    fn, _ = trained_convnet
    images = load_synthetic("train", 1200).images
    layers = ("conv1", "conv3", "conv5", "logits")
    cfg = DecoderConfig(steps=300, width=16, learning_rate=1e-2, beta=1.5e-4)
    _, metrics = train_decoders(
        fn, layers, images, cfg, key=jax.random.key(0), progress=False
    )
    noisy = images + cfg.training_noise_std * np.random.default_rng(0).normal(
        size=images.shape
    ).astype(np.float32)
    feats = jax.jit(fn)(jnp.asarray(noisy))
    x = noisy.reshape(len(images), -1).astype(np.float64)
    for name in layers:
        m = metrics[name]
        f = np.asarray(feats[name], np.float64).reshape(len(images), -1)
        ridge = _dense_ridge_ratio(f[:1000], x[:1000], f[1000:], x[1000:])
        print(name, m.mse_over_variance, ridge, m.ridge_mse / m.image_variance)
        assert m.mse_over_variance <= ridge + 0.02, (name, m.mse_over_variance, ridge)
        assert m.heldout_mse <= m.ridge_mse, name  # training never hurts
