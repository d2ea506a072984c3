"""The ``run`` job: CID (and RU) of every image of a data-set split, resumable.

``jax-infodiscard run --checkpoint DIR --dataset synthetic --out OUT``
computes pixel-wise CID of the chosen layers for every image of a split and
streams the results, shard by shard, into Zarr stores in the run folder
(:mod:`jax_infodiscard.experiments.store`):

* ``cid.zarr`` (and ``ru.zarr`` with ``--decoders``): every field of the
  result with its ``(layer, image, ...)`` axes (``pixel``, ``mean``,
  ``converged``, ``budget``, ..., ``linearity`` when the solver reports it)
  and ``concentration`` ``(L, N)`` when the data set has masks (NaN for
  images whose mask has no foreground or no background); ``cid.zarr/label``;
* ``shards/NNNNNN.json``: one marker per finished shard, written after its
  chunks, with the SHA-256 checksum of every array slice it wrote and the
  record of its failed maps; a shard without a marker is recomputed on
  resume, and so is a marked shard whose data no longer matches its
  checksums (a lost or damaged chunk), with a warning that says so;
* ``results.json`` and ``report.md``: the per-layer summary (mean CID,
  concentration, converged share, ``linearity``), computed from the
  ``pixel`` maps and cross-checked against the stored ``mean``, and
  ``manifest.json``.

An image whose solve ends in NaN/inf or meets a zero Jacobian
(:class:`ImageFailure`) is not a silent NaN map: its maps are NaN in the
store, the marker and ``report.md`` name the layer, the image and the
cause, and the summary leaves it out and counts it (``failed``). A full
disk stops the run with "no space left on device", the path, and the advice
to rerun with ``--resume``.

Shards are a fixed grid of ``shard_size`` images over the split. Image
``i`` always gets the key ``fold_in(key(seed), i)`` and always sits in the
same shard with the same companions (the last shard is padded with copies
of its last image), so a resumed run, or a run split over several
processes, writes exactly the numbers of one uninterrupted run.

After ``kill -9``, rerun the same command with ``--resume``: finished
shards are kept, the others are computed. With several processes
(:mod:`jax_infodiscard.experiments.distributed`), process 0 opens the run
folder, every process takes every P-th unfinished shard, and process 0
merges the shard markers into the manifest at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jax_infodiscard as jid
from jax_infodiscard import io
from jax_infodiscard.experiments import distributed
from jax_infodiscard.experiments.cache import ModelSpec, train_or_load
from jax_infodiscard.experiments.data import (
    Examples,
    dataset_has_masks,
    load_examples,
    split_size,
)
from jax_infodiscard.experiments.measure import (
    Decoders,
    concentration_or_nan,
    load_decoders,
    solve,
)
from jax_infodiscard.experiments.rundir import RunFolder, RunFolderError
from jax_infodiscard.experiments.store import (
    ArrayStore,
    dims_for,
    disk_full,
    is_disk_full,
)
from jax_infodiscard.models import feature_fn, layer_names
from jax_infodiscard.validation import ImageFailure, check_int

__all__ = ["DatasetRunConfig", "format_summary", "run_dataset"]

SHARDS = "shards"
# Testing hook: seconds to sleep after a shard's arrays are written and
# before its marker is (the most delicate moment to be killed).
_PAUSE_ENV = "JAX_INFODISCARD_TEST_PAUSE_S"


@dataclasses.dataclass(frozen=True)
class DatasetRunConfig:
    """Settings of a data-set run (all of them shape the results).

    Attributes:
      dataset: data set name (``"synthetic"`` or a tfds name).
      split: split name.
      num_images: the first ``num_images`` images of the split (``None``:
        the whole split; the synthetic split then has 2,000 test images).
      layers: layer names (``None``: the model's default layers).
      image_size: image side in pixels.
      crop_scale: tfds sets with boxes: crop around the box, or ``None``.
      shard_size: images per shard (one solver call and one chunk).
      cid: CID configuration.
      ru: RU configuration when decoders are given (``None``:
        ``RUConfig.from_cid(cid)``, every CID setting); must be
        ``None`` without decoders.
      seed: PRNG seed of the solver keys.
      model: train or load this model through the shared cache, or
      checkpoint: restore this orbax checkpoint folder (absolute path).
      decoders: folder of RU decoders (``decoder_<layer>`` sub-folders, as
        written by ``load_or_train_decoder``), or ``None`` (CID only).
    """

    dataset: str = "synthetic"
    split: str = "test"
    num_images: int | None = None
    layers: tuple[str, ...] | None = None
    image_size: int = 32
    crop_scale: float | None = None
    shard_size: int = 32
    cid: jid.CIDConfig = dataclasses.field(default_factory=jid.CIDConfig)
    ru: jid.RUConfig | None = None
    seed: int = 0
    model: ModelSpec | None = None
    checkpoint: str | None = None
    decoders: str | None = None

    def __post_init__(self):
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError("give exactly one model source: model or checkpoint")
        if self.num_images is not None:
            check_int("num_images", self.num_images, 1)
        check_int("shard_size", self.shard_size, 1)
        check_int("image_size", self.image_size, 1)
        check_int("seed", self.seed, 0)
        if self.ru is not None and self.decoders is None:
            raise ValueError("an RU configuration needs decoders")
        if self.decoders is not None and self.ru is None:
            ru = jid.RUConfig.from_cid(self.cid)
            object.__setattr__(self, "ru", ru)
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one layer (or be None)")


def _load_model(config: DatasetRunConfig, cache_dir, progress: bool):
    if config.checkpoint is not None:
        from jax_infodiscard.training.checkpoint import restore_checkpoint

        model, _ = restore_checkpoint(config.checkpoint)
        return model
    if distributed.process_count() > 1:
        raise ValueError(
            "a multi-process run needs --checkpoint DIR (train the model first, "
            "e.g. with `jax-infodiscard train --checkpoint-dir DIR`); --model "
            "would train it in every process"
        )
    return train_or_load(config.model, cache_dir, progress=progress).model


def _load_decoders(config: DatasetRunConfig, layers: Sequence[str]) -> Decoders | None:
    if config.decoders is None:
        return None
    return load_decoders(config.decoders, layers)


class _Images:
    """Images of the run by global index (the synthetic set once in memory)."""

    def __init__(self, config: DatasetRunConfig, num: int):
        self._cfg = config
        self._all = None
        if config.dataset == "synthetic":
            self._all = self._load(0, num)

    def _load(self, start: int, num: int) -> Examples:
        c = self._cfg
        return load_examples(
            c.dataset,
            c.split,
            num,
            start=start,
            image_size=c.image_size,
            crop_scale=c.crop_scale,
        )

    def get(self, start: int, stop: int) -> Examples:
        if self._all is not None:
            return Examples(*(None if a is None else a[start:stop] for a in self._all))
        return self._load(start, stop - start)


def _result_fields(result: Any) -> dict[str, np.ndarray]:
    """Every array field of a result with ``(L, B, ...)`` axes.

    Picks up fields the solver adds later (``linearity``) without naming
    them.
    """
    num_layers = len(result.layers)
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, (np.ndarray, jax.Array)):
            arr = np.asarray(value)
            if arr.ndim >= 2 and arr.shape[0] == num_layers:
                out[f.name] = arr
    return out


def _write_result(
    store: ArrayStore,
    fields: dict[str, np.ndarray],
    start: int,
    count: int,
    total: int,
    shard: int,
) -> dict[str, str]:
    """Writes a shard's fields; returns each written slice's checksum."""
    sums = {}
    for name, arr in fields.items():
        arr = arr[:, :count]
        shape = (arr.shape[0], total, *arr.shape[2:])
        chunks = (1, shard, *arr.shape[2:])
        target = store.array(
            name, shape, arr.dtype, chunks, dims_for(arr.ndim, per_layer=True)
        )
        store.write(target, name, (slice(None), slice(start, start + count)), arr)
        sums[name] = _digest(arr)
    return sums


def _digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (a shard marker's check)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}|{list(a.shape)}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _failed_fields(fields: dict[str, np.ndarray], images: list[int]) -> None:
    """Blanks the maps of failed images in place: NaN, ``False`` or 0."""
    for arr in fields.values():
        fill = np.nan if arr.dtype.kind == "f" else 0
        arr[:, images] = fill


def _solve(solve, batch: jax.Array, count: int, start: int):
    """``solve(batch)``, or, if images fail, the others and a failure record.

    ``solve`` raises :class:`ImageFailure` (NaN/inf, zero Jacobian) naming
    the failing (layer, image) pairs. Those images are replaced by a good
    image of the batch (results do not depend on batch companions, and the
    shapes stay those of every shard: no recompilation), solved again, and
    their maps blanked (NaN) for every layer.

    Returns:
      ``(result, failed, records)``: ``failed`` the batch indices whose maps
      must be blanked, ``records`` a list of ``{"image" (global index),
      "layer", "cause"}``.
    """
    try:
        return solve(batch), [], []
    except ImageFailure as e:
        failed = sorted({b for _, b, _ in e.failures if b < count})
        records = [
            {"image": start + b, "layer": layer, "cause": cause}
            for layer, b, cause in e.failures
            if b < count
        ]
        bad = {b for _, b, _ in e.failures}
        good = [b for b in range(batch.shape[0]) if b not in bad]
        if not good:
            raise
        idx = np.array([good[0] if b in bad else b for b in range(batch.shape[0])])
        return solve(batch[idx]), failed, records


def _marker(folder: pathlib.Path, shard: int) -> pathlib.Path:
    return folder / SHARDS / f"{shard:06d}.json"


def _done_shards(folder: pathlib.Path) -> set[int]:
    d = folder / SHARDS
    if not d.is_dir():
        return set()
    return {int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()}


def _check_shard(stores: dict[str, ArrayStore], marker: dict) -> str | None:
    """Why a marked shard's data cannot be trusted, or ``None`` if it can.

    A marker written by this version holds the checksum of every array
    slice of its shard; an older marker is checked for NaN in the maps (the
    fill value of a missing chunk).
    """
    start, stop = int(marker["start"]), int(marker["stop"])
    sums = marker.get("checksums")
    failed = {int(f["image"]) - start for f in marker.get("failures", [])}
    for metric, store in stores.items():
        names = store.names()
        wanted = (sums or {}).get(metric, {"pixel": None})
        for name, digest in wanted.items():
            if name not in names:
                return f"{metric}.zarr/{name} is missing"
            try:
                rows = slice(start, stop)
                per_layer = len(store.shape(name)) > 1  # label is (N,)
                arr = store.read(name, (slice(None), rows) if per_layer else rows)
            except Exception as e:  # a damaged chunk file
                return f"{metric}.zarr/{name} cannot be read ({e})"
            if digest is None:
                ok = np.delete(arr, sorted(failed), axis=1)
                if not np.isfinite(ok).all():
                    return f"{metric}.zarr/{name} holds NaN (a lost chunk?)"
            elif _digest(arr) != digest:
                return f"{metric}.zarr/{name} does not match its checksum"
    return None


def _verify_shards(folder: pathlib.Path, stores: dict[str, ArrayStore]) -> list[int]:
    """Removes the markers of damaged shards; returns their indices."""
    damaged = []
    for s in sorted(_done_shards(folder)):
        path = _marker(folder, s)
        try:
            marker = json.loads(path.read_text())
            problem = _check_shard(stores, marker)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"its marker cannot be read ({e})"
        if problem is not None:
            warnings.warn(
                f"run: shard {s} ({path}) is damaged: {problem}; recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
            path.unlink()
            damaged.append(s)
    return damaged


def _map_means(store: ArrayStore, layer: int, total: int, block: int) -> np.ndarray:
    """``(N,)`` per-image mean of one layer's ``pixel`` maps, read in blocks."""
    out = np.empty(total, np.float64)
    for start in range(0, total, block):
        stop = min(start + block, total)
        arr = store.read("pixel", (layer, slice(start, stop))).astype(np.float64)
        out[start:stop] = arr.reshape(stop - start, -1).mean(axis=1)
    return out


def _summary(
    stores: dict[str, ArrayStore], layers: Sequence[str], block: int = 256
) -> dict:
    """Per-layer means over all images of each store, from the ``pixel`` maps.

    The per-image means are computed from the maps and cross-checked against
    the stored ``mean``; images whose maps are NaN (failed solves) are left
    out and counted in ``failed``.
    """
    out: dict[str, Any] = {}
    for metric, store in stores.items():
        names = store.names()
        if "pixel" not in names:
            continue
        total = int(store.attrs().get("num_images") or store.shape("pixel")[1])
        stored = store.read("mean") if "mean" in names else None
        conv = store.read("converged") if "converged" in names else None
        conc = store.read("concentration") if "concentration" in names else None
        lin = store.read("linearity") if "linearity" in names else None
        rows = {}
        for i, name in enumerate(layers):
            mean = _map_means(store, i, total, block)
            ok = np.isfinite(mean)
            if stored is not None:
                tol = 1e-5 * (1.0 + np.abs(mean))
                off = ok & ~(np.abs(stored[i] - mean) <= tol)
                if off.any():
                    b = int(np.argmax(off))
                    raise RuntimeError(
                        f"{store.path}: mean[{i}, {b}] = {stored[i, b]:.6g} but the "
                        f"pixel maps give {mean[b]:.6g}; rerun with --overwrite"
                    )
            row = {
                "mean": float(np.mean(mean[ok])) if ok.any() else None,
                "sd": float(np.std(mean[ok])) if ok.any() else None,
                "failed": int((~ok).sum()),
            }
            if conv is not None:
                row["converged"] = float(np.mean(conv[i][ok])) if ok.any() else None
            if conc is not None:
                valid = np.isfinite(conc[i])
                row["concentration"] = (
                    float(conc[i][valid].mean()) if valid.any() else None
                )
                row["concentration_images"] = int(valid.sum())
            if lin is not None:
                row["linearity"] = float(np.mean(lin[i][ok])) if ok.any() else None
            rows[name] = row
        out[metric] = rows
    return out


def _failure_report(failures: list[dict], limit: int = 20) -> str:
    """Markdown lines naming the failed maps (none: empty)."""
    if not failures:
        return ""
    lines = [
        f"\n**{len(failures)} map(s) failed** (NaN in the store, left out of the "
        "means):\n"
    ]
    for f in failures[:limit]:
        lines.append(
            f"- {f.get('metric', 'cid')} layer `{f['layer']}`, image {f['image']}: "
            f"{f['cause']}"
        )
    if len(failures) > limit:
        lines.append(f"- ... {len(failures) - limit} more in shards/*.json")
    return "\n".join(lines) + "\n"


def format_summary(summary: dict) -> str:
    """The per-layer summary as a Markdown table (one per metric)."""
    blocks = []
    for metric, rows in summary.get("layers", {}).items():
        cols = list(next(iter(rows.values())).keys()) if rows else []
        lines = [
            f"| layer | {' | '.join(f'{metric} {c}' for c in cols)} |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for name, row in rows.items():
            cells = [
                "-"
                if row[c] is None
                else f"{row[c]:.4g}"
                if isinstance(row[c], float)
                else str(row[c])
                for c in cols
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_dataset(
    out_dir: str | os.PathLike,
    config: DatasetRunConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    argv: Sequence[str] | None = None,
) -> dict:
    """Computes CID (and RU) for every image of a split into ``out_dir``.

    Call it in every process of a multi-process job (after
    :func:`jax_infodiscard.experiments.distributed.initialize`).

    Args:
      out_dir: the run folder.
      config: the run's settings.
      cache_dir: model cache, for ``config.model``.
      overwrite: replace a previous run in ``out_dir``.
      resume: continue a previous run of the same config in ``out_dir``.
      progress: a progress bar (images/s) per process.
      argv: the command line, recorded in the manifest.

    Returns:
      The summary (process 0; the other processes return ``{}``):
      ``{"num_images", "layers": {metric: {layer: {...}}}, ...}``.

    Raises:
      RunFolderError: ``out_dir`` holds a previous run, and neither
        ``overwrite`` nor (same config) ``resume``.
      ValueError: bad settings, unknown layers, too few images.
    """
    pid = distributed.process_index()
    out = pathlib.Path(out_dir)
    split_len = split_size(config.dataset, config.split)
    if config.dataset == "synthetic":
        total = config.num_images or split_len
    else:
        total = min(config.num_images or split_len, split_len)
        if config.num_images and config.num_images > split_len:
            raise ValueError(
                f"num_images={config.num_images} exceeds the {split_len} images of "
                f"{config.dataset!r} split {config.split!r}"
            )
    # 1. Process 0 checks the folder before anything slow (training a model).
    manifest_config = dataclasses.asdict(config) | {"num_images": total}
    _on_process_0(
        lambda: RunFolder.check(
            out,
            command="run",
            config=manifest_config,
            overwrite=overwrite,
            resume=resume,
        ),
        f"process 0 refused the run folder {out}",
    )
    # 2. Model, layers and decoders (bad names fail here, in every process).
    model = _load_model(config, cache_dir, progress and pid == 0)
    fn = feature_fn(model, config.layers)  # validates the layer names
    layers = config.layers or tuple(
        getattr(model, "default_layers", layer_names(model))
    )
    decoders = _load_decoders(config, layers)
    model_parts = (fn, layers, decoders)
    # 3. Process 0 opens the folder; the others attach to it (a full disk
    # is reported as such, with how to resume).
    try:
        return _open_and_run(
            out,
            config,
            manifest_config,
            total,
            model_parts,
            overwrite,
            resume,
            argv,
            cache_dir,
            progress,
        )
    except (OSError, ValueError) as e:
        if is_disk_full(e) and "--resume" not in str(e):
            raise disk_full(_written(e, out)) from e
        raise


def _written(error: BaseException, folder: pathlib.Path) -> pathlib.Path:
    """The file an error names, else ``folder`` (temporary files: folder)."""
    name = getattr(error, "filename", None)
    if not name or pathlib.Path(name).name.startswith("."):
        return folder
    return pathlib.Path(name)


def _open_and_run(
    out,
    config,
    manifest_config,
    total,
    model_parts,
    overwrite,
    resume,
    argv,
    cache_dir,
    progress,
) -> dict:
    fn, layers, decoders = model_parts
    pid, nproc = distributed.process_index(), distributed.process_count()
    folder = _on_process_0(
        lambda: RunFolder.open(
            out,
            command="run",
            config=manifest_config,
            overwrite=overwrite,
            resume=resume,
            argv=argv,
            keep=[cache_dir] if cache_dir else (),
            extra={"processes": nproc},
        ),
        f"process 0 could not open the run folder {out}",
    )
    if folder is None:
        folder = RunFolder.attach(out)
    context = folder.running() if pid == 0 else contextlib.nullcontext(folder)
    with context:
        return _run(folder, config, total, fn, layers, decoders, progress)


def _on_process_0(action, message: str):
    """Runs ``action`` on process 0; every process raises if it failed there."""
    result, error = None, None
    if distributed.process_index() == 0:
        try:
            result = action()
        except (ValueError, OSError) as e:
            error = e
    if not distributed.all_ok(error is None):
        if error is not None:
            raise error
        raise RunFolderError(message)
    return result


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every phase of :func:`_run` reads: the folder, settings and model."""

    folder: RunFolder
    config: DatasetRunConfig
    total: int
    fn: Any
    layers: Sequence[str]
    decoders: Decoders | None
    stores: dict[str, ArrayStore]

    @property
    def num_shards(self) -> int:
        return math.ceil(self.total / self.config.shard_size)


def _run(folder, config, total, fn, layers, decoders, progress) -> dict:
    """The phases of a run: open the stores, list the work, compute, merge."""
    pid, nproc = distributed.process_index(), distributed.process_count()
    t_start = time.perf_counter()
    stores = {"cid": ArrayStore(folder.path / "cid.zarr")}
    if decoders is not None:
        stores["ru"] = ArrayStore(folder.path / "ru.zarr")
    job = _Job(folder, config, total, fn, layers, decoders, stores)
    damaged = _prepare_stores(job) if pid == 0 else []
    mine = _my_shards(job)
    my_images = _compute_shards(job, mine, progress)
    elapsed = time.perf_counter() - t_start
    # 5. Process 0 merges once every process has finished.
    distributed.barrier("jax_infodiscard-run-end")
    if pid != 0:
        return {}
    return _merge(job, my_images, elapsed, damaged, nproc)


def _prepare_stores(job: _Job) -> list[int]:
    """Process 0: the stores' attributes, the shard folder; returns damaged shards."""
    config, folder = job.config, job.folder
    for metric, store in job.stores.items():
        store.write_attrs(
            {
                "metric": metric,
                "layers": list(job.layers),
                "dataset": config.dataset,
                "split": config.split,
                "num_images": job.total,
                "shard_size": config.shard_size,
                "beta": (config.cid if metric == "cid" else config.ru).beta,
                "seed": config.seed,
                "key": "image i: jax.random.fold_in(jax.random.key(seed), i)",
            }
        )
        folder.record(f"{metric}.zarr")
    folder.record(SHARDS)
    (folder.path / SHARDS).mkdir(exist_ok=True)
    return _verify_shards(folder.path, job.stores)


def _my_shards(job: _Job) -> list[int]:
    """4. Every process lists the finished shards, then takes its share."""
    pid, nproc = distributed.process_index(), distributed.process_count()
    distributed.barrier("jax_infodiscard-run-list")
    done = _done_shards(job.folder.path)
    todo = [s for s in range(job.num_shards) if s not in done]
    mine = todo[pid::nproc]
    distributed.barrier("jax_infodiscard-run-start")
    return mine


def _compute_shards(job: _Job, mine: list[int], progress: bool) -> int:
    """Computes and writes the shards ``mine``; returns their number of images."""
    pid, nproc = distributed.process_index(), distributed.process_count()
    shard, total = job.config.shard_size, job.total
    images = _Images(job.config, total)
    base_key = jax.random.key(job.config.seed)
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    my_images = sum(min(shard, total - s * shard) for s in mine)
    bar = tqdm(
        total=my_images,
        unit="img",
        desc=f"CID{'+RU' if job.decoders else ''}"
        + (f" [process {pid}/{nproc}]" if nproc > 1 else ""),
        disable=not progress,
        smoothing=0.1,
    )
    for s in mine:
        try:
            count, failures = _compute_shard(job, s, images, base_key, pause)
        except (OSError, ValueError) as e:
            if is_disk_full(e) and "--resume" not in str(e):
                raise disk_full(_written(e, job.folder.path)) from e
            raise
        if failures:
            first = failures[0]
            warnings.warn(
                f"run: {len(failures)} map(s) of shard {s} failed and are NaN in "
                f"the store (first: {first['metric']} layer {first['layer']!r}, "
                f"image {first['image']}: {first['cause']}); see "
                f"{_marker(job.folder.path, s)}",
                RuntimeWarning,
                stacklevel=3,
            )
        bar.update(count)
    bar.close()
    return my_images


def _shard_solvers(job: _Job, keys: jax.Array) -> dict:
    """``{metric: solve(batch)}`` for CID and, with decoders, RU."""
    config, fn, layers = job.config, job.fn, job.layers
    solvers = {
        "cid": partial(solve, "cid", fn, key=keys, layers=layers, config=config.cid)
    }
    if job.decoders is not None:
        solvers["ru"] = partial(
            solve,
            "ru",
            fn,
            key=keys,
            layers=layers,
            config=config.ru,
            decoders={n: job.decoders.fns[n] for n in layers},
        )
    return solvers


def _compute_shard(job: _Job, s: int, images, base_key, pause: float):
    """Solves shard ``s``, writes its arrays and then its marker.

    Returns ``(count, failures)``: its number of real (unpadded) images and
    the records of its failed maps.
    """
    t0 = time.perf_counter()
    shard, total, stores = job.config.shard_size, job.total, job.stores
    start, stop = s * shard, min((s + 1) * shard, total)
    count = stop - start
    ex = images.get(start, stop)
    batch = np.asarray(ex.images)
    if count < shard:  # same shapes for every shard: no recompilation
        pad = np.repeat(batch[-1:], shard - count, axis=0)
        batch = np.concatenate([batch, pad])
    batch = jnp.asarray(batch)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(
        jnp.arange(start, start + shard, dtype=jnp.uint32)
    )
    masks_exist = dataset_has_masks(job.config.dataset)
    masks = None if not masks_exist or ex.masks is None else np.asarray(ex.masks)
    checksums: dict[str, dict[str, str]] = {}
    failures: list[dict] = []
    for metric, solve_batch in _shard_solvers(job, keys).items():
        res, failed, records = _solve(solve_batch, batch, count, start)
        fields = _result_fields(res)
        _failed_fields(fields, failed)
        failures += [r | {"metric": metric} for r in records]
        conc = concentration_or_nan(fields["pixel"][:, :count], masks)
        if conc is not None:
            fields["concentration"] = conc
        checksums[metric] = _write_result(
            stores[metric], fields, start, count, total, shard
        )
    label = stores["cid"].array("label", (total,), np.int32, (shard,), ["image"])
    labels = np.asarray(ex.labels, np.int32)
    stores["cid"].write(label, "label", slice(start, stop), labels)
    checksums["cid"]["label"] = _digest(labels)
    if pause:
        time.sleep(pause)
    io.write_json(
        _marker(job.folder.path, s),
        {
            "shard": s,
            "start": start,
            "stop": stop,
            "process": distributed.process_index(),
            "seconds": time.perf_counter() - t0,
            "checksums": checksums,
            "failures": failures,
        },
    )
    return count, failures


def _merge(job: _Job, my_images: int, elapsed: float, damaged, nproc) -> dict:
    """Process 0: checks every shard's marker, writes results, report, manifest."""
    folder, config, total = job.folder, job.config, job.total
    num_shards = job.num_shards
    done = _done_shards(folder.path)
    missing = sorted(set(range(num_shards)) - done)
    if missing:
        raise RuntimeError(
            f"{len(missing)} shard(s) have no marker after all processes finished "
            f"(first: {missing[0]}); rerun with --resume"
        )
    by_process: dict[str, dict[str, float]] = {}
    failures: list[dict] = []
    for s in range(num_shards):
        marker = json.loads(_marker(folder.path, s).read_text())
        row = by_process.setdefault(
            str(marker["process"]), {"shards": 0, "images": 0, "seconds": 0.0}
        )
        row["shards"] += 1
        row["images"] += marker["stop"] - marker["start"]
        row["seconds"] += marker["seconds"]
        failures += marker.get("failures", [])
    summary = {
        "num_images": total,
        "dataset": config.dataset,
        "split": config.split,
        "layers": _summary(job.stores, job.layers),
        "processes": nproc,
        "computed_now": my_images,
        "seconds_now": elapsed,
        "recomputed_damaged_shards": damaged,
        "failures": failures,
    }
    folder.write_json("results.json", summary)
    report = (
        f"# run: {config.dataset}/{config.split}, {total} images\n\n"
        f"Per-layer means over all images, computed from the pixel maps "
        f"(stores: {', '.join(f'{m}.zarr' for m in job.stores)}).\n\n"
        f"{format_summary(summary)}\n" + _failure_report(failures)
    )
    folder.write_text("report.md", report)
    folder.complete(
        shards={
            "total": num_shards,
            "size": config.shard_size,
            "by_process": by_process,
        },
        summary=summary["layers"],
    )
    return summary
