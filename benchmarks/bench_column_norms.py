"""Exact column norms by colouring against probes, on the trained demo convnet.

Two parts, per layer (default ``conv1`` and ``conv3``):

* **The norms themselves.** ``a_i`` by colouring (``column_norms(...,
  mode="colouring")``) checked against the full Jacobian on the first image
  (one JVP per input unit, chunked); then the probes (``--probes``, the
  solver's default ``K``) against the exact norms on every image: median and
  90th-percentile relative error of ``a_i``, correlation of ``log a_i``, and
  the error of ``delta_f^2 = sum_i a_i``. Seconds per call of each way, timed
  side by side (best of ``--repeats``).
* **The CID maps.** The default solve (``CIDConfig()``) with probe norms and
  with exact norms, each against long references (``--ref-*``, two keys) that
  themselves use either probe or exact norms: per-map pixel correlation and
  mean-CID gap. The way the solver gets its norms is switched by wrapping
  ``core.engine.column_norms`` (and clearing JAX's caches), since the norms
  are not a configuration field.

References are cached in ``CACHE/bench_column_norms`` (``CIDResult.save``), so
a rerun only computes what is missing. Writes a JSON report.

    nice -n 10 python benchmarks/bench_column_norms.py --images 4 \\
        --out docs/results/bench_column_norms.json
    nice -n 10 python benchmarks/bench_column_norms.py --layers conv1 \\
        --skip-norms --configs '{"24 steps": {"steps": 24}}' \\
        --out docs/results/bench_column_norms_short.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_cid as B

import jax_infodiscard as jid
from jax_infodiscard import io
from jax_infodiscard.core import engine, linear

REF = {"probes": 512, "steps": 200, "samples": 16, "budget_samples": 128}
"""The reference solve (the quick reference of ``bench_cid.py``)."""


@contextlib.contextmanager
def norm_mode(mode: str):
    """The solver computes its column norms with ``mode`` inside the block."""
    original = engine.column_norms
    engine.column_norms = partial(linear.column_norms, mode=mode)
    jax.clear_caches()  # compiled programs captured the previous function
    try:
        yield
    finally:
        engine.column_norms = original
        jax.clear_caches()


@partial(jax.jit, static_argnames=("layer", "chunk"))
def _basis_norms(fn, x, layer, start, chunk):
    """Column norms of input units ``start..start+chunk-1`` from one-hot JVPs."""
    _, lin = jax.linearize(B.flat_layer(fn, layer), x)
    idx = start + jnp.arange(chunk)
    basis = jax.nn.one_hot(idx, x.size, dtype=x.dtype).reshape(chunk, *x.shape)
    return jnp.sum(jnp.square(jax.vmap(lin)(basis)), axis=1)  # (chunk,)


def jacobian_norms(fn, x, layer, chunk=256) -> np.ndarray:
    """``a (H, W, C)`` from the full Jacobian, one JVP per input unit."""
    cols = [
        np.asarray(_basis_norms(fn, x, layer, s, chunk))
        for s in range(0, x.size, chunk)
    ]
    return np.concatenate(cols)[: x.size].reshape(x.shape)


def norms_part(fn, images, layer, probes, repeats) -> dict:
    x0 = jnp.asarray(images[0])

    @partial(jax.jit, static_argnames=("mode",))
    def norms(f, x, key, mode):
        return linear.column_norms(f, layer, x, key, probes, True, mode=mode)[0]

    plan = linear.colouring_plan(fn, layer, x0)
    jac = jacobian_norms(fn, x0, layer)
    exact0 = np.asarray(norms(fn, x0, None, "colouring"))
    check = float(np.max(np.abs(exact0 - jac)) / np.max(jac))
    rel_med, rel_p90, log_corr, scale_err = [], [], [], []
    for i, x in enumerate(jnp.asarray(images)):
        exact = np.asarray(norms(fn, x, None, "colouring")).sum(-1)
        est = np.asarray(norms(fn, x, jax.random.key(i), "probes")).sum(-1)
        rel = np.abs(est / exact - 1)
        rel_med.append(float(np.median(rel)))
        rel_p90.append(float(np.quantile(rel, 0.9)))
        log_corr.append(
            float(np.corrcoef(np.log(est).ravel(), np.log(exact).ravel())[0, 1])
        )
        scale_err.append(float(est.sum() / exact.sum() - 1))
    seconds = {}
    for mode, key in (("colouring", None), ("probes", jax.random.key(0))):
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(norms(fn, x0, key, mode))
            best = min(best, time.perf_counter() - t0)
        seconds[mode] = best
    row = {
        "periods": list(plan.periods),
        "colouring_passes": plan.passes,
        "probe_passes": probes,
        "colouring_vs_jacobian_max_rel_err": check,
        "probe_rel_err_median": rel_med,
        "probe_rel_err_p90": rel_p90,
        "probe_log_corr": log_corr,
        "probe_scale_rel_err": scale_err,
        "seconds_per_call": seconds,
        "time_ratio_colouring_to_probes": seconds["colouring"] / seconds["probes"],
    }
    print(
        f"  norms: periods {plan.periods} -> {plan.passes} JVPs vs {probes} probes; "
        f"colouring vs full Jacobian max rel err {check:.1e}; probes: median rel "
        f"err {np.mean(rel_med):.3f}, p90 {np.mean(rel_p90):.3f}, log-corr "
        f"{np.mean(log_corr):.4f}, delta_f^2 err {np.round(scale_err, 4)}; "
        f"s/call colouring {seconds['colouring']:.3f} probes {seconds['probes']:.3f}",
        flush=True,
    )
    return row


def maps_part(model, layer, solves, ref_dir, seeds, solve_seed) -> dict:
    fn, images = model["fn"], model["images"]
    ref_cfg = jid.CIDConfig(**REF)
    refs, out = {}, {"references": {}, "solves": {}}
    for mode in ("probes", "colouring"):
        with norm_mode(mode):
            for s in seeds:
                path = None
                if ref_dir is not None:
                    digest = B.ref_path(ref_dir, model["tag"], layer, ref_cfg, s).name
                    path = pathlib.Path(ref_dir) / f"{mode}-{digest}"
                res, secs, n_new = B.reference(fn, images, layer, ref_cfg, s, path)
                refs[(mode, s)] = res.pixel[0]
                out["references"][f"{mode}-s{s}"] = {
                    "passes": float(np.mean(res.passes[0])),
                    "seconds_now": secs,
                    "images_computed_now": n_new,
                    "cache": None if path is None else str(path),
                }
        a, b = (refs[(mode, s)] for s in seeds)
        out["references"][f"{mode} vs {mode}"] = B.accuracy(a, b)
        print(
            f"  reference ({mode} norms) vs reference: corr "
            f"{out['references'][f'{mode} vs {mode}']['corr_mean']:.4f}",
            flush=True,
        )
    for name, (mode, fields) in solves.items():
        with norm_mode(mode):
            res, compile_s, run_s = B.run_timed(
                fn, images, layer, jid.CIDConfig(**fields), solve_seed, 1
            )
        row = {
            "norms": mode,
            "config": fields,
            "passes": float(np.mean(res.passes[0])),
            "seconds_per_map": run_s / images.shape[0],
            "compile_s": compile_s,
        }
        for ref_mode in ("probes", "colouring"):
            accs = [B.accuracy(res.pixel[0], refs[(ref_mode, s)]) for s in seeds]
            mean_ref = np.mean([refs[(ref_mode, s)] for s in seeds], axis=0)
            row[f"vs {ref_mode} references"] = {
                "corr_each": [a["corr_mean"] for a in accs],
                "corr_min_each": [a["corr_min"] for a in accs],
                "vs_their_mean": B.accuracy(res.pixel[0], mean_ref),
            }
        out["solves"][name] = row
        ex = row["vs colouring references"]
        pr = row["vs probes references"]
        print(
            f"  {name:18s} passes {row['passes']:7.0f} corr vs exact-norm refs "
            f"{np.round(ex['corr_each'], 4)} (their mean "
            f"{ex['vs_their_mean']['corr_mean']:.4f}, gap "
            f"{ex['vs_their_mean']['gap_max']:.4f}); vs probe-norm refs "
            f"{np.round(pr['corr_each'], 4)}",
            flush=True,
        )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="conv1,conv3")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--probes", type=int, default=jid.CIDConfig().probes)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="key seed of the solves")
    p.add_argument("--ref-seeds", default="101,102")
    p.add_argument("--cache", default=os.environ.get("JAX_INFODISCARD_CACHE"))
    p.add_argument("--skip-maps", action="store_true", help="only the norms part")
    p.add_argument("--skip-norms", action="store_true", help="only the maps part")
    p.add_argument(
        "--configs",
        default='{"default": {}}',
        help="JSON name -> CIDConfig fields of the solves",
    )
    p.add_argument(
        "--modes", default="probes,colouring", help="norms of the solves (modes)"
    )
    p.add_argument("--out", default="docs/results/bench_column_norms.json")
    args = p.parse_args(argv)
    t_all = time.perf_counter()
    report = {
        "argv": sys.argv,
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "default_config": dataclasses.asdict(jid.CIDConfig()),
        "reference_config": dataclasses.asdict(jid.CIDConfig(**REF)),
        "layers": {},
    }
    model = B.load_model("trained", args.images, args.cache, False)
    report["model"] = {"tag": model["tag"], "test_accuracy": model["accuracy"]}
    ref_dir = (
        None if args.cache is None else pathlib.Path(args.cache) / "bench_column_norms"
    )
    seeds = [int(s) for s in args.ref_seeds.split(",")]
    for layer in args.layers.split(","):
        print(f"== {layer}", flush=True)
        x0 = jnp.asarray(model["images"][0])
        auto = linear.column_norms(
            model["fn"], layer, x0, jax.random.key(0), args.probes, False
        )
        row = {"auto_passes": auto[1]}
        if not args.skip_norms:
            row["norms"] = norms_part(
                model["fn"], model["images"], layer, args.probes, args.repeats
            )
        if not args.skip_maps:
            label = {"probes": "probes", "colouring": "exact"}
            solves = {
                f"{name}, {label.get(mode, mode)}": (mode, fields)
                for name, fields in json.loads(args.configs).items()
                for mode in args.modes.split(",")
            }
            row["maps"] = maps_part(model, layer, solves, ref_dir, seeds, args.seed)
        report["layers"][layer] = row
    report["seconds"] = time.perf_counter() - t_all
    report["load_after"] = os.getloadavg()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, report, indent=1)
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
