"""Figures: layout (no colour bar over a map), marks, captions, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.transforms import Bbox

from jax_infodiscard.plotting import (
    normalise,
    pixel_maps_figure,
    plot_layer_curves,
    plot_pixel_maps,
)

LAYERS = ("conv1", "conv3", "logits")


def _inputs(num_images=3, num_layers=len(LAYERS), size=8):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(num_images, size, size, 3))
    masks = np.zeros((num_images, size, size), bool)
    masks[:, 2:6, 2:6] = True
    maps = {
        "CID": rng.normal(-3.0, 0.3, (num_layers, num_images, size, size)),
        "RU": rng.normal(-1.0, 0.5, (num_layers, num_images, size, size)),
    }
    return images, masks, maps


def _drawn(fig):
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    colorbars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None)]
    images = [ax for ax in fig.axes if ax.images and ax not in colorbars]
    return renderer, colorbars, images


def _overlap(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_no_colour_bar_overlaps_a_map():
    images, masks, maps = _inputs()
    fig = pixel_maps_figure(
        images, maps, LAYERS, masks=masks, caption="a caption\non two lines"
    )
    renderer, colorbars, image_axes = _drawn(fig)
    # One colour bar per block: (CID, RU) x (normalised, nats).
    assert len(colorbars) == 4
    # The image column plus 2 metrics x 2 blocks x 3 layers, for 3 images.
    assert len(image_axes) == 3 * (1 + 2 * 2 * len(LAYERS))
    for cax in colorbars:
        # The bar with its ticks and label, against every map's area.
        bar = cax.get_tightbbox(renderer)
        for ax in image_axes:
            assert not _overlap(bar, ax.get_window_extent(renderer)), (
                cax.get_ylabel(),
                ax.get_title(),
            )


def test_overlap_check_catches_a_colour_bar_drawn_over_maps():
    """The check above fails on the layout this module used to draw."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2))
    axes = fig.subplots(1, 4)
    for ax in axes:
        im = ax.imshow(np.zeros((4, 4)))
    fig.colorbar(im, ax=axes[1:3].tolist(), fraction=0.02)
    fig.colorbar(im, ax=axes[0], fraction=0.02)
    fig.set_layout_engine(None)
    renderer, colorbars, image_axes = _drawn(fig)
    # Put the second bar on top of the last map, as the old layout could.
    colorbars[1].set_position(axes[3].get_position())
    hits = [
        ax
        for cax in colorbars
        for ax in image_axes
        if _overlap(cax.get_window_extent(renderer), ax.get_window_extent(renderer))
    ]
    assert hits


def test_normalised_blocks_have_a_colour_bar_that_says_what_it_means():
    images, masks, maps = _inputs()
    fig = pixel_maps_figure(images, maps, LAYERS, masks=masks)
    _, colorbars, _ = _drawn(fig)
    labels = [cax.get_ylabel() for cax in colorbars]
    assert sum("normalised per map" in t for t in labels) == 2
    assert sum("nats" in t for t in labels) == 2
    normalised = [c for c in colorbars if "normalised" in c.get_ylabel()]
    for cax in normalised:
        assert cax.get_ylim() == pytest.approx((0.0, 1.0))


def test_nats_blocks_share_one_scale_per_metric():
    images, masks, maps = _inputs()
    fig = pixel_maps_figure(images, maps, LAYERS, masks=masks)
    _, colorbars, _ = _drawn(fig)
    by_label = {cax.get_ylabel(): cax.get_ylim() for cax in colorbars}
    cid = next(v for k, v in by_label.items() if k.startswith("CID (nats"))
    assert cid == pytest.approx((maps["CID"].min(), maps["CID"].max()))


def test_unreliable_maps_are_grey_framed_and_say_why():
    images, _, maps = _inputs()
    flags = np.full((len(LAYERS), 3), "", dtype=object)
    flags[2, :] = "decoder learned nothing"
    flags[0, 1] = "not converged"
    fig = pixel_maps_figure(images, maps, LAYERS, unreliable={"RU": flags})
    _, _, image_axes = _drawn(fig)
    texts = [t.get_text() for ax in image_axes for t in ax.texts]
    # Two blocks (normalised, nats) per flagged map.
    assert len(texts) == 2 * 4
    assert texts.count("decoder learned\nnothing") == 2 * 3
    assert texts.count("not converged") == 2
    grey = [ax for ax in image_axes if ax.images[0].get_cmap().name == "gray"]
    assert len(grey) == 2 * 4


def test_maps_not_computed_are_nan_and_do_not_set_the_scale():
    # RU skipped at a layer whose decoder learned nothing: NaN maps.
    images, _, maps = _inputs()
    maps["RU"] = maps["RU"].copy()
    maps["RU"][2] = np.nan
    flags = np.full((len(LAYERS), 3), "", dtype=object)
    flags[2, :] = "not solved: decoder learned nothing"
    fig = pixel_maps_figure(images, maps, LAYERS, unreliable={"RU": flags})
    _, colorbars, image_axes = _drawn(fig)
    by_label = {cax.get_ylabel(): cax.get_ylim() for cax in colorbars}
    ru = next(v for k, v in by_label.items() if k.startswith("RU (nats"))
    assert ru == pytest.approx((np.nanmin(maps["RU"]), np.nanmax(maps["RU"])))
    texts = [t.get_text() for ax in image_axes for t in ax.texts]
    assert texts.count("not solved:\ndecoder learned\nnothing") == 2 * 3


def test_every_image_gets_a_row_with_true_and_predicted_class():
    images, _, maps = _inputs(num_images=5)
    fig = pixel_maps_figure(
        images,
        maps,
        LAYERS,
        labels=[0, 1, 2, 0, 1],
        predictions=[0, 2, 2, 0, 1],
        class_names=["disc", "square", "ring"],
    )
    _, _, image_axes = _drawn(fig)
    rows = [ax for ax in image_axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in rows] == [
        "true: disc\npred: disc",
        "true: square\npred: ring",
        "true: ring\npred: ring",
        "true: disc\npred: disc",
        "true: square\npred: square",
    ]
    wrong = [ax.xaxis.label.get_color() for ax in rows]
    assert wrong[1] != wrong[0]


def test_bad_map_shape_names_the_metric():
    images, _, maps = _inputs()
    maps["RU"] = maps["RU"][:, :2]
    with pytest.raises(ValueError, match=r"maps\['RU'\]"):
        pixel_maps_figure(images, maps, LAYERS)


def test_layer_curves_say_the_band_and_mark_unreliable_layers(tmp_path):
    rng = np.random.default_rng(1)
    curves = {
        "CID mean": rng.normal(size=(3, 4)),
        "RU mean": rng.normal(size=(3, 4)),
        "CID linearity": np.exp(rng.normal(size=(3, 4))),
    }
    fig = plot_layer_curves(
        LAYERS,
        curves,
        tmp_path / "c.png",
        caption="settings",
        log_panels={"linearity"},
        ylabels={"linearity": "linearity (ratio)"},
        unreliable={"RU mean": np.array([False, True, True])},
    )
    assert (tmp_path / "c.png").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.get_legend()]
    assert len(axes) == 2
    for ax in axes:
        assert "±1 sd over images" in ax.get_legend().get_title().get_text()
        assert "over 4 images" in ax.get_legend().get_title().get_text()
    lin = next(ax for ax in axes if ax.get_yscale() == "log")
    assert lin.get_ylabel() == "linearity (ratio)"
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "settings" in notes and "Open markers" in notes
    # Two open (white-faced) markers: the RU mean at conv3 and logits.
    open_points = [
        line
        for line in axes[0].lines
        if line.get_marker() == "o" and line.get_markerfacecolor() == "white"
    ]
    assert sum(len(line.get_xdata()) for line in open_points) == 2


def test_plot_pixel_maps_writes_a_png(tmp_path):
    images, masks, maps = _inputs(num_images=2)
    path = tmp_path / "maps.png"
    plot_pixel_maps(images, maps, LAYERS, path, masks=masks, caption="x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_normalise_maps_min_to_0_and_max_to_1():
    m = np.array([[2.0, 4.0], [3.0, 2.5]])
    out = normalise(m)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, (m - 2.0) / 2.0)
    assert not normalise(np.ones((2, 2))).any()


def _log_tick_labels(fig):
    """``[(text, bbox)]`` of the drawn tick labels of the log-scale panel."""
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    (ax,) = [a for a in fig.axes if a.get_yscale() == "log"]
    ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
    lo, hi = sorted(ax.get_ylim())
    return [
        (t.label1.get_text(), t.label1.get_window_extent(renderer))
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi
    ]


def _crowded(labels) -> list[tuple[str, str]]:
    return [
        (a, b)
        for i, (a, box_a) in enumerate(labels)
        for b, box_b in labels[i + 1 :]
        if _overlap(box_a, box_b)
    ]


# Linearity per layer (mean over images, x 3 layers): the demo's wide range,
# three, one and a half, one, half a decade and a narrow range around 1.
LINEARITY_RANGES = [
    (0.5, 90.0),
    (0.3, 300.0),
    (0.6, 8.0),
    (0.7, 6.0),
    (0.55, 2.5),
    (0.6, 1.7),
    (0.85, 1.25),
]


@pytest.mark.parametrize(("low", "high"), LINEARITY_RANGES)
def test_log_axis_tick_labels_do_not_overlap(low, high):
    values = np.geomspace(low, high, len(LAYERS))[:, None] * np.ones((1, 4))
    fig = plot_layer_curves(
        LAYERS, {"CID linearity": values}, None, log_panels={"linearity"}
    )
    labels = _log_tick_labels(fig)
    assert len(labels) >= 2, labels  # the axis still says where it is
    assert not _crowded(labels), _crowded(labels)
    assert all(float(text) > 0 for text, _ in labels)  # plain numbers


def test_log_overlap_check_catches_the_old_minor_labels():
    """Every minor tick labelled (the old formatter) overlaps: the test can fail."""
    from jax_infodiscard.plotting.maps import _PLAIN

    values = np.geomspace(0.5, 90.0, len(LAYERS))[:, None] * np.ones((1, 4))
    fig = plot_layer_curves(
        LAYERS, {"CID linearity": values}, None, log_panels={"linearity"}
    )
    (ax,) = [a for a in fig.axes if a.get_yscale() == "log"]
    ax.yaxis.set_minor_formatter(_PLAIN)
    assert _crowded(_log_tick_labels(fig))


# --------------------------------------------------------------------- show
@pytest.fixture(scope="module")
def linear_cid(linear_model, linear_images):
    import jax

    import jax_infodiscard as jid

    fn, _ = linear_model
    config = jid.CIDConfig(method="linear", layer_strategy="vmap")
    return linear_images, jid.cid(fn, linear_images, jax.random.key(0), config=config)


def test_show_draws_the_map_over_its_image(linear_cid):
    from jax_infodiscard.plotting import show

    images, res = linear_cid
    fig = show(images, res, "lin", index=1)
    ax_image, ax_map, cax = fig.axes
    assert [ax_image.get_title(), ax_map.get_title()] == [
        "image 1",
        "CID lin, normalised",
    ]
    grey, overlay = ax_map.images
    np.testing.assert_allclose(grey.get_array(), np.asarray(images[1]).mean(-1))
    np.testing.assert_allclose(
        overlay.get_array(), normalise(np.asarray(res.pixel[0, 1])), atol=1e-6
    )
    assert overlay.get_alpha() == 0.6 and "min" in cax.get_ylabel()
    nats = show(images[1], res, normalised=False, index=1).axes[1].images[1]
    np.testing.assert_allclose(nats.get_array(), np.asarray(res.pixel[0, 1]))
    renderer, *_ = _drawn(fig)
    assert not _overlap(cax.get_tightbbox(renderer), ax_map.get_window_extent(renderer))


def test_show_names_what_is_wrong(linear_cid):
    from jax_infodiscard.plotting import show

    images, res = linear_cid
    with pytest.raises(ValueError, match="unknown layer 'conv1'; the result has lin"):
        show(images, res, "conv1")
    with pytest.raises(ValueError, match="index=5 is outside the 2 images"):
        show(images, res, "lin", index=5)
    with pytest.raises(ValueError, match=r"is \(6, 5\) pixels but the image is"):
        show(np.zeros((2, 8, 8, 3)), res, "lin")
    with pytest.raises(TypeError, match="CIDResult or RUResult"):
        show(images, np.zeros((6, 5)), "lin")


def test_show_greys_out_a_map_that_did_not_converge(linear_cid):
    import dataclasses

    from jax_infodiscard.plotting import show

    images, res = linear_cid
    failed = dataclasses.replace(res, converged=np.zeros_like(res.converged))
    ax_map = show(images, failed, "lin").axes[1]
    assert ax_map.images[1].get_cmap().name == "gray"
    assert "not converged" in ax_map.texts[0].get_text()
