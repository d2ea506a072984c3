"""RU with 6- versus 8-block decoders (paper App. J): do the maps change?

Trains (or reuses) the demo model on the embedded data, then one decoder per
layer with 6 and with 8 residual blocks, computes pixel-wise RU with each on
the same test images and key, and reports per layer the pixel correlation of
the two RU maps, the gap in mean RU, and each decoder's held-out MSE (table +
JSON). As a noise floor, the 6-block RU is also recomputed with another solver
key: the 6-vs-8 correlation should be close to this same-decoder correlation.
The fraction of (image, layer) solves whose lambda search converged is
reported for each run.

Usage: ``python benchmarks/bench_ru_decoders.py [--images 4] [--steps 600]
[--width 16]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard.data import load_synthetic
from jax_infodiscard.experiments.cache import load_or_train_decoder
from jax_infodiscard.models import feature_fn
from jax_infodiscard.models.decoder import decoder_fn
from jax_infodiscard.training.decoder import DecoderConfig
from jax_infodiscard.training.train import TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument(
        "--layers", nargs="*", default=None, help="default: the model's layers"
    )
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cache", default="out/cache")
    ap.add_argument("--out", default="bench_ru_decoders.json")
    args = ap.parse_args()

    cache = pathlib.Path(args.cache)
    tr, te = load_synthetic("train", 10_000), load_synthetic("test", 1_000)
    model, hist = train(
        args.model,
        (tr.images, tr.labels),
        (te.images, te.labels),
        TrainConfig(epochs=args.epochs, progress=False),
        checkpoint_dir=cache / f"{args.model}-e{args.epochs}",
        num_classes=10,
    )
    layers = tuple(args.layers or model.default_layers)
    fn = feature_fn(model, layers)
    images = te.images[: args.images]
    key = jax.random.key(0)
    results, mses = {}, {}
    for blocks in (6, 8):
        cfg = DecoderConfig(num_blocks=blocks, steps=args.steps, width=args.width)
        decs = {}
        for i, name in enumerate(layers):
            dec, m = load_or_train_decoder(
                fn,
                name,
                tr.images[:4000],
                cfg,
                key=jax.random.key(100 + i),
                checkpoint_dir=cache / f"{args.model}-decoders-{blocks}",
                progress=False,
            )
            decs[name] = decoder_fn(dec)
            mses[(blocks, name)] = float(m.eval_mse)
        results[blocks] = jid.ru(fn, decs, images, key, layers=layers).to_numpy()
        if blocks == 6:
            results["floor"] = jid.ru(
                fn, decs, images, jax.random.key(1), layers=layers
            ).to_numpy()

    def corr(a, b):
        return float(
            np.mean(
                [
                    np.corrcoef(p.ravel(), q.ravel())[0, 1]
                    for p, q in zip(a, b, strict=True)
                ]
            )
        )

    rows = []
    for l, name in enumerate(layers):
        six, eight = results[6].pixel[l], results[8].pixel[l]
        rows.append(
            dict(
                layer=name,
                corr=corr(six, eight),
                corr_floor=corr(six, results["floor"].pixel[l]),
                converged_6=float(results[6].converged[l].mean()),
                converged_8=float(results[8].converged[l].mean()),
                mean_ru_6=float(results[6].mean[l].mean()),
                mean_ru_8=float(results[8].mean[l].mean()),
                mse_6=mses[(6, name)],
                mse_8=mses[(8, name)],
            )
        )
    print(
        f"model {args.model} (test accuracy {hist['test_accuracy'][-1]:.3f}), "
        f"{args.images} images, decoders trained {args.steps} steps"
    )
    print(
        f"{'layer':>10s} {'corr6v8':>7s} {'floor':>6s} {'RU6':>7s} {'RU8':>7s} "
        f"{'mse6':>9s} {'mse8':>9s} {'conv6':>5s} {'conv8':>5s}"
    )
    for r in rows:
        print(
            f"{r['layer']:>10s} {r['corr']:7.3f} {r['corr_floor']:6.3f} "
            f"{r['mean_ru_6']:7.3f} {r['mean_ru_8']:7.3f} {r['mse_6']:9.2e} "
            f"{r['mse_8']:9.2e} {r['converged_6']:5.2f} {r['converged_8']:5.2f}"
        )
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
