"""The API reference's preconditions: every module imports without the
optional extras (doctests are collected from all of them), and the docs
configuration resolves references the way the strict build relies on."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("tensorflow_datasets", "skimage", "lime", "saliency", "torch", "sphinx")


def test_every_module_imports_without_the_optional_packages():
    """`pytest --doctest-modules` and autodoc import every module: none may
    need an extra at import time (they import it where they use it)."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ImportError(f"blocked optional package {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import jax_infodiscard
        names = [m.name for m in pkgutil.walk_packages(
            jax_infodiscard.__path__, "jax_infodiscard.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 40


def test_docs_resolver_links_short_names_and_rejects_missing_ones():
    pytest.importorskip("sphinx")
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import conf as docs_conf  # docs/conf.py
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert docs_conf._exists("core.solver.Deviations", "jax_infodiscard")
    assert docs_conf._exists("open", "jax_infodiscard.io")
    assert docs_conf._exists("jax_infodiscard.config.CIDConfig", "")
    assert not docs_conf._exists("jax_infodiscard.config.CIDConfigz", "")
    assert not docs_conf._exists("run_demox", "jax_infodiscard.experiments.demo")


def test_readme_commands_table_lists_every_flag():
    import argparse

    from jax_infodiscard import cli

    readme = (ROOT / "README.md").read_text()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        row = next(
            line
            for line in readme.splitlines()
            if line.startswith(f"| `jax-infodiscard {name} ")
        )
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in row, (name, flag)
                    assert action.help, (name, flag)


def test_readme_names_the_paper_license_and_times():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("## What it measures")[0]
    assert "pip install -e . && jax-infodiscard demo --out out/demo" in head
    assert 'pip install -e ".[test]" && pytest -m "not slow" -n 2' in head
    assert "arxiv.org/abs/1906.04109" in head and "Apache-2.0" in head
    assert "@@" not in readme  # no placeholder left
    assert "@inproceedings" in readme


def _python_block(section: str) -> str:
    readme = (ROOT / "README.md").read_text()
    text = readme.split(f"## {section}\n", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("section", ["Quickstart", "RU"])
def test_readme_snippet_runs_as_a_script(section, tmp_path):
    """The Quickstart and RU snippets define every name they use and print
    their results (several minutes on a 2-core CPU: compilation)."""
    out = subprocess.run(
        [sys.executable, "-c", _python_block(section)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
