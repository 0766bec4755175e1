"""Target dose-volume calibration: an exact case by construction, and a package calibrated on real
OpenKBP patients through its command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtgrid.engines.dose_prediction import (
    build_inputs, dvh_metrics, load_dose_package, predict_dose, prediction_options, save_dose_package,
)
from rtgrid.engines.dose_prediction.calibrate import main as calibrate_main
from rtgrid.engines.dose_prediction.calibration import (
    QUANTILES, calibrate_targets, fit_target_calibration, target_levels,
)
from rtgrid.engines.dose_prediction.inputs import N_CHANNELS
from rtgrid.engines.dose_prediction.model import DoseUNet
from rtgrid.engines.dose_prediction.train import evaluate, openkbp_inputs, patients_with_dose
from tests.conftest import require_shared

SHAPE = (6, 20, 20)


def _two_levels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs with a 70 Gy target inside a 56 Gy one, and the masks of their own voxels."""
    high = np.zeros(SHAPE, bool)
    high[2:4, 7:13, 7:13] = True
    low = np.zeros(SHAPE, bool)
    low[1:5, 4:16, 4:16] = True
    inputs = build_inputs(np.zeros(SHAPE, np.int16), np.ones(SHAPE, bool), {}, [(56.0, low), (70.0, high)], (3, 3, 3))
    return inputs, high, low & ~high


def test_a_spread_of_the_target_dose_is_learned_and_restored_exactly_outside_untouched():
    inputs, high, low_own = _two_levels()
    assert [(rank, dose) for rank, dose, _ in target_levels(inputs)] == [(0, 70.0), (1, 56.0)]
    rng = np.random.default_rng(3)
    predicted = np.full(SHAPE, 20.0, np.float32)
    # Evenly spaced values in random places: quantiles are then linear in rank, so the 101-point
    # curve is exact, and the clinical dose is the prediction spread 1.5 times about each level.
    predicted[high] = rng.permutation(np.linspace(66.0, 73.0, high.sum()))
    predicted[low_own] = rng.permutation(np.linspace(52.0, 59.0, low_own.sum()))
    reference = predicted.copy()
    reference[high] = 70.0 + 1.5 * (predicted[high] - 70.0)
    reference[low_own] = 56.0 + 1.5 * (predicted[low_own] - 56.0)

    calibration = fit_target_calibration([(inputs, predicted, reference)])
    assert calibration["quantiles"] == QUANTILES and calibration["patients"] == [1, 1]
    assert len(calibration["levels"]) == 2 and all(len(curve) == QUANTILES for curve in calibration["levels"])
    # The hottest voxel of the 70 Gy target was 73 Gy and is 74.5: +1.5 Gy, 1/70 of the level.
    assert calibration["levels"][0][-1] == pytest.approx(1.5 / 70.0, abs=1e-5)
    assert calibration["levels"][0][0] == pytest.approx(-2.0 / 70.0, abs=1e-5)

    calibrated = calibrate_targets(predicted, inputs, calibration)
    assert np.allclose(calibrated, reference, atol=1e-3)
    outside = ~(high | low_own)
    assert np.array_equal(calibrated[outside], predicted[outside])
    assert np.array_equal(np.argsort(calibrated[high]), np.argsort(predicted[high]))  # hottest stays hottest
    masks = {"PTV70": high}
    assert dvh_metrics(calibrated, masks, 27.0) == pytest.approx(dvh_metrics(reference, masks, 27.0), abs=1e-3)
    assert calibrate_targets(predicted, inputs, None) is predicted


def test_a_level_no_training_patient_had_stays_uncalibrated_and_tiny_targets_are_not_fitted():
    inputs, high, low_own = _two_levels()
    one_level = inputs.copy()
    one_level[2] = 0.0  # as if the patient had the 70 Gy target only
    predicted = np.where(high, 68.0, 30.0).astype(np.float32)
    calibration = fit_target_calibration([(one_level, predicted, predicted + 2.0 * high)])
    assert calibration["patients"] == [1] and len(calibration["levels"]) == 1
    calibrated = calibrate_targets(predicted, inputs, calibration)
    assert np.allclose(calibrated[high], 70.0) and np.array_equal(calibrated[low_own], predicted[low_own])
    tiny = np.zeros((N_CHANNELS, *SHAPE), np.float32)
    tiny[1, 0, 0, :3] = 1.0
    with pytest.raises(ValueError, match="no target of at least"):
        fit_target_calibration([(tiny, predicted, predicted)])


def test_a_package_calibrated_on_openkbp_patients_predicts_its_targets_closer(tmp_path):
    openkbp = require_shared("openkbp")
    architecture = {"channels": N_CHANNELS, "context": 3, "base": 4, "depth": 2, "pool": 2}
    card = {"name": "tiny", "version": "0", "architecture": architecture, "inputs": {}, "training_data": {},
            "citation": "", "licence": "", "split": {}, "validation": {}}
    torch.manual_seed(0)
    uncalibrated_hash = save_dose_package(tmp_path / "raw", DoseUNet(**architecture), card)
    assert calibrate_main(["--package", str(tmp_path / "raw"), "--out", str(tmp_path / "cal"), "--version", "1",
                           "--train", str(openkbp / "train"), "--val", str(openkbp / "validation"),
                           "--train-patients", "2", "--val-patients", "1"]) == 0
    model, calibrated, _ = load_dose_package(tmp_path / "cal")
    assert calibrated["version"] == "1" and calibrated["calibrated_from"]["sha256"] == uncalibrated_hash
    assert calibrated["target_calibration"]["patients"][0] == 2
    # An untrained network's dose says nothing of a target's DVH; the calibration brings the
    # training patients' plans to it, so the validation patient's target criteria come closer,
    # and nothing changes outside the targets.
    patient = next(patients_with_dose(openkbp / "validation", 1))
    inputs = openkbp_inputs(patient)
    options = prediction_options(calibrated)
    raw = predict_dose(model, inputs, patient.possible_dose_mask, **{**options, "target_calibration": None})
    dose = predict_dose(model, inputs, patient.possible_dose_mask, **options)
    targets = {name: mask for name, mask in patient.masks.items() if name.startswith("PTV")}
    clinical = dvh_metrics(patient.dose_gy, targets, patient.volume.voxel_volume_mm3)

    def error_gy(predicted: np.ndarray) -> float:
        return float(np.mean([abs(v - clinical[k]) for k, v in dvh_metrics(predicted, targets, 1.0).items()]))

    assert error_gy(dose) < 0.7 * error_gy(raw), (error_gy(raw), error_gy(dose))
    in_targets = inputs[1:4].any(axis=0)
    assert np.array_equal(dose[~in_targets], raw[~in_targets])
    assert calibrated["validation"] == evaluate(model, [patient], **options)
