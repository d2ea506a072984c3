"""The run folder: one job's outputs plus a manifest that says what they are.

Every job (``demo``, ``evaluate``, ``run``, ``analyze NAME``) writes into a
run folder through :class:`RunFolder`. The folder holds ``manifest.json``:

* ``command`` and ``config``: the job and every setting that shapes its
  results (``argv`` too, when it came from the command line);
* ``versions`` (Python, this package, jax, jaxlib, flax, optax, orbax,
  numpy, ...), ``git`` (commit and whether the tree was dirty, when the
  package runs from a git checkout), ``host`` and ``devices``;
* ``status``: ``"running"`` while the job writes, ``"complete"`` once every
  output is in place, ``"failed"`` (with ``error``) when the job raised;
* ``started``, ``updated``, ``finished`` (UTC, ISO 8601) and ``files``: the
  outputs this run wrote.

Rules, so that results are never lost or mixed:

* Every file is written atomically (:mod:`jax_infodiscard.io`).
* An existing run folder is never written into silently. Opening one
  raises :class:`RunFolderError` unless ``overwrite=True`` (start over) or,
  for jobs that can continue, ``resume=True`` (same command and config
  required). A non-empty folder without a manifest is refused: it is not a
  run folder, and clearing it could destroy someone's files.
* With ``overwrite``, the new manifest (``"running"``) is written *first*,
  then every stale output is removed, and only then does the job write. A
  run killed at any point therefore leaves a folder whose manifest says
  ``"running"``: never a ``"complete"`` manifest next to outputs of two runs.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> folder = RunFolder.open(out, command="doc", config={"n": 1})
    >>> folder.write_json("results.json", {"value": 1.0})
    >>> folder.complete()
    >>> read_manifest(out)["status"], read_manifest(out)["files"]
    ('complete', ['results.json'])
    >>> RunFolder.open(out, command="doc", config={"n": 1})
    Traceback (most recent call last):
    ...
    jax_infodiscard.experiments.rundir.RunFolderError: ...
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from jax_infodiscard import io
from jax_infodiscard.validation import check_output_dir

__all__ = [
    "MANIFEST",
    "RunFolder",
    "RunFolderError",
    "git_info",
    "package_versions",
    "read_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "jax_infodiscard.run/1"
_PACKAGES = (
    "jax_infodiscard",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorstore",
    "numpy",
    "matplotlib",
    "tensorflow-datasets",
)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the message says why)."""


RESUMABLE = ("run",)
"""Commands that can continue an unfinished folder (``--resume``)."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and the packages that shape results."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout this package runs from, or None.

    ``None`` when the package is not inside a git work tree or git is absent.
    """
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        # The package itself must be tracked there (not, say, a virtual
        # environment inside someone else's repository).
        subprocess.run(
            ["git", "-C", str(root), "ls-files", "--error-unmatch", "jax_infodiscard"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the run folder ``path``.

    Raises:
      FileNotFoundError: no ``manifest.json`` in ``path``.
      RunFolderError: the manifest is not readable JSON of this format.
    """
    file = pathlib.Path(path) / MANIFEST
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a run folder (no {MANIFEST})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunFolderError(f"{file} is not a jax_infodiscard run manifest")
    return manifest


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "config"]


def _describe(manifest: Mapping[str, Any]) -> str:
    status = manifest.get("status", "?")
    what = {"running": "an unfinished (killed or still running)"}.get(status, status)
    return (
        f"{what} '{manifest.get('command', '?')}' run started "
        f"{manifest.get('started', '?')}"
    )


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


class RunFolder:
    """A job's output folder with its manifest (see the module docstring).

    Create it with :meth:`open` (the writing process) or :meth:`attach`
    (other processes of a multi-process run, after the writer opened it).

    Attributes:
      path: the folder.
      manifest: the manifest as last written or read.
    """

    def __init__(self, path: pathlib.Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._written: set[str] = set(manifest.get("files", []))

    # ----------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        command: str,
        config: Mapping[str, Any],
        overwrite: bool = False,
        resume: bool = False,
        argv: Sequence[str] | None = None,
        keep: Iterable[str | os.PathLike] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> RunFolder:
        """Opens (creating if needed) the run folder of a starting job.

        Args:
          path: the folder.
          command: the job's name (``"demo"``, ``"run"``, ...).
          config: every setting that shapes the results (JSON-able).
          overwrite: replace a previous run in ``path``: its outputs are
            removed after the new manifest is written.
          resume: continue a previous run of the same command and config in
            ``path`` (its outputs are kept). A folder without a previous run
            is simply started.
          argv: the command line, recorded in the manifest.
          keep: paths inside ``path`` that ``overwrite`` must not remove
            (e.g. a checkpoint cache the user placed there).
          extra: more manifest fields (JSON-able).

        Returns:
          The folder; its manifest says ``"running"``.

        Raises:
          RunFolderError: ``path`` holds a previous run and neither
            ``overwrite`` nor (for the same config) ``resume`` is given; or
            it is a non-empty folder that is not a run folder.
          ValueError: ``path`` is a file or not writable; both ``overwrite``
            and ``resume``.
        """
        folder, cfg, previous = cls._check(path, command, config, overwrite, resume)
        folder.mkdir(parents=True, exist_ok=True)
        now = _now()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "run_id": uuid.uuid4().hex,
            "command": command,
            "config": cfg,
            "argv": list(argv) if argv is not None else None,
            "status": "running",
            "started": now,
            "updated": now,
            "finished": None,
            "versions": package_versions(),
            "git": git_info(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "files": [],
            **io.jsonable(dict(extra or {}), fallback=repr),
        }
        if previous is not None and resume:
            manifest["run_id"] = previous.get("run_id", manifest["run_id"])
            manifest["started"] = previous.get("started", now)
            manifest["files"] = list(previous.get("files", []))
            manifest["resumed"] = [*previous.get("resumed", []), now]
        run = cls(folder, manifest)
        run._write_manifest()
        if overwrite:
            run._clear(keep)
        return run

    @classmethod
    def check(
        cls,
        path: str | os.PathLike,
        *,
        command: str,
        config: Mapping[str, Any],
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        """Raises what :meth:`open` would raise, and writes nothing.

        Lets a job refuse a folder before slow preparations (loading a
        model) that come before it opens the folder.
        """
        cls._check(path, command, config, overwrite, resume)

    @staticmethod
    def _check(path, command, config, overwrite, resume):
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other; pick one")
        folder = check_output_dir(path)
        cfg = io.jsonable(config, fallback=repr)
        previous = None
        if (folder / MANIFEST).exists():
            try:
                previous = read_manifest(folder)
            except RunFolderError as e:
                if not overwrite:
                    raise RunFolderError(f"{e}; pass --overwrite to start over") from e
        elif folder.is_dir() and any(folder.iterdir()):
            raise RunFolderError(
                f"{folder} is not empty and has no {MANIFEST}: it is not a run "
                "folder of this package; choose a new or empty --out folder"
            )
        if previous is not None and not overwrite:
            if not resume:
                hint = "pass --overwrite to replace it"
                unfinished = previous.get("status") in ("running", "failed")
                if unfinished and command in RESUMABLE:
                    hint = (
                        "pass --resume to continue it (finished parts are kept "
                        "and checked), or --overwrite to start over"
                    )
                raise RunFolderError(f"{folder} holds {_describe(previous)}; {hint}")
            if previous.get("command") != command:
                raise RunFolderError(
                    f"cannot resume: {folder} holds a '{previous.get('command')}' "
                    f"run, not '{command}'"
                )
            changed = _config_diff(previous.get("config"), cfg)
            if changed:
                raise RunFolderError(
                    f"cannot resume {folder}: its run used other settings "
                    f"({', '.join(changed)}); use the same flags, or --overwrite"
                )
        return folder, cfg, previous

    @classmethod
    def attach(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder another process opened (multi-process jobs)."""
        folder = pathlib.Path(path)
        return cls(folder, read_manifest(folder))

    def _clear(self, keep: Iterable[str | os.PathLike]) -> None:
        kept = [pathlib.Path(k) for k in keep]
        for entry in self.path.iterdir():
            if entry.name == MANIFEST:
                continue
            if any(_inside(k, entry) for k in kept):
                continue  # a kept path lies in (or is) this entry
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # ----------------------------------------------------------- writing
    def file(self, name: str) -> pathlib.Path:
        """Path of output ``name`` (relative to the folder)."""
        return self.path / name

    def _record(self, name: str) -> pathlib.Path:
        """Registers output ``name`` (the manifest lists it before it exists)."""
        path = self.file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = str(pathlib.PurePosixPath(*pathlib.Path(name).parts))
        if key not in self._written:
            self._written.add(key)
            self._write_manifest()
        return path

    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[pathlib.Path]:
        """A temporary path that becomes output ``name`` when the block ends.

        For writers that take a file name (``CIDResult.save``).
        """
        with io.atomic_path(self._record(name)) as tmp:
            yield tmp

    def write_json(self, name: str, obj: Any) -> None:
        """Writes output ``name`` as JSON (atomically)."""
        io.write_json(self._record(name), obj)

    def write_text(self, name: str, text: str) -> None:
        """Writes output ``name`` as text (atomically)."""
        io.write_text(self._record(name), text)

    def write_figure(self, name: str, figure: Any, **savefig_kwargs: Any) -> None:
        """Writes a matplotlib figure as output ``name`` (atomically)."""
        io.write_figure(self._record(name), figure, **savefig_kwargs)

    def write_npz(self, name: str, **arrays: Any) -> None:
        """Writes arrays as output ``name`` (``.npz``, atomically)."""
        io.write_npz(self._record(name), **arrays)

    def save_result(self, name: str, result: Any) -> None:
        """Writes a ``CIDResult``/``RUResult`` as output ``name`` (atomically)."""
        with self.atomic(name) as tmp:
            result.save(tmp)

    def record(self, name: str) -> pathlib.Path:
        """Registers an output written by other means (a folder, a store)."""
        return self._record(name)

    # ----------------------------------------------------------- status
    def _write_manifest(self) -> None:
        self.manifest["files"] = sorted(self._written)
        self.manifest["updated"] = _now()
        io.write_json(self.path / MANIFEST, self.manifest)

    def update(self, **fields: Any) -> None:
        """Adds ``fields`` to the manifest and rewrites it."""
        self.manifest.update(io.jsonable(fields, fallback=repr))
        self._write_manifest()

    def complete(self, **fields: Any) -> None:
        """Marks the run complete (last step of a job)."""
        self.manifest.update(io.jsonable(fields, fallback=repr))
        self.manifest["status"] = "complete"
        self.manifest["finished"] = _now()
        self.manifest.pop("error", None)
        self._write_manifest()

    def fail(self, error: BaseException) -> None:
        """Marks the run failed, with the error's one-line description."""
        self.manifest["status"] = "failed"
        self.manifest["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        self._write_manifest()

    @contextlib.contextmanager
    def running(self) -> Iterator[RunFolder]:
        """Context that marks the run failed if the block raises.

        The block calls :meth:`complete` itself when everything is written.
        """
        try:
            yield self
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                with contextlib.suppress(OSError):
                    self.fail(e)
            raise
