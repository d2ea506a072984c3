"""``analyze compression``: magnitude pruning and robustness (Fig. 7a, App. F.2).

The paper compresses a trained VGG-16 by magnitude pruning (Han et al.
2016) at several thresholds, fine-tunes it, and finds that

1. compression decreases the CID of the features (Fig. 7a);
2. compression does not significantly change RU and concentration (Fig. 7a);
3. a higher CID of the last layer goes with a higher adversarial
   robustness, the mean L2 norm of the smallest perturbations towards the
   top-k wrong classes (App. F.2, Table 3).

Here the original network is pruned globally
(:func:`~jax_infodiscard.models.surgery.prune`) at each sparsity, then
fine-tuned with the pruned weights held at zero
(:func:`~jax_infodiscard.models.surgery.mask_updates`); the robustness is
:func:`~jax_infodiscard.evaluation.robustness.minimal_l2_attack`'s.
"""

from __future__ import annotations

import dataclasses

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
from jax_infodiscard.models.surgery import kernel_sparsity, mask_updates, prune

# Fine-tuning after pruning: a tenth of the learning rate, no warm-up.
FINETUNE = {"learning_rate": 3e-4, "warmup_epochs": 0.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design at one scale: model and width, training images and epochs,
    sparsities (fractions of kernel weights removed), fine-tuning epochs,
    analysed images, seeds (offsets of ``options.seed``), RU decoders'
    training images (0: no RU), targets of the robustness attack, and the
    stated tolerance: a fine-tuned net's test accuracy must be within it
    of the original's."""

    model: str
    width: int
    num_train: int
    epochs: int
    sparsities: tuple[float, ...]
    finetune_epochs: int
    num_images: int
    seeds: tuple[int, ...]
    ru_train: int
    top_k: int
    accuracy_tolerance: float


# The paper's nets kept 38.0%, 12.8% and 8.0% of the parameters.
SIZES = {
    "toy": Sizes("convnet", 4, 256, 2, (0.5,), 1, 2, (0,), 0, 1, 0.15),
    "fast": Sizes("vgg11", 8, 2_000, 4, (0.62, 0.92), 1, 8, (0,), 0, 3, 0.1),
    # Full: three seeds; RU is opt-in (``ru_train``): decoders for 4
    # networks x 3 seeds would take the run far past the 30-minute budget.
    "full": Sizes(
        "vgg11", 16, 5_000, 6, (0.62, 0.872, 0.92), 2, 8, (0, 1, 2), 0, 3, 0.05
    ),
}


def _pruned(sparsity: float, epochs: int):
    """``train_and_measure`` kwargs of the net pruned from this seed's original."""

    def kwargs(seed, trained):
        original = trained["original"]
        model, masks = prune(original.model, sparsity)
        return {
            "init_model": model,
            "extra_transform": mask_updates(masks),
            "epochs": epochs,
            "train": FINETUNE,
            "variant": (
                ("pruned_from", original.path.name),
                ("sparsity", sparsity),
            ),
        }

    return kwargs


def _pruning(models, names, sz: Sizes) -> dict:
    """Per pruned net (``names``, in the order of ``sz.sparsities``): the
    requested and achieved global sparsity (fractions), test accuracy per
    seed beside the original's, and whether it stayed within tolerance."""
    return {
        name: {
            "requested": sparsity,
            "achieved": [kernel_sparsity(t.model)["global"] for t in models[name]],
            "test_accuracy": [t.accuracy for t in models[name]],
            "original_accuracy": [t.accuracy for t in models["original"]],
            "accuracy_within_tolerance": [
                t.accuracy >= o.accuracy - sz.accuracy_tolerance
                for t, o in zip(models[name], models["original"], strict=True)
            ],
        }
        for name, sparsity in zip(names, sz.sparsities, strict=True)
    }


def _verdicts(groups, robustness, seeds, top_k: int) -> tuple[list, dict]:
    """ΔCID < 0, no change of concentration and RU, and last-layer CID vs
    robustness (minimal L2 norms per network and seed). Returns the verdicts
    and their numbers by key."""
    layers = groups["original"][0].layers
    last = layers[-1]
    verdicts, numbers = [], {}
    v, numbers["cid"] = comparisons.delta_verdict(
        groups,
        "original",
        "cid",
        layers,
        expect="negative",
        claim="Compression decreases the CID of the features",
        figure="Sec. 4, Fig. 7a",
    )
    verdicts.append(v)
    for quantity in ("concentration", "ru"):
        v, numbers[quantity] = comparisons.no_change_verdict(
            groups,
            "original",
            quantity,
            layers,
            claim=f"Compression does not significantly change the {quantity}",
            figure="Sec. 4, Fig. 7a",
        )
        verdicts.append(v)
    # 3. Across networks, the last layer's CID and the robustness rank alike.
    v, numbers["cid_vs_robustness"] = comparisons.correlation_verdict(
        [
            [float(np.mean(ms[i].at("cid", last))) for ms in groups.values()]
            for i in range(len(seeds))
        ],
        [[rs[i] for rs in robustness.values()] for i in range(len(seeds))],
        seeds,
        claim=f"A higher CID of the last layer ({last}) goes with a higher "
        "adversarial robustness",
        figure="App. F.2, Table 3",
        between="mean last-layer CID and robustness",
        items="networks",
        detail=f"robustness (mean minimal L2 norm to the top-{top_k} "
        "boundaries, per seed): "
        + "; ".join(
            f"{n}: {', '.join(f'{r:.4f}' for r in rs)}" for n, rs in robustness.items()
        ),
    )
    verdicts.append(v)
    return verdicts, numbers


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains, prunes and fine-tunes, measures CID and robustness, verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test, images, masks = networks.analysed_images(options, sz.num_images)
    seeds = [options.seed + s for s in sz.seeds]
    variants = {"original": {}} | {
        f"pruned {p:.0%}": _pruned(p, sz.finetune_epochs) for p in sz.sparsities
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
        model=sz.model,
        model_kwargs={"width": sz.width},
        num_train=sz.num_train,
        epochs=sz.epochs,
    )
    pruning = _pruning(models, list(variants)[1:], sz)
    robustness = measuring.robustness(models, images, sz.top_k)
    verdicts, numbers = _verdicts(groups, robustness, seeds, sz.top_k)
    return report.finish(
        folder,
        options,
        groups,
        "original",
        verdicts,
        numbers,
        design=sz,
        timer=timer,
        title=f"{sz.model}: original and magnitude-pruned (fine-tuned)",
        images=len(images),
        seeds=seeds,
        extra=f"{sz.model} of width {sz.width}, {sz.epochs} epochs on "
        f"{sz.num_train} images; pruned globally at {list(sz.sparsities)} and "
        f"fine-tuned {sz.finetune_epochs} epoch(s) with the pruned weights held "
        f"at zero. Fine-tuned test accuracy must stay within "
        f"{sz.accuracy_tolerance:.2f} of the original's: "
        + "; ".join(
            f"{n}: {p['test_accuracy']} vs {p['original_accuracy']}"
            for n, p in pruning.items()
        )
        + ".",
        results={"pruning": pruning, "robustness_l2": robustness},
    )


register(
    Analysis(
        name="compression",
        summary="magnitude pruning + fine-tuning: ΔCID, ΔRU, Δconcentration, "
        "and CID vs minimal-L2 adversarial robustness",
        paper="Sec. 4, Fig. 7a; App. F.2, Table 3",
        run=run,
        sizes=SIZES,
    )
)
