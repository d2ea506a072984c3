"""Tests of model surgery: magnitude pruning and damage (rescaling is tested
with the fairness metric in tests/evaluation/test_evaluation.py)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_infodiscard.models import create_model, model_metadata
from jax_infodiscard.models.surgery import (
    apply_masks,
    damage,
    kernel_sparsity,
    mask_updates,
    prune,
)


def tiny(name: str = "convnet", size: int = 8, **kw):
    return create_model(
        name, num_classes=3, image_size=size, width=4, rngs=nnx.Rngs(0), **kw
    )


def _flat(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _is_kernel(path: str) -> bool:
    return "'kernel'" in path


# ------------------------------------------------------------------ pruning
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9])
def test_global_pruning_is_exact_and_keeps_the_largest_weights(sparsity):
    model = tiny()
    before = _flat(nnx.state(model, nnx.Param))
    pruned, masks = prune(model, sparsity)
    after = _flat(nnx.state(pruned, nnx.Param))
    mask = _flat(masks)
    kernels = [k for k in before if _is_kernel(k)]
    assert len(kernels) == 6  # five convolutions and the classifier
    total = sum(before[k].size for k in kernels)
    removed = sum(int((~mask[k]).sum()) for k in kernels)
    assert removed == math.floor(sparsity * total + 0.5)
    assert kernel_sparsity(pruned)["global"] == pytest.approx(removed / total)
    kept = np.concatenate([np.abs(before[k][mask[k]]) for k in kernels])
    gone = np.concatenate([np.abs(before[k][~mask[k]]) for k in kernels])
    if gone.size:
        assert kept.min() >= gone.max()  # one global magnitude threshold
    for k in before:
        expected = np.where(mask[k], before[k], 0.0)
        np.testing.assert_array_equal(after[k], expected)
        if not _is_kernel(k):  # biases, BatchNorm, input centring untouched
            assert mask[k].all()
    # the input model is not modified
    assert all(
        np.array_equal(v, before[k])
        for k, v in _flat(nnx.state(model, nnx.Param)).items()
    )


def test_layer_pruning_reaches_the_sparsity_in_every_layer():
    model = tiny("alexnet")
    before = _flat(nnx.state(model, nnx.Param))
    pruned, masks = prune(model, 0.6, scope="layer")
    mask = _flat(masks)
    sparsity = kernel_sparsity(pruned)
    for k in (k for k in before if _is_kernel(k)):
        n = before[k].size
        assert int((~mask[k]).sum()) == math.floor(0.6 * n + 0.5)
        assert abs(sparsity[_path(k)] - 0.6) <= 1 / n  # to one weight per layer
        assert np.abs(before[k][mask[k]]).min() >= np.abs(before[k][~mask[k]]).max()


def _path(keystr: str) -> str:
    """``"['conv1']['conv']['kernel'].value"`` -> ``"conv1/conv/kernel"``."""
    return "/".join(
        part.strip("'") for part in keystr.split(".value")[0][1:-1].split("][")
    )


def test_prune_a_plain_pytree_and_reprune_keeps_zeros():
    rng = np.random.default_rng(0)
    params = {
        "params": {
            "Conv_0": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": np.ones(4)},
            "Dense_0": {"kernel": rng.normal(size=(8, 2)), "bias": np.ones(2)},
        }
    }
    pruned, masks = prune(params, 0.5)
    assert kernel_sparsity(pruned)["global"] == pytest.approx(0.5)
    assert bool(masks["params"]["Conv_0"]["bias"].all())
    again, masks2 = prune(pruned, 0.75)
    assert kernel_sparsity(again)["global"] == pytest.approx(0.75)
    # every weight pruned at 50% is still pruned at 75%
    for layer in ("Conv_0", "Dense_0"):
        m1, m2 = masks["params"][layer]["kernel"], masks2["params"][layer]["kernel"]
        assert not bool(jnp.any(m2 & ~m1))


@pytest.mark.parametrize(
    "tx",
    [
        optax.adamw(1e-2, weight_decay=0.1),
        optax.chain(
            optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9, nesterov=True)
        ),
    ],
    ids=["adamw", "sgd_momentum"],
)
def test_masks_survive_optimizer_steps(tx):
    model = tiny()
    pruned, masks = prune(model, 0.7)
    graphdef, params, rest = nnx.split(pruned, nnx.Param, ...)
    tx = optax.chain(tx, mask_updates(masks))
    opt_state = tx.init(params)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    y = jnp.array([0, 1, 2, 0])

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for _ in range(2):  # the second step has non-zero momentum
        new, opt_state = step(new, opt_state)
    old, upd, mask = _flat(params), _flat(new), _flat(masks)
    moved = 0
    for k in old:
        assert np.all(upd[k][~mask[k]] == 0.0), k  # pruned weights stay zero
        moved += int(np.sum(upd[k][mask[k]] != old[k][mask[k]]))
    assert moved > 0.9 * sum(int(m.sum()) for m in mask.values())
    # apply_masks is a no-op on the fine-tuned parameters
    again = _flat(apply_masks(new, masks))
    assert all(np.array_equal(again[k], upd[k]) for k in upd)


def test_prune_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="sparsity"):
        prune(model, 1.5)
    with pytest.raises(TypeError, match="sparsity"):
        prune(model, "half")
    with pytest.raises(ValueError, match="scope"):
        prune(model, 0.5, scope="channel")
    with pytest.raises(ValueError, match="kernel"):
        prune({"bias": np.ones(3)}, 0.5)


# ------------------------------------------------------------------- damage
def _unchanged_except(a, b, changed: tuple[str, ...]) -> None:
    fa, fb = _flat(nnx.state(a)), _flat(nnx.state(b))
    same = [k for k in fa if not any(k.startswith(c) for c in changed)]
    assert len(same) > 10
    for k in same:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_damage_conv_consumer():
    model = tiny()  # conv3 (8 channels) -> pool2 -> conv4
    hurt = damage(model, "conv3", key=jax.random.key(1))
    assert hurt.conv3.conv.kernel.shape == (7, 7, 8, 4)
    assert hurt.conv3.bn.scale.shape == (4,)
    assert hurt.conv4.conv.kernel.shape == (3, 3, 4, 16)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    out = hurt(x)
    assert out.shape == (2, 3) and bool(jnp.isfinite(out).all())
    assert hurt.features(x)["conv3"].shape == (2, 4, 4, 4)
    # everything but the new layer and the consumer's kernel is copied
    _unchanged_except(model, hurt, ("['conv3']", "['conv4']['conv']"))
    np.testing.assert_array_equal(hurt.conv4.bn.scale[...], model.conv4.bn.scale[...])
    assert model.conv3.conv.kernel.shape == (3, 3, 8, 8)  # input not modified


def test_damage_dense_consumer_and_metadata_round_trip():
    model = tiny("alexnet")  # conv5 (8 channels) -> pool5 (1x1) -> fc1
    hurt = damage(model, "conv5", num_filters=2, kernel_size=5, key=jax.random.key(2))
    assert hurt.conv5.conv.kernel.shape == (5, 5, 12, 2)
    assert hurt.fc1.linear.kernel.shape == (2, 32)
    np.testing.assert_array_equal(hurt.fc1.linear.bias[...], model.fc1.linear.bias[...])
    _unchanged_except(model, hurt, ("['conv5']", "['fc1']['linear']['kernel']"))
    assert hurt(jnp.zeros((1, 8, 8, 3))).shape == (1, 3)
    meta = json.loads(json.dumps(model_metadata(hurt)))
    assert meta["model_kwargs"]["damage"] == [["conv5", 2, 5]]
    rebuilt = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        image_size=meta["image_size"],
        rngs=nnx.Rngs(0),
        **meta["model_kwargs"],
    )
    shapes = jax.tree.map(jnp.shape, nnx.state(rebuilt))
    assert shapes == jax.tree.map(jnp.shape, nnx.state(hurt))


def test_damage_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="ConvBN stage"):
        damage(model, "pool1", key=jax.random.key(0))
    with pytest.raises(TypeError, match="num_filters"):
        damage(model, "conv3", num_filters=2.0, key=jax.random.key(0))
    resnet = tiny("resnet8")  # conv1 feeds a residual block
    with pytest.raises(ValueError, match="BasicBlock"):
        damage(resnet, "conv1", key=jax.random.key(0))
    with pytest.raises(TypeError, match="triples"):
        tiny(damage=["conv3"])
