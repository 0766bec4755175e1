"""MR intake: a good series, multi-echo split or refused, multi-frame refused, HU refused, geometry named."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.imaging.errors import InconsistentGeometryError, UnsupportedModalityError
from rtgrid.engines.imaging.mr_intake import (
    MultiEchoError,
    MultiFrameMrError,
    MrRescaleError,
    load_mr_series,
)
from tests.engines.imaging.modality_files import enhanced_mr_file, mr_files, pet_files, small_volume


def test_a_single_echo_series_keeps_its_signal_and_geometry() -> None:
    volume = small_volume()
    [mr] = load_mr_series(mr_files(volume))
    assert mr.series.modality == "MR"
    assert mr.echo_number == 1 and mr.echo_time_ms == 10.0 and mr.magnetic_field_strength_t == 1.5
    np.testing.assert_array_equal(mr.series.volume.voxels, np.clip(volume.voxels, 0, 65535).astype(np.uint16))
    np.testing.assert_allclose(mr.series.volume.spacing_mm, volume.spacing_mm)
    np.testing.assert_allclose(mr.series.volume.origin_mm, volume.origin_mm)


def test_a_multi_echo_series_is_split_by_echo() -> None:
    volume = small_volume()
    echoes = load_mr_series(mr_files(volume, echoes=(1, 2)))
    assert [e.echo_number for e in echoes] == [1, 2]
    assert [e.echo_time_ms for e in echoes] == [10.0, 20.0]
    for echo in echoes:
        assert echo.series.volume.shape == volume.shape
    assert not np.array_equal(echoes[0].series.volume.voxels, echoes[1].series.volume.voxels)


def test_a_multi_echo_series_is_refused_when_not_split() -> None:
    with pytest.raises(MultiEchoError, match=r"EchoNumbers \(0018,0086\) \[1, 2\].*ImagePositionPatient"):
        load_mr_series(mr_files(small_volume(), echoes=(1, 2)), split_echoes=False)


def test_an_enhanced_multi_frame_mr_is_refused_by_name() -> None:
    with pytest.raises(MultiFrameMrError, match=r"MR_enhanced.dcm: SOPClassUID .*Enhanced MR Image Storage, 6 frames"):
        load_mr_series(enhanced_mr_file(small_volume()))


def test_an_mr_that_claims_hounsfield_units_is_refused() -> None:
    def hu(ds, k):
        ds.RescaleType, ds.RescaleSlope, ds.RescaleIntercept = "HU", "1", "-1024"

    with pytest.raises(MrRescaleError, match=r"MR_e1_000.dcm: RescaleType \(0028,1054\) is HU"):
        load_mr_series(mr_files(small_volume(), edit=hu))


def test_inconsistent_orientation_and_spacing_are_named() -> None:
    def tilt(ds, k):
        if k == 3:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.996195", "-0.087156"]

    with pytest.raises(InconsistentGeometryError, match=r"ImageOrientationPatient .* in MR_e1_003.dcm differs"):
        load_mr_series(mr_files(small_volume(), edit=tilt))

    def spacing(ds, k):
        if k == 2:
            ds.PixelSpacing = ["2.5", "2.0"]

    with pytest.raises(InconsistentGeometryError, match=r"PixelSpacing \[2.5, 2.0\] mm in MR_e1_002.dcm differs"):
        load_mr_series(mr_files(small_volume(), edit=spacing))


def test_a_pet_series_is_not_an_mr() -> None:
    with pytest.raises(UnsupportedModalityError, match=r"PT_000.dcm: modality PT is not accepted here \(expected MR\)"):
        load_mr_series(pet_files(small_volume()))
