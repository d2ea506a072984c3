"""Tests of the model adapters: from_nnx, from_linen, from_apply.

Each user-side model is defined here (not taken from the zoo) together with a
hand-written feature function of the same weights; the adapters must give
the same features and the same CID.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_infodiscard as jid
from jax_infodiscard.models import from_apply, from_linen, from_nnx

EPS = 1e-5
# Equality of two feature functions, not the solver's accuracy: a few steps.
SHORT = jid.CIDConfig(
    probes=32, steps=6, samples=2, budget_samples=8, layer_strategy="vmap"
)


def _images(n: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, 8, 8, 3))


def _conv(x, kernel, bias=None, stride=1):
    out = jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out if bias is None else out + bias


def _bn(x, mean, var, scale, offset):
    return (x - mean) / jnp.sqrt(var + EPS) * scale + offset


def _randomize(tree, key, kind):
    """New values of the same shapes (non-trivial BatchNorm statistics)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    if kind == "var":
        new = [
            jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
            for k, x in zip(keys, leaves, strict=True)
        ]
    else:
        new = [
            0.2 * jax.random.normal(k, x.shape)
            for k, x in zip(keys, leaves, strict=True)
        ]
    return jax.tree.unflatten(treedef, new)


# ------------------------------------------------------------------ NNX model
class Block(nnx.Module):
    """Conv, BatchNorm, ReLU; the activation is a staticmethod called via self."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=EPS, rngs=rngs)  # train mode by default

    @staticmethod
    def act(x):
        return jax.nn.relu(x)

    def __call__(self, x):
        return self.act(self.bn(self.conv(x)))


class Head(nnx.Linear):
    """Inherits ``__call__``: still capturable."""


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.block1 = Block(3, 4, rngs=rngs)
        self.blocks = nnx.List([Block(4, 6, stride=2, rngs=rngs)])
        self.drop = nnx.Dropout(0.5, rngs=rngs)  # active by default
        self.head = Head(6, 3, rngs=rngs)

    def __call__(self, x):
        h = self.block1(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.drop(h).mean((1, 2)))


def nnx_net(seed: int = 0) -> NNXNet:
    model = NNXNet(nnx.Rngs(seed))
    for i, block in enumerate((model.block1, model.blocks[0])):
        key = jax.random.fold_in(jax.random.key(seed + 100), i)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        block.bn.mean[...] = 0.2 * jax.random.normal(k1, block.bn.mean.shape)
        block.bn.var[...] = jax.random.uniform(
            k2, block.bn.var.shape, minval=0.5, maxval=1.5
        )
        block.bn.scale[...] = 1 + 0.2 * jax.random.normal(k3, block.bn.scale.shape)
        block.bn.bias[...] = 0.2 * jax.random.normal(k4, block.bn.bias.shape)
    return model


def nnx_weights(model: NNXNet) -> dict:
    def block(b):
        return {
            "kernel": b.conv.kernel[...],
            "bias": b.conv.bias[...],
            "bn": (b.bn.mean[...], b.bn.var[...], b.bn.scale[...], b.bn.bias[...]),
        }

    return {
        "blocks": [block(model.block1), block(model.blocks[0])],
        "head": (model.head.kernel[...], model.head.bias[...]),
    }


def handwritten(weights: dict, x: jax.Array) -> dict:
    """The same network written with lax: conv, inference BatchNorm, ReLU."""
    out = {}
    h = x
    for i, (b, stride) in enumerate(zip(weights["blocks"], (1, 2), strict=True)):
        h = jax.nn.relu(_bn(_conv(h, b["kernel"], b["bias"], stride), *b["bn"]))
        out[f"block{i + 1}"] = h
    kernel, bias = weights["head"]
    out["head"] = h.mean((1, 2)) @ kernel + bias
    return out


NNX_LAYERS = {"block1": "block1", "block2": "blocks/0", "head": "head"}


def test_nnx_features_equal_handwritten_and_model_untouched():
    model = nnx_net()
    fn = from_nnx(model, NNX_LAYERS)
    x = _images()
    got = jax.jit(lambda f, x: f(x))(fn, x)
    want = handwritten(nnx_weights(model), x)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    # the user's model keeps its training-mode flags and its own classes
    assert model.block1.bn.use_running_average is False
    assert model.drop.deterministic is False
    assert type(model.block1) is Block and type(model.head) is Head
    # one image alone equals the same image in the batch (inference mode)
    alone = fn(x[:1])
    np.testing.assert_allclose(alone["block2"], got["block2"][:1], atol=1e-6)


def test_nnx_cid_equals_handwritten_cid():
    model = nnx_net()
    x, key = _images(), jax.random.key(3)
    weights = nnx_weights(model)
    ours = jid.cid(from_nnx(model, NNX_LAYERS), x, key, config=SHORT)
    ref = jid.cid(jax.tree_util.Partial(handwritten, weights), x, key, config=SHORT)
    assert ours.layers == ref.layers
    # The two programs round differently (features agree to 1e-5) and the
    # solver's iterations amplify it (1.6e-4 nats seen); a wrong layer or
    # weight moves maps by 0.1 nats and more.
    np.testing.assert_allclose(ours.pixel, ref.pixel, atol=1e-3)


def test_nnx_differentiates_and_vmaps_like_handwritten():
    model = nnx_net()
    fn = from_nnx(model, NNX_LAYERS)
    ref = jax.tree_util.Partial(handwritten, nnx_weights(model))
    x = _images()
    t = jax.random.normal(jax.random.key(1), x.shape)
    _, lin = jax.linearize(fn, x)
    _, lin_ref = jax.linearize(ref, x)
    for name, v in lin(t).items():
        np.testing.assert_allclose(v, lin_ref(t)[name], rtol=1e-4, atol=1e-5)
    out, vjp = jax.vjp(fn, x)
    _, vjp_ref = jax.vjp(ref, x)
    np.testing.assert_allclose(vjp(out)[0], vjp_ref(out)[0], rtol=1e-4, atol=1e-5)
    per_image = jax.vmap(lambda xi: fn(xi[None]))(x)
    np.testing.assert_allclose(per_image["head"][:, 0], out["head"], atol=1e-5)


def test_nnx_unknown_path_lists_available_paths():
    with pytest.raises(ValueError, match=r"block9.*available paths: .*blocks/0/conv"):
        from_nnx(nnx_net(), ["block1", "block9"])
    with pytest.raises(ValueError, match="duplicate"):
        from_nnx(nnx_net(), ["head", "head"])
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        from_nnx(lambda x: x, ["head"])
    with pytest.raises(TypeError, match="hashable"):
        from_nnx(nnx_net(), ["head"], scale=jnp.ones(2))


class Twice(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)
        self.pair = nnx.Linear(3, 2, rngs=rngs)
        self.unused = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x, *, scale: float = 1.0):
        return self.pair(self.lin(self.lin(x)) * scale)


def test_nnx_call_count_and_kwargs():
    model = Twice(nnx.Rngs(0))
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="called 2 times"):
        from_nnx(model, ["lin"])(x)
    with pytest.raises(ValueError, match="called 0 times"):
        from_nnx(model, ["unused"])(x)
    one = from_nnx(model, ["pair"])(x)["pair"]
    two = from_nnx(model, ["pair"], scale=2.0)(x)["pair"]
    bias = model.pair.bias[...]
    np.testing.assert_allclose(two - bias, 2 * (one - bias), rtol=1e-5)


# ---------------------------------------------------------------- Linen model
class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(4, (3, 3), name="conv1")(x)
        h = nn.BatchNorm(use_running_average=not train, epsilon=EPS, name="bn1")(h)
        h = nn.relu(h)
        h = nn.Dropout(0.5, deterministic=not train)(h)
        h = nn.relu(nn.Conv(6, (3, 3), strides=2, name="conv2")(h))
        return nn.Dense(3, name="head")(h.mean((1, 2)))


def linen_net(seed: int = 0):
    module = LinenNet()
    variables = module.init(jax.random.key(seed), _images())
    stats = variables["batch_stats"]["bn1"]
    key = jax.random.key(seed + 7)
    variables = {
        "params": variables["params"],
        "batch_stats": {
            "bn1": {
                "mean": _randomize(stats["mean"], key, "mean"),
                "var": _randomize(stats["var"], key, "var"),
            }
        },
    }
    return module, variables


def linen_handwritten(variables, x):
    p, s = variables["params"], variables["batch_stats"]["bn1"]
    h = _conv(x, p["conv1"]["kernel"], p["conv1"]["bias"])
    h = jax.nn.relu(_bn(h, s["mean"], s["var"], p["bn1"]["scale"], p["bn1"]["bias"]))
    # a Linen submodule's output is what its __call__ returns: conv2 is the
    # convolution before the ReLU applied in the parent
    conv2 = _conv(h, p["conv2"]["kernel"], p["conv2"]["bias"], 2)
    head = jax.nn.relu(conv2).mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
    return {"conv2": conv2, "head": head}


def test_linen_features_and_cid_equal_handwritten():
    module, variables = linen_net()
    x, key = _images(), jax.random.key(5)
    # the Linen "conv1" output is pre-BatchNorm: take the post-ReLU layers
    fn = from_linen(module, variables, ["conv2", "head"], train=False)
    ref = jax.tree_util.Partial(linen_handwritten, variables)
    got, want = jax.jit(lambda f, x: f(x))(fn, x), ref(x)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    ours = jid.cid(fn, x, key, config=SHORT)
    theirs = jid.cid(ref, x, key, layers=["conv2", "head"], config=SHORT)
    assert ours.layers == theirs.layers
    np.testing.assert_allclose(ours.pixel, theirs.pixel, atol=1e-3)  # as above


def test_linen_unknown_path_and_batch_stats_guard():
    module, variables = linen_net()
    fn = from_linen(module, variables, ["conv1", "convX"], train=False)
    with pytest.raises(ValueError, match=r"convX.*available paths: .*bn1.*head"):
        fn(_images())
    # train=True would update batch_stats: refused, not silently batch-dependent
    with pytest.raises(Exception, match="batch_stats"):
        from_linen(module, variables, ["head"], train=True)(_images())
    with pytest.raises(TypeError, match="linen"):
        from_linen(nnx_net(), variables, ["head"])


def test_linen_list_items_accept_slash_index():
    class Stack(nn.Module):
        def setup(self):
            self.layers = [nn.Dense(4), nn.Dense(2)]

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    module = Stack()
    x = jnp.ones((3, 5))
    variables = module.init(jax.random.key(0), x)
    a = from_linen(module, variables, {"hidden": "layers/0"})(x)["hidden"]
    b = from_linen(module, variables, ["layers_0"])(x)["layers_0"]
    p = variables["params"]["layers_0"]
    np.testing.assert_allclose(a, x @ p["kernel"] + p["bias"], rtol=1e-6)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- traced
def _nnx_pair():
    return from_nnx(nnx_net(0), NNX_LAYERS), from_nnx(nnx_net(1), NNX_LAYERS)


def _linen_pair():
    module, v0 = linen_net(0)
    _, v1 = linen_net(1)
    return (
        from_linen(module, v0, ["conv2", "head"], train=False),
        from_linen(module, v1, ["conv2", "head"], train=False),
    )


def _apply_pair():
    _, v0 = linen_net(0)
    _, v1 = linen_net(1)
    return from_apply(linen_handwritten, v0), from_apply(linen_handwritten, v1)


@pytest.mark.parametrize("pair", [_nnx_pair, _linen_pair, _apply_pair])
def test_parameters_are_traced_not_constants(pair):
    fn0, fn1 = pair()
    traces = []

    @jax.jit
    def head(fn, x):
        traces.append(1)
        return fn(x)["head"]

    x = _images()
    out0, out1 = head(fn0, x), head(fn1, x)
    assert len(traces) == 1 and head._cache_size() == 1  # no recompilation
    assert not np.allclose(out0, out1)  # the new parameters were used
    closed = jax.make_jaxpr(lambda f, x: f(x))(fn0, x)
    assert all(np.size(c) <= 1 for c in closed.consts)


def test_from_apply_checks_its_output():
    with pytest.raises(TypeError, match="callable"):
        from_apply(3, {})
    with pytest.raises(TypeError, match="dict"):
        from_apply(lambda p, x: x * p, 2.0)(_images())


# ------------------------------------------------- your own model, no pitfalls
def test_model_fn_of_your_own_model_is_batch_independent_like_from_nnx():
    from jax_infodiscard.models import model_fn

    model = nnx_net()  # BatchNorm in training mode, dropout active
    x = _images(4)
    fn = model_fn(model)
    batch = jax.jit(lambda f, x: f(x))(fn, x)
    alone = jnp.concatenate([fn(x[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(alone, batch, atol=1e-6)
    # the same inference view as from_nnx, and as the hand-written network
    np.testing.assert_allclose(batch, from_nnx(model, "head")(x)["head"], atol=1e-6)
    want = handwritten(nnx_weights(model), x)["head"]
    np.testing.assert_allclose(batch, want, rtol=1e-5, atol=1e-5)
    # the model's own call in its training mode depends on the batch
    own = model(x)
    assert not np.allclose(own[:1], model(x[:1]), atol=1e-3)
    assert model.block1.bn.use_running_average is False  # untouched


def test_a_model_where_a_function_is_expected_names_the_adapter():
    from jax_infodiscard.models import feature_fn, model_fn

    model = nnx_net()
    module, _ = linen_net()
    x = _images()
    nnx_hint = r"from_nnx\(model, layers\), layers among its submodule paths"
    cases = [
        (lambda: feature_fn(model), nnx_hint),
        (lambda: feature_fn(module), r"from_linen\(module, variables, layers\)"),
        (lambda: model_fn(module), r"Partial\(module.apply, variables\)"),
        (lambda: jid.cid(model, x, jax.random.key(0)), nnx_hint),
        (lambda: jid.cid(module, x, jax.random.key(0)), r"from_linen\("),
        (lambda: from_nnx(module, "conv1"), r"from_linen\(module, variables"),
    ]
    for call, hint in cases:
        with pytest.raises(TypeError, match=hint) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="paths 'block1', 'blocks', 'drop', 'head', "):
        feature_fn(model)


def test_cid_of_a_zoo_model_itself_names_feature_fn():
    from jax_infodiscard.models import create_model

    zoo = create_model("convnet", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"pass jax_infodiscard.models.feature_fn"):
        jid.cid(zoo, jnp.zeros((1, 32, 32, 3)), jax.random.key(0))


def test_from_nnx_takes_submodule_objects():
    model = nnx_net()
    x = _images()
    by_path = from_nnx(model, NNX_LAYERS)(x)
    by_object = from_nnx(model, [model.block1, model.blocks[0], model.head])(x)
    assert sorted(by_object) == ["block1", "blocks/0", "head"]
    named = from_nnx(model, {"block2": model.blocks[0], "head": "head"})(x)
    for name, path in (("block1", "block1"), ("blocks/0", "block2")):
        np.testing.assert_array_equal(by_object[name], by_path[path])
    np.testing.assert_array_equal(named["block2"], by_path["block2"])
    np.testing.assert_array_equal(
        from_nnx(model, model.head)(x)["head"], by_path["head"]
    )
    with pytest.raises(ValueError, match=r"layers\[0\]: this Block is not a submodule"):
        from_nnx(model, [nnx_net(1).block1])
    with pytest.raises(ValueError, match="is the model itself"):
        from_nnx(model, {"all": model})
