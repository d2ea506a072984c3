"""The demo's CID phase, old and new default side by side.

What ``jax-infodiscard demo`` computes in its CID phase (the trained demo
convnet from the shared cache, its 8 test images, its 4 layers, one call of
``cid``), with the default ``CIDConfig`` and with the default before issue
20 (``bench_cid.OLD_DEFAULT``); first call (compilation included, as a fresh
demo pays it) and a second call (compiled), and the passes per map.

    python benchmarks/demo_cid_phase.py --out docs/results/demo_cid_phase.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import warnings

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_cid as B

import jax_infodiscard as jid
from jax_infodiscard import io


def timed(fn, images, cfg) -> tuple[float, float, float]:
    """``(first call s, second call s, mean passes per map)``."""
    out = []
    for _ in range(2):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = jid.cid(fn, images, jax.random.key(0), config=cfg)
        jax.block_until_ready(res)
        out.append(time.perf_counter() - t)
    return out[0], out[1], float(np.mean(np.asarray(res.passes)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--cache", default=None, help="model cache (default: shared)")
    ap.add_argument("--out", default="demo_cid_phase.json")
    args = ap.parse_args(argv)
    model = B.load_model("trained", args.images, args.cache, False)
    images = jax.numpy.asarray(model["images"])
    report = {"load_before": os.getloadavg(), "images": args.images, "runs": {}}
    default = jid.CIDConfig()
    for name, cfg in (
        ("old default", default.replace(**B.OLD_DEFAULT)),
        ("default", default),
    ):
        first, second, passes = timed(model["fn"], images, cfg)
        report["runs"][name] = {"first_s": first, "second_s": second, "passes": passes}
        print(
            f"{name:12s} first call {first:6.1f} s, second {second:6.1f} s, "
            f"{passes:.0f} passes per map",
            flush=True,
        )
    report["load_after"] = os.getloadavg()
    io.write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
