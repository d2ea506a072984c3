"""Tests of the baseline explainers: closed forms, invariants, budgets, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from jax_infodiscard import baselines
from jax_infodiscard.baselines import (
    cam,
    common,
    grad_cam,
    gradient,
    gradient_x_input,
    guided_backprop,
    integrated_gradients,
    lime,
    lrp_epsilon,
    sequential,
    smoothgrad,
)

KEY = jax.random.key(0)
B, H, W, C, K = 3, 8, 8, 3, 5


def _images(seed=0, shape=(B, H, W, C)):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _normal(seed, shape, scale=1.0):
    """Seeded normal test data (numpy: no per-shape RNG compiles)."""
    return jnp.asarray(
        np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32
    )


def _conv(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# ---------------------------------------------------------------- test models


def _linear_apply(params, x):
    weights, bias = params
    return jnp.einsum("bhwc,hwck->bk", x, weights) + bias


def _linear_model(bias=True, seed=1):
    weights = _normal(seed, (H, W, C, K))
    b = jnp.linspace(-1.0, 1.0, K) if bias else jnp.zeros(K)
    return Partial(_linear_apply, (weights, b)), weights


def _smooth_apply(params, x):
    k1, k2, w = params
    h = jnp.tanh(_conv(x, k1))
    h = jax.nn.softplus(_conv(h, k2, stride=2))
    return h.reshape(h.shape[0], -1) @ w


def _smooth_model(seed=2):
    ks = [seed * 10 + i for i in range(3)]
    params = (
        _normal(ks[0], (3, 3, C, 6), 0.5),
        _normal(ks[1], (3, 3, 6, 4), 0.3),
        _normal(ks[2], (H // 2 * W // 2 * 4, K), 0.2),
    )
    return Partial(_smooth_apply, params)


def _mlp_apply_maximum(params, x):
    w1, b1, w2 = params
    return jnp.maximum(x.reshape(x.shape[0], -1) @ w1 + b1, 0) @ w2


def _mlp_apply_nn_relu(params, x):
    w1, b1, w2 = params
    return jax.jit(jax.nn.relu)(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2


def _mlp_params(seed=3, positive=False, hidden=16):
    ks = [seed * 10 + i for i in range(3)]
    w1 = _normal(ks[0], (H * W * C, hidden), 1 / 8)
    b1 = _normal(ks[1], (hidden,), 0.1)
    w2 = _normal(ks[2], (hidden, K))
    if positive:
        w1, b1, w2 = jnp.abs(w1), jnp.abs(b1), jnp.abs(w2)
    return w1, b1, w2


def _gap_body(params, x):
    return jax.nn.relu(_conv(x, params, stride=2))


def _gap_head(params, acts):
    weights, bias = params
    return jnp.mean(acts, axis=(1, 2)) @ weights + bias


def _gap_model(seed=4):
    ks = [seed * 10 + i for i in range(3)]
    kernel = _normal(ks[0], (3, 3, C, 6))
    weights = _normal(ks[1], (6, K))
    bias = _normal(ks[2], (K,))
    return Partial(_gap_body, kernel), Partial(_gap_head, (weights, bias)), weights


class _Counter:
    """Counts the images a model actually evaluates (at run time)."""

    def __init__(self):
        self.images = 0

    def add(self, rows):
        self.images += int(rows.shape[0])

    def wrap(self, fn):
        def counted(x):
            jax.debug.callback(self.add, x[:, 0, 0, 0])
            return fn(x)

        return Partial(counted)

    def total(self):
        jax.effects_barrier()
        return self.images


class _LargestCall:
    """Records the most images that one compiled model evaluation sees.

    Unlike :class:`_Counter` (whose callback ``vmap`` runs once per mapped
    element), the probe is vectorised over ``vmap``: it receives the whole
    mapped batch at once, as the compiled model does.
    """

    def __init__(self):
        self.largest = 0

    def _seen(self, rows):
        self.largest = max(self.largest, int(np.size(rows)))
        return rows

    def wrap(self, fn):
        def probed(x):
            rows = jax.lax.stop_gradient(x[:, 0, 0, 0])
            seen = jax.pure_callback(
                self._seen,
                jax.ShapeDtypeStruct(rows.shape, rows.dtype),
                rows,
                vmap_method="expand_dims",
            )
            # Used by the forward and the backward pass: never dead code.
            return fn(x * (1.0 + 0.0 * seen[:, None, None, None]))

        return Partial(probed)


# ------------------------------------------------------------- gradient family


def test_gradient_of_linear_model_equals_weights():
    model, weights = _linear_model()
    target = jnp.array([0, 3, 4])
    out = gradient.explain(model, _images(), target=target)
    expected = jnp.moveaxis(weights[..., target], -1, 0)
    np.testing.assert_allclose(out.extras["gradients"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.maps, jnp.max(jnp.abs(expected), axis=-1), rtol=1e-5)
    assert out.maps.shape == (B, H, W) and out.model_calls == 1


def test_gradient_x_input_sums_to_output_of_bias_free_linear_model():
    model, _ = _linear_model(bias=False)
    x = _images()
    out = gradient_x_input.explain(model, x, target=None)
    target = jnp.argmax(model(x), axis=-1)
    np.testing.assert_array_equal(out.extras["target"], target)
    f_x = jnp.take_along_axis(model(x), target[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(out.maps.sum(axis=(1, 2)), f_x, rtol=1e-4, atol=1e-4)


def test_integrated_gradients_completeness_on_smooth_model():
    model = _smooth_model()
    x = _images(5)
    out = integrated_gradients.explain(model, x, target=jnp.array([0, 1, 2]))
    delta = out.extras["input_logit"] - out.extras["baseline_logit"]
    assert np.all(np.abs(delta) > 1e-2)  # the test is not vacuous
    total = out.extras["attributions"].sum(axis=(1, 2, 3))
    np.testing.assert_allclose(total, delta, rtol=1e-2)
    np.testing.assert_allclose(out.extras["completeness_gap"], total - delta, atol=1e-5)
    np.testing.assert_allclose(out.maps.sum(axis=(1, 2)), total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rule", "mean_alpha"),
    [("left", 4.5 / 10), ("right", 5.5 / 10), ("middle", 0.5), ("trapezoid", 0.5)],
)
def test_integrated_gradients_rules_match_closed_form_on_quadratic(rule, mean_alpha):
    # f_k(x) = sum_i a_ik x_i^2 has a path gradient linear in alpha, so a rule
    # gives exactly 2 a (x - x') (x' + m (x - x')) with m its mean path point
    # (0.5 for midpoint and trapezoid: the exact integral).
    a = _normal(7, (H, W, C, K))
    model = Partial(lambda x: jnp.einsum("bhwc,hwck->bk", x**2, a))
    x, base = _images(8), _images(9) * 0.5
    target = jnp.array([1, 1, 2])
    out = integrated_gradients.explain(
        model,
        x,
        target=target,
        baseline=base,
        steps=10,
        rule=rule,
        internal_batch_size=3,
    )
    coef = a[..., target].transpose(3, 0, 1, 2)
    expected = 2 * coef * (x - base) * (base + mean_alpha * (x - base))
    np.testing.assert_allclose(out.extras["attributions"], expected, atol=1e-4)
    gap = np.abs(out.extras["completeness_gap"])
    if mean_alpha == 0.5:  # exact rules close the completeness gap
        assert np.all(gap < 1e-3)
    else:
        assert np.all(gap > 1e-2)


def test_integrated_gradients_named_baselines():
    x = _images(10)
    np.testing.assert_array_equal(integrated_gradients.make_baseline(x, "black"), 0.0)
    mean = integrated_gradients.make_baseline(x, "mean")
    np.testing.assert_allclose(mean[:, 3, 5], x.mean(axis=(1, 2)), rtol=1e-6)
    blurred = integrated_gradients.make_baseline(x, "blurred", blur_sigma=2.0)
    assert blurred.shape == x.shape
    assert float(blurred.std()) < float(x.std())  # smoother
    np.testing.assert_allclose(
        integrated_gradients.make_baseline(jnp.full_like(x, 0.3), "blurred"),
        0.3,
        rtol=1e-5,
    )  # blur keeps constants (row-normalised kernel)


def test_smoothgrad_of_linear_model_is_its_gradient_and_keys_per_image():
    model, weights = _linear_model()
    x = _images()
    target = jnp.array([2, 2, 0])
    out = smoothgrad.explain(model, x, KEY, target=target, samples=5)
    expected = jnp.moveaxis(weights[..., target], -1, 0)
    np.testing.assert_allclose(out.extras["gradients"], expected, rtol=1e-5, atol=1e-6)
    # With one key per image, an image's result depends on its own key only,
    # not on its position or batch mates (reversing the batch reverses it).
    smooth = _smooth_model()
    keys = jax.random.split(KEY, B)
    full = smoothgrad.explain(smooth, x, keys, target=target, samples=5)
    rev = smoothgrad.explain(
        smooth, x[::-1], keys[::-1], target=target[::-1], samples=5
    )
    np.testing.assert_allclose(full.maps[::-1], rev.maps, rtol=1e-5, atol=1e-7)
    other = smoothgrad.explain(smooth, x, jax.random.key(1), target=target, samples=5)
    assert not np.allclose(full.maps, other.maps)


# ------------------------------------------------------------------ budgets


@pytest.mark.parametrize(
    ("method", "options", "budget"),
    [
        ("integrated_gradients", {"steps": 13, "internal_batch_size": 4}, 13 + 2),
        ("smoothgrad", {"samples": 9, "internal_batch_size": 4}, 9),
        ("lime", {"samples": 37, "internal_batch_size": 8}, 37),
        ("gradient", {}, 1),
        ("guided_backprop", {}, 1),
    ],
)
def test_counted_model_calls_match_budget(method, options, budget):
    counter = _Counter()
    model = counter.wrap(_smooth_model())
    out = baselines.explain(
        method, model, _images(), KEY, target=jnp.array([0, 1, 2]), **options
    )
    assert counter.total() == B * budget
    assert out.model_calls == budget
    assert out.maps.shape == (B, H, W) and out.maps.dtype == jnp.float32


def test_argmax_target_adds_one_forward_pass_to_smoothgrad():
    counter = _Counter()
    out = smoothgrad.explain(counter.wrap(_smooth_model()), _images(), KEY, samples=4)
    assert counter.total() == B * 5 == B * out.model_calls


def _scaled_pair(params, x):
    return {"sum": params * x, "square": (params * x) ** 2}


def _scaled_pair_total(params, x):
    return {k: jnp.sum(v, axis=0) for k, v in _scaled_pair(params, x).items()}


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 20])
def test_chunked_sum_and_map_equal_unchunked_for_any_chunk_size(chunk):
    # 13 slices: 4 and 5 leave a shorter last chunk, 13 and 20 give one chunk.
    params = jnp.asarray([1.0, -2.0, 0.5])
    xs = np.arange(13, dtype=np.float32)[:, None] * np.ones(3, np.float32)
    fn = Partial(_scaled_pair, params)
    expected = {"sum": params * xs, "square": (params * xs) ** 2}
    total = common.chunked_sum(
        Partial(_scaled_pair_total, params), jnp.asarray(xs), chunk
    )
    mapped = common.chunked_map(fn, jnp.asarray(xs), chunk)
    for name in expected:
        np.testing.assert_allclose(mapped[name], expected[name], rtol=1e-6)
        np.testing.assert_allclose(total[name], expected[name].sum(axis=0), rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "options", "size"),
    [
        ("integrated_gradients", {"steps": 13}, "internal_batch_size"),
        ("smoothgrad", {"samples": 9}, "internal_batch_size"),
        ("lime", {"samples": 37}, "internal_batch_size"),
    ],
)
def test_chunked_explainers_equal_unchunked_with_bounded_model_batches(
    method, options, size
):
    # A chunk of 4 does not divide the budget: 13 = 3 * 4 + 1, 9 = 2 * 4 + 1,
    # 37 = 9 * 4 + 1. Chunking changes neither the result nor the call count,
    # and no model call sees more than B * chunk images.
    x, target = _images(13), jnp.array([0, 1, 2])
    counter, probe = _Counter(), _LargestCall()
    chunked = baselines.explain(
        method,
        probe.wrap(counter.wrap(_smooth_model())),
        x,
        KEY,
        target=target,
        **options,
        **{size: 4},
    )
    whole = baselines.explain(
        method, _smooth_model(), x, KEY, target=target, **options, **{size: 64}
    )
    assert counter.total() == B * chunked.model_calls
    assert probe.largest == B * 4
    np.testing.assert_allclose(chunked.maps, whole.maps, rtol=1e-5, atol=1e-6)
    for name, value in whole.extras.items():
        np.testing.assert_allclose(
            chunked.extras[name], value, rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_chunked_explainers_do_not_recompile_for_new_parameters():
    x, target = _images(14), jnp.array([0, 1, 2])
    runs = (
        lambda m: integrated_gradients.explain(
            m, x, target=target, steps=7, internal_batch_size=3
        ),
        lambda m: smoothgrad.explain(m, x, KEY, samples=5, internal_batch_size=2),
        lambda m: lime.explain(
            m, x, KEY, samples=9, segments=_block_segments(), internal_batch_size=4
        ),
    )
    for run in runs:
        run(_smooth_model(seed=2))
    sizes = (common._add_chunk._cache_size(), common._map_chunk._cache_size())
    for run in runs:  # same architecture, other parameters: traced, not baked in
        jax.block_until_ready(run(_smooth_model(seed=5)).maps)
    assert (
        common._add_chunk._cache_size(),
        common._map_chunk._cache_size(),
    ) == sizes


# ---------------------------------------------------------------------- LIME


def _block_segments(block=4):
    rows = np.arange(H)[:, None] // block
    cols = np.arange(W)[None, :] // block
    labels = rows * (W // block) + cols
    return np.broadcast_to(labels, (B, H, W)).astype(np.int32)


def test_lime_recovers_superpixel_linear_model():
    segments = _block_segments(2)  # 16 superpixels of 2x2 pixels
    n_seg = 16
    onehot = jax.nn.one_hot(jnp.asarray(segments[0]), n_seg)  # (H, W, S)
    w = _normal(11, (n_seg,))

    def model(x):  # logit_0 = sum_k w_k * mean over superpixel k
        means = jnp.einsum("bhwc,hws->bs", x, onehot) / (onehot.sum((0, 1)) * C)
        return jnp.stack([means @ w, -(means @ w)], axis=-1)

    x = _images(12)
    out = lime.explain(
        Partial(model),
        x,
        KEY,
        target=jnp.zeros(B, jnp.int32),
        samples=1000,
        segments=segments,
        fill="zeros",
    )
    means = jnp.einsum("bhwc,hws->bs", x, onehot) / (onehot.sum((0, 1)) * C)
    truth = means * w  # the effect of switching superpixel k on (fill = 0)
    coef = out.extras["coefficients"][:, :n_seg]
    np.testing.assert_array_equal(out.extras["coefficients"][:, n_seg:], 0.0)
    for b in range(B):
        assert np.corrcoef(coef[b], truth[b])[0, 1] > 0.99
    np.testing.assert_allclose(coef, truth, rtol=0.05, atol=0.01)
    assert np.all(out.extras["score"] > 0.99)
    # The map paints each superpixel's coefficient on its pixels.
    np.testing.assert_allclose(out.maps[:, 0, 0], coef[:, 0])
    np.testing.assert_allclose(out.maps[:, 7, 7], coef[:, 15])


def test_lime_with_slic_superpixels_is_reproducible():
    x = jnp.tile(jnp.linspace(0, 1, 16)[None, :, None, None], (2, 1, 16, 3))
    x = x.at[:, :, 8:, 0].set(0.9)  # a few colour regions for SLIC
    model = _smooth_model()
    model16 = Partial(
        lambda x: model(jax.image.resize(x, (x.shape[0], H, W, C), "linear"))
    )
    first = lime.explain(model16, x, KEY, samples=64, n_segments=8)
    again = lime.explain(model16, x, KEY, samples=64, n_segments=8)
    np.testing.assert_array_equal(first.maps, again.maps)
    seg = first.extras["segments"]
    assert seg.shape == (2, 16, 16) and int(seg.min()) == 0
    assert np.all(first.extras["num_segments"] == seg.reshape(2, -1).max(1) + 1)
    assert first.extras["coefficients"].shape[1] % 16 == 0


# ------------------------------------------------------------ guided backprop


@pytest.mark.parametrize("apply", [_mlp_apply_maximum, _mlp_apply_nn_relu])
def test_guided_backprop_equals_gradient_without_negative_preactivations(apply):
    model = Partial(apply, _mlp_params(positive=True))
    x = _images()
    target = jnp.array([0, 1, 2])
    guided = guided_backprop.explain(model, x, target=target)
    plain = gradient.explain(model, x, target=target)
    np.testing.assert_allclose(
        guided.extras["gradients"], plain.extras["gradients"], rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("apply", [_mlp_apply_maximum, _mlp_apply_nn_relu])
def test_guided_backprop_matches_closed_form_on_generic_relu_net(apply):
    params = _mlp_params()
    model = Partial(apply, params)
    x = _images(13)
    target = jnp.array([0, 1, 2])
    guided = guided_backprop.explain(model, x, target=target).extras["gradients"]
    w1, b1, w2 = params
    pre = x.reshape(B, -1) @ w1 + b1
    g = w2[:, target].T
    expected = ((g * (pre > 0) * (g > 0)) @ w1.T).reshape(x.shape)
    np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-6)
    plain = gradient.explain(model, x, target=target).extras["gradients"]
    assert not np.allclose(guided, plain, atol=1e-3)


def test_guided_backprop_has_no_negative_values_where_the_gradient_does():
    # ReLU directly on the input: guided gradients never go negative.
    params = _mlp_params(seed=14)

    def apply(p, x):
        return _mlp_apply_nn_relu(p, jax.nn.relu(x - 0.5))

    model = Partial(apply, params)
    x = _images(15)
    guided = guided_backprop.explain(model, x).extras["gradients"]
    plain = gradient.explain(model, x).extras["gradients"]
    assert float(plain.min()) < -1e-3
    assert float(guided.min()) >= 0.0
    assert float(guided.max()) > 1e-3


def _mlp_apply_zero_first(params, x):
    w1, b1, w2 = params
    pre = x.reshape(x.shape[0], -1) @ w1 + b1
    return jnp.maximum(jnp.zeros_like(pre), pre) @ w2  # zero operand first


def test_guided_backprop_finds_relu_with_zero_array_first():
    params = _mlp_params()
    x = _images(13)
    target = jnp.array([0, 1, 2])
    ref = guided_backprop.explain(Partial(_mlp_apply_maximum, params), x, target=target)
    out = guided_backprop.explain(
        Partial(_mlp_apply_zero_first, params), x, target=target
    )
    np.testing.assert_allclose(
        out.extras["gradients"], ref.extras["gradients"], atol=1e-6
    )


def test_guided_backprop_warns_about_relus_inside_control_flow():
    params = _mlp_params()

    def apply(p, x):
        w1, b1, w2 = p
        h = x.reshape(x.shape[0], -1) @ w1 + b1
        h, _ = jax.lax.scan(lambda c, _: (jax.nn.relu(c), None), h, None, length=2)
        return h @ w2

    with pytest.warns(UserWarning, match="'scan'"):
        guided_backprop.explain(Partial(apply, params), _images())


def test_guided_backprop_forward_is_unchanged_and_params_are_traced():
    params = _mlp_params()
    model = Partial(_mlp_apply_maximum, params)
    x = _images()
    fn = guided_backprop.guided_fn(model, x)
    np.testing.assert_allclose(fn(x), model(x), rtol=1e-6)
    # New parameter values reuse the compiled program (params are arguments).
    guided_backprop.explain(model, x)
    size = guided_backprop._worker._cache_size()
    scaled = Partial(_mlp_apply_maximum, tuple(p * 2 for p in params))
    guided_backprop.explain(scaled, x)
    assert guided_backprop._worker._cache_size() == size


# --------------------------------------------------------------- CAM, Grad-CAM


def test_cam_equals_closed_form_and_grad_cam_agrees():
    body, head, weights = _gap_model()
    x = _images(16)
    target = jnp.array([4, 0, 2])
    out = cam.explain((body, head), x, target=target)
    acts = body(x)
    closed = jax.nn.relu(jnp.einsum("bhwk,kb->bhw", acts, weights[:, target]))
    np.testing.assert_allclose(out.extras["low_res"], closed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out.maps, jax.image.resize(closed, (B, H, W), "bilinear"), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        out.extras["class_weights"], weights[:, target].T, rtol=1e-5
    )
    given = cam.explain((body, head), x, target=target, weights=weights)
    np.testing.assert_allclose(given.maps, out.maps, rtol=1e-5, atol=1e-6)
    # For a GAP + linear head Grad-CAM is CAM divided by the number of positions.
    gc = grad_cam.explain((body, head), x, target=target)
    h, w = acts.shape[1:3]
    np.testing.assert_allclose(
        gc.extras["low_res"] * h * w, closed, rtol=1e-5, atol=1e-5
    )
    for expl in (out, gc):
        assert expl.maps.shape == (B, H, W) and expl.model_calls == 1
        assert float(expl.maps.min()) >= 0.0 and float(expl.maps.max()) > 0.0


def test_grad_cam_on_non_gap_head_is_non_negative_and_cam_rejects_it():
    body, _, _ = _gap_model()
    dense = jnp.abs(_normal(17, (4 * 4 * 6, K)))
    dense = dense.at[:, 0].multiply(-1.0)  # class 0: evidence against everywhere
    head = Partial(lambda a: a.reshape(a.shape[0], -1) @ dense)
    x = _images(18)
    against, pro = jnp.zeros(B, jnp.int32), jnp.ones(B, jnp.int32)
    signed = grad_cam.explain((body, head), x, target=against, relu=False)
    assert signed.extras["low_res"].shape == (B, 4, 4)
    assert float(signed.extras["low_res"].max()) < 0.0
    np.testing.assert_array_equal(
        grad_cam.explain((body, head), x, target=against).maps, 0.0
    )
    out = grad_cam.explain((body, head), x, target=pro)
    assert out.maps.shape == (B, H, W)
    assert float(out.maps.min()) >= 0.0 and float(out.maps.max()) > 0.0
    with pytest.raises(ValueError, match="global average pooling"):
        cam.explain((body, head), x)


# ------------------------------------------------------------------------ LRP


def _sequential_net(bias: bool, seed=19):
    ks = [seed * 10 + i for i in range(6)]
    scale = 0.1 if bias else 0.0  # zero biases keep one pytree structure (one compile)

    def b(k, n):
        return _normal(k, (n,), scale)

    return (
        sequential.Conv(_normal(ks[0], (3, 3, C, 6), 0.5), b(ks[1], 6)),
        sequential.ReLU(),
        sequential.MaxPool(),
        sequential.Conv(
            _normal(ks[2], (3, 3, 6, 8), 0.3), b(ks[3], 8), padding="VALID"
        ),
        sequential.ReLU(),
        sequential.AvgPool(),
        sequential.Flatten(),
        sequential.Dense(_normal(ks[4], (8, K)), b(ks[5], K)),
    )


def test_lrp_epsilon_conserves_relevance_without_bias():
    layers = _sequential_net(bias=False)
    x = _images(20)
    out = lrp_epsilon.explain(layers, x, epsilon=1e-6)
    logit = out.extras["output_relevance"]
    np.testing.assert_allclose(out.maps.sum(axis=(1, 2)), logit, rtol=1e-3)
    assert np.all(np.abs(out.extras["conservation_gap"]) < 1e-3 * np.abs(logit))
    # A large epsilon absorbs relevance (|sum| shrinks).
    absorbed = lrp_epsilon.explain(layers, x, epsilon=10.0)
    assert np.all(np.abs(absorbed.maps.sum((1, 2))) < np.abs(logit))


def test_lrp_zero_equals_gradient_x_input_on_relu_maxpool_net():
    layers = _sequential_net(bias=True)
    x = _images(21)
    lrp0 = lrp_epsilon.explain(layers, x, epsilon=0.0)
    gxi = gradient_x_input.explain(sequential.model_fn(layers), x)
    np.testing.assert_allclose(
        lrp0.extras["relevance"], gxi.extras["attributions"], rtol=1e-4, atol=1e-5
    )


def test_sequential_forward_matches_hand_written_net():
    layers = _sequential_net(bias=True)
    x = _images(22)
    conv1, _, _, conv2, _, _, _, dense = layers
    h = jax.nn.relu(_conv(x, conv1.kernel) + conv1.bias)
    h = h.reshape(B, H // 2, 2, W // 2, 2, 6).max(axis=(2, 4))
    h = jax.lax.conv_general_dilated(
        h, conv2.kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(h + conv2.bias).reshape(B, 1, 2, 1, 2, 8).mean(axis=(2, 4))
    expected = h.reshape(B, -1) @ dense.kernel + dense.bias
    np.testing.assert_allclose(
        sequential.model_fn(layers)(x), expected, rtol=1e-5, atol=1e-5
    )


def test_sequential_max_pool_paths_agree():
    x = _images(23, (2, 6, 6, 2))
    tiled = sequential.apply_layer(sequential.MaxPool(), x)  # reshape path
    general = sequential.apply_layer(sequential.MaxPool(padding=((0, 0), (0, 0))), x)
    np.testing.assert_array_equal(tiled, general)  # reduce_window path
    overlap = sequential.apply_layer(sequential.MaxPool((3, 3), (1, 1), "VALID"), x)
    shifts = [x[:, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(overlap, np.max(np.stack(shifts), axis=0))


# --------------------------------------------------------------- bad input


def test_unknown_target_class_is_named():
    model, _ = _linear_model()
    with pytest.raises(
        ValueError, match=r"class\(es\) \[5, 9\] out of range.*5 classes"
    ):
        gradient.explain(model, _images(), target=jnp.array([9, 0, 5]))
    with pytest.raises(ValueError, match="out of range"):
        lime.explain(
            model,
            _images(),
            KEY,
            target=[0, -1, 1],
            samples=4,
            segments=_block_segments(),
        )
    body, head, _ = _gap_model()
    with pytest.raises(ValueError, match=r"\[7\] out of range"):
        grad_cam.explain((body, head), _images(), target=[7, 0, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: gradient.explain(m, x[0]), "rank 4"),
        (
            lambda m, x: gradient.explain(m, x, target=jnp.array([0, 1])),
            r"shape \(B,\)",
        ),
        (lambda m, x: gradient.explain(m, x, target=jnp.array([0.0, 1, 2])), "integer"),
        (
            lambda m, x: integrated_gradients.explain(m, x, steps=0),
            "steps must be >= 1",
        ),
        (lambda m, x: integrated_gradients.explain(m, x, steps=1), "trapezoid"),
        (lambda m, x: integrated_gradients.explain(m, x, baseline="grey"), "baseline"),
        (
            lambda m, x: integrated_gradients.explain(m, x, baseline=x[:, :2]),
            "broadcast",
        ),
        (lambda m, x: smoothgrad.explain(m, x, KEY, samples=0), "samples must be >= 1"),
        (lambda m, x: smoothgrad.explain(m, x, None), "key"),
        (lambda m, x: smoothgrad.explain(m, x, jax.random.split(KEY, 2)), "batch of 3"),
        (lambda m, x: lime.explain(m, x, KEY, samples=0), "samples must be >= 1"),
        (lambda m, x: lime.explain(m, x, KEY, segments=np.zeros((3, 8))), "segments"),
        (lambda m, x: baselines.explain("shap", m, x), "unknown explainer 'shap'"),
        (lambda m, x: grad_cam.explain(m, x), r"pair \(body_fn, head_fn\)"),
        (lambda m, x: grad_cam.explain((m, m), x), r"\(B, h, w, k\)"),
        (lambda m, x: lrp_epsilon.explain([m], x), "unsupported layer"),
        (
            lambda m, x: lrp_epsilon.explain(_sequential_net(False), x, epsilon=-1.0),
            "epsilon",
        ),
        (
            lambda m, x: gradient.explain(Partial(lambda x: x.sum((1, 2, 3))), x),
            r"\(B, num_classes\)",
        ),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    model, _ = _linear_model()
    with pytest.raises((ValueError, TypeError), match=message):
        call(model, _images())


def test_registry_lists_every_method():
    assert set(baselines.EXPLAINERS) == {
        "gradient",
        "gradient_x_input",
        "integrated_gradients",
        "smoothgrad",
        "lime",
        "grad_cam",
        "cam",
        "guided_backprop",
        "lrp_epsilon",
    }


def test_explanation_is_a_pytree_with_static_budget():
    out = gradient.explain(_linear_model()[0], _images())
    leaves, treedef = jax.tree_util.tree_flatten(out)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.model_calls == 1 and rebuilt.method == "gradient"
    assert all(leaf.shape[0] == B for leaf in leaves)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: gradient.explain(m, x),
        lambda m, x: smoothgrad.explain(m, x, KEY, samples=2),
        lambda m, x: integrated_gradients.explain(m, x, steps=4),
        lambda m, x: lime.explain(m, x, KEY, samples=4),
    ],
    ids=["gradient", "smoothgrad", "integrated_gradients", "lime"],
)
def test_bad_nan_image_fails_in_check_images_before_the_model(call, bad, monkeypatch):
    """A NaN/inf pixel is refused by the shared check before the model runs
    (LIME: before any SLIC segmentation)."""
    _, weights = _linear_model()
    calls = []

    def model(x):
        calls.append(x.shape)
        return _linear_apply((weights, jnp.zeros(K)), x)

    def no_segmentation(*args, **kwargs):
        raise AssertionError("superpixels ran on a bad image")

    monkeypatch.setattr(lime, "superpixels", no_segmentation)
    images = _images().at[1, 2, 3, 0].set(bad)
    with pytest.raises(ValueError, match=r"images contain 1 NaN/inf value\(s\)"):
        call(model, images)
    assert calls == []
    # Without the bad pixel the checks pass and the model runs (LIME reaches
    # the segmentation, which the stub refuses).
    try:
        call(model, _images())
    except AssertionError as err:
        assert "superpixels ran" in str(err)
    assert calls
