"""Regime diagnostics of the demo convnet, per layer (the README's "Regime").

Trains (or loads from the shared cache) the demo convnet, computes CID with the
default ``optimize`` and with the ``linear`` closed form on test images, and
prints per layer: mean CID of both, of the closed form rescaled to the budget
(``mean - entropy_gain``), the regime diagnostics (``linearity``,
``mean_shift``, ``entropy_gain``), concentration, ``converged`` and passes.
Writes the numbers as JSON and the layer curves as a PNG.

Usage: ``python benchmarks/regime.py [--images 8] [--out docs/results/regime]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard import io
from jax_infodiscard.config import entropy_floor
from jax_infodiscard.experiments.cache import train_or_load
from jax_infodiscard.experiments.demo import DemoConfig
from jax_infodiscard.models import feature_fn


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default="docs/results/regime")
    ap.add_argument("--cache", default=None)
    ap.add_argument(
        "--plot-only", action="store_true", help="redraw the PNG from the JSON"
    )
    args = ap.parse_args()
    if args.plot_only:
        with open(os.path.join(args.out, "regime.json")) as f:
            report = json.load(f)
        _plot(report["layers"], report, os.path.join(args.out, "regime.png"))
        return
    demo = DemoConfig()
    trained = train_or_load(demo.model_spec(), cache_dir=args.cache, progress=False)
    fn = feature_fn(trained.model)
    test = trained.test_data
    images = jnp.asarray(test.images[: args.images])
    masks = np.asarray(test.masks[: args.images])
    key = jax.random.key(0)
    t0 = time.perf_counter()
    opt = jid.cid(fn, images, key)
    t_opt = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = jid.cid(fn, images, key, config=jid.CIDConfig(method="linear"))
    rows = []
    conc_opt = np.asarray(jid.concentration(opt.pixel, masks))
    conc_lin = np.asarray(jid.concentration(lin.pixel, masks))
    for l, name in enumerate(opt.layers):
        rows.append(
            {
                "layer": name,
                "cid_optimize": float(opt.mean[l].mean()),
                "cid_optimize_sd": float(opt.mean[l].std()),
                "cid_closed_form": float(lin.mean[l].mean()),
                "cid_rescaled_closed_form": float(
                    (opt.mean[l] - opt.entropy_gain[l]).mean()
                ),
                "linearity": float(opt.linearity[l].mean()),
                "linearity_min": float(opt.linearity[l].min()),
                "linearity_max": float(opt.linearity[l].max()),
                "mean_shift": float(opt.mean_shift[l].mean()),
                "entropy_gain": float(opt.entropy_gain[l].mean()),
                "concentration_optimize": float(conc_opt[l].mean()),
                "concentration_optimize_sd": float(conc_opt[l].std()),
                "concentration_closed_form": float(conc_lin[l].mean()),
                "converged": float(opt.converged[l].mean()),
                "passes_per_map": float(opt.passes[l].mean()),
            }
        )
    report = {
        "model": demo.model,
        "test_accuracy": trained.accuracy,
        "images": args.images,
        "beta": opt.beta,
        "linear_regime_floor": entropy_floor(opt.beta),
        "seconds_optimize": t_opt,
        "devices": [str(d) for d in jax.devices()],
        "layers": rows,
    }
    print(
        f"{demo.model} ({trained.accuracy:.1%}), {args.images} images, "
        f"beta {opt.beta}, optimize {t_opt:.0f} s; floor {entropy_floor(opt.beta):.3f}"
    )
    hdr = (
        "layer",
        "CID opt",
        "closed",
        "rescaled",
        "linearity",
        "mean shift",
        "gain",
        "conc opt",
        "conc closed",
        "conv",
        "passes",
    )
    print(" | ".join(hdr))
    for r in rows:
        print(
            f"{r['layer']} | {r['cid_optimize']:.3f} ± {r['cid_optimize_sd']:.3f} | "
            f"{r['cid_closed_form']:.3f} | {r['cid_rescaled_closed_form']:.3f} | "
            f"{r['linearity']:.2f} ({r['linearity_min']:.2f}-{r['linearity_max']:.2f})"
            f" | {r['mean_shift']:.2f} | {r['entropy_gain']:.3f} | "
            f"{r['concentration_optimize']:+.3f} ± {r['concentration_optimize_sd']:.3f}"
            f" | {r['concentration_closed_form']:+.3f} | {r['converged']:.2f} | "
            f"{r['passes_per_map']:.0f}"
        )
    os.makedirs(args.out, exist_ok=True)
    io.write_json(os.path.join(args.out, "regime.json"), report)
    _plot(rows, report, os.path.join(args.out, "regime.png"))


def _plot(rows, report, path):
    from matplotlib.figure import Figure

    names = [r["layer"] for r in rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.errorbar(
        x,
        [r["cid_optimize"] for r in rows],
        [r["cid_optimize_sd"] for r in rows],
        marker="o",
        label="optimize (default)",
    )
    ax1.plot(
        x,
        [r["cid_closed_form"] for r in rows],
        "s--",
        label="closed form (over budget)",
    )
    ax1.plot(
        x,
        [r["cid_rescaled_closed_form"] for r in rows],
        "^:",
        label="closed form rescaled",
    )
    ax1.axhline(report["linear_regime_floor"], color="grey", lw=0.8)
    ax1.set_title("mean CID (nats / pixel)")
    ax1.legend(fontsize=7)
    ax2.semilogy(x, [r["linearity"] for r in rows], "o-")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_title("linearity (log scale)")
    ax3.errorbar(
        x,
        [r["concentration_optimize"] for r in rows],
        [r["concentration_optimize_sd"] for r in rows],
        marker="o",
        label="optimize",
    )
    ax3.plot(
        x, [r["concentration_closed_form"] for r in rows], "s--", label="closed form"
    )
    ax3.axhline(0.0, color="grey", lw=0.8)
    ax3.set_title("concentration (nats)")
    ax3.legend(fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(x, names)
    fig.suptitle(
        f"{report['model']} ({report['test_accuracy']:.1%} test accuracy), "
        f"{report['images']} images, beta = {report['beta']}; bars: ±1 sd over "
        "images; linearity: true budget of the closed form / beta",
        fontsize=9,
    )
    io.write_figure(path, fig, dpi=110)


if __name__ == "__main__":
    main()
