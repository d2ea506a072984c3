"""``analyze depth``: CID and RU per block in ResNets of several depths (Fig. 3b, 5a-b).

The paper trains ResNet-20/32/44 classifiers and auto-encoders with the same
encoders (Sec. 4, "Comparisons between different DNNs") and finds that

1. CID rises from block to block within one network (Sec. 4, Fig. 3b);
2. a deeper network discards more: higher CID and RU (Fig. 5a-b);
3. the CID curve of classification and that of reconstruction look alike.

Here the networks are the zoo's CIFAR ResNets and ResNet auto-encoders
(``resnet{d}``, ``resnet{d}_ae``), trained on the same data. Networks of
different depths are compared at the outputs of their three stages
(``stage1..3``: the same positions in every depth); every comparison is
paired over the same test images (and solver noise). Every network is
trained once per training seed (``seeds``), and the verdicts count seeds
(:mod:`~jax_infodiscard.experiments.analyses.verdicts`); the figures show
the first seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import jax
import numpy as np

from jax_infodiscard.experiments.analyses import (
    Analysis,
    AnalysisOptions,
    AnalysisResult,
    Verdict,
    apply_design,
    comparisons,
    figures,
    measuring,
    networks,
    register,
    report,
)
from jax_infodiscard.experiments.analyses.verdicts import correlation_outcome
from jax_infodiscard.experiments.rundir import RunFolder


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Design of the analysis at one scale.

    Attributes:
      depths: classifier depths (6n + 2).
      autoencoders: depths that also get an auto-encoder.
      ru_depths: classifier depths whose RU is measured.
      width: channels of the first stage.
      num_train: training images.
      epochs: training epochs.
      num_images: analysed test images.
      mid_blocks: also analyse the middle block of each stage.
      ru_train: training images of each RU decoder.
      seeds: training seeds (offsets of ``options.seed``); every network
        is trained once per seed.
    """

    depths: tuple[int, ...]
    autoencoders: tuple[int, ...]
    ru_depths: tuple[int, ...]
    width: int
    num_train: int
    epochs: int
    num_images: int
    mid_blocks: bool
    ru_train: int
    seeds: tuple[int, ...] = (0,)


# Full: three seeds of every network; to stay near the 30-minute budget the
# analysed images are 4 and RU is opt-in (``ru_depths``), see the module doc.
SIZES = {
    "toy": Sizes((8, 14), (), (), 4, 128, 1, 2, False, 64),
    "fast": Sizes((20, 32), (20,), (20,), 8, 2_000, 3, 8, False, 1_000),
    "full": Sizes((20, 32), (20,), (), 8, 5_000, 6, 4, False, 1_000, (0, 1, 2)),
}


def encoder_layers(depth: int, mid_blocks: bool) -> tuple[str, ...]:
    """``conv1``, (middle blocks,) ``stage1..3`` of a ResNet-``depth``.

    >>> encoder_layers(20, True)
    ('conv1', 'block1_2', 'stage1', 'block2_2', 'stage2', 'block3_2', 'stage3')
    """
    n = (depth - 2) // 6
    out = ["conv1"]
    for s in (1, 2, 3):
        mid = (n + 1) // 2
        if mid_blocks and mid < n:
            out.append(f"block{s}_{mid}")
        out.append(f"stage{s}")
    return tuple(out)


STAGES = ("stage1", "stage2", "stage3")


def _measure_all(options, sz: Sizes, seeds, test, images, masks, key, timer):
    """Trains every classifier and auto-encoder with every seed and measures
    it. Returns ``(classifiers, autoencoders)``: depth -> one
    ``measuring.Measured`` per seed."""
    classifiers: dict[int, list[measuring.Measured]] = {}
    autoencoders: dict[int, list[measuring.Measured]] = {}
    for seed in seeds:
        for task in ("classifier", "autoencoder"):
            depths = sz.depths if task == "classifier" else sz.autoencoders
            for d in depths:
                name = f"resnet{d}" + ("_ae" if task == "autoencoder" else "")
                start = time.perf_counter()
                trained = networks.train_model(
                    options,
                    name,
                    num_train=sz.num_train,
                    epochs=sz.epochs,
                    seed=seed,
                    model_kwargs={"width": sz.width},
                    test_data=test,
                )
                timer.lap("train_s", start)
                layers = encoder_layers(d, sz.mid_blocks)
                if task == "classifier":
                    layers = (*layers, "logits")
                ru = task == "classifier" and d in sz.ru_depths
                m = measuring.measure_trained(
                    name,
                    trained,
                    layers,
                    images,
                    masks,
                    options,
                    key=key,
                    timer=timer,
                    info={"seed": seed},
                    ru_train=sz.ru_train if ru else 0,
                )
                home = classifiers if task == "classifier" else autoencoders
                home.setdefault(d, []).append(m)
    return classifiers, autoencoders


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains the ResNets and auto-encoders, measures, states the verdicts."""
    sz = apply_design(SIZES, options)
    timer = networks.Timer(options.status)
    test = networks.load_test(options, max(sz.num_images, 500))
    images = np.asarray(test.images[: sz.num_images])
    masks = networks.masks_of(options, test, sz.num_images)
    key = jax.random.key(options.seed)
    seeds = [options.seed + s for s in sz.seeds]
    classifiers, autoencoders = _measure_all(
        options, sz, seeds, test, images, masks, key, timer
    )
    verdicts, numbers = _verdicts(classifiers, autoencoders, seeds)
    _figures(folder, classifiers, autoencoders, seeds[0])
    measured = [m for ms in (*classifiers.values(), *autoencoders.values()) for m in ms]
    labels = [
        m.name if len(seeds) == 1 else f"{m.name} (seed {m.info['seed']})"
        for m in measured
    ]
    results = {
        "design": dataclasses.asdict(sz),
        "seeds": seeds,
        "networks": {
            label: m.summary() for label, m in zip(labels, measured, strict=True)
        },
        "comparisons": numbers,
        "solver": report.solver_record(options),
        "seconds": {**timer.seconds, "total_s": timer.total()},
    }
    notes = "\n\n".join(
        [
            report.setting_text(
                options,
                images=len(images),
                seeds=seeds,
                extra=f"ResNets of width {sz.width}, {sz.epochs} epochs on "
                f"{sz.num_train} images, each trained with every seed; "
                + (
                    "RU decoders for "
                    + ", ".join(f"ResNet-{d}" for d in sz.ru_depths)
                    + f" trained on {sz.ru_train} images."
                    if sz.ru_depths and sz.ru_train
                    else "no RU in this design."
                ),
            ),
            "![curves](curves.png)\n\n![differences](differences.png)",
            "Regime diagnostics per network and layer:\n\n"
            + report.diagnostics_table(measured, labels),
        ]
    )
    return AnalysisResult(results=results, verdicts=tuple(verdicts), notes=notes)


def _rise_verdict(classifiers, seeds) -> tuple[Verdict, dict]:
    """Claim 1: per classifier, CID(last stage) − CID(first layer) > 0 and no
    step between analysed blocks falls (two-level rule over seeds)."""
    outcomes, alone, texts, numbers = [], [], [], {}
    for d, ms in classifiers.items():
        enc = [x for x in ms[0].layers if x != "logits"]

        def step(a, b, ms=ms):
            return comparisons.combine_seeds(
                [m.at("cid", b) - m.at("cid", a) for m in ms],
                expect="positive",
                seeds=seeds,
            )

        rise = step(enc[0], enc[-1])
        falls = [step(a, b) for a, b in itertools.pairwise(enc)]
        fell = [f.outcome == "did not hold" for f in falls]
        fell_alone = [f.alone == "did not hold" for f in falls]
        o = rise.outcome if rise.outcome != "held" or not any(fell) else "inconclusive"
        a1 = (
            rise.alone
            if rise.alone != "held" or not any(fell_alone)
            else ("inconclusive")
        )
        outcomes.append(o)
        alone.append(a1)
        texts.append(
            f"resnet{d}: {enc[-1]} − {enc[0]}: {rise.text()}; {sum(fell)} of "
            f"{len(falls)} steps fall over seeds"
        )
        numbers[f"rise_resnet{d}"] = {
            "outcome": o,
            "rise": rise.row(),
            "steps": [f.row() for f in falls],
        }
    verdict = comparisons.verdict(
        "CID rises from block to block within one network",
        "Sec. 4, Fig. 3b, 5a",
        "; ".join(texts),
        comparisons.all_of(outcomes),
        "per net: CID(last stage) − CID(conv1) > 0 and no step between "
        "analysed blocks falls (each by the rule "
        f"{comparisons.SEED_RULE}); held if every net",
        comparisons.all_of(alone),
        seeds[0],
    )
    return verdict, numbers


def _deeper_verdicts(classifiers, seeds) -> tuple[list[Verdict], dict]:
    """Claim 2: each deeper classifier discards more than the next shallower
    one (CID, and RU where measured), pooled over the stage outputs."""
    verdicts, numbers = [], {}
    depths = sorted(classifiers)
    for q, fig in (("cid", "Fig. 5a"), ("ru", "Fig. 5b")):
        results = {}
        for a, b in itertools.pairwise(depths):
            paired = comparisons.paired_over_seeds(
                classifiers[a], classifiers[b], q, STAGES
            )
            if paired is None:
                continue
            results[(a, b)] = comparisons.combine_seeds(
                paired[0], expect="positive", seeds=seeds, mc=paired[1]
            )
            numbers[f"deeper_{q}_{b}_vs_{a}"] = results[(a, b)].row()
        if not results:
            continue
        verdicts.append(
            comparisons.verdict(
                f"A deeper network discards more ({q.upper()} at the stage outputs)",
                fig,
                "; ".join(
                    f"resnet{b} − resnet{a}: {r.text()}"
                    for (a, b), r in results.items()
                ),
                comparisons.all_of([r.outcome for r in results.values()]),
                "per pair of depths: mean over stage1..3 of the per-image "
                f"difference deeper − shallower > 0; {comparisons.SEED_RULE}",
                comparisons.all_of([r.alone for r in results.values()]),
                seeds[0],
            )
        )
    return verdicts, numbers


def _alike_verdict(classifiers, autoencoders, seeds) -> tuple[Verdict | None, dict]:
    """Claim 3: per depth with both, the layer-wise mean CID of classifier and
    auto-encoder correlate (Pearson r per seed). None without such a pair."""
    outcomes, alone, texts, numbers = [], [], [], {}
    for d, aes in autoencoders.items():
        if d not in classifiers:
            continue
        rs = []
        for cl, ae in zip(classifiers[d], aes, strict=True):
            enc = [x for x in ae.layers if x in cl.layers]
            a = np.array([float(np.mean(cl.at("cid", x))) for x in enc])
            b = np.array([float(np.mean(ae.at("cid", x))) for x in enc])
            ok = a.std() > 0 and b.std() > 0
            rs.append(float(np.corrcoef(a, b)[0, 1]) if ok else float("nan"))
        outcomes.append(correlation_outcome(rs))
        alone.append(correlation_outcome(rs[:1], min_seeds=1))
        texts.append(
            f"resnet{d}: r = "
            + ", ".join(f"{r:+.2f} (seed {s})" for s, r in zip(seeds, rs, strict=True))
            + f" over {len(enc)} layers"
        )
        numbers[f"alike_resnet{d}"] = {"pearson_per_seed": rs, "layers": enc}
    if not outcomes:
        return None, numbers
    verdict = comparisons.verdict(
        "The CID curves of classification and reconstruction look alike",
        "Sec. 4, Fig. 5a",
        "; ".join(texts),
        comparisons.all_of(outcomes),
        "Pearson r of the layer-wise mean CID of classifier and "
        "auto-encoder over the shared encoder layers, per seed: held if "
        "every seed's r > 0 and their mean ≥ 0.8, did not hold if every "
        "r ≤ 0, else inconclusive (also with one seed)",
        comparisons.all_of(alone),
        seeds[0],
    )
    return verdict, numbers


def _verdicts(classifiers, autoencoders, seeds):
    """The three claims' verdicts (in order) and their numbers by key."""
    rise, numbers = _rise_verdict(classifiers, seeds)
    deeper, more = _deeper_verdicts(classifiers, seeds)
    alike, most = _alike_verdict(classifiers, autoencoders, seeds)
    verdicts = [rise, *deeper, *([] if alike is None else [alike])]
    return verdicts, numbers | more | most


def _figures(folder, classifiers, autoencoders, seed):
    classifiers = {d: ms[0] for d, ms in classifiers.items()}
    autoencoders = {d: ms[0] for d, ms in autoencoders.items()}
    measured = [*classifiers.values(), *autoencoders.values()]
    figures.plot_curves(
        folder,
        "curves.png",
        figures.curve_panels(measured),
        title="ResNets and ResNet auto-encoders: layer-wise CID, concentration, RU "
        f"(seed {seed})",
    )
    depths = sorted(classifiers)
    base = classifiers[depths[0]]
    panels = {}
    for q, label in (("cid", "ΔCID"), ("ru", "ΔRU"), ("concentration", "Δconc.")):
        lines = {}
        for d in depths[1:]:
            m = classifiers[d]
            if m.values(q) is None or base.values(q) is None:
                continue
            lines[f"resnet{d} − resnet{depths[0]}"] = (
                STAGES,
                np.stack([m.at(q, s) - base.at(q, s) for s in STAGES]),
            )
        for d, ae in autoencoders.items():
            if d in classifiers and q != "ru" and ae.values(q) is not None:
                cl = classifiers[d]
                enc = [x for x in ae.layers if x in cl.layers]
                lines[f"resnet{d}_ae − resnet{d}"] = (
                    enc,
                    np.stack([ae.at(q, x) - cl.at(q, x) for x in enc]),
                )
        if lines:
            panels[f"{label} (paired over images)"] = lines
    figures.plot_curves(
        folder,
        "differences.png",
        panels,
        title=f"Differences between networks (seed {seed})",
        zero_line=list(panels),
    )


register(
    Analysis(
        name="depth",
        summary="CID and RU per block in ResNets of several depths and their "
        "auto-encoders",
        paper="Sec. 4, Fig. 3b and 5a-b",
        run=run,
        sizes=SIZES,
    )
)
