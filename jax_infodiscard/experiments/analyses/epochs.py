"""``analyze epochs``: CID of block outputs across training epochs (App. F.3, Fig. 9).

The paper trains a ResNet-32 on CIFAR-10 and follows the CID of the
outputs of several blocks during training; it finds that the information
discarding of high layers follows the information-bottleneck picture: a
fitting phase, in which the feature keeps more of the input (CID falls),
then a compression phase, in which it discards more (CID rises).

Here one network is trained with a checkpoint after every epoch, and CID
of the same test images (and solver noise) is measured at each checkpoint.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jax_infodiscard.experiments.analyses import (
    Analysis,
    AnalysisOptions,
    AnalysisResult,
    apply_design,
    paired_outcome,
    register,
)
from jax_infodiscard.experiments.analyses import _common as C
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.training.checkpoint import all_steps, restore_checkpoint


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: model, width and analysed layers (``None``: its
    default layers), training images and epochs, analysed images, seeds
    (offsets of ``options.seed``)."""

    model: str
    width: int
    layers: tuple[str, ...] | None
    num_train: int
    epochs: int
    num_images: int
    seeds: tuple[int, ...]


SIZES = {
    "toy": Sizes("convnet", 4, ("conv1", "conv5"), 64, 3, 2, (0,)),
    "fast": Sizes(
        "resnet20", 8, ("conv1", "stage1", "stage2", "stage3"), 2_000, 6, 8, (0,)
    ),
    "full": Sizes(
        "resnet20",
        8,
        ("conv1", "stage1", "stage2", "stage3"),
        4_000,
        6,
        8,
        (0,),
    ),
}


def bottleneck_outcome(cid: np.ndarray) -> tuple[str, dict]:
    """Fall-then-rise of one layer's CID over checkpoints ``(E, B)``.

    Rule: with ``k`` the checkpoint of the lowest mean CID, held if ``0 < k
    < E - 1`` and both CID(first) − CID(k) and CID(last) − CID(k) exceed 2
    standard errors of the per-image differences; did not hold if the CID
    changes monotonically (``k`` at an end) with the last-minus-first
    difference beyond 2 standard errors; else inconclusive.
    """
    means = cid.mean(axis=1)
    k = int(np.argmin(means))
    fall = paired_outcome(cid[0] - cid[k], expect="positive")
    rise = paired_outcome(cid[-1] - cid[k], expect="positive")
    total = paired_outcome(cid[-1] - cid[0], expect="positive")
    if 0 < k < len(means) - 1 and fall[0] == rise[0] == "held":
        outcome = "held"
    elif k in (0, len(means) - 1) and total[0] != "inconclusive":
        outcome = "did not hold"
    else:
        outcome = "inconclusive"
    return outcome, {
        "lowest_at": k,
        "fall": fall[1:],
        "rise": rise[1:],
        "last_minus_first": total[1:],
        "outcome": outcome,
    }


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains with a checkpoint per epoch, measures each, states the verdict."""
    sz = apply_design(SIZES, options)
    timer = C.Timer(options.status)
    test, images, masks = C.analysed_images(options, sz.num_images)
    seeds = [options.seed + s for s in sz.seeds]
    key = jax.random.key(options.seed)
    groups: dict[str, list[C.Measured]] = {}
    steps_seen = []
    for seed in seeds:
        start = time.perf_counter()
        trained = C.train_model(
            options,
            sz.model,
            num_train=sz.num_train,
            epochs=sz.epochs,
            seed=seed,
            model_kwargs={"width": sz.width},
            train={"keep_checkpoints": None},
            variant=(("checkpoints", "every epoch"),),
            test_data=test,
        )
        timer.lap("train_s", start)
        steps = all_steps(trained.path)
        steps_seen.append(list(steps))
        layers = sz.layers or tuple(trained.model.default_layers)
        for step in steps:
            model, _ = restore_checkpoint(trained.path, trained.model, step=step)
            groups.setdefault(f"epoch {step}", []).append(
                C.measure(
                    f"epoch {step}",
                    model,
                    layers,
                    images,
                    masks,
                    options,
                    key=key,
                    timer=timer,
                )
            )
    if len({tuple(s) for s in steps_seen}) != 1:
        raise RuntimeError(f"seeds kept different checkpoints: {steps_seen}")
    names = list(groups)
    layers = groups[names[0]][0].layers
    top = [x for x in layers if x != "logits"][-1]
    outcomes, texts, numbers = [], [], {}
    for i, seed in enumerate(seeds):
        cid = np.stack([groups[n][i].at("cid", top) for n in names])
        o, row = bottleneck_outcome(cid)
        outcomes.append(o)
        numbers[f"seed {seed}"] = row
        texts.append(
            f"seed {seed}: lowest at {names[row['lowest_at']]}; first − lowest "
            f"{C.fmt(*row['fall'])}, last − lowest {C.fmt(*row['rise'])}"
        )
    overall = outcomes[0] if len(set(outcomes)) == 1 else "inconclusive"
    verdict = C.verdict(
        f"The CID of a high layer ({top}) first falls (fitting), then rises "
        "(compression) during training",
        "App. F.3, Fig. 9",
        "; ".join(texts) + f" (n={len(images)} images)",
        overall,
        "per seed: checkpoint k of lowest mean CID strictly inside, and "
        "CID(first) − CID(k), CID(last) − CID(k) > 2 SE over images: held; a "
        "monotone course with |last − first| > 2 SE: did not hold; else "
        "inconclusive; held if every seed",
    )
    return C.finish(
        folder,
        options,
        groups,
        names[0],
        [verdict],
        {"bottleneck": numbers},
        design=sz,
        timer=timer,
        title=f"{sz.model}: CID per block across training epochs",
        images=len(images),
        seeds=seeds,
        extra=f"{sz.model} of width {sz.width}, {sz.epochs} epochs on "
        f"{sz.num_train} images, a checkpoint after every epoch.",
        results={"checkpoints": steps_seen[0]},
    )


register(
    Analysis(
        name="epochs",
        summary="CID of block outputs at every epoch of training",
        paper="App. F.3, Fig. 9",
        run=run,
        sizes=SIZES,
    )
)
