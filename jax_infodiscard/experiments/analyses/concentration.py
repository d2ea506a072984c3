"""``analyze concentration``: layer-wise concentration of AlexNet and VGG (Fig. 5c, 3a).

The paper compares the layer-wise concentration (the share of the
foreground in the discarded information, see :func:`jax_infodiscard.concentration`)
of DNNs trained on the same task and finds that

1. compared with AlexNet, VGG nets spread their attention over the
   background in low layers but concentrate more on the foreground in high
   layers (Fig. 5c);
2. high layers are more concentrated on the foreground than low layers
   (Fig. 5 caption);
3. a DNN with a higher accuracy usually has a higher concentration (Fig. 3a).

Networks of different depths are compared at relative depth: "low layers"
are the first third of each network's analysed layers, "high layers" the
last third (logits excluded); every comparison is paired over the same test
images (and solver noise). Needs a data set with foreground masks.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

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
    """Design at one scale: the reference network and the others, as
    ``(model, width)``, training images and epochs, analysed images, seeds
    (offsets of ``options.seed``)."""

    reference: tuple[str, int]
    others: tuple[tuple[str, int], ...]
    num_train: int
    epochs: int
    num_images: int
    seeds: tuple[int, ...]


SIZES = {
    # Toy: two widths of the zoo ConvNet stand in (the zoo VGGs need 32 px;
    # the ConvNet's compiled programs are shared with the other toy runs).
    "toy": Sizes(("convnet", 4), (("convnet", 8),), 128, 1, 2, (0,)),
    "fast": Sizes(("alexnet", 16), (("vgg11", 8), ("vgg13", 8)), 2_000, 3, 8, (0,)),
    "full": Sizes(
        ("alexnet", 16),
        (("vgg11", 16), ("vgg13", 16), ("vgg16", 16)),
        5_000,
        6,
        5,  # 5 analysed images: 4 nets x 3 seeds near the 30-minute budget
        (0, 1, 2),
    ),
}


def thirds(layers) -> tuple[list[str], list[str]]:
    """The first and the last third of ``layers`` without ``logits``.

    >>> thirds(("conv1", "conv2", "conv3", "conv4", "fc1", "logits"))
    (['conv1', 'conv2'], ['conv4', 'fc1'])
    """
    body = [x for x in layers if x != "logits"]
    n = max(1, math.ceil(len(body) / 3))
    return body[:n], body[-n:]


def _part(m, which: str):
    """Per-image concentration of ``m`` pooled over its ``"low"`` or ``"high"``
    third of layers."""
    low, high = thirds(m.layers)
    return comparisons.pooled(m, "concentration", low if which == "low" else high)


def _against_reference(groups, ref: str, seeds) -> tuple[list, dict]:
    """Claim 1: compared with ``ref``, the other nets are less concentrated in
    low layers and more in high layers (paired per seed)."""
    verdicts, numbers = [], {}
    for which, expect, text in (
        ("low", "negative", "spread more over the background in low layers"),
        ("high", "positive", "concentrate more on the foreground in high layers"),
    ):
        results = {}
        for other in [n for n in groups if n != ref]:
            diffs = [
                _part(o, which) - _part(r, which)
                for r, o in zip(groups[ref], groups[other], strict=True)
            ]
            results[other] = comparisons.combine_seeds(
                diffs, expect=expect, seeds=seeds
            )
            numbers[f"{which}_{other}"] = results[other].row()
        verdicts.append(
            comparisons.verdict(
                f"Compared with {ref}, the other nets {text}",
                "Sec. 4, Fig. 5c",
                "; ".join(f"{n} − {ref}: {r.text()}" for n, r in results.items()),
                comparisons.all_of([r.outcome for r in results.values()]),
                f"per-image concentration averaged over the {which} third of "
                f"each net's layers, other − {ref}, "
                f"{'<' if expect == 'negative' else '>'} 0; " + comparisons.SEED_RULE,
                comparisons.all_of([r.alone for r in results.values()]),
                seeds[0],
            )
        )
    return verdicts, numbers


def _high_over_low(groups, seeds) -> tuple[object, dict]:
    """Claim 2: in every net, high layers are more concentrated than low ones."""
    results, numbers = {}, {}
    for name, ms in groups.items():
        results[name] = comparisons.combine_seeds(
            [_part(m, "high") - _part(m, "low") for m in ms],
            expect="positive",
            seeds=seeds,
        )
        numbers[f"high_minus_low_{name}"] = results[name].row()
    verdict = comparisons.verdict(
        "High layers are more concentrated on the foreground than low layers",
        "Sec. 4, Fig. 5",
        "; ".join(f"{n}: {r.text()}" for n, r in results.items()),
        comparisons.all_of([r.outcome for r in results.values()]),
        "per net: concentration of the last third of layers − the first "
        f"third > 0; {comparisons.SEED_RULE.replace('network', 'net')}",
        comparisons.all_of([r.alone for r in results.values()]),
        seeds[0],
    )
    return verdict, numbers


def _accuracy_ranks(groups, models, seeds):
    """Claim 3: test accuracy and high-layer concentration rank the nets
    alike. Returns the verdict and its numbers."""
    accuracy = "; ".join(
        f"{n}: {', '.join(f'{t.accuracy:.3f}' for t in models[n])}" for n in groups
    )
    return comparisons.correlation_verdict(
        [[models[n][i].accuracy for n in groups] for i in range(len(seeds))],
        [
            [float(np.nanmean(_part(groups[n][i], "high"))) for n in groups]
            for i in range(len(seeds))
        ],
        seeds,
        claim="A network with a higher accuracy has a higher concentration",
        figure="Sec. 3.1, Fig. 3a",
        between="test accuracy and the mean concentration of the high third",
        items="nets",
        detail=f"test accuracy per seed {accuracy}",
    )


def _verdicts(groups, models, ref: str, seeds) -> tuple[list, dict]:
    """The three claims' verdicts and their numbers (needs foreground masks)."""
    verdicts, numbers = _against_reference(groups, ref, seeds)
    v, more = _high_over_low(groups, seeds)
    verdicts.append(v)
    numbers |= more
    v, numbers["accuracy_vs_concentration"] = _accuracy_ranks(groups, models, seeds)
    verdicts.append(v)
    return verdicts, numbers


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains the networks, measures concentration per layer, verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    seeds = [options.seed + s for s in sz.seeds]
    nets = (sz.reference, *sz.others)
    groups, models = measuring.train_and_measure(
        options,
        {f"{m}-w{w}": {"model": m, "model_kwargs": {"width": w}} for m, w in nets},
        seeds=seeds,
        test=test,
        images=images,
        masks=masks,
        key=jax.random.key(options.seed),
        timer=timer,
        num_train=sz.num_train,
        epochs=sz.epochs,
    )
    ref = "{}-w{}".format(*sz.reference)
    if masks is not None:
        verdicts, numbers = _verdicts(groups, models, ref, seeds)
        notes_extra = ""
    else:
        verdicts, numbers = [], {}
        notes_extra = "No foreground masks in this data set: no concentration."
        verdicts.append(
            comparisons.verdict(
                "High layers are more concentrated on the foreground than low layers",
                "Sec. 4, Fig. 5",
                "no foreground masks",
                "inconclusive",
                "needs a data set with foreground masks",
            )
        )
    return report.finish(
        folder,
        options,
        groups,
        ref,
        verdicts,
        numbers,
        design=sz,
        timer=timer,
        title="Layer-wise concentration of nets trained on the same task",
        images=len(images),
        seeds=seeds,
        extra=f"{', '.join(f'{m} (width {w})' for m, w in nets)}, "
        f"{sz.epochs} epochs on {sz.num_train} images. {notes_extra}".strip(),
        results={
            "test_accuracy": {n: [t.accuracy for t in ts] for n, ts in models.items()}
        },
    )


register(
    Analysis(
        name="concentration",
        summary="layer-wise concentration of AlexNet and VGG nets, and accuracy "
        "vs concentration",
        paper="Sec. 4, Fig. 5c; Sec. 3.1, Fig. 3a",
        run=run,
        sizes=SIZES,
    )
)
