"""``report.pdf`` and ``report.<device>.pdf``: rendered by poppler (pdftoppm), their text read back
(pdftotext): identity, the order's goals met and missed, QA figures, provenance and signature lines."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.optimization.dvh import cumulative_dvh, evaluate_goals
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.phantom import make_phantom, write_phantom_case
from rtgrid.engines.report.pdf_report import device_plan_pdf, rtgrid_version, standard_plan_pdf
from rtgrid.engines.report.plan_report import render_dose_wash_png, render_dvh_png, render_gamma_png

ORDER = """
prescription: {target: PTV, dose_gy: 60, fractions: 30}
constraints:
  - {structure: PTV, type: min_dvh, dose_gy: 57, volume_pct: 95}
  - {structure: SpinalCord, type: max_dose, dose_gy: 45, priority: 1}
  - {structure: Heart, type: max_mean_dose, dose_gy: 1}
"""
MODEL_ORIGIN = "rtgrid model hn-test@0.2.0 sha256 0123456789abcdef"


def _poppler() -> None:
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        if os.environ.get("CI"):
            pytest.fail("poppler-utils is missing in CI (make tools installs it)")
        pytest.skip("poppler-utils (pdftoppm, pdftotext) is not installed")


def _pages_and_text(pdf: bytes, folder: Path) -> tuple[list[np.ndarray], str]:
    path = folder / "report.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(path), str(folder / "page")], check=True)
    pages = [np.asarray(Image.open(p).convert("L")) for p in sorted(folder.glob("page-*.png"))]
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout
    return pages, text


def _flat(text: str) -> str:
    """The text with every run of white space as one space (pdftotext lays columns out freely)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """A phantom CT and structure set, a dose peaked on the PTV, its goals, DVH and dose wash."""
    folder = tmp_path_factory.mktemp("pdf")
    case = write_phantom_case(folder, shape=(24, 96, 96), spacing_mm=(3.0, 3.0, 3.0), seed=2)
    series = load_series_dir(case.ct_dir)
    truth = make_phantom(shape=(24, 96, 96), spacing_mm=(3.0, 3.0, 3.0), seed=2).labels
    masks = {n: truth[n] for n in ("BODY", "PTV", "SpinalCord", "Heart")}
    specs = [StructureSpec(n, m, "ORGAN", (255, 0, 0), "AUTOMATIC", MODEL_ORIGIN if n == "Heart" else "")
             for n, m in masks.items()]
    rtstruct = write_rtstruct(series, specs)
    rtstruct_bytes = _bytes(rtstruct)
    order = load_order(ORDER, masks)
    from scipy import ndimage

    dose = 62.0 * np.exp(-ndimage.distance_transform_edt(~masks["PTV"]) / 6.0) * masks["BODY"]
    goals = evaluate_goals(order, dose, masks, 0.027)
    dvhs = {n: cumulative_dvh(dose, m, 0.027) for n, m in masks.items()}
    dvh_png = render_dvh_png({n: (d.dose_gy, d.volume_pct) for n, d in dvhs.items()}, title="DVH")
    wash_png = render_dose_wash_png(series.volume, dose, series.volume, masks, prescription_gy=60.0)
    machine = load_machine("rtgrid-standard-6mv")
    report = {"plan_uid": "2.25.1234", "goals": [{"goal": g.goal, "achieved_gy": g.achieved_gy, "met": g.met}
                                                 for g in goals],
              "machine": {"id": machine.id, "version": machine.version, "content_hash": machine.content_hash},
              "release": {"released": True, "reasons": [], "warnings": []},
              "beams": [{"gantry_deg": a} for a in (0, 72, 144, 216, 288)]}
    return series, order, goals, report, rtstruct_bytes, dvh_png, wash_png, dose, masks, str(rtstruct.SOPInstanceUID)


def _bytes(ds: pydicom.Dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_standard_plan_report(plan, tmp_path):
    _poppler()
    series, order, goals, report, rtstruct, dvh_png, wash_png, *_ = plan
    assert {g.met for g in goals} == {True, False}  # the test shows both verdicts
    pdf = standard_plan_pdf(series, [rtstruct], order, report, dvh_png, wash_png)
    pages, text = _pages_and_text(pdf, tmp_path)
    assert len(pages) == 3  # the summary, the DVH, the dose wash
    assert all(page.std() > 5 for page in pages)  # none blank
    assert pages[1].shape[0] > pages[1].shape[1]  # A4 portrait
    assert series.patient_id in text and series.study_instance_uid in text and "2.25.1234" in text
    assert "PTV: 60 Gy in 30 fractions" in text and "Plan RELEASED" in text
    for goal in goals:
        [line] = [line for line in text.splitlines() if goal.goal in line and line.split()[0] in ("MET", "MISSED")]
        assert line.split()[0] == ("MET" if goal.met else "MISSED"), line
    missed = sum(not g.met for g in goals)
    text = _flat(text)
    assert f"{len(goals) - missed} met, {missed} missed" in text
    machine = report["machine"]
    assert f"rtgrid version {rtgrid_version()}" in text and machine["content_hash"] in text
    assert "hn-test@0.2.0 sha256 0123456789abcdef" in text  # the deep model behind a structure
    for role in ("Prepared by", "Reviewed by (medical physicist)", "Approved by (radiation oncologist)"):
        assert role in text
    assert "Dose-volume histogram" in text and "Dose wash with contours" in text


def test_device_plan_report(plan, tmp_path):
    _poppler()
    series, order, goals, report, rtstruct, dvh_png, wash_png, dose, masks, structure_set_uid = plan
    gamma = np.where(masks["BODY"], 0.4, np.nan)
    gamma[masks["PTV"]] = 1.3
    qa = {"device": "VERSA-AGILITY", "model": "elekta-versa-agility-6x", "released": False,
          "reasons": ["gamma pass rate 91.2% < 95%"],
          "gamma_criteria": {"dose_percent": 3.0, "distance_mm": 2.0, "threshold_percent": 10.0, "global": True,
                             "pass_rate_required_pct": 95.0},
          "gamma_pass_rate_pct": 91.2, "segments": 47, "total_mu": 612.5, "mu_per_beam": [120.5, 130.0, 362.0],
          "coincidence": {"overall": 0.71, "threshold": 0.9, "reused_standard_plan": False},
          "attempts": [{"attempt": 1, "passed": False, "gamma_pass_rate_pct": 88.0, "reasons": ["gamma 88.0%"]},
                       {"attempt": 2, "passed": False, "gamma_pass_rate_pct": 91.2, "reasons": ["gamma 91.2%"]}],
          "reported_attempt": 2,
          "goals": [{"goal": g.goal, "achieved_gy": g.achieved_gy, "met": g.met, "hard": True,
                     "standard_plan_gy": g.achieved_gy} for g in goals]}
    gamma_png = render_gamma_png(gamma, series.volume, title="gamma")
    pdf = device_plan_pdf(series, qa, "2.25.999", "ab" * 32, structure_set_uid, dvh_png, gamma_png)
    pages, text = _pages_and_text(pdf, tmp_path)
    text = _flat(text)
    assert len(pages) == 2
    assert "Device plan report: VERSA-AGILITY" in text and "WITHHELD" in text and "gamma pass rate 91.2% < 95%" in text
    assert "3% / 2 mm, global, threshold 10%, pass rate required 95%" in text
    assert "Segments 47" in text and "612.5 per fraction" in text and "attempt 2 of 2" in text
    assert "ab" * 32 in text and structure_set_uid in text and series.patient_id in text
    assert "Approved by (radiation oncologist)" in text
