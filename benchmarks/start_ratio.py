"""How far from linear each map starts: ``start_ratio`` per layer and image.

The first iteration's budget at the closed form over ``beta`` (measured with
the control variate on the first iteration's draws; what
``control_variate="auto"`` and ``solver.FAR_FROM_LINEAR`` read), for the
trained demo convnet and the analyses' VGG-11 (seed 0), 8 test images each,
from the shared model cache. Init programs only: a few minutes on 2 cores.

    python benchmarks/start_ratio.py --out docs/results/start_ratio.json
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_cid as B

import jax_infodiscard as jid
from jax_infodiscard import io
from jax_infodiscard.core import engine, solver
from jax_infodiscard.core.cid import CID
from jax_infodiscard.experiments.analyses import AnalysisOptions, networks
from jax_infodiscard.models import feature_fn


def start_ratios(fn, images: np.ndarray, layers) -> dict[str, list[float]]:
    """``{layer: [start_ratio per image]}`` from the engine's init program."""
    cfg = jid.CIDConfig(control_variate="never")  # init measures the ratio
    keys = B.image_keys(0, 0, images.shape[0])
    out = {}
    for layer in layers:
        st = engine.Static.of(CID, (layer,), cfg)
        _, state = engine._init_program(
            fn, None, jnp.asarray(images), keys, jnp.float32(cfg.beta), st=st
        )
        out[layer] = [float(v) for v in np.asarray(state.start_ratio)[:, 0]]
        print(layer, np.round(out[layer], 2).tolist(), flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--cache", default=None, help="model cache (default: shared)")
    ap.add_argument("--out", default="start_ratio.json")
    args = ap.parse_args(argv)
    demo = B.load_model("trained", args.images, args.cache, False)
    report = {
        "cv_ratio": solver.CV_RATIO,
        "demo": start_ratios(demo["fn"], demo["images"], demo["layers"]),
    }
    opts = AnalysisOptions(cache_dir=args.cache, progress=False)
    vgg = networks.train_model(
        opts, "vgg11", num_train=5000, epochs=6, seed=0, model_kwargs={"width": 16}
    )
    images = np.asarray(vgg.test_data.images[: args.images])
    report["vgg11"] = start_ratios(
        feature_fn(vgg.model), images, tuple(vgg.model.default_layers)
    )
    io.write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
