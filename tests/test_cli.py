"""The command line: registries as choices, help everywhere, one-line errors."""

from __future__ import annotations

import argparse
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
