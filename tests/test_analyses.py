"""The paper's analyses end to end at toy size: outputs and verdict tables."""

from __future__ import annotations

import json

import pytest

from jax_infodiscard.experiments.analyses import (
    ANALYSES,
    OUTCOMES,
    AnalysisOptions,
    run_analysis,
)
from jax_infodiscard.experiments.rundir import read_manifest

NAMES = ("layerwise", "depth", "damage")
HEADER = "| claim | paper | measured | verdict | rule |"


def run_toy(name, tmp_path, figures=("curves.png", "differences.png")):
    """Runs ``name`` at toy size and checks what every analysis writes."""
    options = AnalysisOptions(
        scale="toy", image_size=16, cache_dir=tmp_path / "cache", progress=False
    )
    out = tmp_path / name
    result = run_analysis(name, out, options)
    for file in ("results.json", "report.md", *figures):
        assert (out / file).stat().st_size > 0, file
    assert read_manifest(out)["status"] == "complete"
    assert result.verdicts
    res = json.loads((out / "results.json").read_text())
    assert res["analysis"] == name
    assert [v["outcome"] for v in res["verdicts"]] == [
        v.outcome for v in result.verdicts
    ]
    # The verdict table: a header, a rule, one well-formed row per claim.
    report = (out / "report.md").read_text().splitlines()
    start = report.index(HEADER)
    assert report[start + 1] == "|---|---|---|---|---|"
    rows = report[start + 2 : start + 2 + len(result.verdicts)]
    for row, v in zip(rows, result.verdicts, strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 5, row
        assert cells[3] == f"**{v.outcome}**" and v.outcome in OUTCOMES
        assert cells[0] and cells[1] and cells[2] and cells[4]
    # The regime diagnostic is reported for every analysed layer.
    assert "linearity" in "\n".join(report)
    for net in res["networks"].values():
        for layer in net["layers"].values():
            assert 0.0 <= layer["linearity"] and "cid" in layer
    return result, res


def test_every_analysis_is_registered():
    assert {"layerwise", "depth", "damage", "adversarial", "compression"} <= set(
        ANALYSES
    )


@pytest.mark.slow
def test_depth_end_to_end(tmp_path):
    result, res = run_toy("depth", tmp_path)
    assert set(res["networks"]) == {"resnet8", "resnet14"}
    claims = [v.claim for v in result.verdicts]
    assert any("deeper" in c for c in claims)


@pytest.mark.slow
def test_damage_end_to_end(tmp_path):
    result, res = run_toy("damage", tmp_path)
    # The revised layer has the requested four 7x7 filters, on its old input.
    assert res["kernels"]["damaged"] == [7, 7, res["kernels"]["original"][2], 4]
    assert res["revision"] == ["conv3", 4, 7]
    assert set(res["networks"]) == {"original", "damaged"}
    assert result.verdicts[0].claim.startswith("The revision boosts")
