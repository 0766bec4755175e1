"""Compressed transfer syntaxes PACS export: decoded HU equal the original (lossless) or an
independent decoder's (lossy), on a crop of the real CT."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.intake import load_series
from rtgrid.engines.imaging.volume import Volume


@pytest.fixture(scope="module")
def real_crop(real_ct_files, tmp_path_factory) -> tuple[Volume, list[Path]]:
    """4 slices x 128 x 128 of the real CT (through the body), written uncompressed."""
    volume = load_series(real_ct_files[4:8]).volume
    crop = Volume(
        volume.voxels[:, 200:328, 180:308].copy(),
        volume.index_to_lps(np.array([180.0, 200.0, 0.0])),
        volume.spacing_mm,
        volume.direction,
    )
    paths = write_ct_series(crop, tmp_path_factory.mktemp("crop"), patient_id="CROP", patient_name="Real^Crop")
    return crop, paths


def _compressed(paths: list[Path], syntax: str, **options) -> list[tuple[str, bytes]]:
    files = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, **options)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((path.name, buffer.getvalue()))
    return files


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_syntaxes_decode_to_the_original_hu(real_crop, syntax):
    crop, paths = real_crop
    series = load_series(_compressed(paths, syntax))
    assert pydicom.dcmread(io.BytesIO(_compressed(paths[:1], syntax)[0][1])).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(series.volume.voxels, crop.voxels)
    assert series.volume.same_grid(crop, tol_mm=1e-4)


def test_jpeg_lossless_from_an_independent_encoder(real_crop, tmp_path):
    """JPEG Lossless (Process 14 SV1) streams made by GDCM (through SimpleITK)."""
    crop, paths = real_crop
    files = []
    for k, path in enumerate(paths):
        encoded = tmp_path / f"gdcm_{k}.dcm"
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(encoded))
        writer.UseCompressionOn()
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(crop.voxels[k : k + 1]))
        gdcm = pydicom.dcmread(encoded)
        assert gdcm.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        assert (int(gdcm.PixelRepresentation), int(gdcm.BitsStored)) == (1, 16)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = gdcm.PixelData
        ds["PixelData"].VR = "OB"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((path.name, buffer.getvalue()))
    assert np.array_equal(load_series(files).volume.voxels, crop.voxels)


def test_jpeg_ls_near_lossless_stays_within_its_bound(real_crop):
    crop, paths = real_crop
    series = load_series(_compressed(paths, JPEGLSNearLossless, jls_error=3))
    error = np.abs(series.volume.voxels.astype(np.int32) - crop.voxels)
    assert error.max() <= 3  # the NEAR parameter bounds every sample's error
    assert error.max() > 0  # it really was lossy


def test_jpeg_2000_lossy_matches_simpleitk(real_crop, tmp_path):
    crop, paths = real_crop
    files = _compressed(paths, JPEG2000, j2k_cr=[20])
    series = load_series(files)
    for k, (name, data) in enumerate(files):
        (tmp_path / name).write_bytes(data)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))[0]
        assert np.array_equal(series.volume.voxels[k], reference)
    rms = np.sqrt(np.mean((series.volume.voxels.astype(np.float64) - crop.voxels) ** 2))
    assert 0 < rms < 25.0
