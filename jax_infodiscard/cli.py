"""Command line: ``jax-infodiscard {demo,train,evaluate}``."""

from __future__ import annotations

import argparse
import json
import sys

from jax_infodiscard import CIDConfig


def _cid_config(args) -> CIDConfig:
    return CIDConfig(beta=args.beta, method=args.method)


def _demo(args) -> int:
    from jax_infodiscard.experiments.demo import DemoConfig, run_demo

    kwargs = dict(
        model=args.model, cid=_cid_config(args), ru=not args.no_ru, seed=args.seed
    )
    if args.num_images:
        kwargs["num_images"] = args.num_images
    cfg = DemoConfig.fast(**kwargs) if args.fast else DemoConfig(**kwargs)
    summary = run_demo(
        args.out, cfg, cache_dir=args.cache, progress=not args.no_progress
    )
    print(json.dumps({k: summary[k] for k in ("model", "test_accuracy")}, indent=2))
    for name, row in summary["layers"].items():
        cells = "  ".join(f"{k}={v:.3f}" for k, v in row.items())
        print(f"  {name:>10s}  {cells}")
    print(f"wrote {args.out}/pixel_maps.png, layer_curves.png, summary.json")
    return 0


def _train(args) -> int:
    from jax_infodiscard.data import SyntheticConfig, load_synthetic
    from jax_infodiscard.training.train import TrainConfig, train

    data_cfg = SyntheticConfig(image_size=args.image_size)
    tr = load_synthetic("train", args.num_train, config=data_cfg)
    te = load_synthetic("test", args.num_test, config=data_cfg)
    _, history = train(
        args.model,
        (tr.images, tr.labels),
        (te.images, te.labels),
        TrainConfig(epochs=args.epochs, seed=args.seed, progress=not args.no_progress),
        checkpoint_dir=args.checkpoint_dir,
        num_classes=data_cfg.num_classes,
        image_size=args.image_size,
    )
    acc = history.get("test_accuracy", [float("nan")])[-1]
    secs = sum(history.get("epoch_seconds", []))
    print(
        f"{args.model}: test accuracy {acc:.4f} after {args.epochs} epochs "
        f"({secs:.0f} s of training)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jax-infodiscard",
        description="Layer-wise and pixel-wise information discarding (CID, RU).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("--model", default="convnet", help="zoo model name")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train a small model, then CID/RU maps + plots")
    common(d)
    d.add_argument("--out", default="out/demo", help="output folder")
    d.add_argument("--cache", default=None, help="checkpoint cache folder")
    d.add_argument(
        "--fast", action="store_true", help="short run (about 1.5 min on 2 CPU cores)"
    )
    d.add_argument("--no-ru", action="store_true", help="skip RU (no decoders)")
    d.add_argument("--num-images", type=int, default=None)
    d.add_argument("--beta", type=float, default=CIDConfig.beta)
    d.add_argument(
        "--method",
        default=CIDConfig.method,
        choices=["hybrid", "linearized", "optimize"],
    )
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="train a zoo model on the embedded data")
    common(t)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--num-train", type=int, default=10_000)
    t.add_argument("--num-test", type=int, default=1_000)
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--checkpoint-dir", default=None)
    t.set_defaults(func=_train)

    from jax_infodiscard.evaluation.cli import add_evaluate_parser

    add_evaluate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
