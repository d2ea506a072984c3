"""Shared job machinery: run folders, the model cache, data slices, analyses."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import warnings

import numpy as np
import pytest

from jax_infodiscard.experiments import rundir
from jax_infodiscard.experiments.analyses import (
    ANALYSES,
    OUTCOMES,
    AnalysisOptions,
    Verdict,
    paired_outcome,
    run_analysis,
    verdict_table,
)
from jax_infodiscard.experiments.cache import (
    ModelSpec,
    decoder_cache_dir,
    model_cache_dir,
    train_or_load,
)
from jax_infodiscard.experiments.data import load_examples
from jax_infodiscard.experiments.rundir import RunFolder, RunFolderError, read_manifest
from jax_infodiscard.training.train import TrainConfig


# ------------------------------------------------------------- run folder
def _git_of_package():
    """The checkout's commit and dirtiness, asked of git directly (None when
    the package is not tracked in a git work tree)."""
    import subprocess

    import jax_infodiscard

    root = pathlib.Path(jax_infodiscard.__file__).resolve().parents[1]

    def git(*args):
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True)
        return out.returncode, out.stdout.decode().strip()

    code, _ = git("ls-files", "--error-unmatch", "jax_infodiscard")
    if code:
        return None
    commit = git("rev-parse", "HEAD")[1]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")[1])
    return {"commit": commit, "dirty": dirty}


def test_run_folder_manifest_lifecycle(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder.open(out, command="job", config={"n": 2}, argv=["x", "y"])
    m = read_manifest(out)
    assert m["status"] == "running" and m["finished"] is None
    assert m["command"] == "job" and m["config"] == {"n": 2}
    assert m["argv"] == ["x", "y"]
    assert m["versions"]["jax"] and m["versions"]["python"]
    assert m["git"] == _git_of_package()
    folder.write_json("results.json", {"v": 1})
    folder.write_text("report.md", "# r\n")
    folder.write_npz("a.npz", x=np.ones(2))
    folder.complete(summary={"v": 1})
    m = read_manifest(out)
    assert m["status"] == "complete" and m["finished"] >= m["started"]
    assert m["files"] == ["a.npz", "report.md", "results.json"]
    assert m["summary"] == {"v": 1}


def test_a_complete_run_is_not_overwritten_silently(tmp_path):
    RunFolder.open(tmp_path, command="job", config={"n": 1}).complete()
    with pytest.raises(RunFolderError, match=r"holds complete 'job' run.*--overwrite"):
        RunFolder.open(tmp_path, command="job", config={"n": 1})


def test_a_killed_run_is_refused_too_and_says_so(tmp_path):
    RunFolder.open(tmp_path, command="job", config={})  # never completed
    with pytest.raises(RunFolderError, match="unfinished"):
        RunFolder.open(tmp_path, command="job", config={})


def test_overwrite_clears_stale_outputs_but_keeps_the_cache(tmp_path):
    first = RunFolder.open(tmp_path, command="job", config={"n": 1})
    first.write_json("old.json", {})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_text("x")
    (tmp_path / "cache" / "models").mkdir(parents=True)
    first.complete()
    second = RunFolder.open(
        tmp_path,
        command="job",
        config={"n": 2},
        overwrite=True,
        keep=[tmp_path / "cache"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "manifest.json"]
    assert (tmp_path / "cache" / "models").is_dir()
    m = read_manifest(tmp_path)
    assert m["status"] == "running" and m["run_id"] == second.manifest["run_id"]
    assert m["run_id"] != first.manifest["run_id"] and m["files"] == []


def test_overwrite_marks_the_folder_running_before_removing_anything(
    tmp_path, monkeypatch
):
    # Killed (here: failing) while clearing: the old outputs may remain, but
    # the manifest no longer claims a complete run.
    old = RunFolder.open(tmp_path, command="job", config={})
    old.write_json("results.json", {"old": True})
    old.complete()

    def boom(*args, **kwargs):
        raise OSError("killed while clearing")

    monkeypatch.setattr(rundir.pathlib.Path, "unlink", boom)
    with pytest.raises(OSError, match="killed"):
        RunFolder.open(tmp_path, command="job", config={}, overwrite=True)
    assert read_manifest(tmp_path)["status"] == "running"


def test_resume_needs_the_same_command_and_config(tmp_path):
    first = RunFolder.open(tmp_path, command="run", config={"a": 1, "b": {"c": 2}})
    first.write_json("part.json", {})
    run_id = first.manifest["run_id"]
    again = RunFolder.open(
        tmp_path, command="run", config={"a": 1, "b": {"c": 2}}, resume=True
    )
    assert again.manifest["run_id"] == run_id
    assert (tmp_path / "part.json").exists()
    assert again.manifest["files"] == ["part.json"] and again.manifest["resumed"]
    with pytest.raises(RunFolderError, match=r"other settings \(b\.c\)"):
        RunFolder.open(
            tmp_path, command="run", config={"a": 1, "b": {"c": 3}}, resume=True
        )
    with pytest.raises(RunFolderError, match="'run' run, not 'demo'"):
        RunFolder.open(tmp_path, command="demo", config={"a": 1}, resume=True)
    with pytest.raises(ValueError, match="exclude"):
        RunFolder.open(tmp_path, command="run", config={}, resume=True, overwrite=True)


def test_foreign_or_broken_folders_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunFolder.open(tmp_path, command="job", config={}, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{truncated")
    with pytest.raises(RunFolderError, match=r"not valid JSON.*--overwrite"):
        RunFolder.open(broken, command="job", config={})
    RunFolder.open(broken, command="job", config={}, overwrite=True)
    assert read_manifest(broken)["status"] == "running"
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="existing file"):
        RunFolder.open(afile, command="job", config={})


def test_a_failing_job_is_marked_failed(tmp_path):
    folder = RunFolder.open(tmp_path, command="job", config={})
    with pytest.raises(ZeroDivisionError), folder.running():
        _ = 1 / 0
    m = read_manifest(tmp_path)
    assert m["status"] == "failed" and m["error"].startswith("ZeroDivisionError")


# ------------------------------------------------------------------ data
def test_slices_are_slices_of_the_whole_split():
    whole = load_examples("synthetic", "test", 40, image_size=16)
    part = load_examples("synthetic", "test", 7, start=30, image_size=16)
    for a, b in zip(part, whole, strict=True):
        np.testing.assert_array_equal(a, b[30:37])
    with pytest.raises(ValueError, match="unknown data set"):
        load_examples("mnist", "test", 4)
    with pytest.raises(ValueError, match="split"):
        load_examples("synthetic", "validation", 4)


# ----------------------------------------------------------------- cache
def _spec(**changes) -> ModelSpec:
    base = ModelSpec(
        model="convnet",
        image_size=16,
        num_train=64,
        num_test=32,
        train=TrainConfig(epochs=1, batch_size=32),
        model_kwargs=(("width", 4),),
    )
    return ModelSpec(**{**base.__dict__, **changes})


def test_cache_key_covers_what_shapes_the_weights(tmp_path):
    spec = _spec()
    assert spec.folder_name().startswith("convnet-synthetic-16px-n64-e1-s0-")
    same = _spec(train=TrainConfig(epochs=1, batch_size=32, progress=False))
    assert same.folder_name() == spec.folder_name()  # progress is not a setting
    others = [
        _spec(train=TrainConfig(epochs=1, batch_size=32, seed=1)),
        _spec(train=TrainConfig(epochs=2, batch_size=32)),
        _spec(train=TrainConfig(epochs=1, batch_size=32, learning_rate=1e-3)),
        _spec(num_train=96),
        _spec(image_size=32),
        _spec(model_kwargs=(("width", 8),)),
        _spec(model="alexnet"),
    ]
    names = {o.folder_name() for o in others}
    assert len(names) == len(others) and spec.folder_name() not in names
    assert model_cache_dir(spec, tmp_path).parent == tmp_path / "models"
    assert decoder_cache_dir(model_cache_dir(spec, tmp_path), num_images=8) == (
        tmp_path / "models" / (spec.folder_name() + ".decoders") / "num_images=8"
    )


def test_train_or_load_trains_once_then_loads(tmp_path):
    spec = _spec()
    first = train_or_load(spec, tmp_path, progress=False)
    key = json.loads(first.path.with_name(first.path.name + ".json").read_text())
    assert key == spec.key()
    second = train_or_load(spec, tmp_path, progress=False)
    assert second.path == first.path
    assert second.history == first.history  # read back, not retrained
    np.testing.assert_array_equal(
        np.asarray(second.model.conv1.conv.kernel[...]),
        np.asarray(first.model.conv1.conv.kernel[...]),
    )


# -------------------------------------------------------------- analyses
def test_paired_outcome_rule():
    assert paired_outcome([1.0, 1.1, 0.9], expect="positive")[0] == "held"
    assert paired_outcome([-1.0, -1.1, -0.9], expect="positive")[0] == "did not hold"
    assert paired_outcome([-1.0, -1.1, -0.9], expect="negative")[0] == "held"
    outcome, mean, sem = paired_outcome([1.0, -0.5, 0.2, np.nan], expect="positive")
    assert outcome == "inconclusive"
    np.testing.assert_allclose(mean, 0.7 / 3)
    np.testing.assert_allclose(sem, np.std([1.0, -0.5, 0.2], ddof=1) / np.sqrt(3))
    assert paired_outcome([2.0], expect="positive")[0] == "inconclusive"


def test_verdict_table_and_outcomes():
    v = Verdict("a | b", "Fig. 1", "+0.1 ± 0.01", "held", "rule")
    table = verdict_table([v])
    assert (
        table.splitlines()[2] == "| a \\| b | Fig. 1 | +0.1 ± 0.01 | **held** | rule |"
    )
    with pytest.raises(ValueError, match="outcome"):
        Verdict("c", "f", "m", "maybe", "r")
    assert set(OUTCOMES) == {"held", "did not hold", "inconclusive"}


def test_ru_claims_are_inconclusive_where_the_decoders_learned_nothing():
    # A "does not change" claim must not hold by default when RU was not
    # measured (decoder learned nothing) or is NaN at the compared layers.
    from types import SimpleNamespace as NS

    from jax_infodiscard.experiments.analyses import comparisons, measuring, report

    rng = np.random.default_rng(0)
    layers = ("l1", "l2")

    def net(name, ru_mean, not_solved=()):
        ones = np.ones((2, 6))
        cid = NS(
            mean=rng.normal(size=(2, 6)),
            linearity=ones,
            entropy_gain=0 * ones,
            converged=ones > 0,
        )
        ru = None if ru_mean is None else NS(mean=np.asarray(ru_mean))
        m = measuring.Measured(
            name, layers, cid, ru=ru, ru_layers=("l1", "l2")[: 0 if ru is None else 2]
        )
        m.info["ru_not_solved"] = list(not_solved)
        return m

    base_ru = rng.normal(size=(2, 6))
    close = base_ru + 1e-3 * rng.normal(size=(2, 6))
    kw = dict(claim="RU does not change", figure="Fig. 7a")
    # One seed alone says "held", but one seed never decides.
    one, _ = comparisons.no_change_verdict(
        {"a": [net("a", base_ru)], "b": [net("b", close)]}, "a", "ru", layers, **kw
    )
    assert one.outcome == "inconclusive" and one.alone == "held"
    close2 = base_ru + 1e-3 * rng.normal(size=(2, 6))
    held, _ = comparisons.no_change_verdict(
        {"a": [net("a", base_ru)] * 2, "b": [net("b", close), net("b", close2)]},
        "a",
        "ru",
        layers,
        **kw,
    )
    assert held.outcome == "held" and held.alone == "held"
    # Network b's decoders learned nothing: no RU for b at all.
    v, _ = comparisons.no_change_verdict(
        {"a": [net("a", base_ru)], "b": [net("b", None, ("l1", "l2"))]},
        "a",
        "ru",
        layers,
        **kw,
    )
    assert v.outcome == "inconclusive" and "do not recover the image" in v.measured
    assert "l1, l2" in v.measured
    # RU measured but NaN at every compared layer (not solved there).
    v, numbers = comparisons.no_change_verdict(
        {"a": [net("a", base_ru)], "b": [net("b", np.full((2, 6), np.nan))]},
        "a",
        "ru",
        layers,
        **kw,
    )
    assert v.outcome == "inconclusive"
    assert numbers["b"]["seeds"][0]["n"] == 0
    # ... and says why when the decoders there learned nothing.
    v, _ = comparisons.no_change_verdict(
        {"a": [net("a", base_ru)], "b": [net("b", np.full((2, 6), np.nan), ["l1"])]},
        "a",
        "ru",
        layers,
        **kw,
    )
    assert v.outcome == "inconclusive" and "information') at l1" in v.measured
    measured = net("b", base_ru, ["l2"])
    table = report.diagnostics_table([measured], ["b (seed 1)"])
    assert "| b (seed 1) |  | l1 |" in table and "not solved" in table
    measured.info["test_accuracy"] = 0.8125
    rows = report.diagnostics_table([measured], ["b (seed 1)"]).splitlines()
    assert rows[2].startswith("| b (seed 1) | 81.2% | l1 |")
    assert rows[3].startswith("| b (seed 1) |  | l2 |")


def test_summary_of_a_layer_without_ru_is_nan_and_silent():
    from types import SimpleNamespace

    from jax_infodiscard.experiments.analyses import measuring

    ones = np.ones((2, 3))
    cid = SimpleNamespace(
        mean=ones,
        linearity=ones,
        entropy_gain=0 * ones,
        mean_shift=0 * ones,
        converged=ones > 0,
        capped=ones < 0,
    )
    ru = SimpleNamespace(mean=np.array([[1.0, 2.0, 3.0], [np.nan] * 3]))
    m = measuring.Measured("a", ("l1", "l2"), cid, ru=ru, ru_layers=("l1", "l2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Degrees of freedom <= 0"
        layers = m.summary()["layers"]
    assert layers["l1"]["ru"]["mean"] == 2.0
    assert layers["l1"]["ru"]["sd"] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert all(np.isnan(v) for v in layers["l2"]["ru"].values())


def test_analysis_registry_and_unknown_names(tmp_path):
    assert "layerwise" in ANALYSES
    for name, a in ANALYSES.items():
        assert a.name == name and a.summary and a.paper and callable(a.run)
    with pytest.raises(ValueError, match="unknown analysis 'nope'"):
        run_analysis("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="scale"):
        AnalysisOptions(scale="huge")


def test_design_changes_the_scale_design_and_is_checked_before_any_write(tmp_path):
    from jax_infodiscard.experiments.analyses import apply_design, depth

    options = AnalysisOptions(scale="toy", design={"depths": [8], "epochs": 2})
    assert options.design == (("depths", (8,)), ("epochs", 2))  # sorted, tuples
    hash(options)
    json.dumps(options.manifest_config())
    sz = apply_design(depth.SIZES, options)
    assert (sz.depths, sz.epochs) == ((8,), 2)
    assert sz.width == depth.SIZES["toy"].width  # the others kept
    unchanged = apply_design(depth.SIZES, AnalysisOptions(scale="toy"))
    assert unchanged is depth.SIZES["toy"]
    bad = {
        "no field(s) ['depht']": {"depht": (8,)},
        "'depths' takes a value like": {"depths": 8},
        "'epochs' takes a value like": {"epochs": 1.5},
        "'mid_blocks' takes a value like": {"mid_blocks": 1},
        "'width' must be an integer >= 1, got 0": {"width": 0},
        "'depths' must be positive integers": {"depths": (8, 0)},
        "'ru_train' must be an integer >= 0": {"ru_train": -1},
    }
    for message, design in bad.items():
        out = tmp_path / "depth"
        with pytest.raises(ValueError, match=re.escape(message)):
            run_analysis("depth", out, AnalysisOptions(scale="toy", design=design))
        assert not out.exists()
    with pytest.raises(ValueError, match="'layerwise' has no design"):
        run_analysis("layerwise", tmp_path / "lw", AnalysisOptions(design={"a": 1}))
    assert not (tmp_path / "lw").exists()
    with pytest.raises(TypeError, match="design must be a mapping"):
        AnalysisOptions(design="depths=8")
    with pytest.raises(ValueError, match="twice"):
        AnalysisOptions(design=[("epochs", 1), ("epochs", 2)])
    # Ranges of fields shared by several analyses.
    from jax_infodiscard.experiments.analyses import adversarial, compression

    for module, design, message in (
        (compression, {"sparsities": (0.5, 1.0)}, "fractions strictly between"),
        (compression, {"seeds": (0, 0)}, "distinct integers >= 0"),
        (compression, {"seeds": ()}, "at least one"),
        (adversarial, {"epsilon": 0.0}, "'epsilon' must be a number > 0"),
        (adversarial, {"num_images": 0}, "'num_images' must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            apply_design(module.SIZES, AnalysisOptions(scale="toy", design=design))
    # Every analysis but layerwise has a design per scale to change, and its
    # own designs are in range: each one, applied field by field, passes.
    assert {n for n, a in ANALYSES.items() if a.sizes is None} == {"layerwise"}
    for analysis in ANALYSES.values():
        assert analysis.sizes is None or set(analysis.sizes) == {"toy", "fast", "full"}
        for scale, sizes in (analysis.sizes or {}).items():
            design = dataclasses.asdict(sizes)
            applied = apply_design(
                analysis.sizes, AnalysisOptions(scale=scale, design=design)
            )
            assert applied == sizes


@pytest.mark.slow
def test_layerwise_analysis_end_to_end(tmp_path):
    options = AnalysisOptions(scale="toy", cache_dir=tmp_path / "cache", progress=False)
    result = run_analysis("layerwise", tmp_path / "out", options)
    out = tmp_path / "out"
    for name in ("results.json", "report.md", "layer_curves.png", "cid.npz"):
        assert (out / name).stat().st_size > 0, name
    assert read_manifest(out)["status"] == "complete"
    (verdict,) = result.verdicts
    assert verdict.outcome in OUTCOMES
    res = json.loads((out / "results.json").read_text())
    assert res["analysis"] == "layerwise" and res["verdicts"][0]["outcome"]
    assert set(res["layers"]) == {"conv1", "conv3", "conv5", "logits"}
    report = (out / "report.md").read_text()
    assert "| claim | paper | measured | verdict | rule |" in report


_COMPILE_TWICE = """
import json, sys, time
import jax, jax.numpy as jnp
from jax_infodiscard.experiments.cache import enable_compilation_cache
folder = enable_compilation_cache(sys.argv[1], min_compile_seconds=0.0)
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name)
    if name == "/jax/compilation_cache/cache_hits" else None
)
def f(x):
    for _ in range(20):
        x = jnp.tanh(x @ x.T) + x
    return x.sum()
jax.jit(jax.grad(f))(jnp.ones((32, 32))).block_until_ready()
print(json.dumps({"folder": None if folder is None else str(folder),
                  "in_use": jax.config.jax_compilation_cache_dir,
                  "hits": len(hits)}))
"""


def test_compilation_cache_is_written_reused_and_respects_the_user(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_INFODISCARD_TEST_XLA_CACHE")
    }

    def run(extra_env=None):
        out = subprocess.run(
            [sys.executable, "-c", _COMPILE_TWICE, str(tmp_path / "cache")],
            env={**env, **(extra_env or {}), "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert first["folder"] == str(tmp_path / "cache" / "xla")
    assert first["hits"] == 0
    entries = sorted(p.name for p in (tmp_path / "cache" / "xla").glob("*-cache"))
    assert entries, "nothing was written to the compilation cache"
    # A second process loads the same programs instead of compiling them.
    assert run()["hits"] >= 1
    assert sorted(p.name for p in (tmp_path / "cache" / "xla").glob("*-cache")) == (
        entries
    )
    # The user's own cache folder is kept, and ours is left alone.
    mine = tmp_path / "mine"
    out = run({"JAX_COMPILATION_CACHE_DIR": str(mine)})
    assert out["folder"] is None and out["in_use"] == str(mine)


def test_compilation_cache_arguments_are_checked(tmp_path):
    from jax_infodiscard.experiments.cache import enable_compilation_cache

    with pytest.raises(ValueError, match="max_bytes"):
        enable_compilation_cache(tmp_path, max_bytes=0)
    with pytest.raises(ValueError, match="min_compile_seconds"):
        enable_compilation_cache(tmp_path, min_compile_seconds=-1.0)
