"""``analyze epochs``: CID of block outputs across training epochs (App. F.3, Fig. 9).

The paper trains a ResNet-32 on CIFAR-10 and follows the CID of the
outputs of several blocks during training; it finds that the information
discarding of high layers follows the information-bottleneck picture: a
fitting phase, in which the feature keeps more of the input (CID falls),
then a compression phase, in which it discards more (CID rises).

Here one network per training seed is trained with a checkpoint after
every epoch; CID of the same test images (and solver noise) and the test
accuracy are measured at each checkpoint, so that the CID course can be
read against learning. The verdict counts seeds (:func:`bottleneck_over_seeds`).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from matplotlib.figure import Figure

from jax_infodiscard.experiments.analyses import (
    Analysis,
    AnalysisOptions,
    AnalysisResult,
    apply_design,
    comparisons,
    measuring,
    networks,
    paired_outcome,
    register,
    report,
)
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.training.checkpoint import all_steps, restore_checkpoint
from jax_infodiscard.training.train import evaluate


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: model, width and analysed layers (``None``: its
    default layers), training images and epochs, analysed images, seeds
    (offsets of ``options.seed``). Full: three seeds; 4 analysed images keep
    the six checkpoints per seed near the 30-minute budget."""

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
        4,
        (0, 1, 2),
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


def bottleneck_over_seeds(
    cids: list[np.ndarray],
    seeds: list[int],
    mc: list[np.ndarray | None] | None = None,
) -> tuple[str, dict]:
    """Fall-then-rise of one layer's CID over checkpoints, over seeds.

    Args:
      cids: per seed, CID ``(E, B)`` (nats) at ``E`` checkpoints.
      seeds: the training seeds.
      mc: per seed, the MC standard errors ``(E, B)`` or None.

    Rule: ``k`` is the checkpoint of the lowest CID averaged over seeds
    and images; CID(first) − CID(k), CID(last) − CID(k) and CID(last) −
    CID(first) are judged by the two-level rule over seeds
    (:func:`~jax_infodiscard.experiments.analyses.verdicts.replicated`).
    Held if ``0 < k < E - 1`` and both the fall and the rise held; did not
    hold if ``k`` is at an end and last − first is decided either way;
    else inconclusive.

    >>> rng = np.random.default_rng(0)
    >>> course = np.array([[1.0], [0.5], [0.9]])
    >>> cids = [course + rng.normal(scale=0.01, size=(3, 8)) for _ in range(3)]
    >>> bottleneck_over_seeds(cids, [0, 1, 2])[0]
    'held'
    >>> bottleneck_over_seeds(cids[:1], [0])[0]  # one seed never decides
    'inconclusive'
    """
    mc = [None] * len(cids) if mc is None else mc
    means = np.mean([c.mean(axis=1) for c in cids], axis=0)
    k = int(np.argmin(means))

    def judge(a, b):
        errs = [None if e is None else np.hypot(e[a], e[b]) for e in mc]
        return comparisons.combine_seeds(
            [c[a] - c[b] for c in cids], expect="positive", seeds=seeds, mc=errs
        )

    fall, rise, total = judge(0, k), judge(-1, k), judge(-1, 0)
    if 0 < k < len(means) - 1 and fall.outcome == rise.outcome == "held":
        outcome = "held"
    elif k in (0, len(means) - 1) and total.outcome != "inconclusive":
        outcome = "did not hold"
    else:
        outcome = "inconclusive"
    return outcome, {
        "lowest_at": k,
        "fall": fall.row(),
        "rise": rise.row(),
        "last_minus_first": total.row(),
        "outcome": outcome,
        "texts": {"fall": fall.text(), "rise": rise.text()},
    }


def _course_figure(folder, names, top, cids, accuracy, seeds) -> None:
    """CID of ``top`` and test accuracy per checkpoint, one line per seed."""
    fig = Figure(figsize=(8.6, 3.4))
    ax_cid, ax_acc = fig.subplots(1, 2)
    x = np.arange(1, len(names) + 1)
    for seed, cid, acc in zip(seeds, cids, accuracy, strict=True):
        ax_cid.plot(x, cid.mean(axis=1), marker="o", ms=3, label=f"seed {seed}")
        ax_acc.plot(x, acc, marker="o", ms=3, label=f"seed {seed}")
    ax_cid.set_title(f"CID of {top} (mean over images)", fontsize=9)
    ax_cid.set_ylabel("nats")
    ax_acc.set_title("test accuracy", fontsize=9)
    ax_acc.set_ylabel("fraction correct")
    for ax in (ax_cid, ax_acc):
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    folder.write_figure("course.png", fig, dpi=110, bbox_inches="tight")


def _measure_checkpoints(options, sz: Sizes, seed: int, data, key, timer, groups):
    """Trains seed ``seed`` with a checkpoint after every epoch and measures
    each checkpoint into ``groups`` (``"epoch {step}"`` -> one
    ``measuring.Measured`` per seed, appended).

    ``data`` is ``(test, images, masks)`` from ``networks.analysed_images``.
    Returns the checkpoint steps and their test accuracies (fractions, NaN
    where the model gives none).
    """
    test, images, masks = data
    start = time.perf_counter()
    trained = networks.train_model(
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
    accuracy = []
    layers = sz.layers or tuple(trained.model.default_layers)
    for step in steps:
        model, _ = restore_checkpoint(trained.path, trained.model, step=step)
        start = time.perf_counter()
        acc = evaluate(model, test.images, test.labels).get("accuracy")
        acc = float("nan") if acc is None else float(acc)
        timer.lap("accuracy_s", start)
        accuracy.append(acc)
        groups.setdefault(f"epoch {step}", []).append(
            measuring.measure(
                f"epoch {step}",
                model,
                layers,
                images,
                masks,
                options,
                key=key,
                timer=timer,
                info={"seed": seed, "test_accuracy": acc},
            )
        )
    return list(steps), accuracy


def _top_course(groups, names, num_seeds: int):
    """The highest analysed layer (logits excluded) and, per seed, its CID
    ``(E, B)`` (nats) over the ``E`` checkpoints ``names`` and the MC
    standard errors ``(E, B)`` (None where a checkpoint has none)."""
    layers = groups[names[0]][0].layers
    top = [x for x in layers if x != "logits"][-1]
    cids, mcs = [], []
    for i in range(num_seeds):
        cids.append(np.stack([groups[n][i].at("cid", top) for n in names]))
        errs = [comparisons.mc_errors(groups[n][i], "cid") for n in names]
        mcs.append(
            None
            if any(e is None for e in errs)
            else np.stack([e[layers.index(top)] for e in errs])
        )
    return top, cids, mcs


def _course_table(names, top: str, cids, accuracy, seeds) -> list[str]:
    """Markdown rows: per checkpoint and seed, test accuracy and the CID of
    ``top`` (mean over images ± SE)."""
    course = [
        "| checkpoint | "
        + " | ".join(f"seed {s}: test accuracy | seed {s}: CID of {top}" for s in seeds)
        + " |",
        "|---|" + "---|---|" * len(seeds),
    ]
    for e, name in enumerate(names):
        cells = [name]
        for i in range(len(seeds)):
            cells += [
                f"{accuracy[i][e]:.3f}",
                comparisons.fmt(*measuring.mean_sem(cids[i][e])),
            ]
        course.append("| " + " | ".join(cells) + " |")
    return course


def _verdict(top, names, numbers, texts, overall, alone, accuracy, seeds):
    """The fall-then-rise claim's verdict from the rule's outcome ``overall``
    (over seeds) and ``alone`` (the first seed)."""
    return comparisons.verdict(
        f"The CID of a high layer ({top}) first falls (fitting), then rises "
        "(compression) during training",
        "App. F.3, Fig. 9",
        f"lowest (mean over seeds) at {names[numbers['lowest_at']]}; first − "
        f"lowest: {texts['fall']}; last − lowest: {texts['rise']}; test accuracy "
        "per checkpoint "
        + "; ".join(
            f"seed {s}: " + ", ".join(f"{a:.2f}" for a in acc)
            for s, acc in zip(seeds, accuracy, strict=True)
        ),
        overall,
        "checkpoint k of the lowest CID (mean over seeds and images) strictly "
        "inside, and CID(first) − CID(k), CID(last) − CID(k) > 0 by the two-level "
        "rule over seeds (mean of the seed means beyond 2 SE over seeds, every "
        "seed on that side): held; a monotone course with last − first decided: "
        "did not hold; else (or one seed) inconclusive",
        alone,
        seeds[0],
    )


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains with a checkpoint per epoch, measures each, states the verdict."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    seeds = [options.seed + s for s in sz.seeds]
    key = jax.random.key(options.seed)
    groups: dict[str, list[measuring.Measured]] = {}
    steps_seen, accuracy = [], []
    for seed in seeds:
        steps, acc = _measure_checkpoints(
            options, sz, seed, (test, images, masks), key, timer, groups
        )
        steps_seen.append(steps)
        accuracy.append(acc)
    if len({tuple(s) for s in steps_seen}) != 1:
        raise RuntimeError(f"seeds kept different checkpoints: {steps_seen}")
    names = list(groups)
    top, cids, mcs = _top_course(groups, names, len(seeds))
    overall, numbers = bottleneck_over_seeds(cids, seeds, mcs)
    alone, first = bottleneck_outcome(cids[0])
    numbers["first_seed_alone"] = first
    texts = numbers.pop("texts")
    _course_figure(folder, names, top, cids, accuracy, seeds)
    verdict = _verdict(top, names, numbers, texts, overall, alone, accuracy, seeds)
    course = _course_table(names, top, cids, accuracy, seeds)
    return report.finish(
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
        f"{sz.num_train} images, a checkpoint after every epoch; test accuracy "
        f"of each checkpoint on {len(test.images)} test images.\n\n"
        + "CID course against learning (mean over images ± SE):\n\n"
        + "\n".join(course)
        + "\n\n![course](course.png)",
        results={
            "checkpoints": steps_seen[0],
            "test_accuracy": {
                f"seed {s}": acc for s, acc in zip(seeds, accuracy, strict=True)
            },
        },
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
