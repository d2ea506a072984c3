"""``analyze damage``: one convolution replaced by four 7x7 filters (App. F.1, Fig. 8).

The paper revises one convolution of a VGG-16/19 to "four 7x7x512 filters
with padding=3", trains the original and the revised network, and finds
that the revision

1. significantly boosts the information discarding (CID) at the revised
   layer;
2. slightly increases the concentration (the revised net ignores the
   background at lower layers).

Here the revision is :func:`~jax_infodiscard.models.surgery.damage` (the
zoo model built with ``damage=[(layer, 4, 7)]``), both networks are trained
from scratch with the same settings and seeds, and every comparison is
paired over the same test images and solver noise.
"""

from __future__ import annotations

import dataclasses

import jax

from jax_infodiscard.experiments.analyses import (
    Analysis,
    AnalysisOptions,
    AnalysisResult,
    apply_design,
    comparisons,
    measuring,
    networks,
    register,
    report,
)
from jax_infodiscard.experiments.rundir import RunFolder


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: model, its width, the revised layer, the
    revision (filters, kernel side), training images and epochs, analysed
    images, training seeds (offsets of ``options.seed``) and RU decoders'
    training images (0: no RU)."""

    model: str
    width: int
    layer: str
    filters: int
    kernel: int
    num_train: int
    epochs: int
    num_images: int
    seeds: tuple[int, ...]
    ru_train: int


SIZES = {
    "toy": Sizes("convnet", 4, "conv3", 4, 7, 128, 1, 2, (0,), 0),
    "fast": Sizes("vgg11", 8, "conv4_2", 4, 7, 2_000, 3, 8, (0,), 0),
    # Full: three seeds; RU is opt-in (``ru_train``): its decoders learned
    # nothing from conv4_2 up in earlier runs, and they would take the run
    # well past the 30-minute budget.
    "full": Sizes("vgg11", 16, "conv4_2", 4, 7, 5_000, 6, 8, (0, 1, 2), 0),
}


def _verdicts(groups, layer: str) -> tuple[list, dict]:
    """Revised − original: CID and RU at the revised ``layer``, and
    concentration at it and above. Returns the verdicts and their numbers."""
    layers = groups["original"][0].layers
    after = layers[layers.index(layer) :]
    verdicts, numbers = [], {}
    for quantity, where, claim, figure in (
        (
            "cid",
            (layer,),
            "The revision boosts information discarding (CID) at the revised layer",
            "App. F.1, Fig. 8",
        ),
        (
            "concentration",
            after,
            "The revision slightly increases the concentration (revised layer "
            "and above)",
            "App. F.1, Fig. 8",
        ),
        (
            "ru",
            (layer,),
            "The revision raises RU at the revised layer",
            "App. F.1, Fig. 8",
        ),
    ):
        v, n = comparisons.delta_verdict(
            groups,
            "original",
            quantity,
            where,
            expect="positive",
            claim=claim,
            figure=figure,
        )
        verdicts.append(v)
        numbers[quantity] = n
    return verdicts, numbers


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains the original and the revised network, measures, states verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    revision = ((sz.layer, sz.filters, sz.kernel),)
    seeds = [options.seed + s for s in sz.seeds]
    groups, models = measuring.train_and_measure(
        options,
        {
            "original": {"model_kwargs": {"width": sz.width}},
            "damaged": {"model_kwargs": {"width": sz.width, "damage": revision}},
        },
        seeds=seeds,
        test=test,
        images=images,
        masks=masks,
        key=jax.random.key(options.seed),
        timer=timer,
        ru_train=sz.ru_train,
        model=sz.model,
        num_train=sz.num_train,
        epochs=sz.epochs,
    )
    kernels = {
        name: list(getattr(ms[0].model, sz.layer).conv.kernel.shape)
        for name, ms in models.items()
    }
    verdicts, numbers = _verdicts(groups, sz.layer)
    return report.finish(
        folder,
        options,
        groups,
        "original",
        verdicts,
        numbers,
        design=sz,
        timer=timer,
        title=f"{sz.model} and its revision ({sz.layer}: {sz.filters} "
        f"{sz.kernel}x{sz.kernel} filters)",
        images=len(images),
        seeds=seeds,
        extra=f"{sz.model} of width {sz.width}, {sz.epochs} epochs on "
        f"{sz.num_train} images, original and revised trained from scratch "
        f"with the same seeds; revised kernel {kernels['damaged']} (original "
        f"{kernels['original']}).",
        results={"revision": list(revision[0]), "kernels": kernels},
    )


register(
    Analysis(
        name="damage",
        summary="one convolution replaced by four 7x7 filters: CID and "
        "concentration of the original and the revised network",
        paper="App. F.1, Fig. 8",
        run=run,
        sizes=SIZES,
    )
)
