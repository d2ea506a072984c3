"""Sphinx configuration of the jax_infodiscard API reference.

Build (strict, as CI does): ``python -m sphinx -W --keep-going -n -b html docs
docs/_build/html``. ``-n`` (nitpicky) makes every cross-reference that does
not resolve a warning, and ``-W`` makes warnings errors, so a broken
reference fails the build. References to other libraries (jax, flax, numpy,
...) are not checked: CI has no network for intersphinx inventories.
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys

from sphinx.util.nodes import make_refnode

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax_infodiscard

project = "jax_infodiscard"
author = "the jax_infodiscard authors"
copyright = "the jax_infodiscard authors, Apache-2.0"
release = jax_infodiscard.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",  # the Markdown pages (usage, benchmarks, ...)
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Headings up to level 3 get anchors, so that the pages' links to
# `page.md#a-section` resolve (and are checked by the strict build).
myst_heading_anchors = 3
templates_path = ["_templates"]
exclude_patterns = ["_build", "results", "Thumbs.db", ".DS_Store"]
html_theme = "furo"
html_title = f"jax_infodiscard {release}"

# Every public module gets a page (docs/_templates/autosummary/module.rst);
# pages are generated at build time into api/generated (not committed).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # Each object is documented once, in the module that defines it.
    "ignore-module-all": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

nitpicky = True
_EXTERNAL = (
    "jax|jaxlib|jnp|flax|nnx|optax|numpy|np|orbax|ocp|matplotlib|tqdm|"
    "tensorstore|ts|zarr|tensorflow_datasets|tfds|skimage|torch|argparse|"
    "pathlib|os|typing|collections|dataclasses|concurrent|tempfile|abc|enum|"
    "json|io|contextlib|functools|types|PRNGKeyArray|Array|ArrayLike|PyTree|"
    "PathLike|NDArray|DTypeLike|Partial|Figure|Axes"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"~?({_EXTERNAL})(\..*)?"),
    # Type-hint and docstring words that are not objects.
    (r"py:.*", r"(optional|callable|array|array-like|pytree|default.*|True|False)"),
]


def _objects(app):
    return app.env.get_domain("py").objects


def _public_home(package_name: str) -> None:
    """Objects that a package exports from a private module (``_common``) are
    documented on the package's page: their ``__module__`` is set to it
    (for this build only)."""
    package = importlib.import_module(package_name)
    for name in getattr(package, "__all__", ()):
        obj = getattr(package, name, None)
        module = getattr(obj, "__module__", "") or ""
        if module.startswith(package_name + "._"):
            try:
                obj.__module__ = package_name
            except (AttributeError, TypeError):
                pass


def _exists(target: str, module: str) -> bool:
    """Whether ``target`` names a real object, from ``module`` or absolutely
    (builtins included)."""
    if hasattr(builtins, target):
        return True
    bases = [module.rsplit(".", i)[0] for i in range(module.count(".") + 1)]
    for base in [*bases, ""] if module else [""]:
        path = f"{base}.{target}" if base else target
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return True
    return False


def _resolve(app, env, node, contnode):
    """Second chance for a Python reference that Sphinx did not resolve.

    1. A private name (``_helper``) is rendered as plain text.
    2. A shorter or re-exported path (``train_decoder``,
       ``jax_infodiscard.models.from_nnx``) links to the one documented object
       it can only mean (the current module's first).
    3. A real but undocumented object (a type alias in a signature) is
       rendered as plain text.

    Anything else is a broken reference: it stays unresolved and the strict
    build fails on it.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    parts = target.split(".")
    if any(p.startswith("_") and not p.startswith("__") for p in parts):
        return contnode
    if "[" in target:  # a piece of a type expression (``tuple[str, ...]``)
        return contnode
    domain = env.get_domain("py")
    kinds = set(domain.objtypes_for_role(node["reftype"]) or ())
    objects = {
        name: obj
        for name, obj in domain.objects.items()
        if not kinds or obj.objtype in kinds
    }
    head, tail = ".".join(parts[:-1]), parts[-1]
    candidates = [
        name
        for name in objects
        if name.endswith("." + target)
        or (head and name.startswith(head + ".") and name.endswith("." + tail))
    ]
    module = node.get("py:module") or ""
    if len(candidates) > 1:  # prefer the current module or package
        local = [n for n in candidates if module and n.startswith(module + ".")]
        candidates = local or candidates
    if len(candidates) == 1:
        obj = objects[candidates[0]]
        return make_refnode(
            app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, target
        )
    if not candidates and _exists(target, module):
        return contnode
    return None


def _skip(app, what, name, obj, skip, options):
    """NamedTuple fields are documented by the class's Attributes section."""
    doc = getattr(obj, "__doc__", "") or ""
    if doc.startswith("Alias for field number"):
        return True
    return None


_ORIGINAL: dict[str, list[str]] = {}


def _keep(app, what, name, obj, options, lines):
    if what in ("data", "attribute"):
        _ORIGINAL[name] = list(lines)


def _restore(app, what, name, obj, options, lines):
    """Module constants keep their prose: napoleon would read a first line
    with a colon ("Fractions (paper Fig. 6): ...") as "type: description"."""
    if what in ("data", "attribute") and name in _ORIGINAL:
        lines[:] = _ORIGINAL.pop(name)


def setup(app):
    for package in ("jax_infodiscard.baselines",):
        _public_home(package)
    app.connect("missing-reference", _resolve)
    app.connect("autodoc-skip-member", _skip)
    app.connect("autodoc-process-docstring", _keep, priority=100)
    app.connect("autodoc-process-docstring", _restore, priority=900)
    return {"parallel_read_safe": True}
