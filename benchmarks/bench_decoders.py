"""RU decoder training cost against held-out quality, on the demo's convnet.

For the trained demo model (``DemoConfig().model_spec()``, from the shared
cache) and its four default layers, trains one RU decoder per layer on the
demo's decoder images and reports, per configuration and layer, the held-out
MSE divided by the image variance (1 = no better than the mean image) and
the wall time: the steady-state time per step and the fixed part (the
compilation, the feature statistics and the held-out evaluation: the whole
run minus the steps after the first).

* Modes: ``separate``, one :func:`train_decoder` run per layer, as the demo
  trained them before; ``joint``, one :func:`train_decoders` run for the four
  layers (one forward pass of the network and one compiled step for all
  decoders).
* Grid: along one axis at a time from the demo's old default (300 steps,
  width 16, batch 32, peak learning rate 3e-3, cosine). ``--quick`` (60
  steps, 1,000 images) compares the modes, width 8 and learning rate 1e-2;
  the full run (4,000 images) trains the old default for 300 steps, then
  learning rate 1e-2 for 150 and 300 steps. (On the project's shared 2-core
  machine, at a load average of 9-12, a 300-step run of the four decoders
  took 10 minutes, so the grid stops there: width 32 and the batch-size axis
  were not measured.) Every run starts from empty compilation caches
  (``jax.clear_caches``), as a fresh demo does.
* The machine is shared: the load average is recorded before and after each
  run, the reference (joint, old default) runs first and again, with another
  key, last; times are reported as ratios to the first reference, and the two
  references give the run-to-run spread of the MSE ratios and of the times.

* ``--grid readout`` (issue 21): per layer, at each budget of ``--steps``,
  the decoder with its closed-form local and dense ridge readouts (the
  default, ``readout s{N}``), with the local readout only (``local s{N}``)
  and without readout (``no readout s{N}``); the readout alone (the decoder
  before training), the mean image's error and the verdict of each decoder;
  and, unless ``--no-dense``, the dense ridge baseline
  (:func:`dense_ridge`). ``--only`` picks runs by label. ``--model vgg11``
  for VGG-11 (docs/decoders.md).

Usage::

    python benchmarks/bench_decoders.py --grid readout --steps 300,1000,3000 \
        --only "readout s300,readout s1000,readout s3000" \
        --out docs/results/bench_decoders_readout.json
    python benchmarks/bench_decoders.py --quick     # 5-15 minutes
    python benchmarks/bench_decoders.py --out docs/results/bench_decoders.json
    python benchmarks/bench_decoders.py --grid batch --out batch.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

from jax_infodiscard.experiments.cache import train_or_load
from jax_infodiscard.experiments.demo import DemoConfig
from jax_infodiscard.models import feature_fn as make_feature_fn
from jax_infodiscard.training.decoder import (
    DecoderConfig,
    train_decoder,
    train_decoders,
)

OLD_DEFAULT = dict(
    steps=300,
    width=16,
    batch_size=32,
    learning_rate=3e-3,
    readout_kernel=0,
    dense_readout=False,
)
"""The demo's decoder settings before this benchmark (issue 12)."""


NEW_DEFAULT = dict(learning_rate=1e-2)
"""The demo's decoder settings since (changes from OLD_DEFAULT)."""

LOCAL_READOUT = dict(learning_rate=1e-2, readout_kernel=3)
"""The demo's decoder settings of issue 21's first stage: a closed-form local
ridge readout."""

READOUT = dict(learning_rate=1e-2, readout_kernel=3, dense_readout=True)
"""The demo's decoder settings since: local and dense ridge readouts."""


def runs(
    quick: bool, grid: str = "default", steps: tuple[int, ...] = (300,)
) -> list[tuple[str, str, dict, int]]:
    """``(label, mode, changes from OLD_DEFAULT, seed)`` in the order run."""
    if grid == "readout":
        # Issue 21: the decoder with its local and dense ridge readouts,
        # with the local one only, and without, at each budget; the readouts
        # alone are each run's step 0 (``--only`` picks runs).
        out = []
        for n in steps:
            out.append((f"readout s{n}", "joint", {**READOUT, "steps": n}, 0))
            out.append((f"local s{n}", "joint", {**LOCAL_READOUT, "steps": n}, 0))
            out.append((f"no readout s{n}", "joint", {**NEW_DEFAULT, "steps": n}, 0))
        return out
    if grid == "batch":
        # The batch-size axis around the new default: half the batch at the
        # same steps (half the images seen), and twice the batch at half the
        # steps (the same images seen).
        return [
            ("reference", "joint", NEW_DEFAULT, 0),
            ("batch 16", "joint", {**NEW_DEFAULT, "batch_size": 16}, 0),
            (
                "batch 64 s150",
                "joint",
                {**NEW_DEFAULT, "batch_size": 64, "steps": 150},
                0,
            ),
        ]
    if quick:
        return [
            ("reference", "joint", {"steps": 60}, 0),
            ("old default", "separate", {"steps": 60}, 0),
            ("width 8", "joint", {"steps": 60, "width": 8}, 0),
            ("lr 1e-2", "joint", {"steps": 60, "learning_rate": 1e-2}, 0),
            ("reference", "joint", {"steps": 60}, 1),
        ]
    return [
        ("reference", "joint", {}, 0),
        ("lr1e-2 s150", "joint", {"learning_rate": 1e-2, "steps": 150}, 0),
        ("lr 1e-2", "joint", {"learning_rate": 1e-2}, 0),
    ]


def _step_seconds(metrics) -> float:
    """Seconds per steady-state step (0 for a run of one step, which times
    none: ``--steps 1`` gives the readouts alone)."""
    rate = metrics.steps_per_second
    return 1.0 / rate if rate > 0 else 0.0


def one_run(fn, layers, images, cfg, mode: str, seed: int) -> dict:
    """Trains the decoders of ``layers`` once; returns the row of the report."""
    jax.clear_caches()
    load_before = os.getloadavg()
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    if mode == "joint":
        _, metrics = train_decoders(
            fn, layers, images, cfg, key=jax.random.fold_in(key, 100), progress=False
        )
        step_s = _step_seconds(metrics[layers[0]])
        step_parts = {"all": step_s}
    else:
        metrics, step_parts = {}, {}
        for i, name in enumerate(layers):
            _, metrics[name] = train_decoder(
                fn,
                name,
                images,
                cfg,
                key=jax.random.fold_in(key, 100 + i),
                progress=False,
            )
            step_parts[name] = _step_seconds(metrics[name])
        step_s = sum(step_parts.values())
    seconds = time.perf_counter() - t0
    steps_s = (cfg.steps - 1) * step_s
    return {
        "mode": mode,
        "seed": seed,
        "config": {k: getattr(cfg, k) for k in OLD_DEFAULT},
        "seconds": seconds,
        "step_s": step_s,
        "step_s_parts": step_parts,
        "fixed_s": seconds - steps_s,
        "mse_over_var": {
            name: m.heldout_mse / m.image_variance for name, m in metrics.items()
        },
        "heldout_mse": {name: m.heldout_mse for name, m in metrics.items()},
        "ridge_over_var": {
            name: None if m.ridge_mse is None else m.ridge_mse / m.image_variance
            for name, m in metrics.items()
        },
        "constant_over_var": {
            name: m.constant_mse / m.image_variance for name, m in metrics.items()
        },
        "mse_over_constant": {name: m.mse_over_constant for name, m in metrics.items()},
        "verdict": {name: m.verdict for name, m in metrics.items()},
        "ridge_penalty": {name: m.ridge_penalty for name, m in metrics.items()},
        "dense_penalty": {name: m.dense_penalty for name, m in metrics.items()},
        "kept_readout": {name: m.kept_readout for name, m in metrics.items()},
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def print_row(label: str, row: dict, ref: dict | None, layers) -> None:
    ratio = "" if ref is None else f"{row['seconds'] / ref['seconds']:5.2f}"
    cfg = row["config"]
    print(
        f"{label:>15s} {row['mode']:>8s} {cfg['steps']:5d} {cfg['width']:3d} "
        f"{cfg['batch_size']:3d} {cfg['learning_rate']:7.0e} "
        + " ".join(
            f"{row['mse_over_var'][n]:6.3f}"
            + ("" if row["ridge_over_var"][n] is None else "/")
            + (
                ""
                if row["ridge_over_var"][n] is None
                else f"{row['ridge_over_var'][n]:.3f}"
            )
            for n in layers
        )
        + f" {row['seconds']:7.1f} {ratio:>5s} {row['fixed_s']:6.1f} "
        f"{1e3 * row['step_s']:6.0f}  {row['load_before'][0]:4.1f}/"
        f"{row['load_after'][0]:4.1f}",
        flush=True,
    )


def dense_ridge(fn, layers, images, beta: float, max_images: int = 2_400) -> dict:
    """The linear baseline of issue 21, per layer: ridge regression from the
    whole standardised feature (every unit its own mean and scale) to the
    whole noisy image, fitted on the first 80% of ``images`` (at most
    ``max_images``), its penalty chosen on the other 20% (numpy, float64,
    dual form when the feature has more units than there are images).

    Returns ``{layer: {"mse_over_var", "penalty", "seconds"}}``; the variance
    is that of the held-out noisy images.
    """
    images = np.asarray(images[:max_images])
    n = images.shape[0]
    n_fit = (4 * n) // 5
    rng = np.random.default_rng(0)
    noisy = images + np.sqrt(beta) * rng.standard_normal(images.shape).astype(
        np.float32
    )
    apply = jax.jit(fn)
    feats = {name: [] for name in layers}
    for lo in range(0, n, 200):
        out = apply(noisy[lo : lo + 200])
        for name in layers:
            feats[name].append(np.asarray(out[name], np.float32))
    target = noisy.reshape(n, -1).astype(np.float64)
    mean_image = target[:n_fit].mean(axis=0)
    target = target - mean_image
    variance = float(np.var(noisy[n_fit:], dtype=np.float64))
    report = {}
    for name in layers:
        t0 = time.perf_counter()
        f = np.concatenate(feats.pop(name)).reshape(n, -1)
        mu, sd = f[:n_fit].mean(axis=0), f[:n_fit].std(axis=0) + 1e-6
        f = ((f - mu) / sd).astype(np.float32)
        fit, held = f[:n_fit], f[n_fit:]
        kernel = (fit @ fit.T).astype(np.float64)  # (n_fit, n_fit)
        cross = (held @ fit.T).astype(np.float64)
        evals, evecs = np.linalg.eigh(kernel)
        rotated = evecs.T @ target[:n_fit]
        best = (np.inf, 0.0)
        for rel in 10.0 ** np.arange(-4.0, 3.01, 0.5):
            lam = rel * float(np.mean(np.diag(kernel)))
            alpha = evecs @ (rotated / (np.maximum(evals, 0) + lam)[:, None])
            mse = float(np.mean((cross @ alpha - target[n_fit:]) ** 2))
            best = min(best, (mse, lam))
        report[name] = {
            "mse_over_var": best[0] / variance,
            "penalty": best[1],
            "seconds": time.perf_counter() - t0,
        }
        del f, fit, held, kernel, cross, evecs, rotated
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 steps, 5 runs")
    ap.add_argument("--out", default="bench_decoders.json", help="JSON report")
    ap.add_argument("--cache", default=None, help="model cache (default: shared)")
    ap.add_argument(
        "--grid",
        choices=("default", "batch", "readout"),
        default="default",
        help="'batch': the new default (lr 1e-2) against batch 16 (300 steps) "
        "and batch 64 (150 steps); 'readout': decoders with and without the "
        "ridge readout at each of --steps, and the dense ridge baseline",
    )
    ap.add_argument(
        "--steps",
        default="300",
        help="'readout' grid: comma-separated decoder budgets (e.g. 300,1000,3000)",
    )
    ap.add_argument(
        "--model",
        choices=("demo", "vgg11"),
        default="demo",
        help="the demo's convnet, or VGG-11 (width 16, 5,000 images, 6 epochs: "
        "the damage and compression analyses' default size)",
    )
    ap.add_argument(
        "--no-dense", action="store_true", help="skip the dense ridge baseline"
    )
    ap.add_argument(
        "--only", default=None, help="comma-separated labels to run (and reference)"
    )
    args = ap.parse_args(argv)

    demo = DemoConfig()
    spec = demo.model_spec()
    if args.model == "vgg11":
        spec = dataclasses.replace(
            spec,
            model="vgg11",
            num_train=5_000,
            num_test=500,
            train=dataclasses.replace(spec.train, epochs=6),
            model_kwargs=(("width", 16),),
        )
    trained = train_or_load(spec, args.cache, progress=False)
    layers = tuple(trained.model.default_layers)
    fn = make_feature_fn(trained.model, layers)
    num_images = 1_000 if args.quick else min(demo.decoder_images, demo.num_train)
    images = trained.train_data.images[:num_images]
    plan = runs(args.quick, args.grid, tuple(int(n) for n in args.steps.split(",")))
    if args.only:
        keep = {"reference", *args.only.split(",")}
        plan = [r for r in plan if r[0] in keep]

    report = {
        "argv": sys.argv if argv is None else ["bench_decoders.py", *argv],
        "quick": args.quick,
        "grid": args.grid,
        "model": trained.path.name,
        "test_accuracy": float(trained.accuracy),
        "layers": list(layers),
        "num_images": num_images,
        "old_default": OLD_DEFAULT,
        "beta": demo.cid.beta,
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "load_before": os.getloadavg(),
        "runs": [],
    }
    print(
        f"{trained.path.name}: test accuracy {trained.accuracy:.1%}; {num_images} "
        f"decoder images; held-out MSE / image variance per layer (decoder/readout "
        "alone); time ratio "
        "to the first reference; fixed = compile + statistics + evaluation"
    )
    print(
        f"{'run':>15s} {'mode':>8s} {'steps':>5s} {'w':>3s} {'bs':>3s} "
        f"{'lr':>7s} "
        + " ".join(f"{n:>6s}" for n in layers)
        + f" {'wall s':>7s} {'ratio':>5s} {'fixed':>6s} {'ms/st':>6s}  load"
    )
    t0 = time.perf_counter()
    if args.grid == "readout" and not args.no_dense:
        report["dense_ridge"] = dense_ridge(fn, layers, images, demo.cid.beta)
        print(
            "dense ridge (standardised features, 80/20 split): "
            + " ".join(
                f"{n} {r['mse_over_var']:.3f} ({r['seconds']:.0f} s)"
                for n, r in report["dense_ridge"].items()
            ),
            flush=True,
        )
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    ref = None
    for label, mode, changes, seed in plan:
        cfg = DecoderConfig(**{**OLD_DEFAULT, **changes}, beta=demo.cid.beta)
        row = {"label": label, **one_run(fn, layers, images, cfg, mode, seed)}
        if ref is None:
            ref = row
        row["time_ratio"] = row["seconds"] / ref["seconds"]
        report["runs"].append(row)
        print_row(label, row, ref, layers)
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    report["load_after"] = os.getloadavg()
    report["seconds"] = time.perf_counter() - t0
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        f"load average before {report['load_before'][0]:.1f}, after "
        f"{report['load_after'][0]:.1f}; {report['seconds']:.0f} s; wrote {args.out}"
    )
    return report


if __name__ == "__main__":
    main()
