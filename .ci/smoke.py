"""The installed package works outside the checkout (run by .ci/run).

Run with the Python of a fresh virtual environment into which the built
wheel was installed, from a folder outside the source tree. Checks that the
package imported is the installed one, with its metadata; runs the
README's quickstart calls (the embedded data set, a zoo model, CID and
concentration, a result saved and loaded) and your-own-model calls
(``from_nnx``, ``plotting.show``); checks that JAX's persistent
compilation cache fills ``CACHE/xla`` (it needs ``filelock``, a dependency)
and that the ``jax-infodiscard`` command runs. Prints one line per check.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

import jax_infodiscard as jid
from jax_infodiscard.data import load_synthetic
from jax_infodiscard.experiments.cache import enable_compilation_cache
from jax_infodiscard.models import create_model, feature_fn, from_nnx
from jax_infodiscard.plotting import show


def check(what: str, ok: bool) -> None:
    print(f"{'ok' if ok else 'FAILED'}: {what}", flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    where = pathlib.Path(jid.__file__).resolve()
    check(f"imported from site-packages ({where})", "site-packages" in where.parts)
    version = importlib.metadata.version("jax_infodiscard")
    check(f"version {version} == __version__", version == jid.__version__)

    with tempfile.TemporaryDirectory() as cache:
        enable_compilation_cache(cache, min_compile_seconds=0.0)
        # The quickstart, on two images and one layer.
        data = load_synthetic("test", 2)  # embedded, no download
        model = create_model("convnet", rngs=nnx.Rngs(0))
        fn = feature_fn(model, "conv1")
        config = jid.CIDConfig(method="linear")
        res = jid.cid(fn, data.images, jax.random.key(0), config=config)
        conc = np.asarray(jid.concentration(res.pixel, data.masks))
        check(f"cid: pixel maps {res.pixel.shape}", res.pixel.shape == (1, 2, 32, 32))
        check("finite maps and concentration", bool(np.isfinite(conc).all()))
        path = pathlib.Path(cache) / "cid.npz"
        res.save(path)
        again = jid.CIDResult.load(path)
        check("result saved and loaded", np.array_equal(again.pixel, res.pixel))
        # Your own model: from_nnx with a submodule object, and the overlay.
        own = nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.relu)
        feats = from_nnx(own, [own.layers[0]])(data.images)
        check("from_nnx", feats["layers/0"].shape == (2, 32, 32, 4))
        fig = show(data.images, res, "conv1", index=1)
        check("plotting.show", len(fig.axes) == 3)
        written = [p for p in (pathlib.Path(cache) / "xla").rglob("*") if p.is_file()]
        check(
            f"compilation cache CACHE/xla filled ({len(written)} files)", bool(written)
        )

    command = pathlib.Path(sys.executable).parent / "jax-infodiscard"
    out = subprocess.run(
        [command, "--version"], capture_output=True, text=True, check=False
    )
    check(f"`{out.stdout.strip()}` from the installed script", out.returncode == 0)


if __name__ == "__main__":
    main()
