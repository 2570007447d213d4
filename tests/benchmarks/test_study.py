"""benchmarks/study.py end to end in its --quick form (every variant and size, 3 steps of batch 4): the report
has a row per run, the grids and the scaling plot exist, the power-law fits are finite; --reuse evaluates
without training again (and without sampling again while checkpoint and settings are the same) and --results
appends the section with links that resolve from that file."""

import importlib.util
import json
import math
import re

import pytest
from tiny import ROOT

SPEC = importlib.util.spec_from_file_location("study", ROOT / "benchmarks/study.py")
study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(study)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, study.main(["--quick", "--out", str(out)])


def test_the_quick_study_reports_every_run(quick):
    out, result = quick
    text = (out / "STUDY.md").read_text(encoding="utf-8")
    for name in study.VARIANTS:
        assert re.search(rf"^\| {name} \(", text, re.M), f"no row for {name}"
        assert (out / "grids" / f"{name}.png").stat().st_size > 0
        run = result["runs"][name]
        assert run["steps"] == 3 and run["train_flops"] > 0 and math.isfinite(run["val_loss"])
        assert math.isfinite(run["fid"]) and 0 <= run["shapes"]["overall"] <= 1
    kinds = {(r["token_kind"], r["order"]) for r in result["runs"].values()}
    assert kinds == {(k, o) for k in ("continuous", "discrete") for o in ("random", "raster")}
    sizes = [result["runs"][n]["params"]["total"] for n in study.SCALING]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # the family grows
    assert (out / "scaling.png").stat().st_size > 0
    assert all(math.isfinite(fit["r2"]) and math.isfinite(fit["b"]) for fit in result["fits"].values())
    assert "R² =" in text and "TinyConvFeatures" in text
    assert json.loads((out / "results.json").read_text())["fits"] == result["fits"]


def test_reuse_evaluates_without_training_and_results_appends(quick, tmp_path):
    trained, _ = quick
    out = tmp_path / "again"
    (out / "fluid").mkdir(parents=True)
    before = (trained / "fluid" / "train.json").read_text()
    (out / "fluid" / "train.json").write_text(before)  # names the trained run's checkpoint
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    again = study.main(["--quick", "--out", str(out), "--only", "fluid", "--reuse", "--results", str(results)])
    assert (out / "fluid" / "train.json").read_text() == before and not (out / "fluid" / "checkpoints").exists()
    assert list(again["runs"]) == ["fluid"] and again["fits"] is None
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Results\n") and "needs at least three" in text
    for target in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (results.parent / target).exists(), target


def test_reuse_reports_a_saved_evaluation_without_sampling_again_until_the_checkpoint_changes(quick, monkeypatch):
    trained, result = quick
    monkeypatch.setattr(study, "evaluate", lambda *args: pytest.fail("evaluated again"))
    again = study.main(["--quick", "--out", str(trained), "--only", "fluid", "--reuse"])
    assert again["runs"]["fluid"] == result["runs"]["fluid"]
    with pytest.raises(pytest.fail.Exception, match="evaluated again"):  # other settings: a new evaluation
        study.main(["--quick", "--out", str(trained), "--only", "fluid", "--reuse", "--val-images", "2"])


def test_power_law_recovers_its_exponent():
    fit = study.power_law([1e3, 1e4, 1e5], [2 * x ** -0.1 for x in (1e3, 1e4, 1e5)])
    assert fit["a"] == pytest.approx(2) and fit["b"] == pytest.approx(-0.1) and fit["r2"] == pytest.approx(1)
    with pytest.raises(ValueError, match="positive"):
        study.power_law([1, 2, 3], [1.0, 0.0, 2.0])
