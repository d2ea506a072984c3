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
  chunks; a shard without a marker is recomputed on resume;
* ``results.json`` and ``report.md``: the per-layer summary (mean CID,
  concentration, converged share, ``linearity``), and ``manifest.json``.

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
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence
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
    measure,
)
from jax_infodiscard.experiments.rundir import RunFolder, RunFolderError
from jax_infodiscard.experiments.store import ArrayStore, dims_for
from jax_infodiscard.models import feature_fn, layer_names
from jax_infodiscard.validation import check_int

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
) -> None:
    for name, arr in fields.items():
        arr = arr[:, :count]
        shape = (arr.shape[0], total, *arr.shape[2:])
        chunks = (1, shard, *arr.shape[2:])
        target = store.array(
            name, shape, arr.dtype, chunks, dims_for(arr.ndim, per_layer=True)
        )
        target[:, start : start + count].write(arr).result()


def _marker(folder: pathlib.Path, shard: int) -> pathlib.Path:
    return folder / SHARDS / f"{shard:06d}.json"


def _done_shards(folder: pathlib.Path) -> set[int]:
    d = folder / SHARDS
    if not d.is_dir():
        return set()
    return {int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()}


def _summary(stores: dict[str, ArrayStore], layers: Sequence[str]) -> dict:
    """Per-layer means over all images of each store."""
    out: dict[str, Any] = {}
    for metric, store in stores.items():
        names = store.names()
        if "mean" not in names:
            continue
        mean = store.read("mean")
        conv = store.read("converged") if "converged" in names else None
        conc = store.read("concentration") if "concentration" in names else None
        lin = store.read("linearity") if "linearity" in names else None
        rows = {}
        for i, name in enumerate(layers):
            row = {
                "mean": float(np.mean(mean[i])),
                "sd": float(np.std(mean[i])),
            }
            if conv is not None:
                row["converged"] = float(np.mean(conv[i]))
            if conc is not None:
                valid = np.isfinite(conc[i])
                row["concentration"] = (
                    float(conc[i][valid].mean()) if valid.any() else None
                )
                row["concentration_images"] = int(valid.sum())
            if lin is not None:
                row["linearity"] = float(np.mean(lin[i]))
            rows[name] = row
        out[metric] = rows
    return out


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
    pid, nproc = distributed.process_index(), distributed.process_count()
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
    # 3. Process 0 opens the folder; the others attach to it.
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


def _run(folder, config, total, fn, layers, decoders, progress) -> dict:
    pid, nproc = distributed.process_index(), distributed.process_count()
    shard = config.shard_size
    num_shards = math.ceil(total / shard)
    t_start = time.perf_counter()
    masks_exist = dataset_has_masks(config.dataset)
    stores = {"cid": ArrayStore(folder.path / "cid.zarr")}
    if decoders is not None:
        stores["ru"] = ArrayStore(folder.path / "ru.zarr")
    if pid == 0:
        for metric, store in stores.items():
            store.write_attrs(
                {
                    "metric": metric,
                    "layers": list(layers),
                    "dataset": config.dataset,
                    "split": config.split,
                    "num_images": total,
                    "shard_size": shard,
                    "beta": (config.cid if metric == "cid" else config.ru).beta,
                    "seed": config.seed,
                    "key": "image i: jax.random.fold_in(jax.random.key(seed), i)",
                }
            )
            folder.record(f"{metric}.zarr")
        folder.record(SHARDS)
        (folder.path / SHARDS).mkdir(exist_ok=True)

    # 4. Every process lists the finished shards, then takes its share.
    distributed.barrier("jax_infodiscard-run-list")
    done = _done_shards(folder.path)
    todo = [s for s in range(num_shards) if s not in done]
    mine = todo[pid::nproc]
    distributed.barrier("jax_infodiscard-run-start")

    images = _Images(config, total)
    base_key = jax.random.key(config.seed)
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    my_images = sum(min(shard, total - s * shard) for s in mine)
    bar = tqdm(
        total=my_images,
        unit="img",
        desc=f"CID{'+RU' if decoders else ''}"
        + (f" [process {pid}/{nproc}]" if nproc > 1 else ""),
        disable=not progress,
        smoothing=0.1,
    )
    for s in mine:
        t0 = time.perf_counter()
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
        masks = None if not masks_exist or ex.masks is None else np.asarray(ex.masks)
        m = measure(
            fn,
            batch,
            keys,
            layers=layers,
            cid_config=config.cid,
            ru_config=config.ru,
            decoders=decoders,
            solve_unlearned=True,
        )
        results = {"cid": m.cid} | ({} if m.ru is None else {"ru": m.ru})
        for metric, res in results.items():
            fields = _result_fields(res)
            conc = concentration_or_nan(fields["pixel"][:, :count], masks)
            if conc is not None:
                fields["concentration"] = conc
            _write_result(stores[metric], fields, start, count, total, shard)
        label = stores["cid"].array("label", (total,), np.int32, (shard,), ["image"])
        label[start:stop].write(np.asarray(ex.labels, np.int32)).result()
        if pause:
            time.sleep(pause)
        io.write_json(
            _marker(folder.path, s),
            {
                "shard": s,
                "start": start,
                "stop": stop,
                "process": pid,
                "seconds": time.perf_counter() - t0,
            },
        )
        bar.update(count)
    bar.close()
    elapsed = time.perf_counter() - t_start

    # 5. Process 0 merges once every process has finished.
    distributed.barrier("jax_infodiscard-run-end")
    if pid != 0:
        return {}
    done = _done_shards(folder.path)
    missing = sorted(set(range(num_shards)) - done)
    if missing:
        raise RuntimeError(
            f"{len(missing)} shard(s) have no marker after all processes finished "
            f"(first: {missing[0]}); rerun with --resume"
        )
    by_process: dict[str, dict[str, float]] = {}
    for s in range(num_shards):
        marker = json.loads(_marker(folder.path, s).read_text())
        row = by_process.setdefault(
            str(marker["process"]), {"shards": 0, "images": 0, "seconds": 0.0}
        )
        row["shards"] += 1
        row["images"] += marker["stop"] - marker["start"]
        row["seconds"] += marker["seconds"]
    summary = {
        "num_images": total,
        "dataset": config.dataset,
        "split": config.split,
        "layers": _summary(stores, layers),
        "processes": nproc,
        "computed_now": my_images,
        "seconds_now": elapsed,
    }
    folder.write_json("results.json", summary)
    report = (
        f"# run: {config.dataset}/{config.split}, {total} images\n\n"
        f"Per-layer means over all images (stores: "
        f"{', '.join(f'{m}.zarr' for m in stores)}).\n\n{format_summary(summary)}\n"
    )
    folder.write_text("report.md", report)
    folder.complete(
        shards={"total": num_shards, "size": shard, "by_process": by_process},
        summary=summary["layers"],
    )
    return summary
