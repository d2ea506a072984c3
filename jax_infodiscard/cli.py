"""Command line: ``jax-infodiscard {demo,train,evaluate,run,analyze}``.

One parser. Flags shared by several commands are defined once (the
``_add_*`` helpers below); the choices of ``--model``, ``--method``,
``--dataset`` and of the analysis name come from the registries
(:func:`jax_infodiscard.models.available_models`,
:data:`jax_infodiscard.config.METHODS`,
:data:`jax_infodiscard.data.DATASET_NAMES`,
:data:`jax_infodiscard.experiments.analyses.ANALYSES`).

Failing fast: numbers and paths are checked while parsing (through
:mod:`jax_infodiscard.validation`), before any model is built; a bad value,
a refused run folder or a ``ValueError``/``TypeError`` from the library
ends the command with one line, ``error: ...``, and exit code 2. Any other
exception prints one line too (exit code 1); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Sequence

from jax_infodiscard.config import METHODS, CIDConfig
from jax_infodiscard.data import DATASET_NAMES, TFDS_SPECS
from jax_infodiscard.models import available_models
from jax_infodiscard.validation import check_int, check_number, check_output_dir

__all__ = ["build_parser", "main"]

PROG = "jax-infodiscard"
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
"""Exceptions reported as a bad input (exit code 2), not as a crash."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``error: ...``."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# ------------------------------------------------------------------ types
def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer, got {text!r}"
            ) from None
        try:
            return check_int("value", value, minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be >= {minimum}, got {value}"
            ) from None

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(*, positive: bool = False, maximum: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number, got {text!r}"
            ) from None
        try:
            return check_number("value", value, positive=positive, maximum=maximum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None

    parse.__name__ = "number"
    return parse


def _out_dir(text: str) -> str:
    try:
        check_output_dir(text, "--out")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--out: ")) from None
    return text


def _existing_dir(text: str) -> str:
    path = pathlib.Path(text).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"folder {text} {what}")
    return str(path.resolve())


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
BETA = _number(positive=True)


# ------------------------------------------------------------ shared flags
def _add_common(p: argparse.ArgumentParser, *, cache: bool = True) -> None:
    p.add_argument(
        "--seed",
        type=NON_NEGATIVE,
        default=0,
        help="seed of training and of the solver's PRNG keys (default 0)",
    )
    if cache:
        p.add_argument(
            "--cache",
            default=None,
            metavar="DIR",
            help="model/decoder cache (default $JAX_INFODISCARD_CACHE or "
            "~/.cache/jax_infodiscard)",
        )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs)"
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs in CACHE/xla (JAX's persistent "
        "compilation cache, which makes a second run skip most compilation)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the full traceback instead of one line",
    )


def _add_model(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "--model",
        choices=available_models(),
        default=None if required else "convnet",
        metavar="NAME",
        help=f"zoo model, one of {', '.join(available_models())} (default "
        f"{'none' if required else 'convnet'})",
    )


def _add_dataset(
    p: argparse.ArgumentParser, choices: Sequence[str], help_extra: str = ""
) -> None:
    p.add_argument(
        "--dataset",
        choices=list(choices),
        default="synthetic",
        help=f"data set: {', '.join(choices)} (default synthetic, embedded, no "
        f"download; tfds sets need the 'data' extra){help_extra}",
    )


def _add_cid(p: argparse.ArgumentParser) -> None:
    default = CIDConfig()
    p.add_argument(
        "--beta",
        type=BETA,
        default=None,
        help=f"CID noise budget, a finite number > 0 (default {default.beta:g})",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help=f"how the CID solver finds sigma (default {default.method!r})",
    )


def _add_output(
    p: argparse.ArgumentParser, default: str | None, *, resume: bool = False
) -> None:
    p.add_argument(
        "--out",
        type=_out_dir,
        default=default,
        required=default is None,
        metavar="DIR",
        help="run folder for the outputs and manifest.json"
        + (f" (default {default})" if default else ""),
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous run in --out (its outputs are deleted)",
    )
    if resume:
        group.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted run in --out (same flags required)",
        )


def _add_fast(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--fast", action="store_true", help=f"short run ({what})")


def _cid_config(args) -> CIDConfig:
    changes = {"beta": args.beta, "method": args.method}
    if getattr(args, "chunk_size", None) is not None:
        changes["chunk_size"] = args.chunk_size
    return CIDConfig(**{k: v for k, v in changes.items() if v is not None})


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"a JSON object {{field: value}} is needed, got {text!r}"
        )
    return value


def _progress(args) -> bool:
    return not args.no_progress


# -------------------------------------------------------------- commands
def _demo(args) -> int:
    from jax_infodiscard.experiments.demo import DemoConfig, run_demo

    kwargs = dict(
        model=args.model,
        cid=_cid_config(args),
        ru=not args.no_ru,
        ru_unlearned=args.ru_unlearned,
        seed=args.seed,
    )
    if args.num_images is not None:
        kwargs["num_images"] = args.num_images
    cfg = DemoConfig.fast(**kwargs) if args.fast else DemoConfig(**kwargs)
    run_demo(  # prints phases, the per-layer table, warnings and files written
        args.out,
        cfg,
        cache_dir=args.cache,
        progress=_progress(args),
        overwrite=args.overwrite,
        argv=args.argv,
    )
    return 0


def _train(args) -> int:
    from jax_infodiscard.data import num_classes
    from jax_infodiscard.experiments.data import load_examples
    from jax_infodiscard.training.train import TrainConfig, train

    tr = load_examples(
        args.dataset, "train", args.num_train, image_size=args.image_size
    )
    te = load_examples(args.dataset, "test", args.num_test, image_size=args.image_size)
    _, history = train(
        args.model,
        (tr.images, tr.labels),
        (te.images, te.labels),
        TrainConfig(epochs=args.epochs, seed=args.seed, progress=_progress(args)),
        checkpoint_dir=args.checkpoint_dir,
        num_classes=num_classes(args.dataset),
        image_size=args.image_size,
    )
    acc = history.get("test_accuracy", [float("nan")])[-1]
    secs = sum(history.get("epoch_seconds", []))
    print(
        f"{args.model}: test accuracy {acc:.4f} after {args.epochs} epochs "
        f"({secs:.0f} s of training)"
    )
    return 0


def _evaluate(args) -> int:
    from jax_infodiscard.experiments.evaluate import (
        EvaluateConfig,
        results_markdown,
        run_evaluate,
    )

    kwargs = dict(
        model=args.model, dataset=args.dataset, cid=_cid_config(args), seed=args.seed
    )
    if args.num_images is not None:
        kwargs["num_images"] = args.num_images
    cfg = EvaluateConfig.fast(**kwargs) if args.fast else EvaluateConfig(**kwargs)
    results = run_evaluate(
        args.out,
        cfg,
        cache_dir=args.cache,
        progress=_progress(args),
        overwrite=args.overwrite,
        argv=args.argv,
    )
    print(results_markdown(results))
    print(
        f"wrote {args.out}/results.md, results.json, descriptive_accuracy.png, "
        "localization.csv, localization.json, layer_fairness.png"
    )
    return 0


def _run(args) -> int:
    from jax_infodiscard.experiments import distributed

    # Before anything touches a JAX backend.
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        auto=args.distributed_auto,
    )
    from jax_infodiscard.experiments.cache import ModelSpec
    from jax_infodiscard.experiments.run import (
        DatasetRunConfig,
        format_summary,
        run_dataset,
    )
    from jax_infodiscard.training.train import TrainConfig

    cid = _cid_config(args)
    model = None
    if args.model is not None:
        model = ModelSpec(
            model=args.model,
            dataset=args.dataset,
            image_size=args.image_size,
            num_train=args.num_train,
            crop_scale=args.crop_scale,
            train=TrainConfig(epochs=args.epochs, seed=args.seed),
        )
    cfg = DatasetRunConfig(
        dataset=args.dataset,
        split=args.split,
        num_images=args.num_images,
        layers=tuple(args.layers) if args.layers else None,
        image_size=args.image_size,
        crop_scale=args.crop_scale,
        shard_size=args.shard_size,
        cid=cid,
        seed=args.seed,
        model=model,
        checkpoint=args.checkpoint,
        decoders=args.decoders,
    )
    summary = run_dataset(
        args.out,
        cfg,
        cache_dir=args.cache,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=_progress(args),
        argv=args.argv,
    )
    if summary:
        print(format_summary(summary))
        print(f"wrote {args.out}/cid.zarr, results.json, report.md, manifest.json")
    return 0


def _analyze(args) -> int:
    from jax_infodiscard.experiments.analyses import (
        AnalysisOptions,
        run_analysis,
        verdict_table,
    )

    options = AnalysisOptions(
        scale="fast" if args.fast else "full",
        design=args.design,
        dataset=args.dataset,
        image_size=args.image_size,
        seed=args.seed,
        cid=_cid_config(args),
        cache_dir=args.cache,
        progress=_progress(args),
        status=True,
    )
    result = run_analysis(
        args.name, args.out, options, overwrite=args.overwrite, argv=args.argv
    )
    print(verdict_table(result.verdicts))
    print(f"wrote {args.out}/report.md, results.json")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``jax-infodiscard`` parser (every flag has a help text)."""
    from jax_infodiscard.experiments.analyses import ANALYSES

    p = _Parser(
        prog=PROG,
        description="Layer-wise and pixel-wise information discarding (CID, RU).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="train a small model on the embedded data, then CID/RU maps + plots",
        description="Train (or reuse) a zoo model on the embedded data; CID and "
        "RU maps per layer, curves and summary.json.",
    )
    _add_output(d, "out/demo")
    _add_model(d)
    _add_cid(d)
    _add_fast(d, "about 4 min on an idle 2-core CPU; each phase prints its estimate")
    d.add_argument("--no-ru", action="store_true", help="skip RU (no decoders)")
    d.add_argument(
        "--ru-unlearned",
        choices=("skip", "solve"),
        default="skip",
        help="RU at layers whose decoder learned nothing (held-out MSE >= 0.8 x "
        "the image variance): skip the solve (default; the maps would only show "
        "the decoder's error) or solve it anyway (greyed out)",
    )
    d.add_argument(
        "--num-images",
        type=POSITIVE,
        default=None,
        help="test images analysed (default 8, with --fast 4)",
    )
    _add_common(d)
    d.set_defaults(func=_demo)

    t = sub.add_parser(
        "train",
        help="train a zoo model; orbax checkpoints, resumable",
        description="Train a zoo model, saving an orbax checkpoint per epoch.",
    )
    _add_model(t)
    _add_dataset(t, DATASET_NAMES)
    t.add_argument(
        "--epochs", type=POSITIVE, default=10, help="training epochs (default 10)"
    )
    t.add_argument(
        "--num-train",
        type=POSITIVE,
        default=10_000,
        help="training images (default 10000)",
    )
    t.add_argument(
        "--num-test", type=POSITIVE, default=1_000, help="test images (default 1000)"
    )
    t.add_argument(
        "--image-size",
        type=_int_at_least(16),
        default=32,
        help="image side in pixels, >= 16 (default 32)",
    )
    t.add_argument(
        "--checkpoint-dir",
        type=_out_dir,
        default=None,
        metavar="DIR",
        help="save (and resume) checkpoints here (default: not saved)",
    )
    _add_common(t, cache=False)
    t.set_defaults(func=_train)

    annotated = ["synthetic", *(k for k, v in TFDS_SPECS.items() if v.annotated)]
    e = sub.add_parser(
        "evaluate",
        help="descriptive accuracy, localisation, layer fairness vs baselines",
        description="CID against baseline explainers: descriptive accuracy, "
        "localisation recall and the layer-fairness check.",
    )
    _add_output(e, "out/evaluate")
    _add_model(e)
    _add_dataset(e, annotated, " (boxes needed: annotated sets only)")
    _add_cid(e)
    _add_fast(e, "about 3.5 min on 2 CPU cores")
    e.add_argument(
        "--num-images",
        type=POSITIVE,
        default=None,
        help="test images explained (default 64, with --fast 16)",
    )
    _add_common(e)
    e.set_defaults(func=_evaluate)

    r = sub.add_parser(
        "run",
        help="CID (and RU) for every image of a data-set split; resumable, "
        "multi-process",
        description="Stream CID (RU with --decoders) for every image of a split "
        "into Zarr stores, shard by shard; resume after a kill with --resume; "
        "span processes with --coordinator/--num-processes/--process-id.",
    )
    _add_output(r, None, resume=True)
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        choices=available_models(),
        metavar="NAME",
        help="train (or load from the cache) this zoo model on the data set's "
        f"train split; one of {', '.join(available_models())}",
    )
    source.add_argument(
        "--checkpoint",
        type=_existing_dir,
        metavar="DIR",
        help="restore this orbax checkpoint folder (e.g. from "
        "`jax-infodiscard train --checkpoint-dir DIR`)",
    )
    _add_dataset(r, DATASET_NAMES)
    r.add_argument("--split", default="test", help="split to analyse (default test)")
    r.add_argument(
        "--num-images",
        type=POSITIVE,
        default=None,
        help="the first N images of the split (default: all; synthetic: 2000)",
    )
    r.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="LAYER",
        help="layer names (default: the model's default layers)",
    )
    r.add_argument(
        "--decoders",
        type=_existing_dir,
        default=None,
        metavar="DIR",
        help="folder of trained RU decoders (decoder_<layer>); adds RU",
    )
    r.add_argument(
        "--shard-size",
        type=POSITIVE,
        default=32,
        help="images per shard: one solver call, one chunk, the unit of resume "
        "(default 32)",
    )
    r.add_argument(
        "--chunk-size",
        type=POSITIVE,
        default=None,
        help="images per compiled call of the solver (bounds memory; default: "
        "as many as fit half the free memory, from a memory estimate)",
    )
    r.add_argument(
        "--image-size",
        type=_int_at_least(16),
        default=32,
        help="image side in pixels, >= 16 (default 32)",
    )
    r.add_argument(
        "--crop-scale",
        type=_number(positive=True),
        default=None,
        help="tfds sets with boxes: crop to the box enlarged this many times "
        "(default: whole images)",
    )
    r.add_argument(
        "--epochs",
        type=POSITIVE,
        default=8,
        help="with --model: training epochs (default 8)",
    )
    r.add_argument(
        "--num-train",
        type=POSITIVE,
        default=10_000,
        help="with --model: training images (default 10000)",
    )
    _add_cid(r)
    dist = r.add_argument_group("several processes (jax.distributed)")
    dist.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0's coordinator service",
    )
    dist.add_argument(
        "--num-processes",
        type=POSITIVE,
        default=None,
        help="number of processes of the job",
    )
    dist.add_argument(
        "--process-id",
        type=NON_NEGATIVE,
        default=None,
        help="this process' index, 0 .. num-processes - 1",
    )
    dist.add_argument(
        "--distributed-auto",
        action="store_true",
        help="detect the cluster (TPU pod, Slurm, Open MPI) instead",
    )
    _add_common(r)
    r.set_defaults(func=_run)

    a = sub.add_parser(
        "analyze",
        help="one of the paper's analyses, with a verdict per claim",
        description="Run an analysis of the paper; writes figures, results.json "
        "and report.md with a verdict table.",
    )
    a.add_argument(
        "name",
        choices=sorted(ANALYSES),
        metavar="NAME",
        help="; ".join(f"{n}: {ANALYSES[n].summary}" for n in sorted(ANALYSES)),
    )
    _add_output(a, None)
    _add_dataset(a, DATASET_NAMES)
    a.add_argument(
        "--image-size",
        type=_int_at_least(16),
        default=32,
        help="image side in pixels, >= 16 (default 32)",
    )
    _add_cid(a)
    _add_fast(a, "a few minutes on 2 CPU cores")
    a.add_argument(
        "--design",
        type=_json_object,
        default={},
        metavar="JSON",
        help="change fields of the analysis' design at its scale, as a JSON "
        'object, e.g. \'{"num_images": 16, "seeds": [0, 1]}\' (the fields are '
        "those of the module's Sizes; an unknown field is an error naming the "
        "known ones)",
    )
    _add_common(a)
    a.set_defaults(func=_analyze)
    return p


def _one_line(error: BaseException) -> str:
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0]
    if len(lines) > 1:
        text += f" [... {len(lines) - 1} more lines; --debug shows them]"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    0: success; 2: a bad input (flag, path, run folder, or a ``ValueError``/
    ``TypeError`` of the library); 1: an unexpected error; 130: interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line parse error
        return e.code if isinstance(e.code, int) else 0
    args.argv = [PROG, *argv]
    try:
        if not args.no_compile_cache:
            from jax_infodiscard.experiments.cache import enable_compilation_cache

            enable_compilation_cache(getattr(args, "cache", None))
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(
            f"error: {type(e).__name__}: {_one_line(e)} (unexpected; --debug "
            "shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
