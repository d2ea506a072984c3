"""Shared fixtures: tiny feature functions with known answers."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import jax_infodiscard as jid

H, W, C, M = 6, 5, 2, 7

_XLA_ENV = "JAX_INFODISCARD_TEST_XLA_CACHE"
_OPT_ENV = "JAX_INFODISCARD_TEST_XLA_OPT_LEVEL"
_OPT_FLAG = "--xla_backend_optimization_level"


def _compile_for_tests() -> None:
    """Ask XLA's CPU backend for LLVM optimisation level 1 (of 0-3; XLA's is 2).

    The tests' programs are small and run a few times, so compiling them is
    most of the suite's time; level 1 compiles them in much less CPU time,
    runs them about as fast and gives the same maps (docs/benchmarks.md,
    "Test time"; level 0 does not: the demo test's logits Jacobian came out
    NaN). It goes into ``XLA_FLAGS`` before JAX starts its backend, so the
    xdist workers and the tests' subprocesses inherit it. A flag already in
    ``XLA_FLAGS`` wins; ``JAX_INFODISCARD_TEST_XLA_OPT_LEVEL=default`` keeps
    XLA's own.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    level = os.environ.get(_OPT_ENV, "1")
    if _OPT_FLAG in flags or level == "default":
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_OPT_FLAG}={level}".strip()


_compile_for_tests()


def pytest_configure(config):
    """One persistent compilation cache for the run, shared by the xdist workers.

    The command line turns JAX's persistent compilation cache on
    (``enable_compilation_cache``), and that is process-wide: without this,
    the first CLI test of a worker would point it at its own temporary folder
    for every later test. Setting it once here makes the CLI keep it. (It does
    not make the suite faster: on ``tests/core/test_cid.py`` it measured 448 vs
    458 CPU seconds, as the tests rarely compile the same program twice.) The
    folder is fresh per run (the controller makes it, the workers inherit it
    through the environment) and removed at the end; a user's own
    ``JAX_COMPILATION_CACHE_DIR`` is kept.
    """
    from jax_infodiscard.experiments.cache import enable_compilation_cache

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get(
        "JID_TEST_NO_XLA_CACHE"
    ):
        return
    folder = os.environ.get(_XLA_ENV)
    if folder is None and not hasattr(config, "workerinput"):
        folder = tempfile.mkdtemp(prefix="jax_infodiscard-tests-")
        os.environ[_XLA_ENV] = folder
        config._jid_xla_cache = folder
    if folder:
        enable_compilation_cache(folder)


def pytest_unconfigure(config):
    folder = getattr(config, "_jid_xla_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(_XLA_ENV, None)


def _linear_features(a_matrix, x):
    return {"lin": x.reshape(x.shape[0], -1) @ a_matrix.T}


@pytest.fixture(scope="session")
def linear_model():
    """``h(x) = A x`` with columns of very unequal norms, and its exact column norms.

    Returns ``(feature_fn, a)`` with ``a`` of shape ``(H, W)`` (summed over C).
    """
    rng = np.random.default_rng(0)
    a_matrix = rng.normal(size=(M, H * W * C)) * np.exp(rng.uniform(-2, 2, H * W * C))
    a_matrix = jnp.asarray(a_matrix, jnp.float32)
    a = (np.asarray(a_matrix) ** 2).reshape(M, H, W, C).sum(axis=(0, 3))
    return Partial(_linear_features, a_matrix), a


@pytest.fixture(scope="session")
def linear_images():
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.uniform(size=(2, H, W, C)), jnp.float32)


def oracle_sigma(a: np.ndarray, beta: float) -> np.ndarray:
    """docs/design.md, "Oracles": ``sigma_i^2 = beta * delta_f^2 / (n * a_i)``."""
    return np.sqrt(beta * a.sum() / (a.size * a))


def conv(h, w, b, stride):
    out = jax.lax.conv_general_dilated(
        h, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out + b


def init_convnet(key, chans=(3, 8, 8, 16)):
    params = []
    for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        w = jax.random.normal(k1, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
        params.append((w, 0.1 * jax.random.normal(k2, (cout,))))
    return params


def convnet_features(params, x, act=jax.nn.relu):
    """A small ReLU convnet; layer ``i`` is ``conv{i+1}`` after the activation."""
    out, h = {}, x - 0.5
    for i, (w, b) in enumerate(params):
        h = act(conv(h, w, b, 1 if i == 0 else 2))
        out[f"conv{i + 1}"] = h
    return out


@pytest.fixture(scope="session")
def convnet():
    return init_convnet(jax.random.key(0))


SHORT = jid.CIDConfig(layer_strategy="vmap", steps=8, probes=64, budget_samples=8)
"""A short solve for tests of plumbing and invariances (which hold at any step
count); with :func:`cnn` and :func:`small_images` its programs compile once."""


def masked_convnet_features(net, x):
    """:func:`convnet_features` of ``x * mask``, with ``net = (params, mask)``.

    ``mask`` is ``(H, W, 1)``, ones for the plain network; a zero pixel is one
    that no layer sees.
    """
    params, mask = net
    return convnet_features(params, x * mask)


def convnet_fn(params, mask=None, size=8):
    """The solver tests' feature function: ``params`` on ``size``-pixel images.

    Compilation is most of the tests' time: the solver's programs are
    compiled per function, configuration and shape, while a ``Partial``'s
    arrays (the parameters, the mask) are arguments. The nets built here thus
    share their compiled programs with :func:`cnn`'s, whatever their weights
    or ignored pixels.
    """
    if mask is None:
        mask = jnp.ones((size, size, 1), jnp.float32)
    return Partial(masked_convnet_features, (params, jnp.asarray(mask, jnp.float32)))


@pytest.fixture(scope="session")
def cnn(convnet):
    """The convnet's feature function (layers conv1-conv3) for :func:`small_images`."""
    return convnet_fn(convnet)


@pytest.fixture(scope="session")
def small_images():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    return jnp.asarray(x)


def quadratic_oracle_sigma(x: np.ndarray, beta: float, center: str = "input"):
    """docs/design.md, "Oracles": the exact optimum of ``h(x)_i = x_i^2`` (one channel).

    ``E||f' - f||^2 = sum_i (4 x_i^2 s_i + c s_i^2)`` with ``s_i = sigma_i^2``,
    ``c = 3`` (``f = h(x)``) or ``2`` (``f = E h(x')``); maximising
    ``sum_i log sigma_i`` under the budget ``beta sum_i 4 x_i^2`` gives
    ``8 x_i^2 s_i + 4 c s_i^2 = 1 / mu``, with ``mu`` found by bisection.
    """
    x2 = np.asarray(x, np.float64) ** 2
    c = 3.0 if center == "input" else 2.0
    budget = beta * np.sum(4 * x2)

    def s_of(mu):
        return (-8 * x2 + np.sqrt(64 * x2**2 + 16 * c / mu)) / (8 * c)

    lo, hi = 1e-12, 1e12
    for _ in range(200):
        mu = np.sqrt(lo * hi)
        s = s_of(mu)
        lo, hi = (mu, hi) if np.sum(4 * x2 * s + c * s**2) > budget else (lo, mu)
    return np.sqrt(s_of(np.sqrt(lo * hi)))


def true_budget(feature_fn, layer, x, sigma, key, draws=512):
    """``E||h(x + sigma delta) - h(x)||^2`` by plain Monte Carlo (held-out draws).

    ``x`` is one image ``(H, W, C)``, ``sigma`` ``(H, W)``; returns a float.
    """

    @jax.jit
    def dist(k):
        d = jax.random.normal(k, (64, *x.shape))
        xp = x + jnp.asarray(sigma)[..., None] * d
        f = feature_fn(x[None])[layer]
        fp = feature_fn(xp)[layer]
        return jnp.sum(jnp.square(fp - f).reshape(64, -1), axis=1)

    out = [dist(jax.random.fold_in(key, i)) for i in range(draws // 64)]
    return float(np.mean(np.concatenate([np.asarray(o) for o in out])))


@pytest.fixture(scope="session")
def trained_convnet():
    """The zoo convnet (width 8) trained 4 epochs on 3,000 embedded images.

    Returns ``(feature_fn, test_images)`` with layers conv1, conv3, conv5 and
    logits; its test accuracy is asserted well above chance (10%), so that
    the regime is that of a trained network (far from linear, see docs/design.md,
    "Regime").
    """
    from jax_infodiscard.data import load_synthetic
    from jax_infodiscard.models import feature_fn
    from jax_infodiscard.training.train import TrainConfig, train

    tr = load_synthetic("train", 3000)
    te = load_synthetic("test", 256)
    model, history = train(
        "convnet",
        (tr.images, tr.labels),
        (te.images, te.labels),
        TrainConfig(epochs=4, seed=0, progress=False),
        num_classes=10,
        image_size=32,
        model_kwargs=dict(width=8),
    )
    assert history["test_accuracy"][-1] > 0.3, history
    return feature_fn(model), jnp.asarray(te.images)


def assert_rescaling_invariances(table: dict, output_tol: float = 1e-4) -> None:
    """The layer-fairness table of a ``w/4, 4w`` rescaling (paper Sec. 3.4).

    The network's function and CID do not move (RU too, where measured); the
    gradient w.r.t. the rescaled feature scales by 4, the feature's input
    gradient by 1/4, and the next layer's gradient does not move.
    """
    assert table["factor"] == 4.0
    first, second = table["layers"]
    assert table["max_output_change"] < output_tol
    q = table["quantities"]
    for name in (first, second):
        assert np.isfinite(q[name]["concentration"]["original"]), name
        np.testing.assert_allclose(q[name]["cid_mean"]["ratio"], 1.0, atol=0.01)
        if "ru_mean" in q[name]:
            np.testing.assert_allclose(q[name]["ru_mean"]["ratio"], 1.0, atol=0.02)
    np.testing.assert_allclose(
        q[first]["gradient_wrt_feature"]["ratio"], 4.0, rtol=1e-3
    )
    np.testing.assert_allclose(
        q[first]["feature_input_gradient"]["ratio"], 0.25, rtol=1e-3
    )
    np.testing.assert_allclose(
        q[second]["gradient_wrt_feature"]["ratio"], 1.0, rtol=1e-3
    )
