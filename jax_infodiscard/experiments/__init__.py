"""Every end-to-end job, and the machinery they share.

Jobs: :mod:`~jax_infodiscard.experiments.demo` (``jax-infodiscard demo``),
:mod:`~jax_infodiscard.experiments.evaluate` (``evaluate``),
:mod:`~jax_infodiscard.experiments.run` (``run``: a whole data-set split,
resumable, multi-process) and :mod:`~jax_infodiscard.experiments.analyses`
(``analyze NAME``).

Shared: :mod:`~jax_infodiscard.experiments.measure` (the one pipeline: CID,
decoders, RU, concentration), :mod:`~jax_infodiscard.experiments.cache`
(train-or-load: one model cache keyed by architecture, data, seed and
training config, and the RU decoders stored beside each model),
:mod:`~jax_infodiscard.experiments.rundir` (the run folder: manifest,
atomic outputs, refusal to mix runs), :mod:`~jax_infodiscard.experiments.data`
(any slice of a data set by global index),
:mod:`~jax_infodiscard.experiments.store` (Zarr arrays) and
:mod:`~jax_infodiscard.experiments.distributed` (``jax.distributed``).
"""
