"""``analyze distillation``: students learned with and without distillation (Fig. 7b).

The paper trains VGG-16, ResNet-18 and ResNet-34 teachers, distils each
into an AlexNet, and finds that the AlexNets learned by distillation
discard less information (lower CID) than an AlexNet learned ordinarily
(Sec. 4, Fig. 7b).

Here every student has the same architecture, data, epochs and seed as the
ordinary one; it is trained on Hinton et al.'s objective
(:func:`~jax_infodiscard.training.losses.distillation_objective`:
``(1 - w) CE + w T^2 KL`` with the teacher's logits on the same batch).
The zoo's CIFAR ResNets stand in for ResNet-18/34.
"""

from __future__ import annotations

import dataclasses
import time

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
from jax_infodiscard.models import model_fn
from jax_infodiscard.training.losses import distillation_objective


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: the student (model, width), the teachers
    (``(model, width, epochs)``), training images and the students'
    epochs, temperature and weight of the soft term, analysed images,
    seeds (offsets of ``options.seed``), RU decoders' training images."""

    student: str
    width: int
    teachers: tuple[tuple[str, int, int], ...]
    num_train: int
    epochs: int
    temperature: float
    weight: float
    num_images: int
    seeds: tuple[int, ...]
    ru_train: int


SIZES = {
    # Toy: the teacher is the student's architecture trained longer (one
    # compiled training step for all).
    "toy": Sizes("convnet", 4, (("convnet", 4, 2),), 128, 1, 4.0, 0.9, 2, (0,), 0),
    "fast": Sizes(
        "alexnet",
        16,
        (("vgg11", 16, 4), ("resnet20", 8, 4)),
        2_000,
        3,
        4.0,
        0.9,
        8,
        (0,),
        0,
    ),
    "full": Sizes(
        "alexnet",
        16,
        (("vgg11", 16, 6), ("resnet20", 8, 6)),
        5_000,
        6,
        4.0,
        0.9,
        8,
        (0, 1, 2),
        0,  # RU opt-in: decoders for 3 students x 3 seeds exceed the budget
    ),
}


def _train_teachers(options, sz: Sizes, seeds, test, timer):
    """Trains every teacher with every seed. Returns ``teachers`` (name ->
    seed -> trained network) and their test accuracy per seed by name."""
    teachers, accuracy = {}, {}
    for model, width, epochs in sz.teachers:
        name = f"{model}-w{width}"
        start = time.perf_counter()
        teachers[name] = {
            seed: networks.train_model(
                options,
                model,
                num_train=sz.num_train,
                epochs=epochs,
                seed=seed,
                model_kwargs={"width": width},
                test_data=test,
            )
            for seed in seeds
        }
        timer.lap("train_s", start)
        accuracy[name] = [t.accuracy for t in teachers[name].values()]
    return teachers, accuracy


def _student(teachers, sz: Sizes, teacher: str):
    """``train_and_measure`` kwargs of the student distilled from this
    seed's ``teacher``."""

    def kwargs(seed, trained):
        t = teachers[teacher][seed]
        return {
            "loss": distillation_objective(
                model_fn(t.model), temperature=sz.temperature, weight=sz.weight
            ),
            "variant": (
                ("distilled_from", t.path.name),
                ("temperature", sz.temperature),
                ("weight", sz.weight),
            ),
        }

    return kwargs


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains teachers, ordinary and distilled students; measures; verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    seeds = [options.seed + s for s in sz.seeds]
    teachers, accuracy = _train_teachers(options, sz, seeds, test, timer)
    variants = {"ordinary": {}} | {
        f"distilled from {t}": _student(teachers, sz, t) for t in teachers
    }
    groups, models = measuring.train_and_measure(
        options,
        variants,
        seeds=seeds,
        test=test,
        images=images,
        masks=masks,
        key=jax.random.key(options.seed),
        timer=timer,
        ru_train=sz.ru_train,
        model=sz.student,
        model_kwargs={"width": sz.width},
        num_train=sz.num_train,
        epochs=sz.epochs,
    )
    layers = groups["ordinary"][0].layers
    verdicts, numbers = [], {}
    for quantity, claim in (
        ("cid", "Students learned by distillation discard less information (CID)"),
        ("ru", "Students learned by distillation have a lower RU"),
    ):
        v, numbers[quantity] = comparisons.delta_verdict(
            groups,
            "ordinary",
            quantity,
            layers,
            expect="negative",
            claim=claim,
            figure="Sec. 4, Fig. 7b",
        )
        verdicts.append(v)
    accuracy |= {n: [t.accuracy for t in ts] for n, ts in models.items()}
    return report.finish(
        folder,
        options,
        groups,
        "ordinary",
        verdicts,
        numbers,
        design=sz,
        timer=timer,
        title=f"{sz.student} learned ordinarily and by distillation",
        images=len(images),
        seeds=seeds,
        extra=f"Students: {sz.student} of width {sz.width}, {sz.epochs} epochs on "
        f"{sz.num_train} images; distillation at T = {sz.temperature:g}, "
        f"w = {sz.weight:g}. Test accuracy per seed: "
        + "; ".join(f"{n}: {a}" for n, a in accuracy.items())
        + ".",
        results={"test_accuracy": accuracy},
    )


register(
    Analysis(
        name="distillation",
        summary="students learned with and without knowledge distillation: CID, RU",
        paper="Sec. 4, Fig. 7b",
        run=run,
        sizes=SIZES,
    )
)
