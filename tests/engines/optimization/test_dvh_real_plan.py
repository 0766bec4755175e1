"""DVHs of a real commercial IMRT plan against plastimatch's (an independent tool).

plastimatch bins a voxel of dose d into bin ``floor(d / w + 1/2)``, so its cumulative value at
row ``i`` is the share of voxels with ``d >= (i - 1/2) w``; we read our DVH at those doses.
Both rasterize the structures on the RTDOSE grid (plastimatch ``convert --fixed rtdose.dcm``).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.rtstruct import rasterize_contours, rtstruct_contours
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.dvh import cumulative_dvh, plan_metrics

BIN_GY = 0.1
LARGE_STRUCTURES = ("BODY", "Breast", "Heart", "Lt Lung", "Tumor Bed Block")


def _plastimatch() -> str:
    """The executable of the PyPI wheel in this environment (``[test]`` extra), else one on PATH."""
    beside = Path(sys.executable).parent / "plastimatch"
    path = str(beside) if beside.exists() else shutil.which("plastimatch")
    if path is None:
        reason = "plastimatch is not installed (pip install -e '.[test]' brings its PyPI wheel)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return path


def _rtdose_volume(ds: pydicom.Dataset) -> Volume:
    """The RTDOSE grid in Gy; the first frame lies at ImagePositionPatient whether the offsets are
    relative (first 0) or absolute (first = the position along the normal)."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    direction = np.stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])], axis=1)
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    assert np.allclose(np.diff(offsets), offsets[1] - offsets[0]), "uneven dose frames"
    spacing = (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), offsets[1] - offsets[0])
    dose_gy = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    return Volume(dose_gy, np.asarray(ds.ImagePositionPatient, dtype=float), spacing, direction)


def _plastimatch_dvh(exe: str, folder, out) -> tuple[list[str], np.ndarray]:
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run([exe, "convert", "--input", str(folder / "rtss.dcm"), "--fixed", str(folder / "rtdose.dcm"),
                    "--output-ss-img", str(out / "ss.nrrd"), "--output-ss-list", str(out / "ss.txt")], **run)
    subprocess.run([exe, "convert", "--input", str(folder / "rtdose.dcm"), "--output-dose-img", str(out / "dose.nrrd")], **run)
    subprocess.run([exe, "dvh", "--input-dose", str(out / "dose.nrrd"), "--input-ss-img", str(out / "ss.nrrd"),
                    "--input-ss-list", str(out / "ss.txt"), "--output-csv", str(out / "dvh.csv"),
                    "--bin-width", str(BIN_GY), "--num-bins", "400"], **run)
    with open(out / "dvh.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.asarray(rows[1:], dtype=float)


def test_dvh_of_commercial_plan_matches_plastimatch(dicompyler_dir, tmp_path):
    exe = _plastimatch()
    header, reference = _plastimatch_dvh(exe, dicompyler_dir, tmp_path)
    dose = _rtdose_volume(pydicom.dcmread(dicompyler_dir / "rtdose.dcm"))
    polygons = rtstruct_contours(pydicom.dcmread(dicompyler_dir / "rtss.dcm"))
    voxel_cc = dose.voxel_volume_mm3 / 1000.0
    masks = {name: rasterize_contours(polygons[name], dose) for name in LARGE_STRUCTURES}
    for name, mask in masks.items():
        ours = cumulative_dvh(dose.voxels, mask, voxel_cc, bin_gy=BIN_GY / 2)
        # Row i of plastimatch (i >= 1) is V(>= (i - 1/2) w): our half-width bin 2 i - 1.
        theirs = 100.0 * reference[1:, header.index(name)]
        at_edges = np.zeros(len(theirs))
        ours_odd = ours.volume_pct[1::2][: len(theirs)]
        at_edges[: len(ours_odd)] = ours_odd
        worst = np.abs(at_edges - theirs).max()
        assert worst <= 1.0, f"{name}: DVH differs from plastimatch by {worst:.2f} % of volume"
        assert ours.total_volume_cc > 50.0
    metrics = plan_metrics(dose.voxels, masks, voxel_cc)
    # A breast plan: the tumour bed boost block is hot and the heart is spared.
    assert metrics["Tumor Bed Block"]["D95"] > 10 * metrics["Heart"]["Dmean"]
