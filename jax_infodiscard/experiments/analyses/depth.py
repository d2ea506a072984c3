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
paired over the same test images (and solver noise).
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
    apply_design,
    register,
)
from jax_infodiscard.experiments.analyses import _common as C
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


SIZES = {
    "toy": Sizes((8, 14), (), (), 4, 128, 1, 2, False, 64),
    "fast": Sizes((20, 32), (20,), (20,), 8, 2_000, 3, 8, False, 1_000),
    "full": Sizes((20, 32), (20,), (20,), 8, 5_000, 6, 8, False, 1_000),
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


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains the ResNets and auto-encoders, measures, states the verdicts."""
    sz = apply_design(SIZES, options)
    timer = C.Timer(options.status)
    test = C.load_test(options, max(sz.num_images, 500))
    images = np.asarray(test.images[: sz.num_images])
    masks = C.masks_of(options, test, sz.num_images)
    key = jax.random.key(options.seed)
    classifiers, autoencoders = {}, {}
    for task in ("classifier", "autoencoder"):
        depths = sz.depths if task == "classifier" else sz.autoencoders
        for d in depths:
            name = f"resnet{d}" + ("_ae" if task == "autoencoder" else "")
            start = time.perf_counter()
            trained = C.train_model(
                options,
                name,
                num_train=sz.num_train,
                epochs=sz.epochs,
                model_kwargs={"width": sz.width},
                test_data=test,
            )
            timer.lap("train_s", start)
            layers = encoder_layers(d, sz.mid_blocks)
            if task == "classifier":
                layers = (*layers, "logits")
            ru = task == "classifier" and d in sz.ru_depths
            dec_dir = C.decoder_dir(trained, sz.ru_train, options) if ru else None
            m = C.measure(
                name,
                trained.model,
                layers,
                images,
                masks,
                options,
                key=key,
                ru_images=trained.train_data.images[: sz.ru_train] if ru else None,
                decoder_dir=dec_dir,
                timer=timer,
                info={
                    "test_accuracy": trained.accuracy,
                    "test_loss": (trained.history.get("test_loss") or [None])[-1],
                },
            )
            (classifiers if task == "classifier" else autoencoders)[d] = m
    verdicts, numbers = _verdicts(classifiers, autoencoders, sz)
    _figures(folder, classifiers, autoencoders)
    measured = [*classifiers.values(), *autoencoders.values()]
    results = {
        "design": dataclasses.asdict(sz),
        "networks": {m.name: m.summary() for m in measured},
        "comparisons": numbers,
        "seconds": {**timer.seconds, "total_s": timer.total()},
    }
    notes = "\n\n".join(
        [
            C.setting_text(
                options,
                images=len(images),
                seeds=[options.seed],
                extra=f"ResNets of width {sz.width}, {sz.epochs} epochs on "
                f"{sz.num_train} images; "
                + (
                    "RU decoders for "
                    + ", ".join(f"ResNet-{d}" for d in sz.ru_depths)
                    + f" trained on {sz.ru_train} images."
                    if sz.ru_depths and sz.ru_train
                    else "no RU at this scale."
                ),
            ),
            "![curves](curves.png)\n\n![differences](differences.png)",
            "Regime diagnostics per network and layer:\n\n"
            + C.diagnostics_table(measured),
        ]
    )
    return AnalysisResult(results=results, verdicts=tuple(verdicts), notes=notes)


def _verdicts(classifiers, autoencoders, sz: Sizes):
    verdicts, numbers = [], {}
    # 1. CID rises within one network: last stage minus first layer, and no
    #    step that falls significantly.
    outcomes, texts = [], []
    for d, m in classifiers.items():
        enc = [x for x in m.layers if x != "logits"]
        rise, rise_text, _ = C.combine_seeds(
            [m.at("cid", enc[-1]) - m.at("cid", enc[0])], expect="positive"
        )
        falls = [
            C.paired_outcome(m.at("cid", b) - m.at("cid", a), expect="positive")[0]
            for a, b in itertools.pairwise(enc)
        ]
        o = rise if rise != "held" or "did not hold" not in falls else "inconclusive"
        outcomes.append(o)
        texts.append(
            f"resnet{d}: {enc[-1]} − {enc[0]} = {rise_text}, "
            f"{falls.count('did not hold')} of {len(falls)} steps fall"
        )
        numbers[f"rise_resnet{d}"] = {"outcome": o, "steps": falls}
    verdicts.append(
        C.verdict(
            "CID rises from block to block within one network",
            "Sec. 4, Fig. 3b, 5a",
            "; ".join(texts),
            C.all_of(outcomes),
            "per net: CID(last stage) − CID(conv1) > 2 SE over images and no "
            "step between analysed blocks falls by > 2 SE; held if every net",
        )
    )
    # 2. Deeper nets discard more (CID, and RU where measured), at the stages.
    depths = sorted(classifiers)
    for q, fig in (("cid", "Fig. 5a"), ("ru", "Fig. 5b")):
        outcomes, texts = [], []
        for a, b in itertools.pairwise(depths):
            ma, mb = classifiers[a], classifiers[b]
            if ma.values(q) is None or mb.values(q) is None:
                continue
            diff = np.mean([mb.at(q, s) - ma.at(q, s) for s in STAGES], axis=0)
            o, text, rows = C.combine_seeds([diff], expect="positive")
            outcomes.append(o)
            texts.append(f"resnet{b} − resnet{a}: {text}")
            numbers[f"deeper_{q}_{b}_vs_{a}"] = rows
        if not outcomes:
            continue
        verdicts.append(
            C.verdict(
                f"A deeper network discards more ({q.upper()} at the stage outputs)",
                fig,
                "; ".join(texts),
                C.all_of(outcomes),
                "per pair of depths: mean over stage1..3 of the per-image "
                "difference deeper − shallower > 2 SE over images",
            )
        )
    # 3. Classification and reconstruction curves look alike.
    outcomes, texts = [], []
    for d, ae in autoencoders.items():
        if d not in classifiers:
            continue
        cl = classifiers[d]
        enc = [x for x in ae.layers if x in cl.layers]
        a = np.array([float(np.mean(cl.at("cid", x))) for x in enc])
        b = np.array([float(np.mean(ae.at("cid", x))) for x in enc])
        r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan
        o = "held" if r >= 0.8 else "did not hold" if r < 0 else "inconclusive"
        if not np.isfinite(r):
            o = "inconclusive"
        outcomes.append(o)
        texts.append(f"resnet{d}: r = {r:+.2f} over {len(enc)} layers")
        numbers[f"alike_resnet{d}"] = {"pearson": r, "layers": enc}
    if outcomes:
        verdicts.append(
            C.verdict(
                "The CID curves of classification and reconstruction look alike",
                "Sec. 4, Fig. 5a",
                "; ".join(texts),
                C.all_of(outcomes),
                "Pearson r of the layer-wise mean CID of classifier and "
                "auto-encoder over the shared encoder layers: held if r >= 0.8, "
                "did not hold if r < 0, else inconclusive",
            )
        )
    return verdicts, numbers


def _figures(folder, classifiers, autoencoders):
    measured = [*classifiers.values(), *autoencoders.values()]
    C.plot_curves(
        folder,
        "curves.png",
        C.curve_panels(measured),
        title="ResNets and ResNet auto-encoders: layer-wise CID, concentration, RU",
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
    C.plot_curves(
        folder,
        "differences.png",
        panels,
        title="Differences between networks",
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
