"""``rtgrid eval-seg`` on real files: the grid's classical contours against the phantom's truth."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import make_phantom, write_phantom_case
from rtgrid.engines.segmentation.classical import contour_volume
from rtgrid.master.eval_cli import evaluate_structure_sets

SHAPE, SPACING = (24, 96, 96), (4.0, 4.0, 3.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    ct_dir = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=21).ct_dir
    series = load_series_dir(ct_dir)
    truth = make_phantom(SHAPE, SPACING, seed=21).labels
    auto = contour_volume(series.volume)
    for name, masks, algorithm in (("truth", truth, "MANUAL"), ("auto", auto, "AUTOMATIC")):
        specs = [StructureSpec(n, masks[n], "ORGAN", (0, 255, 0), algorithm) for n in ("BODY", "Lung_L", "Lung_R")]
        write_rtstruct(series, specs, label=name).save_as(out / f"{name}.dcm", enforce_file_format=True)
    return ct_dir, out / "truth.dcm", out / "auto.dcm"


def test_identical_sets_agree_perfectly(case):
    ct_dir, truth, _ = case
    metrics = evaluate_structure_sets(ct_dir, truth, truth)
    assert [s.name for s in metrics.structures] == ["BODY", "Lung_L", "Lung_R"]
    assert all(s.dsc == 1.0 and s.ji == 1.0 and s.hd_mm == 0.0 for s in metrics.structures)


def test_cli_reports_the_auto_contours_against_truth(case):
    ct_dir, truth, auto = case
    run = subprocess.run(
        [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", "eval-seg", "--ct", str(ct_dir),
         "--reference", str(truth), "--test", str(auto), "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]  # one object per line
    by_name = {s["name"]: s for s in lines[:-1]}
    assert list(by_name) == ["BODY", "Lung_L", "Lung_R"] and set(lines[-1]) == {"case_id", "mean"}
    assert lines[-1]["mean"]["dsc"] == pytest.approx(sum(s["dsc"] for s in lines[:-1]) / 3)
    assert by_name["BODY"]["dsc"] >= 0.97 and by_name["Lung_L"]["dsc"] >= 0.95
    assert 0 <= by_name["Lung_R"]["hd95_mm"] <= by_name["Lung_R"]["hd_mm"]
    missing = subprocess.run(
        [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", "eval-seg", "--ct", str(ct_dir),
         "--reference", str(truth), "--test", str(auto), "--structure", "Heart"],
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2 and "Heart" in missing.stderr
