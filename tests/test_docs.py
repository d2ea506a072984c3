"""The documentation's promises: every module imports without the optional
extras, the docs configuration resolves references, and the README, the docs
pages and the notebooks run what they show.

Prose is never pinned: the tests extract the commands, links and Python
snippets from the pages and check that they work (links point at files and
headings that exist, commands parse with the real CLI, snippets import real
names and, in the slow tests, run), so editing the text cannot break them and
a renamed flag, file or function can."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import unittest.mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("tensorflow_datasets", "skimage", "lime", "saliency", "torch", "sphinx")
README = ROOT / "README.md"
# The hand-written pages (docs/results/ holds generated reports).
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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


# ------------------------------------------------------------------ helpers
def _blocks(path: pathlib.Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file."""
    text = path.read_text()
    return re.findall(rf"(?ms)^```{language}\n(.*?)^```", text)


def _slug(heading: str) -> str:
    """The anchor GitHub and MyST give a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return {_slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def _links(path: pathlib.Path) -> list[str]:
    """Link and image targets of a Markdown file, code blocks excluded."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _cli_commands(path: pathlib.Path) -> list[str]:
    """`jax-infodiscard ...` commands of a page: lines of bash blocks and
    inline code in table rows, without continuation or comments."""
    commands = []
    for block in _blocks(path, "bash"):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("jax-infodiscard "):
                    commands.append(part)
    for row in re.findall(r"(?m)^\|.*$", path.read_text()):
        for code in re.findall(r"`(jax-infodiscard [^`]*)`", row):
            commands.append(code.replace("\\|", "|"))
    return commands


def _subcommands():
    from jax_infodiscard import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


# -------------------------------------------------------------------- links
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_files_and_headings_that_exist(page):
    """Every relative link or image of a page names a file of the repository
    and, with `#anchor`, a heading of that file."""
    assert "@@" not in page.read_text(), "a placeholder is left"
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor}"
        if page.parent == DOCS and dest.suffix == ".md":
            # docs/conf.py excludes docs/results from the build: a page link
            # there is a missing document to the strict build.
            assert RESULTS not in dest.parents, (
                f"{page.name}: {target} is outside the built docs; link a .json or .png"
            )


def test_readme_front_page_is_short_and_its_picture_small():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images, "the front page shows a map"
    for image in images:
        assert (ROOT / image).stat().st_size < 300_000, image


# ----------------------------------------------------------------- commands
def test_ci_runs_exactly_the_readme_test_command():
    """The README's install + test command is what `.ci/run` runs."""
    commands = [
        line
        for block in _blocks(README, "bash")
        for line in block.splitlines()
        if "pytest" in line and not line.lstrip().startswith("#")
    ]
    assert len(commands) == 1, commands
    install, test = (part.strip() for part in commands[0].split("&&"))
    assert install.startswith("pip install ") and test.startswith("pytest ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install_args = shlex.split(install)[2:]  # after "pip install"
    test_args = shlex.split(test)[1:]
    assert any(
        "pip install" in line
        and shlex.split(line)[-len(install_args) :] == install_args
        for line in ci
    ), install
    assert any(
        "pytest" in line
        and not line.lstrip().startswith("#")
        and _contains(shlex.split(line), test_args)
        for line in ci
    ), test


def _contains(words: list[str], part: list[str]) -> bool:
    return any(words[i : i + len(part)] == part for i in range(len(words)))


@pytest.mark.parametrize(
    "page", [README, ROOT / "docs" / "usage.md", ROOT / "docs" / "reproducing.md"]
)
def test_documented_commands_use_real_subcommands_and_flags(page, tmp_path):
    """Every `jax-infodiscard ...` command shown names a subcommand and flags
    that exist; the README's concrete commands parse as written."""
    parser, subcommands = _subcommands()
    commands = _cli_commands(page)
    assert commands
    for command in commands:
        words = command.split()
        name = words[1]
        if name.startswith("-"):
            continue
        assert name in subcommands, command
        known = {f for a in subcommands[name]._actions for f in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command):
            assert flag in known, (command, flag)
        if page == README:
            args = shlex.split(command)[1:]
            if "NAME" in args:  # analyze NAME: every analysis
                from jax_infodiscard.experiments.analyses import ANALYSES

                cases = [[a if a != "NAME" else n for a in args] for n in ANALYSES]
            else:
                cases = [args]
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                for case in cases:
                    case = [a.replace("NAME", "x") for a in case]
                    with contextlib.redirect_stderr(io.StringIO()):
                        parser.parse_args(case)
            finally:
                os.chdir(cwd)


def test_readme_commands_table_names_every_subcommand():
    _, subcommands = _subcommands()
    shown = {c.split()[1] for c in _cli_commands(README)}
    assert set(subcommands) <= shown, set(subcommands) - shown


# ----------------------------------------------------------------- snippets
SNIPPET_PAGES = [README, ROOT / "docs" / "usage.md", ROOT / "docs" / "ru.md"]


@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_parse_and_import_real_names(page):
    """Fast: each snippet is valid Python and every `from X import y` names a
    real module and attribute (a renamed function breaks this)."""
    blocks = _blocks(page, "python")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    is_package = hasattr(module, "__path__")
                    assert hasattr(module, alias.name) or (
                        is_package and importlib.util.find_spec(name)
                    ), name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


@pytest.mark.slow
@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(page, tmp_path):
    """The snippets of a page run, in order, as one script, and print
    (several minutes on a 2-core CPU: compilation)."""
    script = "\n".join(_blocks(page, "python"))
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()


# ---------------------------------------------------------------- notebooks
def _install_cell(path: pathlib.Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return "".join(code[0]["source"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_links_point_at_files_that_exist(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
    )
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            file = target.partition("#")[0]
            assert (notebook.parent / file).exists(), f"{notebook.name}: {target}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_install_cell_is_a_no_op_when_installed(notebook, capsys):
    """CI (and a checkout) already has the package: the first cell must not
    call pip."""
    source = _install_cell(notebook)
    assert re.search(r'(?m)^PACKAGE = ""$', source)
    extras = ast.literal_eval(re.search(r"(?m)^EXTRAS = (.*)$", source).group(1))
    with (
        unittest.mock.patch("subprocess.check_call", side_effect=AssertionError),
        unittest.mock.patch(
            "importlib.util.find_spec", return_value=object()
        ),  # the extras too
    ):
        exec(compile(source, notebook.name, "exec"), {})
    assert "nothing to install" in capsys.readouterr().out
    assert isinstance(extras, dict)


@pytest.mark.parametrize("notebook", NOTEBOOKS[:1], ids=lambda p: p.name)
def test_notebook_install_cell_installs_package_and_keeps_jax(notebook, tmp_path):
    """Where the package is missing (Colab), the cell pip-installs PACKAGE
    with the installed jax pinned as a constraint."""
    jax = pytest.importorskip("jax")
    wheel = "/content/jax_infodiscard-0.1.0-py3-none-any.whl"
    source = _install_cell(notebook).replace('PACKAGE = ""', f"PACKAGE = {wheel!r}")
    calls = []

    def record(args):
        constraint = pathlib.Path(args[args.index("-c") + 1]).read_text()
        calls.append((args, constraint))
        return 0

    real = importlib.util.find_spec
    with (
        unittest.mock.patch("subprocess.check_call", side_effect=record),
        unittest.mock.patch(
            "importlib.util.find_spec",
            side_effect=lambda name, *a: (
                None if name == "jax_infodiscard" else real(name, *a)
            ),
        ),
    ):
        exec(compile(source, notebook.name, "exec"), {})
    (args, constraint), *_ = calls
    assert args[-1] == wheel and args[1:4] == ["-m", "pip", "install"]
    assert f"jax=={jax.__version__}" in constraint.split()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_keep_their_outputs_small(notebook):
    """Saved outputs (a preview shows them) with at least one figure, and a
    file small enough for the repository."""
    cells = json.loads(notebook.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert any("image/png" in o.get("data", {}) for o in outputs), notebook.name
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert notebook.stat().st_size < 1_000_000
