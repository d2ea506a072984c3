"""Command line: ``jax-infodiscard {demo,train,evaluate,run,analyze}``.

One parser. Flags shared by several commands are defined once (the
``_add_*`` helpers below); the choices of ``--model``, ``--method``,
``--dataset`` and of the analysis name come from the registries
(:func:`jax_infodiscard.models.available_models`,
:data:`jax_infodiscard.config.METHODS`,
:data:`jax_infodiscard.data.DATASET_NAMES`,
:data:`jax_infodiscard.experiments.analyses.ANALYSES`).

Defaults: the defaults shown by ``--help`` are read from the job
configurations (:class:`~jax_infodiscard.experiments.demo.DemoConfig`,
:class:`~jax_infodiscard.experiments.evaluate.EvaluateConfig`,
:class:`~jax_infodiscard.experiments.run.DatasetRunConfig`,
:class:`~jax_infodiscard.experiments.cache.ModelSpec`,
:class:`~jax_infodiscard.experiments.analyses.AnalysisOptions`), never
copied by hand. ``train``, ``demo`` and ``run --model`` share one default
training (the demo's: data, epochs, seed), and ``train`` saves into the
model cache by default, so that ``demo`` and ``run`` reuse what ``train``
made.

Failing fast: numbers and paths are checked while parsing (through
:mod:`jax_infodiscard.validation`), before any model is built: ``--out``,
``--cache`` and ``--checkpoint-dir`` must be (or be creatable as) writable
folders, ``--checkpoint`` and ``--decoders`` existing ones. A bad value, a
refused run folder or a ``ValueError``/``TypeError`` from the library ends
the command with one line, ``error: ...``, and exit code 2. Any other
exception prints one line too (exit code 1); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jax_infodiscard import __version__
from jax_infodiscard.config import METHODS, CIDConfig
from jax_infodiscard.data import DATASET_NAMES, TFDS_SPECS
from jax_infodiscard.experiments.demo import DemoConfig
from jax_infodiscard.experiments.evaluate import EvaluateConfig
from jax_infodiscard.experiments.run import DatasetRunConfig
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


def _writable_dir(text: str) -> str:
    """A folder that is writable, or can be created (``--out``, ``--cache``)."""
    try:
        check_output_dir(text, "folder")
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("folder: ")) from None
    return text


def _existing_dir(text: str) -> str:
    path = pathlib.Path(text).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"folder {text} {what}")
    return str(path.resolve())


def _default(config: type, name: str) -> Any:
    """The default value of field ``name`` of the dataclass ``config``.

    >>> from jax_infodiscard.config import CIDConfig
    >>> _default(CIDConfig, "beta") == CIDConfig().beta
    True
    """
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
BETA = _number(positive=True)
EPOCHS = _default(DemoConfig, "epochs")
"""Default training epochs of ``train``, ``demo`` and ``run --model`` (one)."""


# ------------------------------------------------------------ shared flags
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seed",
        type=NON_NEGATIVE,
        default=_default(DemoConfig, "seed"),
        help="seed of training and of the solver's PRNG keys (default "
        f"{_default(DemoConfig, 'seed')})",
    )
    p.add_argument(
        "--cache",
        type=_writable_dir,
        default=None,
        metavar="DIR",
        help="model/decoder cache, a writable folder (default "
        "$JAX_INFODISCARD_CACHE or ~/.cache/jax_infodiscard)",
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


def _add_model(p: argparse.ArgumentParser) -> None:
    default = _default(DemoConfig, "model")
    p.add_argument(
        "--model",
        choices=available_models(),
        default=default,
        metavar="NAME",
        help=f"zoo model, one of {', '.join(available_models())} (default {default})",
    )


def _add_dataset(
    p: argparse.ArgumentParser, choices: Sequence[str], help_extra: str = ""
) -> None:
    default = _default(DatasetRunConfig, "dataset")
    p.add_argument(
        "--dataset",
        choices=list(choices),
        default=default,
        help=f"data set: {', '.join(choices)} (default {default}, embedded, no "
        f"download; tfds sets need the 'data' extra){help_extra}",
    )


def _add_image_size(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--image-size",
        type=_int_at_least(16),
        default=default,
        help=f"image side in pixels, >= 16 (default {default})",
    )


def _add_training(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--epochs`` and ``--num-train``, the demo's defaults (one training)."""
    epochs, num_train = EPOCHS, _default(DemoConfig, "num_train")
    p.add_argument(
        "--epochs",
        type=POSITIVE,
        default=epochs,
        help=f"{prefix}training epochs (default {epochs}, as the demo)",
    )
    p.add_argument(
        "--num-train",
        type=POSITIVE,
        default=num_train,
        help=f"{prefix}training images (default {num_train}, as the demo)",
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
        type=_writable_dir,
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


def _add_num_images(p: argparse.ArgumentParser, config: type, what: str) -> None:
    """``--num-images``, with the config's default and its ``fast()`` one."""
    p.add_argument(
        "--num-images",
        type=POSITIVE,
        default=None,
        help=f"{what} (default {_default(config, 'num_images')}, with --fast "
        f"{config.fast().num_images})",
    )


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


def _model_spec(args):
    """The cache key of the model ``train`` or ``run --model`` trains.

    With the default flags it is the demo's model, so that the three
    commands share one trained network.
    """
    from jax_infodiscard.experiments.cache import ModelSpec
    from jax_infodiscard.training.train import TrainConfig

    extra = {"num_test": args.num_test} if hasattr(args, "num_test") else {}
    return ModelSpec(
        model=args.model,
        dataset=args.dataset,
        image_size=args.image_size,
        num_train=args.num_train,
        crop_scale=getattr(args, "crop_scale", None),
        train=TrainConfig(epochs=args.epochs, seed=args.seed),
        **extra,
    )


def _train(args) -> int:
    from jax_infodiscard.experiments.cache import train_or_load

    spec = _model_spec(args)
    if args.checkpoint_dir is None:  # the model cache, where demo/run look
        trained = train_or_load(spec, args.cache, progress=_progress(args))
        path, history = trained.path, trained.history
    else:
        path, history = args.checkpoint_dir, _train_into(spec, args)
    acc = history.get("test_accuracy", [float("nan")])[-1]
    secs = sum(history.get("epoch_seconds", []))
    print(
        f"{args.model}: test accuracy {acc:.4f} after {args.epochs} epochs "
        f"({secs:.0f} s of training)"
    )
    print(
        f"saved in {path}; analyse it with `{PROG} run --checkpoint {path} "
        "--out DIR` (demo and run --model with the same settings reuse it)"
    )
    return 0


def _train_into(spec, args) -> dict:
    """Trains ``spec`` into ``--checkpoint-dir``; returns the history."""
    from jax_infodiscard.data import num_classes
    from jax_infodiscard.experiments.data import load_examples
    from jax_infodiscard.training.train import train

    size = spec.image_size
    tr = load_examples(spec.dataset, "train", spec.num_train, image_size=size)
    te = load_examples(spec.dataset, "test", spec.num_test, image_size=size)
    _, history = train(
        spec.model,
        (tr.images, tr.labels),
        (te.images, te.labels),
        dataclasses.replace(spec.train, progress=_progress(args)),
        checkpoint_dir=args.checkpoint_dir,
        num_classes=num_classes(spec.dataset),
        image_size=size,
    )
    return history


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
    from jax_infodiscard.experiments.run import format_summary, run_dataset

    cid = _cid_config(args)
    model = None if args.model is None else _model_spec(args)
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
EXAMPLES = f"""examples:
  {PROG} demo --fast
  {PROG} train --model convnet
  {PROG} run --model convnet --num-images 64 --out out/run
  {PROG} evaluate --fast
  {PROG} analyze concentration --fast --out out/concentration
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``jax-infodiscard`` parser (every flag has a help text)."""
    p = _Parser(
        prog=PROG,
        description="Layer-wise and pixel-wise information discarding (CID, RU).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _run_parser(sub)
    _analyze_parser(sub)
    return p


def _demo_parser(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="train a small model on the embedded data, then CID/RU maps + plots",
        description="Train (or reuse) a zoo model on the embedded data; CID and "
        "RU maps per layer, curves and summary.json.",
    )
    _add_output(d, "out/demo")
    _add_model(d)
    _add_cid(d)
    _add_fast(d, "each phase prints its estimate; timings: docs/benchmarks.md")
    d.add_argument("--no-ru", action="store_true", help="skip RU (no decoders)")
    d.add_argument(
        "--ru-unlearned",
        choices=("skip", "solve"),
        default=_default(DemoConfig, "ru_unlearned"),
        help="RU at layers whose decoder learned nothing (held-out MSE >= 0.8 x "
        "the image variance): skip the solve (default; the maps would only show "
        "the decoder's error) or solve it anyway (greyed out)",
    )
    _add_num_images(d, DemoConfig, "test images analysed")
    _add_common(d)
    d.set_defaults(func=_demo)


def _train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a zoo model into the model cache (or a folder); resumable",
        description="Train a zoo model, saving an orbax checkpoint per epoch into "
        "the model cache (CACHE/models/...; demo and run --model with the same "
        "settings reuse it), or into --checkpoint-dir; prints where.",
    )
    _add_model(t)
    _add_dataset(t, DATASET_NAMES)
    _add_training(t)
    num_test = _default(DemoConfig, "num_test")
    t.add_argument(
        "--num-test",
        type=POSITIVE,
        default=num_test,
        help=f"test images (default {num_test})",
    )
    _add_image_size(t, _default(DemoConfig, "image_size"))
    t.add_argument(
        "--checkpoint-dir",
        type=_writable_dir,
        default=None,
        metavar="DIR",
        help="save (and resume) checkpoints here instead (default: the model "
        "cache, see --cache)",
    )
    _add_common(t)
    t.set_defaults(func=_train)


def _evaluate_parser(sub) -> None:
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
    _add_fast(e, "timings: docs/benchmarks.md")
    _add_num_images(e, EvaluateConfig, "test images explained")
    _add_common(e)
    e.set_defaults(func=_evaluate)


def _run_parser(sub) -> None:
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
        help="restore this orbax checkpoint folder (the one `jax-infodiscard "
        "train` prints)",
    )
    _add_dataset(r, DATASET_NAMES)
    _add_run_images(r)
    _add_image_size(r, _default(DatasetRunConfig, "image_size"))
    r.add_argument(
        "--crop-scale",
        type=_number(positive=True),
        default=None,
        help="tfds sets with boxes: crop to the box enlarged this many times "
        "(default: whole images)",
    )
    _add_training(r, "with --model: ")
    _add_cid(r)
    _add_distributed(r)
    _add_common(r)
    r.set_defaults(func=_run)


def _add_run_images(r: argparse.ArgumentParser) -> None:
    """What ``run`` analyses, and in which pieces."""
    from jax_infodiscard.experiments.data import split_size

    split = _default(DatasetRunConfig, "split")
    r.add_argument("--split", default=split, help=f"split to analyse (default {split})")
    r.add_argument(
        "--num-images",
        type=POSITIVE,
        default=None,
        help="the first N images of the split (default: all; synthetic: "
        f"{split_size('synthetic', split)})",
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
    shard = _default(DatasetRunConfig, "shard_size")
    r.add_argument(
        "--shard-size",
        type=POSITIVE,
        default=shard,
        help="images per shard: one solver call, one chunk, the unit of resume "
        f"(default {shard})",
    )
    r.add_argument(
        "--chunk-size",
        type=POSITIVE,
        default=None,
        help="images per compiled call of the solver (bounds memory; default: "
        "as many as fit half the free memory, from a memory estimate)",
    )


def _add_distributed(r: argparse.ArgumentParser) -> None:
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


def _analyze_parser(sub) -> None:
    from jax_infodiscard.experiments.analyses import ANALYSES, AnalysisOptions

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
    _add_image_size(a, _default(AnalysisOptions, "image_size"))
    _add_cid(a)
    _add_fast(a, "timings: docs/reproducing.md")
    a.add_argument(
        "--design",
        type=_json_object,
        default={},
        metavar="JSON",
        help=_design_help(ANALYSES),
    )
    _add_common(a)
    a.set_defaults(func=_analyze)


def design_example(analyses: Mapping[str, Any]) -> dict[str, int]:
    """A ``--design`` that every analysis with a design accepts.

    The integer fields common to all designs (at most two), each at its
    smallest ``--fast`` value.
    """
    designs = {n: a.sizes for n, a in analyses.items() if a.sizes}
    if not designs:
        return {}
    common = set.intersection(
        *(
            {
                f.name
                for f in dataclasses.fields(s["fast"])
                if type(getattr(s["fast"], f.name)) is int
            }
            for s in designs.values()
        )
    )
    return {
        name: min(getattr(s["fast"], name) for s in designs.values())
        for name in sorted(common)[:2]
    }


def _design_help(analyses: Mapping[str, Any]) -> str:
    fields = "; ".join(
        f"{n}: {', '.join(f.name for f in dataclasses.fields(a.sizes['full']))}"
        for n, a in sorted(analyses.items())
        if a.sizes
    )
    return (
        "change fields of the analysis' design at its scale, as a JSON object, "
        f"e.g. '{json.dumps(design_example(analyses))}' (an unknown field is an "
        f"error naming the known ones). Fields: {fields}"
    )


def _one_line(error: BaseException) -> str:
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0]
    if len(lines) > 1:
        text += f" [... {len(lines) - 1} more lines; --debug shows them]"
    return text


def _check_default_cache(parser: argparse.ArgumentParser) -> None:
    from jax_infodiscard.experiments.cache import default_cache_dir

    try:
        check_output_dir(default_cache_dir(), "folder")
    except ValueError as e:
        parser.error(
            "the model cache ($JAX_INFODISCARD_CACHE, else "
            f"~/.cache/jax_infodiscard): {str(e).removeprefix('folder: ')}; "
            "give another with --cache DIR"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    0: success; 2: a bad input (flag, path, run folder, or a ``ValueError``/
    ``TypeError`` of the library); 1: an unexpected error; 130: interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.cache is None:  # the default cache, checked like --cache
            _check_default_cache(parser)
    except SystemExit as e:  # --help, --version, or a one-line parse error
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
