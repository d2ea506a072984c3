"""Exact column norms by Jacobian colouring (core/colouring.py, core/linear.py).

Oracle: the squared column norms of the full Jacobian (``jax.jacfwd``). The
receptive fields read from the jaxpr are checked against the Jacobian's
actual sparsity, and the colouring's pass count against ``P_1 P_2 C``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import conv, convnet_features, init_convnet, oracle_sigma
from flax import nnx
from jax.tree_util import Partial

import jax_infodiscard as jid
from jax_infodiscard.core import colouring
from jax_infodiscard.core.features import image_features
from jax_infodiscard.core.linear import colouring_plan, column_norms
from jax_infodiscard.models import layers as zoo_layers
from jax_infodiscard.models.convnets import ConvNet
from jax_infodiscard.models.functional import feature_fn as zoo_feature_fn

BETA = 1.5e-4


def _leaves(fn, layer):
    def leaves(z):
        out = image_features(fn, (layer,), z)[layer]
        return [a.astype(jnp.float32) for a in jax.tree.leaves(out)]

    return leaves


def _jacobians(fn, layer, x):
    """Full Jacobian of every leaf: ``[(*leaf_shape, H, W, C)]``."""
    return jax.jacfwd(_leaves(fn, layer))(x)


def _exact_norms(fn, layer, x, per_channel):
    jacs = _jacobians(fn, layer, x)
    a = sum(jnp.sum(jnp.square(j), axis=tuple(range(j.ndim - x.ndim))) for j in jacs)
    return a if per_channel else jnp.sum(a, axis=-1)


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _conv_w(key, k, cin, cout):
    return jax.random.normal(key, (k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))


# --- networks: each returns {layer: (B, ...)} ----------------------------------


def _strided_pool_net(params, x):
    """conv 3x3 s1 -> max pool 2 (reduce_window, VALID) -> conv 3x3 s2 -> avg pool."""
    w1, w2 = params
    h = jax.nn.relu(conv(x - 0.5, w1, 0.1, 1))
    p = jax.lax.reduce_window(
        h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    h2 = jax.nn.relu(conv(p, w2, -0.05, 2))
    avg = jax.lax.reduce_window(
        h2, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"
    )
    return {"conv1": h, "pool": p, "conv2": h2, "avg": avg / 9.0}


def _nchw_net(w, x):
    """A dilated VALID conv in NCHW layout (transposes, rhs dilation), tanh."""
    xt = jnp.transpose(x, (0, 3, 1, 2))
    y = jax.lax.conv_general_dilated(
        xt,
        w,
        (1, 1),
        "VALID",
        rhs_dilation=(2, 1),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return {
        "dil": jnp.tanh(y),
        "pair": {"a": jnp.tanh(y)[:, :1], "b": xt[:, :, 1:] ** 2},
    }


def _residual_net(graphdef, state, x):
    """A zoo BasicBlock (stride 2, 1x1 projection shortcut) after a ConvBN stem."""
    stem, block = nnx.merge(graphdef, state)
    h = stem(x)
    return {"stem": h, "block": block(h)}


def _global_net(params, x):
    h = convnet_features(params, x)["conv2"]
    pooled = jnp.mean(h, axis=(1, 2))
    return {
        "gap": pooled,
        "dense": jnp.tanh(h.reshape(h.shape[0], -1) @ jnp.ones((h[0].size, 5))),
    }


@pytest.fixture(scope="module")
def nets():
    key = jax.random.key(3)
    k = jax.random.split(key, 4)
    rngs = nnx.Rngs(0)
    stem = zoo_layers.ConvBN(3, 4, rngs=rngs)
    block = zoo_layers.BasicBlock(4, 6, stride=2, rngs=rngs)
    graphdef, state = nnx.split((stem, block))
    # Non-trivial BatchNorm statistics, so that the block is not near identity.
    state = jax.tree.map(
        lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), state
    )
    return {
        "convnet": Partial(convnet_features, init_convnet(k[0])),
        "pool": Partial(
            _strided_pool_net, (_conv_w(k[1], 3, 3, 4), _conv_w(k[2], 3, 4, 5))
        ),
        "nchw": Partial(_nchw_net, jax.random.normal(k[3], (4, 3, 3, 2)) * 0.3),
        "residual": Partial(_residual_net, graphdef, state),
        "global": Partial(_global_net, init_convnet(k[0])),
    }


CASES = [  # (net, layer, image shape, periods = the field's extent, capped)
    ("convnet", "conv1", (8, 8, 3), (3, 3)),  # 3x3, stride 1
    ("convnet", "conv2", (8, 8, 3), (5, 5)),  # then 3x3, stride 2
    ("convnet", "conv3", (12, 10, 3), (9, 9)),  # non-square, SAME pads differ
    ("pool", "conv1", (12, 12, 3), (3, 3)),
    ("pool", "pool", (12, 12, 3), (4, 4)),  # max pooling (reduce_window)
    ("pool", "conv2", (12, 12, 3), (8, 8)),
    ("pool", "avg", (12, 12, 3), (12, 12)),  # a 16-pixel field: global here
    ("nchw", "dil", (11, 9, 3), (5, 2)),  # transposes, VALID, rhs dilation
    ("nchw", "pair", (11, 9, 3), (5, 2)),  # two leaves, a slice, one a square
    ("residual", "stem", (8, 8, 3), (3, 3)),
    ("residual", "block", (12, 12, 3), (9, 9)),  # residual, strided projection
]


@pytest.mark.parametrize(("net", "layer", "shape", "periods"), CASES)
def test_colouring_equals_the_full_jacobian(nets, net, layer, shape, periods):
    fn = nets[net]
    x = _images(shape, seed=len(layer))
    want = _exact_norms(fn, layer, x, True)
    assert float(jnp.max(want)) > 0.0
    for per_channel, w in ((True, want), (False, jnp.sum(want, axis=-1))):
        a, passes = column_norms(fn, layer, x, None, 8, per_channel, mode="colouring")
        assert a.shape == w.shape
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=1e-6 * float(jnp.max(w)))
    plan = colouring_plan(fn, layer, x)
    assert plan.periods == periods
    assert passes == plan.passes == math.prod(periods) * shape[-1]


@pytest.mark.parametrize(
    ("net", "layer", "shape", "periods"), [*CASES, ("global", "gap", (8, 8, 3), None)]
)
def test_receptive_fields_contain_the_jacobian_sparsity(
    nets, net, layer, shape, periods
):
    """Every non-zero Jacobian entry lies inside the field read from the jaxpr."""
    fn = nets[net]
    x = _images(shape, seed=7)
    fields = colouring.receptive_fields(_leaves(fn, layer), x)
    for jac, field in zip(_jacobians(fn, layer, x), fields, strict=True):
        nz = np.asarray(jnp.abs(jac) > 0)  # (*leaf, H, W, C)
        leaf_ndim = nz.ndim - x.ndim
        assert nz.any() and field is not None
        for d, r in enumerate(field):
            side = x.shape[d]
            u = np.arange(nz.shape[r.axis]) if r.axis is not None else np.zeros(1)
            i = np.arange(side)
            lo = (r.scale * u + r.lo)[:, None] if r.axis is not None else r.lo
            hi = (r.scale * u + r.hi)[:, None] if r.axis is not None else r.hi
            inside = (i[None, :] >= lo) & (i[None, :] <= hi)  # (n_u or 1, side)
            shape_b = [1] * nz.ndim
            if r.axis is not None:
                shape_b[r.axis] = inside.shape[0]
            shape_b[leaf_ndim + d] = side
            allowed = inside.reshape(shape_b)
            assert not np.any(nz & ~allowed), (net, layer, d, r)


@pytest.fixture(scope="module")
def zoo_convnet():
    """The demo's architecture (reshape max-pooling, BatchNorm) at 16x16."""
    model = ConvNet(image_size=16, width=4, rngs=nnx.Rngs(1))
    return zoo_feature_fn(model, ["conv1", "conv3", "logits"])


def test_zoo_convnet_plans_and_conv1(zoo_convnet):
    fn = zoo_convnet
    x = _images((16, 16, 3), seed=5)
    assert colouring_plan(fn, "conv1", x).passes == 27
    # conv1 3 -> pool 4 (stride 2) -> conv2 8 -> conv3 12 pixels.
    assert colouring_plan(fn, "conv3", x).periods == (12, 12)
    # The logits see the whole image: the colouring is the input basis.
    assert colouring_plan(fn, "logits", x).periods == (16, 16)
    a, passes = column_norms(fn, "conv1", x, None, 256, False)
    assert passes == 27
    want = _exact_norms(fn, "conv1", x, False)
    np.testing.assert_allclose(a, want, rtol=2e-5, atol=1e-6 * float(jnp.max(want)))


@pytest.mark.slow
def test_zoo_convnet_conv3_is_coloured_exactly(zoo_convnet):
    x = _images((16, 16, 3), seed=5)
    a, passes = column_norms(zoo_convnet, "conv3", x, None, 8, True, mode="colouring")
    assert passes == 432
    want = _exact_norms(zoo_convnet, "conv3", x, True)
    np.testing.assert_allclose(a, want, rtol=2e-5, atol=1e-6 * float(jnp.max(want)))


# --- the choice between the three ways, and the pass counts ----------------------


def test_auto_uses_colouring_when_it_costs_at_most_the_probes(nets):
    fn = nets["convnet"]
    x = _images((8, 8, 3), seed=1)
    want = _exact_norms(fn, "conv1", x, False)
    # conv1 has 8 * 8 * 8 = 512 entries and a 3x3 field: 27 JVPs.
    a, passes = column_norms(fn, "conv1", x, jax.random.key(0), 27, False)
    assert passes == 27
    np.testing.assert_allclose(a, want, rtol=2e-5)
    # One probe fewer: the probes, unbiased but noisy.
    a, passes = column_norms(fn, "conv1", x, jax.random.key(0), 26, False)
    assert passes == 26
    rel = np.abs(np.asarray(a) / np.asarray(want) - 1)
    assert 0.02 < np.median(rel) < 1.0
    # conv2 (two 3x3 convolutions, the second strided): a 5x5 field, 75 JVPs.
    assert colouring_plan(fn, "conv2", x).passes == 75
    assert column_norms(fn, "conv2", x, jax.random.key(0), 256, False)[1] == 75


def test_small_features_keep_the_basis_and_global_features_the_probes(nets):
    fn = nets["global"]
    x = _images((8, 8, 3), seed=2)
    # 8 pooled entries <= 64 probes: the output basis (8 VJPs), exact.
    a, passes = column_norms(fn, "gap", x, jax.random.key(0), 64, False)
    assert passes == 8
    np.testing.assert_allclose(a, _exact_norms(fn, "gap", x, False), rtol=2e-5)
    # A global field: colouring would be the input basis (192 JVPs).
    for layer in ("gap", "dense"):
        assert colouring_plan(fn, layer, x).periods == (8, 8)
    a, passes = column_norms(fn, "gap", x, jax.random.key(0), 4, False)
    assert passes == 4
    assert not np.allclose(a, _exact_norms(fn, "gap", x, False), rtol=1e-2)
    # Forced, the colouring stays exact even for a global feature.
    a, passes = column_norms(fn, "dense", x, None, 8, True, mode="colouring")
    assert passes == x.size
    np.testing.assert_allclose(a, _exact_norms(fn, "dense", x, True), rtol=2e-5)


def test_forced_modes_and_their_errors(nets):
    fn = nets["convnet"]
    x = _images((8, 8, 3), seed=3)
    a_basis, passes = column_norms(fn, "conv2", x, None, 4, True, mode="basis")
    assert passes == 4 * 4 * 8
    a_col, _ = column_norms(fn, "conv2", x, None, 4, True, mode="colouring")
    np.testing.assert_allclose(a_col, a_basis, rtol=2e-5)
    _, passes = column_norms(
        fn, "conv2", x, jax.random.key(1), 512, True, mode="probes"
    )
    assert passes == 512
    with pytest.raises(ValueError, match="mode must be one of"):
        column_norms(fn, "conv2", x, None, 4, True, mode="exact")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        column_norms(fn, "conv2", x, None, 4, True, mode="probes")


def test_a_function_without_forward_derivatives_falls_back_to_probes():
    @jax.custom_vjp
    def square(z):
        return z * z

    square.defvjp(lambda z: (z * z, z), lambda z, g: (2 * z * g,))
    fn = lambda z: {"sq": square(z)}
    x = _images((4, 4, 1), seed=4)
    assert colouring_plan(fn, "sq", x) is None
    # 16 entries > 12 probes, which the input basis (16 JVPs) would not beat
    # either; with 20 probes the output basis is exact.
    a, passes = column_norms(fn, "sq", x, jax.random.key(0), 12, False)
    assert passes == 12 and a.shape == (4, 4)
    a, passes = column_norms(fn, "sq", x, None, 20, False)
    assert passes == 16
    np.testing.assert_allclose(a, 4 * x[..., 0] ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be traced"):
        column_norms(fn, "sq", x, None, 8, False, mode="colouring")


def test_probe_batch_gives_the_same_colouring(nets):
    fn = nets["pool"]
    x = _images((12, 12, 3), seed=6)
    a, p = column_norms(fn, "conv2", x, None, 8, False, mode="colouring")
    b, q = column_norms(fn, "conv2", x, None, 8, False, probe_batch=7, mode="colouring")
    assert p == q
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_jit_and_vmap_over_images(nets):
    fn = nets["convnet"]
    xs = _images((2, 8, 8, 3), seed=8)

    @jax.jit
    def norms(f, xs):
        return jax.vmap(lambda x: column_norms(f, "conv2", x, None, 100, False)[0])(xs)

    got = norms(fn, xs)
    for b in range(2):
        np.testing.assert_allclose(
            got[b], _exact_norms(fn, "conv2", xs[b], False), rtol=2e-5
        )


def test_the_linear_method_hits_the_oracle_of_the_exact_norms(nets):
    """End to end: ``cid(method="linear")`` is the closed form of exact norms."""
    fn = nets["convnet"]
    xs = _images((2, 8, 8, 3), seed=9)
    cfg = jid.CIDConfig(method="linear", probes=32, layer_strategy="vmap")
    res = jid.cid(fn, xs, jax.random.key(0), layers=["conv1"], config=cfg)
    for b in range(2):
        a = np.asarray(_exact_norms(fn, "conv1", xs[b], False))
        np.testing.assert_allclose(res.sigma[0, b], oracle_sigma(a, BETA), rtol=1e-4)
    assert int(np.asarray(res.passes)[0, 0]) >= 27
    assert math.prod(xs.shape[1:3]) == res.sigma.shape[-1] * res.sigma.shape[-2]


def test_each_primitive_family_has_one_rule_and_the_rest_the_universal_bound():
    """The rule table covers every family; a primitive without an exact rule
    (or whose rule declines its arguments) gets the universal bound."""
    families = (
        (colouring._ELEMENTWISE, colouring._rule_elementwise),
        (colouring._REDUCTIONS, colouring._rule_reduction),
        (colouring._WINDOWED, colouring._rule_windowed),
        (colouring._CALLS, colouring._rule_call),
    )
    for names, rule in families:
        assert all(colouring._RULES[n] is rule for n in names)
    Reach = colouring.Reach
    identity = (Reach(0, 1, 0, 0), Reach(1, 1, 0, 0))  # entry (u, v) reads (u, v)
    whole = (Reach(None, 1, 0, 3), Reach(None, 1, 0, 3))

    def rule(f, *args):
        eqn = jax.make_jaxpr(f)(*args).jaxpr.eqns[-1]
        return colouring._rule(eqn, [identity] + [None] * (len(eqn.invars) - 1))

    x = jnp.zeros((4, 4))
    assert rule(lambda x: jax.lax.cumsum(x, axis=0), x) == [whole]  # no rule
    sliced = rule(lambda x: jax.lax.slice(x, (1, 0), (3, 4), (1, 2)), x)
    assert sliced == [(Reach(0, 1, 1, 1), Reach(1, 2, 0, 0))]
    swapped = rule(lambda x: jax.lax.transpose(x, (1, 0)), x)
    assert swapped == [(Reach(1, 1, 0, 0), Reach(0, 1, 0, 0))]
    # A traced start has no exact rule: the universal bound.
    traced = rule(lambda x, i: jax.lax.dynamic_slice(x, (i, i), (2, 2)), x, 1)
    assert traced == [whole]
