"""PET intake: activity in Bq/mL, SUVbw against a hand computation, and every missing SUV tag named."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from rtgrid.engines.imaging.errors import UnsupportedModalityError
from rtgrid.engines.imaging.pet_intake import (
    InconsistentPetSeriesError,
    MissingSuvTagError,
    PetCorrectionError,
    PetTimingError,
    PetUnitsError,
    load_pet_series,
)
from tests.engines.imaging.modality_files import mr_files, pet_files, small_volume

# Hand computation for the written tags: 72.5 kg, 370 MBq F-18 (half-life 6586.2 s) injected at
# 09:30:00, series start 10:30:00, decay corrected to START:
#   decayed dose = 370e6 * 2 ** (-3600 / 6586.2) = 253.314 MBq
#   SUVbw of 5000 Bq/mL = 5000 * 72500 g / 253.314e6 Bq = 1.43103
HAND_DECAYED_DOSE_BQ = 253.314e6
HAND_SUV_OF_5000_BQML = 1.43103


def _uniform(value_bqml: float = 5000.0):
    volume = small_volume()
    return volume.with_voxels(np.full(volume.shape, value_bqml, dtype=np.float32))


def test_suv_matches_the_hand_computation() -> None:
    pet = load_pet_series(pet_files(_uniform()))
    assert pet.units == "BQML" and pet.decay_correction == "START"
    assert pet.scan_time_source == "SeriesDate/SeriesTime"
    assert pet.injection_time == dt.datetime(2024, 3, 12, 9, 30, 0)
    assert pet.decayed_dose_bq == pytest.approx(HAND_DECAYED_DOSE_BQ, rel=1e-5)
    np.testing.assert_allclose(pet.series.volume.voxels, 5000.0, rtol=1e-4)
    np.testing.assert_allclose(pet.suv_bw(), HAND_SUV_OF_5000_BQML, rtol=1e-4)


def test_activity_keeps_each_slices_rescale() -> None:
    volume = small_volume(high=20000.0)
    pet = load_pet_series(pet_files(volume))
    assert pet.series.volume.voxels.dtype == np.float32
    np.testing.assert_allclose(pet.series.volume.voxels, volume.voxels, atol=volume.voxels.max() / 32000.0)


def test_an_injection_time_without_a_date_is_on_the_scan_day() -> None:
    pet = load_pet_series(pet_files(_uniform(), injection_as_time=True))
    assert pet.injection_time == dt.datetime(2024, 3, 12, 9, 30, 0)
    np.testing.assert_allclose(pet.suv_bw(), HAND_SUV_OF_5000_BQML, rtol=1e-4)


def test_admin_decay_correction_uses_the_injected_dose() -> None:
    def admin(ds, k):
        ds.DecayCorrection = "ADMIN"

    pet = load_pet_series(pet_files(_uniform(), edit=admin))
    assert pet.decayed_dose_bq == 370e6
    np.testing.assert_allclose(pet.suv_bw(), 5000 * 72500 / 370e6, rtol=1e-4)


def test_without_series_time_the_earliest_acquisition_time_is_the_scan_start() -> None:
    def no_series_time(ds, k):
        del ds.SeriesTime

    pet = load_pet_series(pet_files(_uniform(), edit=no_series_time))
    assert pet.scan_time_source == "AcquisitionDate/AcquisitionTime"
    assert pet.scan_start_time == dt.datetime(2024, 3, 12, 10, 30, 0)


def _delete(keyword: str, inside: bool = False):
    def edit(ds, k):
        target = ds.RadiopharmaceuticalInformationSequence[0] if inside else ds
        delattr(target, keyword)

    return edit


@pytest.mark.parametrize(
    ("keyword", "inside", "tag"),
    [
        ("PatientWeight", False, "PatientWeight (0010,1030)"),
        ("Units", False, "Units (0054,1001)"),
        ("DecayCorrection", False, "DecayCorrection (0054,1102)"),
        ("CorrectedImage", False, "CorrectedImage (0028,0051)"),
        ("RadiopharmaceuticalInformationSequence", False, "RadiopharmaceuticalInformationSequence (0054,0016)"),
        ("RadionuclideTotalDose", True, "RadionuclideTotalDose (0018,1074)"),
        ("RadionuclideHalfLife", True, "RadionuclideHalfLife (0018,1075)"),
        ("RadiopharmaceuticalStartDateTime", True, "RadiopharmaceuticalStartTime (0018,1072)"),
    ],
)
def test_a_missing_suv_tag_is_named(keyword: str, inside: bool, tag: str) -> None:
    with pytest.raises(MissingSuvTagError, match=r"^PT_000.dcm: " + tag.replace("(", r"\(").replace(")", r"\)")) as caught:
        load_pet_series(pet_files(_uniform(), edit=_delete(keyword, inside)))
    assert caught.value.tag == tag


def test_missing_series_and_acquisition_times_are_named() -> None:
    def no_times(ds, k):
        del ds.SeriesTime, ds.AcquisitionTime

    with pytest.raises(MissingSuvTagError, match=r"SeriesTime \(0008,0031\) is missing .* AcquisitionDate/AcquisitionTime"):
        load_pet_series(pet_files(_uniform(), edit=no_times))


def test_wrong_units_corrections_and_times_are_refused() -> None:
    def counts(ds, k):
        ds.Units = "CNTS"

    with pytest.raises(PetUnitsError, match=r"Units \(0054,1001\) is 'CNTS'"):
        load_pet_series(pet_files(_uniform(), edit=counts))

    def none(ds, k):
        ds.DecayCorrection = "NONE"

    with pytest.raises(PetCorrectionError, match=r"DecayCorrection \(0054,1102\) is 'NONE'"):
        load_pet_series(pet_files(_uniform(), edit=none))

    def no_attenuation(ds, k):
        ds.CorrectedImage = ["DECY"]

    with pytest.raises(PetCorrectionError, match=r"CorrectedImage \(0028,0051\) \['DECY'\] lacks ATTN"):
        load_pet_series(pet_files(_uniform(), edit=no_attenuation))

    def early(ds, k):
        ds.SeriesTime = "090000"

    with pytest.raises(PetTimingError, match=r"the scan starts .* 1800 s before the injection"):
        load_pet_series(pet_files(_uniform(), edit=early))


def test_slices_with_different_weights_are_refused() -> None:
    def heavier(ds, k):
        if k == 4:
            ds.PatientWeight = "80"

    with pytest.raises(InconsistentPetSeriesError, match=r"PatientWeight \(0010,1030\) is '72.5' in PT_000.dcm but '80' in PT_004.dcm"):
        load_pet_series(pet_files(_uniform(), edit=heavier))


def test_an_mr_series_is_not_a_pet() -> None:
    with pytest.raises(UnsupportedModalityError, match=r"modality MR is not accepted here \(expected PT\)"):
        load_pet_series(mr_files(small_volume()))
