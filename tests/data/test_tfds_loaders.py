"""Tests of the tfds loaders (offline, ``tfds.testing.mock_data``) and transforms."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_infodiscard.data import TFDS_SPECS, load_dataset, num_classes
from jax_infodiscard.data import tfds_loaders as tl
from jax_infodiscard.data.transforms import (
    batch_indices,
    box_in_window,
    crop_resize_image,
    crop_resize_mask,
    crop_window,
    nearest_indices,
    resize_weights,
)

tfds = pytest.importorskip("tensorflow_datasets")

ANNOTATED = ["oxford_iiit_pet", "caltech_birds2011"]


def _collect(name: str, **kwargs) -> list[dict]:
    with tfds.testing.mock_data(num_examples=7):
        return list(load_dataset(name, "train", batch_size=3, **kwargs))


# ---------------------------------------------------------------------------
# Loaders under mock data.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ANNOTATED)
@pytest.mark.parametrize("crop_scale", [None, 1.0, 1.5])
def test_annotated_batches_shapes_dtypes_ranges(name: str, crop_scale) -> None:
    size = 20
    batches = _collect(name, image_size=size, crop_scale=crop_scale)
    assert [len(b["label"]) for b in batches] == [3, 3, 1]
    for b in batches:
        n = len(b["label"])
        assert set(b) == {"image", "label", "mask", "box"}
        assert b["image"].shape == (n, size, size, 3)
        assert b["image"].dtype == np.float32
        assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
        assert b["image"].std() > 0.05  # real pixels, not a constant
        assert b["label"].dtype == np.int32
        assert (0 <= b["label"]).all() and (
            b["label"] < TFDS_SPECS[name].num_classes
        ).all()
        assert b["mask"].shape == (n, size, size) and b["mask"].dtype == bool
        box = b["box"]
        assert box.shape == (n, 4) and box.dtype == np.int32
        assert (box[:, :2] >= 0).all() and (box[:, 2:] <= size).all()
        assert (box[:, 2:] > box[:, :2]).all()
        if crop_scale == 1.0:  # the crop is the box
            np.testing.assert_array_equal(box, np.tile([0, 0, size, size], (n, 1)))


def test_birds_concentration_crop_leaves_a_margin_around_the_box() -> None:
    # Mock boxes are random; where the 1.5x window is not clipped the box
    # covers the middle 1/1.5 of the output on each axis.
    batches = _collect("caltech_birds2011", image_size=30, crop_scale=1.5)
    box = np.concatenate([b["box"] for b in batches])
    side = box[:, 2:] - box[:, :2]
    assert (side >= 30 / 1.5 - 1).all() and (side <= 30).all()
    assert (box[:, 2:] - box[:, :2] < 30).any()  # some margin somewhere


def test_cifar_batches_have_no_annotations_and_resize() -> None:
    batches = _collect("cifar10", image_size=32)
    assert [len(b["label"]) for b in batches] == [3, 3, 1]
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].dtype == np.float32 and b["image"].shape[1:] == (32, 32, 3)
        assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    with tfds.testing.mock_data(num_examples=4):
        raw = tfds.data_source("cifar10", split="train")
        first = np.asarray(raw[0]["image"], np.float32) / 255
        small = next(load_dataset("cifar10", image_size=16, batch_size=4))
    np.testing.assert_allclose(batches[0]["image"][0], first, atol=1e-6)
    want = jax.image.resize(first, (16, 16, 3), "linear", antialias=True)
    np.testing.assert_allclose(small["image"][0], np.asarray(want), atol=1e-5)
    with pytest.raises(ValueError, match="crop_scale"):
        load_dataset("cifar10", crop_scale=1.0)


def test_shuffled_loading_is_deterministic_and_complete() -> None:
    def labels(seed: int) -> np.ndarray:
        with tfds.testing.mock_data(num_examples=9):
            it = load_dataset(
                "caltech_birds2011", batch_size=4, shuffle=True, seed=seed
            )
            return np.concatenate([b["label"] for b in it])

    plain = np.concatenate([b["label"] for b in _collect("caltech_birds2011")])
    a, b = labels(3), labels(3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 9
    with tfds.testing.mock_data(num_examples=9):
        src = tfds.data_source("caltech_birds2011", split="train")
        all_labels = sorted(int(src[i]["label"]) for i in range(9))
    assert sorted(a.tolist()) == all_labels
    assert len(plain) == 7


def test_num_examples_limits_the_split() -> None:
    with tfds.testing.mock_data(num_examples=10):
        it = load_dataset("oxford_iiit_pet", batch_size=4, num_examples=5)
        assert [len(b["label"]) for b in it] == [4, 1]


def test_unknown_names_and_missing_extra() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="config"):
        from jax_infodiscard.data import SyntheticConfig

        load_dataset("cifar10", config=SyntheticConfig())
    assert num_classes("oxford_iiit_pet") == 37
    assert num_classes("caltech_birds2011") == 200


def test_missing_tfds_names_the_data_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"\[data\]"):
        tl.tfds_data_source("cifar10", "train")


def test_no_tensorflow_needed() -> None:
    _collect("caltech_birds2011", image_size=8)
    assert sys.modules.get("tensorflow") is None


# ---------------------------------------------------------------------------
# One record with known content: image and mask at different resolutions.
# ---------------------------------------------------------------------------


def _record(mask_scale: int) -> dict:
    """A 40x60 image with a red object at rows 10:30, columns 16:44."""
    image = np.full((40, 60, 3), 30, np.uint8)
    image[10:30, 16:44] = (250, 10, 10)
    seg = np.zeros((40 * mask_scale // 2, 60 * mask_scale // 2, 1), np.uint8)
    k = mask_scale / 2
    seg[int(10 * k) : int(30 * k), int(16 * k) : int(44 * k)] = 255
    return {
        "image": image,
        "label": 5,
        "segmentation_mask": seg,
        "bbox": np.array([30 / 40, 44 / 60, 10 / 40, 16 / 60], np.float32),  # unsorted
    }


@pytest.mark.parametrize("mask_scale", [1, 2, 4])
@pytest.mark.parametrize("crop_scale", [None, 1.0, 1.5])
def test_record_mask_image_and_box_stay_aligned(mask_scale: int, crop_scale) -> None:
    spec = TFDS_SPECS["caltech_birds2011"]
    out = tl.prepare_example(
        _record(mask_scale), spec, image_size=24, crop_scale=crop_scale
    )
    red = out["image"][..., 0] > 0.5
    assert out["label"] == 5 and out["mask"].shape == (24, 24)
    # Nearest-neighbour mask and linear image agree away from the edges.
    disagree = out["mask"] != red
    assert disagree.mean() < 0.1
    y0, x0, y1, x1 = out["box"]
    inside = np.zeros((24, 24), bool)
    inside[y0:y1, x0:x1] = True
    assert not (out["mask"] & ~inside).any()
    expect = {None: [6, 6, 18, 18], 1.0: [0, 0, 24, 24], 1.5: [4, 4, 20, 20]}
    np.testing.assert_array_equal(out["box"], expect[crop_scale])
    if crop_scale == 1.0:
        assert out["mask"].all()


def test_pet_box_is_the_tight_box_of_the_trimap_foreground() -> None:
    spec = TFDS_SPECS["oxford_iiit_pet"]
    trimap = np.full((20, 30, 1), 2, np.uint8)  # background
    trimap[4:12, 6:21] = 3  # outline
    trimap[5:11, 7:20] = 1  # pet
    image = np.zeros((40, 60, 3), np.uint8)  # mask at half resolution
    out = tl.prepare_example(
        {"image": image, "label": 1, "segmentation_mask": trimap},
        spec,
        image_size=40,
        crop_scale=None,
    )
    # Image 40x60 -> 40x40: rows 8:24 stay, columns 12:42 scale by 2/3.
    np.testing.assert_array_equal(out["box"], [8, 8, 24, 28])
    np.testing.assert_array_equal(np.nonzero(out["mask"].any(1))[0][[0, -1]], [8, 23])
    empty = tl.prepare_example(
        {"image": image, "label": 1, "segmentation_mask": trimap * 0 + 2},
        spec,
        image_size=8,
        crop_scale=1.0,
    )
    np.testing.assert_array_equal(empty["box"], [0, 0, 8, 8])
    assert not empty["mask"].any()


# ---------------------------------------------------------------------------
# Transforms.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,out", [((37, 23), (16, 16)), ((9, 12), (20, 31))])
def test_resize_matches_jax_image_resize(shape, out) -> None:
    x = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    got = crop_resize_image(x, np.array([0, 0, *shape]), out)
    want = jax.image.resize(jnp.asarray(x), (*out, 3), "linear", antialias=True)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_resize_weights_rows_are_convex_and_crop_is_exact() -> None:
    w = resize_weights(50, 7, 10.0, 21.0)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    # An integer-aligned crop at the same resolution is a plain slice.
    x = np.random.default_rng(1).random((30, 40, 2), dtype=np.float32)
    np.testing.assert_allclose(
        crop_resize_image(x, np.array([5, 7, 17, 27]), (12, 20)),
        x[5:17, 7:27],
        atol=1e-6,
    )
    np.testing.assert_array_equal(nearest_indices(10, 5, 2.0, 5.0), [2, 3, 4, 5, 6])


def test_mask_resampling_across_resolutions() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 6:9] = True
    up = crop_resize_mask(mask, np.array([0, 0, 20, 20]), (20, 20), image_hw=(20, 20))
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 2), bool)))
    crop = crop_resize_mask(mask, np.array([2, 6, 5, 9]), (3, 3))
    assert crop.all()


def test_crop_window_and_box_mapping_closed_form() -> None:
    box = np.array([100.0, 50.0, 160.0, 110.0])
    win = crop_window(box, 1.5, (300, 200))
    np.testing.assert_allclose(win, [85, 35, 175, 125])
    np.testing.assert_array_equal(box_in_window(box, win, (30, 30)), [5, 5, 25, 25])
    clipped = crop_window(np.array([0.0, 0.0, 10.0, 20.0]), 1.5, (12, 100))
    np.testing.assert_allclose(clipped, [0, 0, 12, 25])
    assert (clipped[:2] <= [0, 0]).all() and (clipped[2:] >= [10, 20]).all()
    with pytest.raises(ValueError):
        crop_window(np.array([5.0, 5.0, 5.0, 9.0]), 1.0, (10, 10))


def test_batch_indices_epochs_and_validation() -> None:
    a = list(batch_indices(10, 4, shuffle=True, seed=0, num_epochs=2))
    assert [len(i) for i in a] == [4, 4, 2, 4, 4, 2]
    for epoch in (a[:3], a[3:]):
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(10))
    assert not np.array_equal(np.concatenate(a[:3]), np.concatenate(a[3:]))
    forever = batch_indices(3, 2, num_epochs=None)
    assert [next(forever).tolist() for _ in range(4)] == [[0, 1], [2], [0, 1], [2]]
    with pytest.raises(ValueError, match="drop_remainder"):
        batch_indices(3, 4, drop_remainder=True)
    with pytest.raises(ValueError, match="num_epochs"):
        batch_indices(3, 1, num_epochs=0)
