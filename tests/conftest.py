"""Shared fixtures: tiny feature functions with known answers."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

H, W, C, M = 6, 5, 2, 7


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
    """DESIGN.md sec. 2: ``sigma_i^2 = beta * delta_f^2 / (n * a_i)``."""
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


@pytest.fixture(scope="session")
def small_images():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    return jnp.asarray(x)
