"""``analyze adversarial``: PGD-L-inf adversarial vs normal training (App. F.4).

The paper trains an AlexNet normally and one adversarially (PGD-L-inf, 10
steps of size 0.001) and finds that the adversarially trained AlexNet

1. discards more information (higher CID);
2. focuses more on the foreground (higher concentration).

Here the normal network is trained first; the adversarial one starts from
it and is trained ``finetune_epochs`` more epochs, with the same settings,
on the PGD examples of every batch
(:func:`~jax_infodiscard.training.adversarial.pgd_transform`). The warm
start keeps a short adversarial training from ending at chance accuracy
(from scratch, 3 epochs of AlexNet on 2,000 images did); the price is that
the adversarial network has seen more epochs. So the control, the normal
network trained as many epochs again on clean images ("normal longer"),
is trained and measured too, and the paper's claims are judged against it:
"adversarial training discards more" is separated from "longer training
discards more" (reported as its own row). Every network is trained with
every seed, and the verdicts count seeds
(:mod:`~jax_infodiscard.experiments.analyses.verdicts`). As a check that
the adversarial training did its job, the minimal-L2 robustness
(:func:`~jax_infodiscard.evaluation.robustness.minimal_l2_attack`) of the
networks is reported too (not a claim of the paper).
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
from jax_infodiscard.training.adversarial import PGDConfig, pgd_transform


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: model and width, training images and epochs,
    analysed images, seeds (offsets of ``options.seed``), RU decoders'
    training images (0: no RU), the PGD attack (radius, steps, step size)
    and the targets of the robustness attack, and the epochs of the
    adversarial fine-tuning (and of the control's continued training).
    Full: three seeds; 2 fine-tuning epochs and no RU (opt-in with
    ``ru_train``) keep the three networks per seed near the 30-minute
    budget."""

    model: str
    width: int
    num_train: int
    epochs: int
    num_images: int
    seeds: tuple[int, ...]
    ru_train: int
    epsilon: float
    pgd_steps: int
    pgd_step_size: float
    top_k: int
    finetune_epochs: int = 0


SIZES = {
    "toy": Sizes("convnet", 4, 128, 1, 2, (0,), 0, 4 / 255, 1, 2 / 255, 1, 1),
    "fast": Sizes("alexnet", 16, 2_000, 3, 8, (0,), 0, 4 / 255, 3, 0.003, 3, 3),
    "full": Sizes("alexnet", 16, 5_000, 6, 8, (0, 1, 2), 0, 4 / 255, 10, 0.001, 3, 2),
}

CONTROL = "normal longer"


def _recipes(pgd: PGDConfig, extra_epochs: int) -> dict:
    """The three networks' training recipes for ``measuring.train_and_measure``:
    the normal net, and two started from it and trained ``extra_epochs`` more
    epochs, on PGD examples (adversarial) or on clean images (the control)."""
    return {
        "normal": {},
        "adversarial": lambda seed, trained: {
            "init_model": trained["normal"].model,
            "batch_transform": pgd_transform(pgd),
            "epochs": extra_epochs,
            "variant": (
                ("pgd_linf", dataclasses.asdict(pgd)),
                ("fine_tuned_from", trained["normal"].path.name),
            ),
        },
        CONTROL: lambda seed, trained: {
            "init_model": trained["normal"].model,
            "epochs": extra_epochs,
            "variant": (("continued_from", trained["normal"].path.name),),
        },
    }


def _verdicts(groups, layers, extra_epochs: int) -> tuple[list, dict]:
    """Per quantity, the paper's claim against the control; for CID and
    concentration also the paper's (confounded) comparison and the control's
    own effect. Returns the verdicts and their numbers by key."""
    verdicts, numbers = [], {}
    for quantity, claim in (
        ("cid", "Adversarial training makes the network discard more (CID)"),
        (
            "concentration",
            "Adversarial training makes the network focus more on the foreground "
            "(concentration)",
        ),
        ("ru", "Adversarial training raises RU"),
    ):
        # The paper's claim, against the control of as many epochs.
        v, numbers[quantity] = comparisons.delta_verdict(
            groups,
            CONTROL,
            quantity,
            layers,
            expect="positive",
            claim=f"{claim}, against normal training of as many epochs",
            figure="App. F.4, Fig. 10",
            others=["adversarial"],
        )
        verdicts.append(v)
        if quantity == "ru":
            continue
        # The paper's comparison (confounded by the epochs), and the control.
        v, numbers[f"{quantity}_vs_normal"] = comparisons.delta_verdict(
            groups,
            "normal",
            quantity,
            layers,
            expect="positive",
            claim=f"{claim}, against the normal net it was fine-tuned from "
            "(the paper's comparison: twice the epochs)",
            figure="App. F.4, Fig. 10",
            others=["adversarial"],
        )
        verdicts.append(v)
        v, numbers[f"{quantity}_longer_training"] = comparisons.delta_verdict(
            groups,
            "normal",
            quantity,
            layers,
            expect="positive",
            claim=f"Control, not a claim of the paper: training {extra_epochs} "
            f"more epochs without attack raises the {quantity}",
            figure="control",
            others=[CONTROL],
        )
        verdicts.append(v)
    return verdicts, numbers


def _description(sz: Sizes, seeds, extra_epochs: int, robustness, models) -> str:
    """The report's design paragraph, with the robustness check and the test
    accuracy of every network and seed."""
    rob = "; ".join(
        f"{name}: {', '.join(f'{r:.4f}' for r in rs)}"
        for name, rs in robustness.items()
    )
    return (
        f"{sz.model} of width {sz.width}, {sz.epochs} epochs on "
        f"{sz.num_train} images; the adversarial net starts from the normal one "
        f"and trains {extra_epochs} more epochs on PGD-L∞ examples "
        f"(epsilon {sz.epsilon:.4f}, {sz.pgd_steps} steps of {sz.pgd_step_size:g}); "
        f"the control ({CONTROL}) starts from the normal one too and trains "
        f"{extra_epochs} more epochs on clean images. "
        f"Sanity check, minimal-L2 robustness (mean norm to the top-{sz.top_k} "
        f"boundaries, per seed {seeds}; higher is more robust): {rob}. Test "
        "accuracy per seed: "
        + "; ".join(
            f"{n}: {', '.join(f'{t.accuracy:.3f}' for t in ts)}"
            for n, ts in models.items()
        )
        + "."
    )


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains a normal and an adversarial network, measures, states verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    pgd = PGDConfig(epsilon=sz.epsilon, steps=sz.pgd_steps, step_size=sz.pgd_step_size)
    seeds = [options.seed + s for s in sz.seeds]
    extra_epochs = sz.finetune_epochs or sz.epochs
    groups, models = measuring.train_and_measure(
        options,
        _recipes(pgd, extra_epochs),
        seeds=seeds,
        test=test,
        images=images,
        masks=masks,
        key=jax.random.key(options.seed),
        timer=timer,
        ru_train=sz.ru_train,
        model=sz.model,
        model_kwargs={"width": sz.width},
        num_train=sz.num_train,
        epochs=sz.epochs,
    )
    robustness = measuring.robustness(models, images, sz.top_k)
    verdicts, numbers = _verdicts(groups, groups["normal"][0].layers, extra_epochs)
    return report.finish(
        folder,
        options,
        groups,
        "normal",
        verdicts,
        numbers,
        design=sz,
        timer=timer,
        title=f"{sz.model}: adversarially (PGD-L∞) vs normally trained",
        images=len(images),
        seeds=seeds,
        extra=_description(sz, seeds, extra_epochs, robustness, models),
        results={
            "pgd": dataclasses.asdict(pgd),
            "robustness_l2": robustness,
            "test_accuracy": {n: [t.accuracy for t in ts] for n, ts in models.items()},
        },
    )


register(
    Analysis(
        name="adversarial",
        summary="PGD-L∞ adversarially vs normally trained network: CID, "
        "concentration, RU",
        paper="App. F.4, Fig. 10",
        run=run,
        sizes=SIZES,
    )
)
