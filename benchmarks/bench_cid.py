"""CID speed and accuracy benchmark (prints a table, writes JSON).

For a 4-conv ReLU net on 32x32x3 images from the embedded data set (or a zoo
model with ``--model``), for each method: model passes per map, maps per second
(steady state, compilation timed separately), and accuracy against a
high-budget reference (``optimize`` with 10x the default steps and samples):
per-map pixel correlation and mean-CID gap. Side by side in the same run:

* the floor: the same number of plain batched forward+backward passes;
* a naive per-image, per-step eager loop (Python calls one jitted step for one
  image at a time, as a straightforward implementation would);
* the two layer strategies (one vmapped program vs one program per layer);
* a sweep over ``chunk_size``.

Usage: ``python benchmarks/bench_cid.py [--images 8] [--out bench_cid.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

import jax_infodiscard as jid
from jax_infodiscard.data import load_synthetic


def conv_net_params(key, chans=(3, 16, 32, 32, 64)):
    params = []
    for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
        w = jax.random.normal(jax.random.fold_in(key, i), (3, 3, cin, cout))
        params.append((w * np.sqrt(2.0 / (9 * cin)), jnp.full((cout,), 0.01)))
    return params


def conv_net_features(params, x):
    """4 conv layers (3x3, ReLU; strides 1, 2, 2, 2): conv1..conv4."""
    out, h = {}, x - 0.5
    for i, (w, b) in enumerate(params):
        s = 1 if i == 0 else 2
        h = jax.lax.conv_general_dilated(
            h, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + b)
        out[f"conv{i + 1}"] = h
    return out


def timed(fn, repeats=2):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return out, first, best


def accuracy(res, ref):
    p, r = np.asarray(res.pixel), np.asarray(ref.pixel)
    corr = [
        np.corrcoef(p[l, b].ravel(), r[l, b].ravel())[0, 1]
        for l in range(p.shape[0])
        for b in range(p.shape[1])
    ]
    gap = np.abs(np.asarray(res.mean) - np.asarray(ref.mean))
    return (
        float(np.mean(corr)),
        float(np.min(corr)),
        float(gap.mean()),
        float(gap.max()),
    )


def floor_time(fn, images, layers, passes_per_map, batch=64):
    """Wall time of the same number of plain batched forward+backward passes."""
    total = int(passes_per_map * images.shape[0] * len(layers))
    steps = max(1, total // batch)
    x = jnp.resize(images, (batch, *images.shape[1:]))

    def loss(z):
        out = fn(z)
        return sum(jnp.sum(out[name] ** 2) for name in layers)

    @jax.jit
    def run(z):
        def body(c, _):
            g = jax.grad(loss)(z + c * 1e-6)
            return c + jnp.mean(g), None

        return jax.lax.scan(body, 0.0, None, length=steps)[0]

    _, _, best = timed(lambda: run(x))
    return best * total / (steps * batch)


def eager_loop_time(fn, image, layer, passes_per_map, reps=20):
    """Seconds per map when each pass is its own jitted call on one image.

    A straightforward implementation runs the same algorithm with a Python loop
    over images and over steps (probes, Monte-Carlo draws), calling one jitted
    forward+backward step at a time and reading its result back on the host.
    This times one such step and scales it to the method's passes per map.
    """

    @jax.jit
    def step(x, v):
        _, vjp = jax.vjp(lambda z: fn(z[None])[layer][0], x)
        (g,) = vjp(v)
        return jnp.sum(g**2)

    v = jnp.ones(jax.eval_shape(lambda z: fn(z[None])[layer][0], image).shape)
    float(step(image, v))
    t0 = time.perf_counter()
    for _ in range(reps):
        float(step(image, v))  # the host sync of a straightforward loop
    return (time.perf_counter() - t0) / reps * passes_per_map


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--model", default=None, help="zoo model (untrained)")
    ap.add_argument("--out", default="bench_cid.json")
    ap.add_argument("--quick", action="store_true", help="smaller reference")
    ap.add_argument("--ref-cache", default=None, help="npz to reuse the reference")
    args = ap.parse_args()

    images = jnp.asarray(load_synthetic("test", args.images).images)
    if args.model:
        from flax import nnx

        from jax_infodiscard.models import create_model, feature_fn

        model = create_model(args.model, rngs=nnx.Rngs(0))
        fn = feature_fn(model)
    else:
        fn = Partial(conv_net_features, conv_net_params(jax.random.key(0)))
    layers = tuple(jax.eval_shape(fn, images[:1]))
    key = jax.random.key(1)
    default = jid.CIDConfig()
    ref_cfg = jid.CIDConfig(
        method="optimize",
        steps=10 * default.steps * (1 if args.quick else 2),
        num_samples=10 * default.num_samples,
        budget_samples=10 * default.budget_samples,
        scale_samples=10 * default.scale_samples,
        bisection_steps=10,
        budget_tol=0.01,
    )
    rows, report = (
        [],
        {
            "device": str(jax.devices()[0]),
            "images": args.images,
            "layers": list(layers),
            "backend": jax.default_backend(),
        },
    )
    if args.ref_cache and os.path.exists(args.ref_cache):
        ref = jid.CIDResult.load(args.ref_cache)
        with open(args.ref_cache + ".json") as f:
            report["reference"] = json.load(f)
    else:
        ref, ref_first, _ = timed(lambda: jid.cid(fn, images, key, config=ref_cfg), 0)
        report["reference"] = {
            "config": {k: str(v) for k, v in dataclasses.asdict(ref_cfg).items()},
            "seconds": ref_first,
            "passes_per_map": float(np.mean(ref.passes)),
            "converged": float(np.mean(ref.converged)),
        }
        # Reference noise floor: the same reference with another key.
        ref2 = jid.cid(fn, images, jax.random.key(2), config=ref_cfg)
        report["reference"]["self_agreement"] = accuracy(ref2, ref)[:3]
        if args.ref_cache:
            ref.to_numpy().save(args.ref_cache)
            with open(args.ref_cache + ".json", "w") as f:
                json.dump(report["reference"], f)

    configs = {
        "linearized (default)": default,
        "linearized K=32": default.replace(linear_probes=32),
        "linearized K=128": default.replace(linear_probes=128),
        "hybrid": default.replace(method="hybrid"),
        "optimize": default.replace(method="optimize"),
        "optimize 4x": default.replace(method="optimize", steps=16, num_samples=8),
    }
    for name, cfg in configs.items():
        res, first, best = timed(lambda cfg=cfg: jid.cid(fn, images, key, config=cfg))
        maps = images.shape[0] * len(layers)
        passes = float(np.mean(res.passes))
        c_mean, c_min, g_mean, g_max = accuracy(res, ref)
        rows.append(
            dict(
                method=name,
                passes_per_map=passes,
                maps_per_s=maps / best,
                compile_s=first - best,
                corr_mean=c_mean,
                corr_min=c_min,
                gap_mean=g_mean,
                gap_max=g_max,
                converged=float(np.mean(res.converged)),
            )
        )
    report["methods"] = rows

    # Floor (same pass count as plain batched passes) and the eager loop.
    maps = images.shape[0] * len(layers)
    report["floor"], report["eager_loop"] = {}, {}
    for r in rows:
        solver_s = maps / r["maps_per_s"]
        floor_s = floor_time(fn, images, layers, r["passes_per_map"])
        eager_s = maps * eager_loop_time(fn, images[0], layers[-1], r["passes_per_map"])
        r["floor_ratio"] = solver_s / floor_s
        r["eager_speedup"] = eager_s / solver_s
        report["floor"][r["method"]] = {"solver_s": solver_s, "floor_s": floor_s}
        report["eager_loop"][r["method"]] = {"solver_s": solver_s, "eager_s": eager_s}

    # Layer strategies and chunk sizes (default method).
    strat = {}
    for s in ("vmap", "per_layer"):
        _, first, best = timed(
            lambda s=s: jid.cid(
                fn, images, key, config=default.replace(layer_strategy=s)
            )
        )
        strat[s] = {"compile_s": first - best, "run_s": best}
    report["layer_strategy"] = strat
    chunks = {}
    for c in (1, 2, 4, None):
        _, first, best = timed(
            lambda c=c: jid.cid(fn, images, key, config=default.replace(chunk_size=c))
        )
        chunks[str(c)] = {
            "run_s": best,
            "maps_per_s": images.shape[0] * len(layers) / best,
        }
    report["chunk_size"] = chunks

    print(f"device {report['device']}, {args.images} images, layers {layers}")
    print(
        f"reference: {report['reference']['passes_per_map']:.0f} passes/map, "
        f"self-agreement corr {report['reference']['self_agreement'][0]:.3f}, "
        f"gap {report['reference']['self_agreement'][2]:.3f} nats"
    )
    hdr = (
        f"{'method':22s} {'passes':>7s} {'maps/s':>8s} {'compile':>8s} "
        f"{'corr':>6s} {'corrmin':>7s} {'gap':>6s} {'gapmax':>6s} {'conv':>5s} "
        f"{'t/floor':>7s} {'vs eager':>8s}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['method']:22s} {r['passes_per_map']:7.0f} {r['maps_per_s']:8.2f} "
            f"{r['compile_s']:8.1f} {r['corr_mean']:6.3f} {r['corr_min']:7.3f} "
            f"{r['gap_mean']:6.3f} {r['gap_max']:6.3f} {r['converged']:5.2f} "
            f"{r['floor_ratio']:7.2f} {r['eager_speedup']:7.1f}x"
        )
    print("layer strategy:", json.dumps(strat))
    print("chunk size:", json.dumps(chunks))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
