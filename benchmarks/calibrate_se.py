"""Calibration of the Monte-Carlo error bars on the trained demo convnet.

Solves the same images with ``--keys`` independent keys and compares, per
layer, the spread of ``mean`` over keys with the reported ``mean_se``, and
the correlation of two runs' maps with ``sqrt(R_a R_b)`` predicted from
``reproducibility``. Each key's result is cached (resumable).

    python benchmarks/calibrate_se.py --keys 20 --images 2 \\
        --out docs/results/calibrate_se.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_cid as B

import jax_infodiscard as jid


def calibration(results: list) -> dict:
    """Per layer: spread of ``mean`` vs ``mean_se``, two-run correlation vs predicted.

    Args:
      results: results of the same images and layers with different keys.

    Returns:
      ``{layer: {...}}`` with the ratio ``spread / rms(mean_se)`` and the mean
      absolute difference of measured and predicted correlations.
    """
    out = {}
    means = np.stack([np.asarray(r.mean) for r in results])  # (K, L, B)
    ses = np.stack([np.asarray(r.mean_se) for r in results])
    repro = np.stack([np.asarray(r.reproducibility) for r in results])
    for l, name in enumerate(results[0].layers):
        spread = np.std(means[:, l], axis=0, ddof=1)  # (B,)
        se = np.sqrt(np.mean(ses[:, l] ** 2, axis=0))
        measured, predicted = [], []
        for i, j in itertools.pairwise(range(len(results))):
            if i % 2:
                continue
            for b in range(means.shape[2]):
                a = np.ravel(results[i].pixel[l, b])
                c = np.ravel(results[j].pixel[l, b])
                measured.append(float(np.corrcoef(a, c)[0, 1]))
                predicted.append(float(np.sqrt(repro[i, l, b] * repro[j, l, b])))
        out[name] = {
            "spread_of_mean": spread.tolist(),
            "rms_mean_se": se.tolist(),
            "ratio": (spread / se).tolist(),
            "corr_measured": float(np.mean(measured)),
            "corr_predicted": float(np.mean(predicted)),
            "corr_abs_diff": float(np.mean(np.abs(np.subtract(measured, predicted)))),
            "passes": float(np.mean([np.mean(r.passes[l]) for r in results])),
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--layers", default="conv1,conv3,conv5,logits")
    p.add_argument("--config", default="{}", help="JSON CIDConfig fields")
    p.add_argument("--cache", default=os.environ.get("JAX_INFODISCARD_CACHE"))
    p.add_argument("--out", default="docs/results/calibrate_se.json")
    args = p.parse_args(argv)
    fields = json.loads(args.config)
    cfg = jid.CIDConfig(**fields)
    model = B.load_model("trained", args.images, args.cache, False)
    fn, images = model["fn"], model["images"]
    layers = tuple(args.layers.split(","))
    tag = f"{model['tag']}-{len(images)}im-{'_'.join(layers)}-" + (
        "_".join(f"{k}{v}" for k, v in sorted(fields.items())) or "default"
    )
    folder = pathlib.Path(args.cache or ".") / "refs" / "acc" / tag
    folder.mkdir(parents=True, exist_ok=True)
    results, seconds = [], []
    for k in range(args.keys):
        path = folder / f"key{k}.npz"
        if path.exists():
            results.append(jid.CIDResult.load(path))
            continue
        t = time.perf_counter()
        res = jid.cid(fn, images, jax.random.key(1000 + k), layers=layers, config=cfg)
        seconds.append(time.perf_counter() - t)
        res.to_numpy().save(path)
        results.append(res.to_numpy())
        print(f"key {k}: {seconds[-1]:.1f} s", flush=True)
    report = {
        "argv": sys.argv,
        "model": model["tag"],
        "accuracy": model["accuracy"],
        "config": fields,
        "keys": args.keys,
        "images": len(images),
        "load": os.getloadavg(),
        "seconds_per_run": seconds,
        "layers": calibration(results),
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["layers"], indent=1))


if __name__ == "__main__":
    main()
