"""Entropy at equal *held-out* budget: solver settings against the references.

``bench_cid.py`` compares maps levelled by each solver's own budget draws; at
the logits of a trained net those draws are few and the budget heavy-tailed,
so mean-CID gaps there mix levelling noise with the quality of the map's
shape. This script levels every map exactly (three secant steps on ``log
sigma``, common held-out draws, plain Monte Carlo) and then compares mean CID:
the entropy each solver reached at the same true budget.

It reuses ``bench_cid.py``'s models (the trained demo convnet, or with
``--model resnet20`` the analyses' ResNet-20) and their cached references
(run that first, same ``--cache``), and writes a JSON report.

    python benchmarks/bench_equal_budget.py --layers logits \\
        --configs '{"default": {}, "long": {"steps": 800, "samples": 16}}'
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_cid as B

import jax_infodiscard as jid


def level_exactly(fn, images, layer, u, scale, beta, seed, draws):
    """``u + c`` per image with held-out budget ``beta`` (3 secant steps)."""
    r0, _ = B.held_budget(fn, images, layer, np.exp(u), scale, beta, seed, draws)
    c_prev, e_prev = np.zeros_like(r0), np.log(r0)
    c = -0.5 * e_prev  # the linear model's slope 2 first
    for _ in range(3):
        r, _ = B.held_budget(
            fn, images, layer, np.exp(u + c[:, None, None]), scale, beta, seed, draws
        )
        e = np.log(r)
        step = np.where(c == c_prev, 1.0, c - c_prev)
        slope = np.clip((e - e_prev) / step, 0.5, 8.0)
        c_prev, e_prev = c, e
        c = c - e / slope
    return u + c_prev[:, None, None], r0, np.exp(e_prev)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="trained", help="trained (the demo convnet) or resnet20"
    )
    p.add_argument("--layers", default=None, help="default: the model's")
    p.add_argument("--configs", default='{"default": {}}', help="JSON name->fields")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--draws", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0, help="key seed of the solves")
    p.add_argument("--ref-seeds", default="101,102")
    p.add_argument("--cache", default=os.environ.get("JAX_INFODISCARD_CACHE"))
    p.add_argument(
        "--ref-glob",
        default="{cache}/bench_cid/{tag}-{layer}-s{seed}-*.npz",
        help="files of the cached references ({cache}, {tag}, {layer}, {seed}); "
        "exactly one may match per layer and seed",
    )
    p.add_argument("--out", default="docs/results/bench_equal_budget.json")
    args = p.parse_args(argv)
    configs = json.loads(args.configs)
    model = B.load_model(args.model, args.images, args.cache, False)
    fn, images = model["fn"], model["images"]
    layers = args.layers.split(",") if args.layers else list(model["layers"])
    beta = jid.CIDConfig().beta
    report = {"argv": sys.argv, "load_before": os.getloadavg(), "layers": {}}
    t_all = time.perf_counter()
    for layer in layers:
        scale = B.exact_scale(fn, images, layer)

        def level(u, layer=layer, scale=scale):
            return level_exactly(fn, images, layer, u, scale, beta, 999, args.draws)

        refs = []
        for s in args.ref_seeds.split(","):
            pattern = args.ref_glob.format(
                cache=args.cache, tag=model["tag"], layer=layer, seed=s
            )
            found = sorted(glob.glob(pattern))
            if len(found) > 1:
                raise SystemExit(
                    f"{len(found)} references match {pattern} (references of "
                    "different solvers or settings); narrow --ref-glob:\n  "
                    + "\n  ".join(found)
                )
            if not found:
                raise SystemExit(
                    f"no cached reference for {layer}, seed {s}: run "
                    "benchmarks/bench_cid.py with the same --cache"
                )
            res = jid.CIDResult.load(found[-1]).to_numpy()
            refs.append(level(np.log(np.asarray(res.sigma)[0, : args.images]))[0])
        ref_mean = np.mean([r.mean((1, 2)) for r in refs], axis=0)
        rows = {"reference_gap": (refs[0].mean((1, 2)) - refs[1].mean((1, 2))).tolist()}
        print(
            f"== {layer}: references at equal budget {np.round(ref_mean, 3)}, "
            f"apart by {np.round(rows['reference_gap'], 3)}",
            flush=True,
        )
        for name, fields in configs.items():
            t0 = time.perf_counter()
            res = jid.cid(
                fn,
                images,
                B.image_keys(args.seed, 0, args.images),
                layers=[layer],
                config=jid.CIDConfig(**fields),
            ).to_numpy()
            seconds = time.perf_counter() - t0
            u, r_raw, r_lev = level(np.log(np.asarray(res.sigma)[0]))
            gap = u.mean((1, 2)) - ref_mean
            corr = np.mean([B.correlation(u, r) for r in refs], axis=0)
            rows[name] = {
                "config": fields,
                "passes": float(np.mean(res.passes)),
                "passes_per_image": np.asarray(res.passes).ravel().tolist(),
                "mean_se": np.asarray(res.mean_se).ravel().tolist(),
                "reproducibility": np.asarray(res.reproducibility).ravel().tolist(),
                "seconds": seconds,
                "held_budget_as_solved": r_raw.tolist(),
                "held_budget_levelled": r_lev.tolist(),
                "gap_at_equal_budget": gap.tolist(),
                "gap_mean": float(gap.mean()),
                "corr": corr.tolist(),
            }
            print(
                f"  {name:14s} passes {rows[name]['passes']:6.0f} "
                f"budget as solved {np.round(r_raw, 3)} "
                f"mean CID - reference at equal budget {np.round(gap, 3)} "
                f"(mean {gap.mean():+.3f}) corr {np.round(corr, 3)}",
                flush=True,
            )
        report["layers"][layer] = rows
    report["seconds"] = time.perf_counter() - t_all
    report["load_after"] = os.getloadavg()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
