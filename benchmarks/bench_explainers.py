"""Explainer cost benchmark: model calls and wall time per map (table, JSON, PNG).

On the demo model (zoo ConvNet trained on the embedded data, cached) and the
same test images, for CID (every method; last default layer),
IG (300 steps), LIME (5000 samples), SmoothGrad (50 samples) and Gradient:
model calls per map and steady-state wall time per map (compilation excluded,
``block_until_ready``). Side by side in the same run, the established
packages on the same model through numpy callbacks: ``lime``
(``lime_image.LimeImageExplainer``, 5000 samples, its own quickshift
superpixels) and PAIR ``saliency`` (``saliency.core.IntegratedGradients``,
300 steps); rows of a package that is not installed are skipped with a note.

Usage: ``python benchmarks/bench_explainers.py [--images 8] [--quick]
[--out out/bench_explainers]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import jax_infodiscard as jid
from jax_infodiscard import baselines
from jax_infodiscard.data import load_synthetic
from jax_infodiscard.experiments.evaluate import EvaluateConfig, train_model
from jax_infodiscard.models import feature_fn, model_fn


def _timed(run, repeats: int) -> tuple[float, float, object]:
    """``(compile_and_first_s, steady_s_per_call, last_output)``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(run())
    return first, (time.perf_counter() - t0) / repeats, out


def ours(model, images, labels, key, args) -> list[dict]:
    mfn = model_fn(model)
    layer = model.default_layers[-1]
    ffn = feature_fn(model, layer)
    b = images.shape[0]
    rows = []
    for method in jid.config.METHODS:
        cfg = jid.CIDConfig(method=method)
        first, steady, res = _timed(
            lambda cfg=cfg: jid.cid(ffn, images, key, config=cfg), args.repeats
        )
        rows.append(
            {
                "method": f"cid_{method}",
                "impl": "jax_infodiscard",
                "model_calls_per_map": float(np.mean(res.passes)),
                "seconds_per_map": steady / b,
                "first_call_s": first,
            }
        )
    target = jnp.asarray(labels)
    for name, kw in (
        ("integrated_gradients", {"steps": 300}),
        ("lime", {"samples": 5000}),
        ("smoothgrad", {"samples": 50}),
        ("gradient", {}),
    ):
        first, steady, out = _timed(
            lambda name=name, kw=kw: baselines.explain(
                name, mfn, images, key, target=target, **kw
            ),
            args.repeats,
        )
        rows.append(
            {
                "method": name,
                "impl": "jax_infodiscard",
                "model_calls_per_map": float(out.model_calls),
                "seconds_per_map": steady / b,
                "first_call_s": first,
            }
        )
    return rows


def packages(model, images, labels, args) -> tuple[list[dict], list[str]]:
    mfn = model_fn(model)
    logits_fn = jax.jit(lambda f, x: f(x))
    probs_fn = jax.jit(lambda f, x: jax.nn.softmax(f(x), axis=-1))
    grad_fn = jax.jit(
        jax.vmap(jax.grad(lambda x, t, f: f(x[None])[0, t]), in_axes=(0, None, None))
    )
    del logits_fn
    rows, notes = [], []
    imgs = np.asarray(images, np.float64)
    b = imgs.shape[0]

    try:
        from lime import lime_image
    except ImportError:
        notes.append("lime not installed (pip install lime): row skipped")
    else:
        calls = {"n": 0}

        def classifier(batch):
            calls["n"] += batch.shape[0]
            return np.asarray(probs_fn(mfn, jnp.asarray(batch, jnp.float32)))

        explainer = lime_image.LimeImageExplainer(random_state=0)

        def run(i):
            return explainer.explain_instance(
                imgs[i],
                classifier,
                labels=(int(labels[i]),),
                top_labels=None,
                hide_color=None,
                num_samples=5000,
                batch_size=100,
                random_seed=0,
            )

        run(0)  # warm-up: compiles the batch shapes
        calls["n"] = 0
        t0 = time.perf_counter()
        for i in range(b):
            run(i)
        rows.append(
            {
                "method": "lime",
                "impl": "lime (package)",
                "model_calls_per_map": calls["n"] / b,
                "seconds_per_map": (time.perf_counter() - t0) / b,
            }
        )

    try:
        import saliency.core as saliency
    except ImportError:
        notes.append("saliency not installed (pip install saliency): row skipped")
    else:
        calls = {"n": 0}

        def call_model(x, call_model_args, expected_keys):
            del expected_keys
            calls["n"] += x.shape[0]
            g = grad_fn(jnp.asarray(x, jnp.float32), call_model_args["t"], mfn)
            return {saliency.base.INPUT_OUTPUT_GRADIENTS: np.asarray(g)}

        ig = saliency.IntegratedGradients()

        def run(i):
            return ig.GetMask(
                imgs[i],
                call_model,
                {"t": int(labels[i])},
                x_baseline=np.zeros_like(imgs[i]),
                x_steps=300,
                batch_size=20,
            )

        run(0)
        calls["n"] = 0
        t0 = time.perf_counter()
        for i in range(b):
            run(i)
        rows.append(
            {
                "method": "integrated_gradients",
                "impl": "saliency (package)",
                "model_calls_per_map": calls["n"] / b,
                "seconds_per_map": (time.perf_counter() - t0) / b,
            }
        )
    return rows, notes


def plot(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    names = [f"{r['method']}\n{r['impl'].split(' ')[0]}" for r in rows]
    colors = ["C0" if r["impl"] == "jax_infodiscard" else "C3" for r in rows]
    ax.bar(range(len(rows)), [r["seconds_per_map"] * 1e3 for r in rows], color=colors)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), names, fontsize=7, rotation=30)
    ax.set_ylabel("ms per map (steady state)")
    ax.set_title("Explainers on the demo ConvNet (blue: JAX, red: packages)")
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 images, 1 repeat, the short-trained model of evaluate --fast",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="out/bench_explainers")
    p.add_argument(
        "--cache", default=None, help="model cache (default: the shared job cache)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = min(args.images, 2), 1
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # The model of `jax-infodiscard evaluate` (same cache): 8 epochs, ~93%.
    model_cfg = EvaluateConfig.fast() if args.quick else EvaluateConfig()
    trained = train_model(model_cfg, args.cache, progress=False)
    model, accuracy = trained.model, trained.accuracy
    test = load_synthetic("test", args.images)
    images = jnp.asarray(test.images)
    labels = np.asarray(test.labels)
    key = jax.random.key(0)

    rows = ours(model, images, labels, key, args)
    pkg_rows, notes = packages(model, images, labels, args)
    ref = {r["method"]: r for r in rows}
    for r in pkg_rows:
        mine = ref[r["method"]]
        r["ratio_vs_jax"] = r["seconds_per_map"] / mine["seconds_per_map"]
    rows += pkg_rows
    ig_seconds = ref["integrated_gradients"]["seconds_per_map"]
    for r in rows:
        r["ratio_vs_our_ig"] = r["seconds_per_map"] / ig_seconds

    print(
        f"ConvNet (test acc {accuracy:.3f}), {args.images} images, "
        f"{jax.devices()[0].platform}; steady state, compile excluded"
    )
    print(
        "| method | implementation | model calls / map | ms / map | "
        "vs JAX, same method | vs our IG |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_vs_jax']:.2f}x" if "ratio_vs_jax" in r else ""
        print(
            f"| {r['method']} | {r['impl']} | {r['model_calls_per_map']:.0f} | "
            f"{r['seconds_per_map'] * 1e3:.2f} | {ratio} | "
            f"{r['ratio_vs_our_ig']:.2f}x |"
        )
    for n in notes:
        print(f"note: {n}")
    result = {
        "images": args.images,
        "repeats": args.repeats,
        "device": str(jax.devices()[0]),
        "rows": rows,
        "notes": notes,
    }
    (out / "bench_explainers.json").write_text(json.dumps(result, indent=2))
    plot(rows).savefig(out / "bench_explainers.png", dpi=120)
    print(f"wrote {out}/bench_explainers.json, bench_explainers.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
