"""The measuring room: one pipeline, one RU config, one key scheme."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_infodiscard as jid
from jax_infodiscard.experiments import measure as room

CFG = jid.CIDConfig(probes=8, steps=2, samples=2, budget_samples=4, step_chunk=1)
W = jnp.linspace(0.5, 2.0, 8 * 8 * 3).reshape(8, 8, 3)


def _features(x):
    return {"lin": x * W, "sq": jnp.square(x) + x}


def _images(n=3):
    return jax.random.uniform(jax.random.key(1), (n, 8, 8, 3), minval=0.2, maxval=0.8)


def test_ru_config_from_cid_copies_every_field_then_the_changes():
    cfg = jid.CIDConfig(beta=1e-3, steps=7, probes=16, layer_strategy="vmap")
    ru = jid.RUConfig.from_cid(cfg, steps=3)
    assert isinstance(ru, jid.RUConfig)
    assert (ru.beta, ru.probes, ru.layer_strategy, ru.steps) == (1e-3, 16, "vmap", 3)
    with pytest.raises(TypeError, match="cfg must be a CIDConfig"):
        jid.RUConfig.from_cid({"beta": 1e-3})


def test_decoder_keys_are_fold_in_100_plus_group():
    key = jax.random.key(5)
    for group in (0, 2):
        want = jax.random.key_data(jax.random.fold_in(key, 100 + group))
        got = jax.random.key_data(room.decoder_key(key, group))
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_measure_equals_cid_and_reports_each_layer_once_per_group():
    images = _images()
    key = jax.random.key(0)
    seen = []

    class Record(room.Listener):
        def phase(self, name, **facts):
            seen.append(("phase", name, tuple(facts["layers"])))

        def group(self, metric, layers, outputs, seconds):
            assert outputs["pixel"].shape[:2] == (images.shape[0], len(layers))
            seen.extend(("group", metric, name) for name in layers)

    cfg = CFG.replace(layer_strategy="per_layer")
    m = room.measure(
        _features, images, key, layers=("lin", "sq"), cid_config=cfg, listener=Record()
    )
    ref = jid.cid(_features, images, key, layers=("lin", "sq"), config=cfg)
    np.testing.assert_array_equal(m.cid.pixel, np.asarray(ref.pixel))
    assert seen == [
        ("phase", "cid", ("lin", "sq")),
        ("group", "cid", "lin"),
        ("group", "cid", "sq"),
    ]
    assert m.concentration is None and m.ru is None and set(m.seconds) == {"cid_s"}


def test_measure_ru_with_given_decoders_and_concentration():
    images = _images(2)
    key = jax.random.key(0)

    def decode(f):  # an exact inverse of the linear feature
        return f / W

    decoders = room.Decoders({"lin": decode})
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:6, 2:6] = True
    masks[1] = True  # no background: no concentration for this image
    m = room.measure(
        _features,
        images,
        key,
        layers=("lin", "sq"),
        cid_config=CFG,
        masks=masks,
        decoders=decoders,
        ru_layers=("lin",),
    )
    ref = jid.ru(
        _features,
        {"lin": decode},
        images,
        key,
        config=jid.RUConfig.from_cid(CFG),
    )
    np.testing.assert_allclose(m.ru.pixel, np.asarray(ref.pixel), rtol=1e-6)
    assert m.ru_layers == ("lin",)
    assert m.concentration.shape == (2, 2) and m.ru_concentration.shape == (1, 2)
    assert np.isfinite(m.concentration[:, 0]).all()
    assert np.isnan(m.concentration[:, 1]).all()
    want = jid.concentration(m.cid.pixel[:, :1], masks[:1])
    np.testing.assert_allclose(m.concentration[:, :1], np.asarray(want), rtol=1e-6)


def test_unlearned_decoders_are_skipped_unless_asked():
    class Metrics:
        def __init__(self, nothing):
            self.learned_nothing = nothing

    decoders = room.Decoders(
        {"a": None, "b": None}, {"a": Metrics(True), "b": Metrics(False)}
    )
    assert decoders.learned(("a", "b")) == ("b",)
