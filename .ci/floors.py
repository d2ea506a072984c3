"""Prints the lowest declared version of every direct dependency, pinned.

``python .ci/floors.py > floors.txt`` turns each ``name>=X`` of
``[project] dependencies`` in pyproject.toml into ``name==X``: a constraints
file with which pip installs the floors we declare, so that CI tests them
(``.ci/run``). A dependency without a ``>=`` floor is an error: every floor
must be declared, and so tested.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
_FLOOR = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)$")


def floors(pyproject: pathlib.Path = PYPROJECT) -> list[str]:
    """``["name==floor", ...]`` for the project's direct dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = []
    for requirement in project["dependencies"]:
        match = _FLOOR.match(requirement.strip())
        if match is None:
            raise SystemExit(f"{requirement!r}: declare its floor as 'name>=X'")
        name, version = match.groups()
        pins.append(f"{name.split('[')[0]}=={version}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("".join(f"{pin}\n" for pin in floors()))
