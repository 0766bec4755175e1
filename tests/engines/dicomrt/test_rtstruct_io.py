"""RT Structure Set writer and reader, against real files and an external validator."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import skimage.draw
from pydicom.dataelem import RawDataElement

from rtgrid.engines.dicomrt.rtstruct import (
    CONTOUR_DATA_TAG,
    RtStructError,
    StructureSpec,
    rasterize_contours,
    read_rtstruct,
    read_rtstruct_rois,
    rtstruct_contours,
    write_rtstruct,
)
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import Volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def on_grid(array: np.ndarray, image: sitk.Image, volume: Volume) -> np.ndarray:
    """Reorder ``array`` (on ``image``'s grid) onto ``volume``'s grid; fail unless voxel centres coincide."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    a = (volume.direction.T @ direction @ np.diag(image.GetSpacing())) / volume.spacing_mm[:, None]
    b = volume.lps_to_index(np.array(image.GetOrigin()))
    assert np.allclose(a, np.round(a), atol=1e-4) and np.allclose(b, np.round(b), atol=1e-3)
    a, b = np.round(a).astype(int), np.round(b).astype(int)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    target = ijk @ a.T + b
    assert target.min() >= 0 and np.all(target.max(axis=0) < np.array(volume.shape[::-1]))
    out = np.zeros(volume.shape, dtype=array.dtype)
    out[target[:, 2], target[:, 1], target[:, 0]] = array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    return out


@pytest.fixture(scope="module")
def series(totalseg_dir):
    return load_series_dir(totalseg_dir / "ct_dicom")


@pytest.fixture(scope="module")
def reference_structures(totalseg_dir, series) -> dict[str, np.ndarray]:
    image = sitk.ReadImage(str(totalseg_dir / "example_seg_dicom.nii.gz"))
    labels = on_grid(sitk.GetArrayFromImage(image), image, series.volume)
    names = json.loads((totalseg_dir / "labels_total_v2.json").read_text())
    return {names[str(v)]: labels == v for v in np.unique(labels) if v}


@pytest.fixture(scope="module")
def written(series, reference_structures, tmp_path_factory) -> Path:
    specs = [
        StructureSpec(name, mask, "ORGAN", (200, 80, 40), "AUTOMATIC", "TotalSegmentator reference")
        for name, mask in reference_structures.items()
    ]
    specs.append(StructureSpec("Empty", np.zeros(series.volume.shape, dtype=bool), "AVOIDANCE", (0, 255, 0), "MANUAL"))
    ds = write_rtstruct(series, specs, label="TOTALSEG", description="reference round trip")
    path = tmp_path_factory.mktemp("rtstruct") / "rtss.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_reference_label_map_round_trips(written, series, reference_structures) -> None:
    ds = pydicom.dcmread(written)
    masks = read_rtstruct(ds, series.volume, frame_of_reference_uid=series.frame_of_reference_uid)
    ml_per_voxel = series.volume.voxel_volume_mm3 / 1000.0
    checked = 0
    for name, reference in reference_structures.items():
        if np.count_nonzero(reference) * ml_per_voxel > 1.0:
            assert dice(masks[name], reference) >= 0.98, name
            checked += 1
    assert checked >= 20
    assert not masks["Empty"].any()


def test_structure_set_identity_and_listing(written, series, reference_structures) -> None:
    ds = pydicom.dcmread(written)
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.SeriesInstanceUID not in (series.series_instance_uid, "")
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference_uid
    referenced_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == series.series_instance_uid
    assert len(referenced_series.ContourImageSequence) == series.volume.shape[0]
    rois = read_rtstruct_rois(ds)
    assert [r.name for r in rois] == [*reference_structures, "Empty"]
    empty = rois[-1]
    assert (empty.interpreted_type, empty.generation_algorithm, empty.color) == ("AVOIDANCE", "MANUAL", (0, 255, 0))
    assert "ContourSequence" not in ds.ROIContourSequence[-1]


def test_contours_reference_the_uids_the_hospital_holds(written, totalseg_dir) -> None:
    """Each contour's ReferencedSOPInstanceUID is the file meta UID of the CT file at its z."""
    uid_at_z = {}
    for path in (totalseg_dir / "ct_dicom").iterdir():
        ct = pydicom.dcmread(path, stop_before_pixels=True)
        uid_at_z[round(float(ct.ImagePositionPatient[2]), 2)] = ct.file_meta.MediaStorageSOPInstanceUID
    ds = pydicom.dcmread(written)
    count = 0
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            z = round(float(contour.ContourData[2]), 2)
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == uid_at_z[z]
            count += 1
    assert count > 100


def test_annulus_keeps_its_hole_through_dicom(series, tmp_path) -> None:
    jj, ii = np.mgrid[: series.volume.shape[1], : series.volume.shape[2]]
    r2 = (ii - 256) ** 2 + (jj - 240) ** 2
    annulus = np.zeros(series.volume.shape, dtype=bool)
    annulus[5:9] = ((r2 <= 60**2) & (r2 > 25**2))[None]
    ds = write_rtstruct(series, [StructureSpec("Ring", annulus, "PTV", (255, 0, 0), "SEMIAUTOMATIC")])
    ds.save_as(tmp_path / "ring.dcm", enforce_file_format=True)
    back = read_rtstruct(pydicom.dcmread(tmp_path / "ring.dcm"), series.volume)["Ring"]
    assert np.array_equal(back, annulus)
    polygons = rtstruct_contours(ds)["Ring"]
    assert len(polygons) == 8  # outer and inner polygon on 4 slices
    # Twice the slice spacing: coarse slice k sits on plane 2k; it takes the nearest contour plane
    # within half its spacing (planes 5..8 reach coarse slices 2, 3, 4), never a XOR of several.
    v = series.volume
    coarse = Volume(np.zeros((10, *v.shape[1:]), np.int16), v.origin_mm, v.spacing_mm * [1, 1, 2], v.direction)
    expected = np.zeros(coarse.shape, dtype=bool)
    expected[2:5] = annulus[6]
    assert np.array_equal(rasterize_contours(polygons, coarse), expected)


def test_contour_data_is_written_as_built_not_decoded_again(series) -> None:
    """Saving copies each raw ContourData as it is; the bytes are those pydicom writes from the floats."""
    jj, ii = np.mgrid[: series.volume.shape[1], : series.volume.shape[2]]
    disc = np.zeros(series.volume.shape, dtype=bool)
    disc[3:12] = ((ii - 250) ** 2 + (jj - 230) ** 2 <= 70**2)[None]
    ds = write_rtstruct(series, [StructureSpec("Disc", disc, "ORGAN", (0, 0, 255), "AUTOMATIC")])
    decoded = copy.deepcopy(ds)
    for contour in decoded.ROIContourSequence[0].ContourSequence:
        assert len(contour.ContourData) % 3 == 0  # decodes the raw element into floats

    fast, slow = io.BytesIO(), io.BytesIO()
    ds.save_as(fast, enforce_file_format=True)
    decoded.save_as(slow, enforce_file_format=True)
    assert fast.getvalue() == slow.getvalue()
    contours = ds.ROIContourSequence[0].ContourSequence
    assert len(contours) == 9
    assert all(isinstance(c.get_item(CONTOUR_DATA_TAG), RawDataElement) for c in contours)


def test_frame_of_reference_mismatch_and_bad_data_are_named(written, series, totalseg_dir) -> None:
    ds = pydicom.dcmread(written)
    with pytest.raises(RtStructError, match="spleen.*Frame of Reference"):
        read_rtstruct(ds, series.volume, frame_of_reference_uid="1.2.3.4")
    ds.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 2
    with pytest.raises(RtStructError, match="spleen.*Number of Contour Points is 2"):
        rtstruct_contours(ds)
    with pytest.raises(RtStructError, match="not an RT Structure Set"):
        read_rtstruct_rois(pydicom.dcmread(next((totalseg_dir / "ct_dicom").iterdir()), stop_before_pixels=True))


def test_writer_rejects_masks_off_the_grid(series) -> None:
    with pytest.raises(RtStructError, match="'Small'.*mask shape"):
        write_rtstruct(series, [StructureSpec("Small", np.zeros((2, 2, 2), bool), "ORGAN", (1, 2, 3), "MANUAL")])
    with pytest.raises(RtStructError, match="'Odd'.*Interpreted Type 'TUMOUR'"):
        write_rtstruct(
            series, [StructureSpec("Odd", np.zeros(series.volume.shape, bool), "TUMOUR", (1, 2, 3), "MANUAL")]
        )


def test_reads_a_commercial_structure_set(dicompyler_dir) -> None:
    ds = pydicom.dcmread(dicompyler_dir / "rtss.dcm")
    rois = read_rtstruct_rois(ds)
    assert len(rois) == 10
    by_name = {r.name: r for r in rois}
    assert by_name["BODY"].interpreted_type == "EXTERNAL"
    assert by_name["Heart"].interpreted_type == "ORGAN"
    assert all(r.color is not None for r in rois)
    polygons = rtstruct_contours(ds)
    assert set(polygons) == set(by_name)
    assert all(p.shape[1] == 3 and len(p) >= 3 for polys in polygons.values() for p in polys)
    # Rasterize the body on the CT slice's own grid and compare with scikit-image's polygon fill.
    ct = pydicom.dcmread(dicompyler_dir / "ct.0.dcm")
    z = float(ct.ImagePositionPatient[2])
    spacing = (float(ct.PixelSpacing[1]), float(ct.PixelSpacing[0]), 1.0)
    volume = Volume(np.zeros((1, ct.Rows, ct.Columns), np.int16), np.array(ct.ImagePositionPatient, float), spacing)
    on_slice = [p for p in polygons["BODY"] if abs(p[0, 2] - z) < 0.5]
    assert on_slice
    expected = np.zeros((ct.Rows, ct.Columns), dtype=bool)
    for polygon in on_slice:
        ijk = volume.lps_to_index(polygon)
        rows, cols = skimage.draw.polygon(ijk[:, 1], ijk[:, 0], expected.shape)
        piece = np.zeros_like(expected)
        piece[rows, cols] = True
        expected ^= piece
    ours = rasterize_contours(polygons["BODY"], volume)[0]
    assert expected.sum() > 10_000
    assert dice(ours, expected) >= 0.995


def test_dciodvfy_finds_no_error(written) -> None:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (Debian package dicom3tools) is required in CI")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    run = subprocess.run(["dciodvfy", str(written)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    assert "RTStructureSet" in lines
    assert [line for line in lines if line.startswith("Error")] == []
