"""The command line: registries as choices, help everywhere, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from jax_infodiscard import cli
from jax_infodiscard.config import METHODS
from jax_infodiscard.data import DATASET_NAMES
from jax_infodiscard.experiments.analyses import ANALYSES
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.models import available_models

COMMANDS = ("demo", "train", "evaluate", "run", "analyze")


def _subparsers(parser):
    (action,) = [
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ]
    return action.choices


def _option(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_flag_of_every_command_has_help():
    subs = _subparsers(cli.build_parser())
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (
                name,
                action.dest,
            )


def test_choices_come_from_the_registries():
    subs = _subparsers(cli.build_parser())
    for name in ("demo", "train", "evaluate", "run"):
        assert list(_option(subs[name], "--model").choices) == list(available_models())
    for name in ("demo", "evaluate", "run", "analyze"):
        assert tuple(_option(subs[name], "--method").choices) == METHODS
    for name in ("train", "run", "analyze"):
        assert tuple(_option(subs[name], "--dataset").choices) == DATASET_NAMES
    evaluate_sets = _option(subs["evaluate"], "--dataset").choices
    assert "synthetic" in evaluate_sets and "cifar10" not in evaluate_sets  # no boxes
    name_arg = next(a for a in subs["analyze"]._actions if a.dest == "name")
    assert list(name_arg.choices) == sorted(ANALYSES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--num-images", "0"], "--num-images: must be >= 1, got 0"),
        (["demo", "--num-images", "-1"], "--num-images: must be >= 1, got -1"),
        (["demo", "--num-images", "2.5"], "must be an integer, got '2.5'"),
        (["demo", "--beta", "0"], "--beta: must be > 0"),
        (["demo", "--beta=-1e-4"], "--beta: must be > 0"),
        (["demo", "--beta", "inf"], "--beta: must be finite"),
        (["evaluate", "--beta", "nan"], "--beta: must be finite"),
        (["demo", "--seed", "-1"], "--seed: must be >= 0"),
        (["train", "--epochs", "-3"], "--epochs: must be >= 1"),
        (["train", "--epochs", "0"], "--epochs: must be >= 1"),
        (["train", "--image-size", "8"], "--image-size: must be >= 16"),
        (["demo", "--model", "nope"], "invalid choice: 'nope'"),
        (["demo", "--method", "nope"], "invalid choice: 'nope'"),
        (["run", "--out", "o", "--model", "convnet", "--shard-size", "0"], ">= 1"),
        (["run", "--out", "o"], "one of the arguments --model --checkpoint"),
        (["run", "--out", "o", "--checkpoint", "/no/such/dir"], "does not exist"),
        (["run", "--out", "o", "--model", "convnet", "--crop-scale", "0"], "> 0"),
        (["analyze", "nope", "--out", "o"], "invalid choice: 'nope'"),
        (["analyze", "damage", "--out", "o", "--design", "{x"], "--design: not JSON"),
        (["analyze", "damage", "--out", "o", "--design", "[1]"], "a JSON object"),
        (
            ["analyze", "damage", "--out", "o", "--design", '{"bogus": 1}'],
            "design has no field(s) ['bogus']; its fields are ['epochs',",
        ),
        (
            ["analyze", "damage", "--out", "o", "--design", '{"seeds": [0, 0]}'],
            "design field 'seeds' must be distinct integers",
        ),
        (["demo", "--overwrite", "--out", "o", "--fast", "--no-ru", "--nope"], "nope"),
    ],
)
def test_bad_flags_fail_in_one_line_with_code_2(
    argv, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_bad_output_paths(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["demo", "--out", str(afile)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    inside_file = afile / "sub"
    assert cli.main(["demo", "--out", str(inside_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    if os.path.isdir("/proc"):  # read-only even for root
        assert cli.main(["demo", "--out", "/proc/jid-test"]) == 2
        assert "not writable" in capsys.readouterr().err


def test_a_previous_run_is_refused_before_any_compute(capsys, tmp_path):
    RunFolder.open(tmp_path, command="demo", config={}).complete()
    assert cli.main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "mine.txt").write_text("x")
    assert cli.main(["evaluate", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_library_errors_are_one_line(capsys, tmp_path, monkeypatch):
    def bad_input(args):
        raise TypeError("images must be an array of shape (B, H, W, C), got str")

    def crash(args):
        raise RuntimeError("first line\nsecond line\nthird line")

    parser = cli.build_parser

    def patched(func):
        def build():
            p = parser()
            _subparsers(p)["demo"].set_defaults(func=func)
            return p

        return build

    monkeypatch.setattr(cli, "build_parser", patched(bad_input))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: images must be an array of shape (B, H, W, C), got str\n"
    )
    monkeypatch.setattr(cli, "build_parser", patched(crash))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: RuntimeError: first line [... 2 more lines")
    with pytest.raises(RuntimeError, match="second line"):
        cli.main(["demo", "--out", str(tmp_path), "--debug"])


def test_help_exits_zero(capsys):
    assert cli.main(["run", "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


def test_installed_entry_point_prints_no_traceback(tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "jax_infodiscard.cli", "demo", "--num-images", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_analyze_passes_the_design_and_the_scale(monkeypatch, tmp_path, capsys):
    from jax_infodiscard.experiments import analyses

    seen = {}

    def fake_run(name, out, options, **kwargs):
        seen.update(name=name, options=options)
        return analyses.AnalysisResult(results={})

    monkeypatch.setattr(analyses, "run_analysis", fake_run)
    argv = ["analyze", "damage", "--out", str(tmp_path / "o"), "--no-progress"]
    design = '{"num_images": 2, "seeds": [0, 1]}'
    assert cli.main([*argv, "--fast", "--design", design]) == 0
    options = seen["options"]
    assert seen["name"] == "damage" and options.scale == "fast"
    assert options.design == (("num_images", 2), ("seeds", (0, 1)))
    assert cli.main(argv) == 0
    assert seen["options"].scale == "full" and seen["options"].design == ()


def test_version_prints_the_package_version(capsys):
    from jax_infodiscard import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"jax-infodiscard {__version__}\n"


@pytest.mark.parametrize("command", ["demo", "train", "evaluate"])
def test_cache_paths_are_checked_while_parsing(command, capsys, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.chdir(tmp_path)
    for cache, message in (
        (afile, "argument --cache: "),
        (afile / "sub", "argument --cache: cannot create"),
    ):
        assert cli.main([command, "--cache", str(cache)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: " + message) and err.count("\n") == 1, err
        assert str(afile) in err
    # The default cache (the environment variable) is checked the same way.
    monkeypatch.setenv("JAX_INFODISCARD_CACHE", str(afile))
    assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert "$JAX_INFODISCARD_CACHE" in err and "is an existing file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_the_help_examples_parse():
    parser = cli.build_parser()
    lines = [ln.split() for ln in cli.EXAMPLES.splitlines() if "jax-infodiscard" in ln]
    assert {ln[1] for ln in lines} == set(COMMANDS)
    for line in lines:
        args = parser.parse_args(line[1:])
        assert args.command == line[1]


def test_the_design_example_is_accepted_by_every_analysis(capsys):
    from jax_infodiscard.experiments.analyses import AnalysisOptions, apply_design

    example = cli.design_example(ANALYSES)
    assert example  # a field that every design has
    assert cli.main(["analyze", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"e.g. '{json.dumps(example)}'" in help_text
    checked = 0
    for analysis in ANALYSES.values():
        if analysis.sizes is None:
            continue
        for scale in ("full", "fast"):
            design = apply_design(
                analysis.sizes, AnalysisOptions(scale=scale, design=example)
            )
            assert all(getattr(design, k) == v for k, v in example.items())
            checked += 1
    assert checked >= 2 * 6


def test_train_run_and_demo_share_one_default_model():
    from jax_infodiscard.experiments.demo import DemoConfig

    subs = _subparsers(cli.build_parser())
    train = subs["train"].parse_args([])
    run = subs["run"].parse_args(["--out", "o", "--model", "convnet"])
    demo = DemoConfig().model_spec().folder_name()
    assert cli._model_spec(train).folder_name() == demo
    assert cli._model_spec(run).folder_name() == demo
    assert train.epochs == run.epochs == DemoConfig().epochs == cli.EPOCHS
    assert train.checkpoint_dir is None


def test_help_defaults_come_from_the_configs():
    from jax_infodiscard.experiments.demo import DemoConfig
    from jax_infodiscard.experiments.evaluate import EvaluateConfig
    from jax_infodiscard.experiments.run import DatasetRunConfig

    subs = _subparsers(cli.build_parser())
    cases = [
        (subs["run"], "--shard-size", DatasetRunConfig(model=None, checkpoint="c")),
        (subs["run"], "--image-size", DatasetRunConfig(model=None, checkpoint="c")),
        (subs["train"], "--num-train", DemoConfig()),
        (subs["train"], "--num-test", DemoConfig()),
        (subs["train"], "--epochs", DemoConfig()),
    ]
    for parser, flag, config in cases:
        action = _option(parser, flag)
        value = getattr(config, action.dest)
        assert action.default == value and f"(default {value}" in action.help
    for name, config in (("demo", DemoConfig), ("evaluate", EvaluateConfig)):
        text = _option(subs[name], "--num-images").help
        assert f"default {config().num_images}, with --fast " in text
        assert text.endswith(f"{config.fast().num_images})")


def test_train_saves_into_the_cache_by_default(monkeypatch, tmp_path, capsys):
    from jax_infodiscard.experiments import cache

    seen = {}

    def fake_train_or_load(spec, cache_dir, *, progress):
        seen.update(spec=spec, cache_dir=cache_dir)
        path = cache.model_cache_dir(spec, cache_dir)
        history = {"test_accuracy": [0.5], "epoch_seconds": [1.0]}
        return cache.TrainedModel(None, 0.5, history, path, None, None)

    monkeypatch.setattr(cache, "train_or_load", fake_train_or_load)
    assert cli.main(["train", "--cache", str(tmp_path), "--no-compile-cache"]) == 0
    out = capsys.readouterr().out
    path = cache.model_cache_dir(seen["spec"], tmp_path)
    assert seen["cache_dir"] == str(tmp_path)
    assert f"saved in {path};" in out and f"run --checkpoint {path}" in out
