"""The TG-119 phantom written as DICOM: the CT and the structures read back from the files agree
voxel for voxel with the raw matRad file (read here with scipy alone), and the order names them."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
import scipy.io

from rtgrid.engines.dicomrt.rtstruct import read_rtstruct, read_rtstruct_rois
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.phantom.tg119 import Tg119Error, default_tg119_path
from rtgrid.engines.phantom.tg119_dicom import write_tg119_case


@pytest.fixture(scope="module")
def mat_path():
    try:
        path = default_tg119_path()
    except Tg119Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"TG-119 phantom missing in CI: {exc}")
        pytest.skip(str(exc))
    return path


def test_tg119_dicom_matches_the_mat_file(mat_path, tmp_path):
    ct_dir, rtstruct_path, order_text = write_tg119_case(tmp_path)
    mat = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    cube_hu = np.asarray(mat["ct"].cubeHU)  # [y, x, z]
    ny, nx, nz = cube_hu.shape

    files = sorted(ct_dir.glob("*.dcm"))
    assert len(files) == nz
    first = pydicom.dcmread(files[0])
    assert (first.Rows, first.Columns) == (ny, nx)
    assert [float(v) for v in first.ImagePositionPatient] == [float(mat["ct"].x[0]), float(mat["ct"].y[0]),
                                                              float(mat["ct"].z[0])]
    assert [float(v) for v in first.PixelSpacing] == [3.0, 3.0]  # row spacing (y), column spacing (x)
    assert np.array_equal(first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept),
                          np.round(cube_hu[:, :, 0]))

    series = load_series_dir(ct_dir)
    ds = pydicom.dcmread(rtstruct_path)
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid
    rois = {r.name: r for r in read_rtstruct_rois(ds)}
    assert {n: (r.interpreted_type, r.generation_algorithm) for n, r in rois.items()} == {
        "OuterTarget": ("PTV", "MANUAL"), "Core": ("AVOIDANCE", "MANUAL"), "BODY": ("EXTERNAL", "MANUAL")}
    masks = read_rtstruct(ds, series.volume)
    for row in mat["cst"]:
        name, indices = str(row[1]), np.asarray(row[3], dtype=np.int64).ravel() - 1
        iy, ix, iz = np.unravel_index(indices, (ny, nx, nz), order="F")  # MATLAB column-major
        expected = np.zeros((nz, ny, nx), dtype=bool)
        expected[iz, iy, ix] = True
        assert np.array_equal(masks[name], expected), name

    order = load_order(order_text, set(masks))
    assert order.prescription.target == "OuterTarget" and order.prescription.dose_gy == 50.0
