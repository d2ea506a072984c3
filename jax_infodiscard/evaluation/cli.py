"""The ``evaluate`` subcommand (registered by :func:`add_evaluate_parser`)."""

from __future__ import annotations

import argparse

from jax_infodiscard.config import CIDConfig

__all__ = ["add_evaluate_parser"]


def _evaluate(args) -> int:
    from jax_infodiscard.evaluation.runner import (
        EvaluateConfig,
        results_markdown,
        run_evaluate,
    )

    kwargs = dict(
        model=args.model,
        dataset=args.dataset,
        cid=CIDConfig(beta=args.beta, method=args.method),
        seed=args.seed,
    )
    if args.num_images:
        kwargs["num_images"] = args.num_images
    cfg = EvaluateConfig.fast(**kwargs) if args.fast else EvaluateConfig(**kwargs)
    results = run_evaluate(
        args.out, cfg, cache_dir=args.cache, progress=not args.no_progress
    )
    print(results_markdown(results))
    print(
        f"wrote {args.out}/results.md, results.json, descriptive_accuracy.png, "
        "localization.csv, localization.json, layer_fairness.png"
    )
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``evaluate`` on an ``add_subparsers()`` object; returns it."""
    e = subparsers.add_parser(
        "evaluate", help="descriptive accuracy, localisation, layer fairness"
    )
    e.add_argument("--model", default="convnet", help="zoo model name")
    e.add_argument(
        "--dataset",
        default="synthetic",
        choices=["synthetic", "oxford_iiit_pet", "caltech_birds2011"],
        help="embedded data (default) or an annotated tfds data set",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--out", default="out/evaluate", help="output folder")
    e.add_argument("--cache", default=None, help="checkpoint cache folder")
    e.add_argument(
        "--fast", action="store_true", help="short run (about 3.5 min on 2 CPU cores)"
    )
    e.add_argument("--num-images", type=int, default=None)
    e.add_argument("--beta", type=float, default=CIDConfig.beta)
    e.add_argument(
        "--method",
        default=CIDConfig.method,
        choices=["hybrid", "linearized", "optimize"],
    )
    e.set_defaults(func=_evaluate)
    return e
