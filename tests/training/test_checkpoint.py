"""Tests of the orbax checkpoints of NNX modules."""

from __future__ import annotations

import gc
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_infodiscard.models import create_model, model_fn, model_metadata
from jax_infodiscard.training.checkpoint import (
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    all_steps,
    latest_step,
    read_metadata,
    restore_checkpoint,
    restore_extra,
    restore_newest_intact,
    save_checkpoint,
    set_aside_steps,
    verify_checkpoint,
)


def tiny_resnet(seed: int = 0, width: int = 4):
    return create_model(
        "resnet8", num_classes=3, image_size=8, width=width, rngs=nnx.Rngs(seed)
    )


def images(n: int = 4) -> jax.Array:
    return jax.random.uniform(jax.random.key(7), (n, 8, 8, 3))


_apply = jax.jit(lambda fn, x: fn(x))


def output(model, x):
    """``model(x)`` through one compiled program per architecture."""
    return _apply(model_fn(model), x)


@pytest.fixture
def trained():
    """A tiny ResNet whose BatchNorm statistics are no longer the defaults."""
    model = tiny_resnet()
    stats = nnx.state(model, nnx.BatchStat)
    leaves, treedef = jax.tree.flatten(stats)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    new = [
        jax.random.uniform(k, x.shape, minval=0.1, maxval=1.0)
        for k, x in zip(keys, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return model


def test_round_trip_into_template_gives_identical_outputs(tmp_path, trained):
    x = images()
    meta = {**model_metadata(trained), "accuracy": np.float32(0.5)}
    path = save_checkpoint(tmp_path, trained, metadata=meta, step=3)
    assert path == tmp_path.resolve() / "3"
    template = tiny_resnet(seed=1)
    before = output(template, x)
    restored, got = restore_checkpoint(tmp_path, template)
    assert got["accuracy"] == 0.5 and got["model"] == "resnet8"
    np.testing.assert_array_equal(output(restored, x), output(trained, x))
    assert not np.allclose(before, output(trained, x))
    np.testing.assert_array_equal(output(template, x), before)  # template untouched
    bn_mean = restored.conv1.bn.mean[...]
    np.testing.assert_array_equal(bn_mean, trained.conv1.bn.mean[...])
    assert float(jnp.abs(bn_mean).sum()) > 0


def test_restore_without_template_uses_registry_or_builder(tmp_path, trained):
    x = images()
    save_checkpoint(tmp_path, trained, metadata=model_metadata(trained), step=1)
    rebuilt, _ = restore_checkpoint(tmp_path)
    np.testing.assert_array_equal(output(rebuilt, x), output(trained, x))
    calls = []

    def builder(meta):
        calls.append(meta["model"])
        return tiny_resnet(seed=5)

    built, _ = restore_checkpoint(tmp_path, builder=builder)
    np.testing.assert_array_equal(output(built, x), output(trained, x))
    assert calls == ["resnet8"]


def test_abstract_template_and_rng_state(tmp_path):
    class WithRngs(nnx.Module):
        def __init__(self, *, rngs):
            self.linear = nnx.Linear(2, 2, rngs=rngs)
            self.rngs = rngs

    model = WithRngs(rngs=nnx.Rngs(3))
    model.rngs()  # advance the counter
    save_checkpoint(tmp_path, model, metadata={})
    abstract = nnx.eval_shape(lambda: WithRngs(rngs=nnx.Rngs(0)))
    restored, _ = restore_checkpoint(tmp_path, abstract)
    np.testing.assert_array_equal(restored.linear.kernel[...], model.linear.kernel[...])
    assert int(restored.rngs.default.count[...]) == int(model.rngs.default.count[...])
    np.testing.assert_array_equal(
        jax.random.key_data(restored.rngs.default.key[...]),
        jax.random.key_data(model.rngs.default.key[...]),
    )


def test_steps_latest_and_retention(tmp_path, trained):
    assert latest_step(tmp_path / "nothing") is None
    assert all_steps(tmp_path) == ()
    for step in (2, 10, 5):
        save_checkpoint(tmp_path, trained, metadata={"step": step}, step=step)
    assert all_steps(tmp_path) == (2, 5, 10)
    assert latest_step(tmp_path) == 10
    assert restore_checkpoint(tmp_path, trained)[1]["step"] == 10
    assert read_metadata(tmp_path, step=5) == {"step": 5}
    # saving an existing step replaces it
    save_checkpoint(tmp_path, trained, metadata={"step": "again"}, step=5)
    assert read_metadata(tmp_path, step=5) == {"step": "again"}
    save_checkpoint(tmp_path, trained, metadata={}, step=11, max_to_keep=2)
    assert all_steps(tmp_path) == (10, 11)


def test_extra_state_round_trip(tmp_path, trained):
    params = nnx.state(trained, nnx.Param)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = jax.jit(tx.update)(grads, opt_state, params)
    save_checkpoint(tmp_path, trained, metadata={}, step=1, extra=opt_state)
    save_checkpoint(tmp_path, trained, metadata={}, step=2)
    restored = restore_extra(tmp_path, tx.init(params), step=1)
    assert jax.tree.structure(restored) == jax.tree.structure(opt_state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no extra state"):
        restore_extra(tmp_path, tx.init(params), step=2)


def test_missing_checkpoints_raise_file_not_found(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_checkpoint(tmp_path / "missing", trained)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        restore_checkpoint(tmp_path, trained)
    save_checkpoint(tmp_path, trained, metadata={}, step=1)
    with pytest.raises(FileNotFoundError, match="available steps: \\(1,\\)"):
        restore_checkpoint(tmp_path, trained, step=4)


def test_state_mismatch_raises_value_error(tmp_path, trained):
    save_checkpoint(tmp_path, trained, metadata={}, step=1)
    with pytest.raises(ValueError, match=r"does not match the template.*shape"):
        restore_checkpoint(tmp_path, nnx.eval_shape(lambda: tiny_resnet(width=8)))
    other = nnx.eval_shape(
        lambda: create_model("convnet", num_classes=3, image_size=8, rngs=nnx.Rngs(0))
    )
    with pytest.raises(ValueError, match="missing in checkpoint"):
        restore_checkpoint(tmp_path, other)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_raises_value_error(tmp_path, trained):
    save_checkpoint(tmp_path, trained, metadata={"a": 1}, step=1)
    step_dir = tmp_path / "1"
    # corrupt the array data, keep the metadata readable
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    data_files = [p for p in data_files if p.parent.name == "d"]
    assert data_files
    for p in data_files:
        p.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="corrupt"):
        restore_checkpoint(tmp_path, trained)
    # corrupt the JSON metadata
    save_checkpoint(tmp_path, trained, metadata={"a": 1}, step=2)
    (tmp_path / "2" / "metadata" / "metadata").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        restore_checkpoint(tmp_path, trained)


def test_bad_arguments(tmp_path, trained):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path, trained, metadata={"f": object()})
    with pytest.raises(ValueError, match="non-negative"):
        save_checkpoint(tmp_path, trained, metadata={}, step=-1)
    with pytest.raises(ValueError, match=r"nnx\.Module"):
        save_checkpoint(tmp_path, {"a": 1}, metadata={})
    save_checkpoint(tmp_path, trained, metadata={"no": "model"}, step=0)
    with pytest.raises(ValueError, match="no 'model' name"):
        restore_checkpoint(tmp_path)
    assert json.loads(json.dumps(read_metadata(tmp_path))) == {"no": "model"}


# ------------------------------------------------------------ corrupt steps


def _data_file(step_dir):
    """The largest file of the step's state (array data)."""
    return max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncate", r"has \d+ of its \d+ bytes"),
        ("delete", "is missing"),
        ("flip", "does not match its recorded CRC-32"),
    ],
)
def test_digests_catch_truncated_deleted_and_altered_files(
    tmp_path, trained, capfd, how, message
):
    save_checkpoint(tmp_path, trained, metadata={"a": 1}, step=1)
    assert verify_checkpoint(tmp_path, 1) is True
    target = _data_file(tmp_path / "1")
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[:-7])
    elif how == "delete":
        target.unlink()
    else:  # same size, one byte changed
        target.write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    rel = target.relative_to(tmp_path / "1").as_posix()
    capfd.readouterr()
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        restore_checkpoint(tmp_path, trained)
    assert str(info.value).count("\n") == 0 and rel in str(info.value)
    assert info.value.step == 1
    assert capfd.readouterr().err == ""  # orbax never touched the bad file
    # The metadata alone is still readable: only its own files are checked.
    assert read_metadata(tmp_path) == {"a": 1}
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(tmp_path, 1)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_steps_without_digests_are_read_and_their_errors_are_one_line(
    tmp_path, trained
):
    save_checkpoint(tmp_path, trained, metadata={}, step=1)
    (tmp_path / "1" / "_FILE_DIGESTS.json").unlink()  # as written by older code
    assert verify_checkpoint(tmp_path, 1) is False
    restored, _ = restore_checkpoint(tmp_path, trained)  # still readable
    x = images()
    np.testing.assert_array_equal(output(restored, x), output(trained, x))
    for p in (tmp_path / "1" / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError) as info:
        restore_checkpoint(tmp_path, trained)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    # orbax leaves TensorStore reads pending after such a failure; their
    # callbacks hit a closed event loop ("Event loop is closed"). Let them
    # finish inside this test, whose filter hides them.
    time.sleep(0.5)
    gc.collect()


def test_restore_newest_intact_falls_back_and_warns_once(tmp_path, capfd):
    models = {step: tiny_resnet(seed=step) for step in (1, 2, 3)}
    for step, model in models.items():
        save_checkpoint(tmp_path, model, metadata={"step": step}, step=step)
    template = nnx.eval_shape(lambda: tiny_resnet())
    found = restore_newest_intact(tmp_path, template)
    assert found.step == 3 and found.skipped == ()
    _data_file(tmp_path / "3").unlink()
    _data_file(tmp_path / "2").write_bytes(b"")
    capfd.readouterr()
    with pytest.warns(CheckpointFallbackWarning) as record:
        found = restore_newest_intact(tmp_path, template)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"checkpoint steps 3, 2 in {tmp_path.resolve()} are")
    assert message.endswith("; using step 1") and "\n" not in message
    assert capfd.readouterr().err == ""
    assert found.step == 1 and [s for s, _ in found.skipped] == [3, 2]
    x = images()
    np.testing.assert_array_equal(output(found.model, x), output(models[1], x))

    # A check that refuses the metadata is an error, not a fall-back.
    def refuse(meta):
        raise ValueError(f"another run ({meta['step']})")

    with pytest.raises(ValueError, match=r"another run \(1\)"):
        restore_newest_intact(tmp_path, template, check=refuse, warn=False)
    _data_file(tmp_path / "1").unlink()
    with pytest.raises(CorruptCheckpointError, match="no step reads back intact"):
        restore_newest_intact(tmp_path, template)


def test_set_aside_steps_hides_them_from_orbax(tmp_path, trained):
    for step in (1, 2):
        save_checkpoint(tmp_path, trained, metadata={}, step=step)
    assert set_aside_steps(tmp_path, [2]) == ["2.corrupt-0"]
    assert all_steps(tmp_path) == (1,)
    save_checkpoint(tmp_path, trained, metadata={}, step=2)
    assert set_aside_steps(tmp_path, [2]) == ["2.corrupt-1"]
    save_checkpoint(tmp_path, trained, metadata={}, step=3, max_to_keep=2)
    assert all_steps(tmp_path) == (1, 3)
