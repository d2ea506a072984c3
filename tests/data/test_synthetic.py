"""Tests of the embedded synthetic shapes data set."""

from __future__ import annotations

import numpy as np
import pytest

from jax_infodiscard.data import (
    BLOCK_SIZE,
    DATASET_NAMES,
    SHAPE_NAMES,
    SyntheticConfig,
    iterate_batches,
    load_dataset,
    load_synthetic,
    make_dataset,
    num_classes,
    ridge_classifier_accuracy,
    synthetic,
    tight_boxes,
)

FLAT = SyntheticConfig(texture_strength=0.0, noise_std=0.0, max_distractors=0)


@pytest.fixture(scope="module")
def small() -> object:
    return make_dataset(200, seed=7)


def _fields(ds) -> tuple[np.ndarray, ...]:
    return ds.images, ds.labels, ds.masks, ds.boxes, ds.object_colors


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a, b, c = (make_dataset(40, seed=s) for s in (3, 3, 4))
    for x, y in zip(_fields(a), _fields(b), strict=True):
        assert x.tobytes() == y.tobytes()
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


def test_smaller_dataset_is_a_prefix_across_blocks() -> None:
    n = BLOCK_SIZE + 40
    big, part = make_dataset(n, seed=2), make_dataset(BLOCK_SIZE + 5, seed=2)
    for x, y in zip(
        _fields(big.subset(slice(0, BLOCK_SIZE + 5))), _fields(part), strict=True
    ):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_dtypes_and_ranges(size: int) -> None:
    ds = make_dataset(24, seed=1, config=SyntheticConfig(image_size=size))
    assert ds.images.shape == (24, size, size, 3) and ds.images.dtype == np.float32
    assert ds.labels.shape == (24,) and ds.labels.dtype == np.int32
    assert ds.masks.shape == (24, size, size) and ds.masks.dtype == bool
    assert ds.boxes.shape == (24, 4) and ds.boxes.dtype == np.int32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.labels.min() >= 0 and ds.labels.max() < 10
    assert ds.class_names == SHAPE_NAMES and len(ds) == 24


def test_masks_are_neither_empty_nor_full(small) -> None:
    area = small.masks.mean(axis=(1, 2))
    assert area.min() > 0.02 and area.max() < 0.6


def test_boxes_are_tight_boxes_of_masks(small) -> None:
    for mask, box in zip(small.masks, small.boxes, strict=True):  # per image
        ys, xs = np.nonzero(mask)
        expect = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        np.testing.assert_array_equal(box, expect)
        y0, x0, y1, x1 = box
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()


def test_tight_boxes_closed_form_and_empty_mask_error() -> None:
    masks = np.zeros((2, 6, 7), bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 0] = True
    masks[1, 5, 6] = True
    np.testing.assert_array_equal(tight_boxes(masks), [[2, 3, 3, 4], [1, 0, 6, 7]])
    with pytest.raises(ValueError, match="empty"):
        tight_boxes(np.zeros((1, 4, 4), bool))


def test_foreground_pixels_are_the_object_colour(small) -> None:
    for img, mask, color in zip(
        small.images, small.masks, small.object_colors, strict=True
    ):
        np.testing.assert_array_equal(
            img[mask], np.broadcast_to(color, img[mask].shape)
        )


def test_mask_is_exactly_where_the_object_was_painted() -> None:
    # With a flat background every image has exactly two colours: the
    # object's on the mask and the background's everywhere else.
    ds = make_dataset(60, seed=5, config=FLAT)
    for img, mask, color in zip(ds.images, ds.masks, ds.object_colors, strict=True):
        bg = img[~mask]
        np.testing.assert_array_equal(bg, np.broadcast_to(bg[0], bg.shape))
        assert np.linalg.norm(bg[0] - color) >= FLAT.min_contrast - 1e-6
        np.testing.assert_array_equal(
            img[mask], np.broadcast_to(color, (mask.sum(), 3))
        )


def test_labels_are_balanced_within_blocks() -> None:
    ds = make_dataset(2 * BLOCK_SIZE, seed=0, config=FLAT)
    for block in range(2):
        labels = ds.labels[block * BLOCK_SIZE : (block + 1) * BLOCK_SIZE]
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= BLOCK_SIZE // 10 and counts.max() <= BLOCK_SIZE // 10 + 1


def test_num_classes_restricts_labels_and_names() -> None:
    ds = make_dataset(50, seed=0, config=SyntheticConfig(num_classes=3))
    assert set(ds.labels.tolist()) == {0, 1, 2}
    assert ds.class_names == SHAPE_NAMES[:3]
    assert num_classes("synthetic", SyntheticConfig(num_classes=3)) == 3


def test_higher_resolution_renders_the_same_scenes() -> None:
    # Sizes are fractions of image_size and the random draws do not depend on
    # it, so the 64x64 set is the 32x32 scenes drawn twice as finely.
    lo = make_dataset(40, seed=9, config=SyntheticConfig(image_size=32))
    hi = make_dataset(40, seed=9, config=SyntheticConfig(image_size=64))
    np.testing.assert_array_equal(lo.labels, hi.labels)
    np.testing.assert_array_equal(lo.object_colors, hi.object_colors)
    assert np.abs(hi.boxes - 2 * lo.boxes).max() <= 2
    pooled = hi.masks.reshape(40, 32, 2, 32, 2).mean(axis=(2, 4)) >= 0.5
    inter = (pooled & lo.masks).sum(axis=(1, 2))
    union = (pooled | lo.masks).sum(axis=(1, 2))
    assert (inter / union).min() > 0.75


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs (radii r1, r2, centres d apart)."""
    a1 = r1**2 * np.arccos((d**2 + r1**2 - r2**2) / (2 * d * r1))
    a2 = r2**2 * np.arccos((d**2 + r2**2 - r1**2) / (2 * d * r2))
    k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    return a1 + a2 - 0.5 * np.sqrt(k)


# Closed-form areas of the canonical shapes (object frame, unit radius).
SHAPE_AREAS = {
    "disc": np.pi * 0.85**2,
    "square": 1.32**2,
    "triangle": 3 * np.sqrt(3) / 4 * 0.95**2,
    "cross": 2 * 0.56 * 1.84 - 0.56**2,
    "ring": np.pi * (0.92**2 - 0.48**2),
    # Radius limit linear in angle from 0.38 to 0.95: area = pi E[limit^2].
    "star": np.pi * (0.38**2 + 0.38 * 0.57 + 0.57**2 / 3),
    "bars": 2 * 1.6 * 0.37,
    "letter_L": 0.4 * 1.6 + 1.2 * 0.4 - 0.4 * 0.4,
    "letter_T": 1.2 * 0.38 + 0.38 * 1.6 - 0.38 * 0.38,
    "crescent": np.pi * 0.9**2 - _lens_area(0.9, 0.7, 0.45),
}


def test_shape_indicators_have_closed_form_areas_inside_unit_disc() -> None:
    h = 2.0 / 1500
    t = -1.0 + h * (np.arange(1500, dtype=np.float32) + 0.5)
    u, v = np.meshgrid(t, t)
    for name, fn in synthetic._SHAPES:
        inside = fn(u, v)
        np.testing.assert_allclose(
            inside.sum() * h * h, SHAPE_AREAS[name], rtol=5e-3, err_msg=name
        )
        assert (u[inside] ** 2 + v[inside] ** 2).max() <= 1.0, name


def test_rendered_object_area_matches_shape_area() -> None:
    # Mask area / radius^2 is the canonical area (rotation invariant); the
    # radius is recovered from the rendering parameters of one block.
    config = SyntheticConfig(image_size=64)
    ds = make_dataset(300, seed=4, config=config)
    rng = synthetic._block_rng(4, 0)
    rng.permutation(BLOCK_SIZE)  # labels
    scale = rng.uniform(config.min_scale, config.max_scale, BLOCK_SIZE)[:300]
    area = ds.masks.sum(axis=(1, 2)) / (scale.astype(np.float32) * 64) ** 2
    for c, name in enumerate(SHAPE_NAMES):
        got = area[ds.labels == c]
        np.testing.assert_allclose(got.mean(), SHAPE_AREAS[name], rtol=0.05)


def test_linear_classifier_is_near_chance_unless_background_is_biased() -> None:
    # A linear model on raw pixels cannot read a shape at a random place,
    # scale, rotation and colour; once the background follows the class it
    # can, which shows the probe itself works.
    accs = {}
    for bias in (0.0, 1.0):
        config = SyntheticConfig(background_bias=bias)
        train = load_synthetic("train", 1000, config=config)
        test = load_synthetic("test", 500, config=config)
        accs[bias] = ridge_classifier_accuracy(
            train.images, train.labels, test.images, test.labels, l2=5000.0
        )
    assert accs[0.0] < 0.3
    assert accs[1.0] > 0.75


def test_ridge_classifier_separable_toy_problem() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 10
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + rng.normal(size=(90, 5))
    assert ridge_classifier_accuracy(x, y, x, y, l2=1e-3) == 1.0
    # Many more features than examples (dual branch): still fits the train set.
    xw = rng.normal(size=(20, 200))
    yw = np.arange(20) % 4
    assert ridge_classifier_accuracy(xw, yw, xw, yw, l2=1e-6) == 1.0
    # A grid of penalties gives the same numbers as separate calls.
    xt, yt = rng.normal(size=(30, 200)), np.arange(30) % 4
    grid = ridge_classifier_accuracy(xw, yw, xt, yt, l2=[0.1, 10.0])
    assert grid == [
        ridge_classifier_accuracy(xw, yw, xt, yt, l2=v) for v in (0.1, 10.0)
    ]


def test_splits_have_fixed_distinct_seeds() -> None:
    train, test = load_synthetic("train", 20), load_synthetic("test", 20)
    assert not np.array_equal(train.images, test.images)
    np.testing.assert_array_equal(train.images, make_dataset(20, seed=0).images)
    with pytest.raises(ValueError, match="split"):
        load_synthetic("validation", 10)


def test_iterate_batches_visits_every_example_once_per_epoch(small) -> None:
    sizes, keys = [], []
    for batch in iterate_batches(small, 64, shuffle=True, seed=1, num_epochs=2):
        assert set(batch) == {"image", "label", "mask", "box"}
        # Fields of one example stay together.
        np.testing.assert_array_equal(batch["box"], tight_boxes(batch["mask"]))
        sizes.append(batch["label"].shape[0])
        keys.append(batch["image"].sum(axis=(1, 2, 3)))
    assert sizes == [64, 64, 64, 8] * 2
    want = np.sort(small.images.sum(axis=(1, 2, 3)))
    np.testing.assert_array_equal(np.sort(np.concatenate(keys[:4])), want)
    np.testing.assert_array_equal(np.sort(np.concatenate(keys[4:])), want)
    assert not np.array_equal(keys[0], keys[4])  # a new order each epoch


def test_iterate_batches_order_and_remainder() -> None:
    ds = make_dataset(10, seed=0, config=FLAT)
    plain = list(iterate_batches(ds, 4))
    np.testing.assert_array_equal(plain[0]["image"], ds.images[:4])
    assert [len(b["label"]) for b in plain] == [4, 4, 2]
    dropped = list(iterate_batches(ds, 4, drop_remainder=True, num_epochs=3))
    assert len(dropped) == 6
    a = [
        b["label"] for b in iterate_batches(ds, 10, shuffle=True, seed=5, num_epochs=2)
    ]
    b = [
        b["label"] for b in iterate_batches(ds, 10, shuffle=True, seed=5, num_epochs=2)
    ]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    np.testing.assert_array_equal(np.sort(a[0]), np.sort(ds.labels))
    with pytest.raises(ValueError, match="seed"):
        iterate_batches(ds, 4, shuffle=True)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(ds, 0)


def test_load_dataset_synthetic_and_unknown_name() -> None:
    batches = list(load_dataset("synthetic", "test", batch_size=16, num_examples=20))
    assert [b["image"].shape for b in batches] == [(16, 32, 32, 3), (4, 32, 32, 3)]
    np.testing.assert_array_equal(batches[0]["image"], make_dataset(16, seed=1).images)
    with pytest.raises(ValueError, match="choose one of") as err:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="crop_scale"):
        load_dataset("synthetic", crop_scale=1.5)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("synthetic", image_size=64, config=SyntheticConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"num_classes": 11},
        {"image_size": 8},
        {"min_scale": 0.3, "max_scale": 0.2},
        {"max_scale": 0.5},
        {"background_bias": 1.5},
        {"noise_std": -0.1},
        {"max_distractors": -1},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)


def test_make_dataset_validation() -> None:
    with pytest.raises(ValueError, match="num_examples"):
        make_dataset(0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_dataset(3, seed=-1)
    # a fractional count used to be truncated silently (2.5 -> 2 images)
    with pytest.raises(TypeError, match=r"num_examples must be an integer, got 2\.5"):
        load_synthetic("test", 2.5)
    with pytest.raises(TypeError, match="seed"):
        make_dataset(3, seed=1.5)


@pytest.mark.slow
def test_generation_of_ten_thousand_images_is_fast() -> None:
    import time

    t0 = time.perf_counter()
    ds = make_dataset(10_000, seed=0)
    assert time.perf_counter() - t0 < 10.0
    counts = np.bincount(ds.labels)
    assert counts.min() > 950 and counts.max() < 1050


def test_boxes_follow_the_core_box_to_mask_convention(small) -> None:
    from jax_infodiscard.core.concentration import box_to_mask

    box_masks = np.asarray(box_to_mask(small.boxes, (32, 32)))
    assert not (small.masks & ~box_masks).any()  # the box covers the object
    np.testing.assert_array_equal(tight_boxes(box_masks), small.boxes)
