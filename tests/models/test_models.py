"""Tests of the model zoo and its pure feature functions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_infodiscard.baselines import sequential
from jax_infodiscard.models import (
    VGG,
    available_models,
    create_model,
    feature_fn,
    model_fn,
    model_metadata,
    split_fn,
)
from jax_infodiscard.models.layers import InputNorm, MaxPool
from jax_infodiscard.models.sequential_adapter import to_sequential

# Smallest image side each family accepts, and a tiny width for speed.
TINY = {
    "convnet": 8,
    "alexnet": 8,
    "vgg11": 32,
    "vgg13": 32,
    "vgg16": 32,
    "resnet20": 8,
    "resnet32": 8,
    "resnet44": 8,
    "resnet56": 8,
    "unet": 8,
    "resnet20_ae": 8,
    "resnet32_ae": 8,
    "resnet44_ae": 8,
}


def tiny(name: str, seed: int = 0, size: int | None = None, **kw):
    size = TINY[name] if size is None else size
    return create_model(
        name, num_classes=5, image_size=size, width=4, rngs=nnx.Rngs(seed), **kw
    )


def abstract(name: str, size: int | None = None):
    """The model with ``jax.ShapeDtypeStruct`` variables (nothing computed)."""
    return nnx.eval_shape(lambda: tiny(name, size=size))


def abstract_features(model, n: int, size: int) -> dict:
    x = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
    return nnx.eval_shape(lambda m, x: (m.features(x), m(x)), model, x)


def images(n: int, size: int, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


def randomize_batch_stats(model, seed: int = 0) -> None:
    """Gives every BatchNorm non-trivial running statistics."""
    stats = nnx.state(model, nnx.BatchStat)
    flat, treedef = jax.tree_util.tree_flatten_with_path(stats)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    new = []
    for k, (path, leaf) in zip(keys, flat, strict=True):
        if "mean" in jax.tree_util.keystr(path):
            new.append(0.1 * jax.random.normal(k, leaf.shape))
        else:
            new.append(jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5))
    nnx.update(model, jax.tree.unflatten(treedef, new))


def test_registry_lists_every_family():
    names = available_models()
    for name in (*TINY, "vgg"):
        assert name in names
    resnet8 = nnx.eval_shape(lambda: create_model("resnet8", rngs=nnx.Rngs(0)))
    assert resnet8.arch == "resnet8" and "block1_2" not in resnet8.layer_names
    vgg = nnx.eval_shape(lambda: create_model("VGG", image_size=32, rngs=nnx.Rngs(0)))
    assert vgg.arch == "vgg11"


@pytest.mark.parametrize("name", sorted(TINY))
def test_features_names_shapes_and_output(name):
    model = abstract(name)
    size = TINY[name]
    feats, out = abstract_features(model, 2, size)
    assert sorted(feats) == sorted(model.layer_names)  # pytrees sort dict keys
    assert all(v.shape[0] == 2 and v.dtype == jnp.float32 for v in feats.values())
    # default layers: a non-empty subset, ordered from input to output
    order = [model.layer_names.index(layer) for layer in model.default_layers]
    assert order and order == sorted(order)
    assert out.shape == feats[model.output_layer].shape
    if model.task == "classification":
        assert out.shape == (2, 5)
        assert feats["logits"].shape == (2, 5)
    else:
        assert out.shape == (2, size, size, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "resnet20",
            {
                "conv1": (16, 16, 4),
                "block1_3": (16, 16, 4),
                "stage1": (16, 16, 4),
                "block2_1": (8, 8, 8),
                "stage2": (8, 8, 8),
                "stage3": (4, 4, 16),
                "pool": (16,),
                "logits": (5,),
            },
        ),
        (
            "convnet",
            {
                "conv1": (16, 16, 4),
                "pool1": (8, 8, 4),
                "conv3": (8, 8, 8),
                "conv5": (4, 4, 16),
                "pool3": (16,),
                "logits": (5,),
            },
        ),
        (
            "alexnet",
            {
                "conv1": (16, 16, 4),
                "pool1": (8, 8, 4),
                "conv2": (8, 8, 8),
                "conv3": (4, 4, 12),
                "pool5": (2, 2, 8),
                "fc1": (32,),
                "logits": (5,),
            },
        ),
        (
            "unet",
            {
                "enc1": (16, 16, 4),
                "bottleneck": (4, 4, 16),
                "dec2": (8, 8, 8),
                "dec1": (16, 16, 4),
                "pixel_logits": (16, 16, 5),
                "logits": (5,),
            },
        ),
        (
            "resnet20_ae",
            {"stage3": (4, 4, 16), "dec1": (8, 8, 8), "dec2": (16, 16, 4)},
        ),
    ],
)
def test_feature_shapes_at_16(name, expected):
    feats, _ = abstract_features(abstract(name, size=16), 3, 16)
    for layer, shape in expected.items():
        assert feats[layer].shape == (3, *shape), layer


def test_block_counts_follow_depth():
    for depth, n in ((20, 3), (32, 5), (44, 7)):
        model = abstract(f"resnet{depth}")
        blocks = [name for name in model.layer_names if name.startswith("block")]
        assert len(blocks) == 3 * n
        assert model.resolve_layer("stage2") == f"block2_{n}"


def test_vgg_works_at_64():
    feats, _ = abstract_features(abstract("vgg11", size=64), 1, 64)
    assert feats["pool5"].shape == (1, 2, 2, 32)


def test_unknown_model_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="resnet20"):  # the message lists choices
        create_model("resnet21", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown model 'resnet2'"):
        create_model("resnet2", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_size=40"):
        create_model("vgg11", image_size=40, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_size=30"):
        create_model("resnet20", image_size=30, rngs=nnx.Rngs(0))
    model = abstract("convnet")
    with pytest.raises(ValueError, match=r"\(B, 8, 8, 3\)"):
        model(images(1, 16))
    with pytest.raises(ValueError, match=r"\(B, 8, 8, 3\)"):
        model(jnp.zeros((1, 8, 8, 1)))


def test_maxpool_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    expected = nnx.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(MaxPool(2)(x), expected)


def test_input_norm_centres_and_is_learnable():
    norm = InputNorm(3, rngs=nnx.Rngs(0))
    x = jnp.full((1, 2, 2, 3), 0.75)
    np.testing.assert_allclose(norm(x), 1.0)  # (0.75 - 0.5) * 4
    assert isinstance(norm.mean, nnx.Param)
    with_norm = nnx.state(tiny("convnet"), nnx.Param)
    without = nnx.state(tiny("convnet", normalize=False), nnx.Param)
    assert "input_norm" in with_norm and "input_norm" not in without


def test_model_metadata_rebuilds_same_architecture():
    model = tiny("resnet20")
    meta = model_metadata(model)
    assert meta == {
        "model": "resnet20",
        "num_classes": 5,
        "image_size": 8,
        "model_kwargs": {"normalize": True, "width": 4},
    }
    rebuilt = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        image_size=meta["image_size"],
        rngs=nnx.Rngs(0),
        **meta["model_kwargs"],
    )
    same = jax.tree.map(np.array_equal, nnx.state(rebuilt), nnx.state(model))
    assert all(jax.tree.leaves(same))


# ---------------------------------------------------------- feature functions
_apply = jax.jit(lambda fn, x: fn(x))


def test_feature_fn_is_partial_traced_under_jit():
    model = create_model(
        "resnet8", num_classes=5, image_size=8, width=4, rngs=nnx.Rngs(0)
    )
    fn = feature_fn(model)
    assert isinstance(fn, jax.tree_util.Partial)
    x = images(4, 8)
    # parameters are inputs of the program, not constants
    closed = jax.make_jaxpr(lambda f, x: f(x))(fn, x)
    n_state = len(jax.tree.leaves(fn))
    assert n_state == len(jax.tree.leaves(nnx.state(model))) > 10
    assert len(closed.jaxpr.invars) == n_state + 1
    assert all(np.size(c) <= 1 for c in closed.consts)
    out = _apply(fn, x)
    assert sorted(out) == sorted(model.default_layers)
    reference = nnx.jit(lambda m, x: m.features(x))(model, x)
    for layer in model.default_layers:
        np.testing.assert_allclose(out[layer], reference[layer], rtol=1e-5, atol=1e-5)
    # another model of the same architecture reuses the compiled program
    other = create_model(
        "resnet8", num_classes=5, image_size=8, width=4, rngs=nnx.Rngs(1)
    )
    out2 = _apply(feature_fn(other), x)
    assert _apply._cache_size() == 1
    assert not np.allclose(out2["logits"], out["logits"])


def test_features_do_not_depend_on_the_batch():
    model = create_model(
        "resnet8", num_classes=5, image_size=8, width=4, rngs=nnx.Rngs(2)
    )
    randomize_batch_stats(model)
    fn = feature_fn(model)  # same program as the test above
    x = images(4, 8, seed=1)
    batch = _apply(fn, x)
    # the same image at another position, among other images
    mixed = _apply(fn, images(4, 8, seed=9).at[0].set(x[2]))
    assert not np.allclose(mixed["logits"][1], batch["logits"][1])
    for layer in batch:
        np.testing.assert_allclose(
            mixed[layer][0], batch[layer][2], rtol=1e-5, atol=1e-5
        )


def test_feature_fn_layer_selection_and_errors():
    model = abstract("alexnet")
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    fn = feature_fn(model, ["pool5", "conv1"])
    shapes = lambda f: jax.eval_shape(lambda f, x: f(x), f, x)
    assert sorted(shapes(fn)) == ["conv1", "pool5"]
    assert shapes(fn)["pool5"].shape == (1, 1, 1, 8)
    assert list(shapes(feature_fn(model, "fc2"))) == ["fc2"]
    with pytest.raises(ValueError, match=r"valid layers: conv1, pool1"):
        feature_fn(model, ["conv1", "conv9"])
    with pytest.raises(ValueError, match="at least one"):
        feature_fn(model, [])
    with pytest.raises(ValueError, match="duplicate"):
        feature_fn(model, ["fc1", "fc1"])


def test_model_fn_and_unet_pixel_logits():
    model = tiny("unet")
    x = images(2, 8)
    fn = model_fn(model)
    assert isinstance(fn, jax.tree_util.Partial)
    both = jax.jit(lambda f, g, x: (f(x), g(x)))
    logits, feats = both(fn, feature_fn(model, ["pixel_logits", "logits"]), x)
    np.testing.assert_allclose(logits, feats["logits"], rtol=1e-6)
    np.testing.assert_allclose(
        logits, feats["pixel_logits"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "cuts"),
    [
        ("resnet8", ("conv1", "stage2", "block3_1", "pool", "logits")),
        pytest.param(
            "alexnet", ("conv1", "pool2", "fc1", "logits"), marks=pytest.mark.slow
        ),
        pytest.param(
            "resnet8_ae", ("stage1", "stage3", "dec1", "recon"), marks=pytest.mark.slow
        ),
    ],
)
def test_split_fn_head_of_body_is_model(name, cuts):
    model = create_model(name, num_classes=5, image_size=8, width=4, rngs=nnx.Rngs(0))
    randomize_batch_stats(model)
    x = images(2, 8)
    expected = model(x)
    feats = model.features(x)
    for layer in cuts:
        body, head = split_fn(model, layer)
        h = body(x)
        np.testing.assert_allclose(h, feats[layer], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(head(h), expected, rtol=1e-5, atol=1e-5)


def test_split_fn_errors():
    with pytest.raises(ValueError, match="cannot be split"):
        split_fn(abstract("unet"), "enc2")
    with pytest.raises(ValueError, match="unknown layer"):
        split_fn(abstract("resnet20"), "block4_1")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", sorted(TINY))
def test_size_options_are_checked_in_every_family(name):
    size = TINY[name]
    build = functools.partial(create_model, name, image_size=size, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width must be >= 1"):
        nnx.eval_shape(lambda: build(width=0))  # was a ZeroDivisionError
    with pytest.raises(TypeError, match="width must be an integer"):
        nnx.eval_shape(lambda: build(width=2.5))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        nnx.eval_shape(lambda: build(num_classes=0))


def test_size_options_are_checked_on_direct_class_calls_too():
    with pytest.raises(ValueError, match="width"):
        nnx.eval_shape(lambda: VGG(width=0, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="image_size"):
        create_model("convnet", image_size=8.0, rngs=nnx.Rngs(0))


# ------------------------------------------------------------ sequential form
@pytest.mark.parametrize("name", ["convnet", "alexnet"])
def test_to_sequential_matches_the_model(name):
    model = tiny(name)
    randomize_batch_stats(model)
    x = images(2, 8)
    layers = to_sequential(model)
    np.testing.assert_allclose(
        jax.jit(sequential.apply)(layers, x),
        nnx.jit(lambda m, x: m(x))(model, x),
        rtol=1e-4,
        atol=1e-5,
    )


def test_to_sequential_refuses_skip_connections():
    unet = nnx.eval_shape(lambda: tiny("unet", normalize=False))
    with pytest.raises(ValueError, match="no sequential form"):
        to_sequential(unet)
