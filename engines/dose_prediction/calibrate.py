"""Calibrate a dose model package's targets on OpenKBP training patients and package the result.

``python -m rtgrid.engines.dose_prediction.calibrate --package IN --out OUT --version V`` (the
last step of ``make model-dose``) predicts every training patient with IN's weights, fits
:func:`~rtgrid.engines.dose_prediction.calibration.fit_target_calibration` on them, scores the
validation patients with it and writes OUT: IN's weights, and its card with the calibration
(``target_calibration``), the new version and validation scores, and ``calibrated_from`` (IN's
identity and scores). Validation patients are scored, never fitted on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import fit_target_calibration
from .model import DoseUNet
from .package import load_dose_package, save_dose_package
from .predict import predict_dose, prediction_options
from .train import evaluate, openkbp_inputs, patients_with_dose


def calibrate_package(package: str | Path, train_dir: str | Path, val_dir: str | Path, *, version: str,
                      train_patients: int = 0, val_patients: int = 0) -> tuple[DoseUNet, dict[str, Any]]:
    """IN's network and the card of its calibrated package (see the module's docstring).

    Parameters
    ----------
    package : str or Path
        The package to calibrate; a calibration it already has is replaced, fitted afresh on
        its uncalibrated predictions.
    train_dir, val_dir : str or Path
        OpenKBP folders: fitted on the first; scored on the second.
    version : str
        The calibrated package's version.
    train_patients, val_patients : int
        The first N patients with a dose of each folder (0: all).

    Returns
    -------
    (DoseUNet, dict)
        The network (unchanged) and the new card.

    Raises
    ------
    OpenKBPError
        A data folder is missing or a file is malformed.
    ValueError
        The training patients have no target to fit on.
    """
    model, card, sha256 = load_dose_package(package)
    options = {**prediction_options(card), "target_calibration": None}

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for patient in patients_with_dose(train_dir, train_patients):
            inputs = openkbp_inputs(patient)
            yield inputs, predict_dose(model, inputs, patient.possible_dose_mask, **options), patient.dose_gy

    calibration = fit_target_calibration(samples())
    calibration["fitted_on"] = "OpenKBP training patients with a dose (patients: how many per level)"
    validation = evaluate(model, list(patients_with_dose(val_dir, val_patients)),
                          **{**options, "target_calibration": calibration})
    calibrated = {
        **card,
        "version": version,
        "target_calibration": calibration,
        "validation": validation,
        "calibrated_from": {"name": card["name"], "version": card["version"], "sha256": sha256,
                            "validation": card["validation"]},
    }
    return model, calibrated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit a dose model package's target calibration and package it.")
    parser.add_argument("--package", required=True, help="the package to calibrate")
    parser.add_argument("--out", required=True, help="package folder to write")
    parser.add_argument("--version", required=True, help="the calibrated package's version")
    parser.add_argument("--train", default="../shared/data/openkbp/train")
    parser.add_argument("--val", default="../shared/data/openkbp/validation")
    parser.add_argument("--train-patients", type=int, default=0)
    parser.add_argument("--val-patients", type=int, default=0)
    args = parser.parse_args(argv)
    model, card = calibrate_package(args.package, args.train, args.val, version=args.version,
                                    train_patients=args.train_patients, val_patients=args.val_patients)
    content_hash = save_dose_package(args.out, model, card)
    print(f"{args.out}: sha256 {content_hash}; validation {card['validation']} "
          f"(uncalibrated {card['calibrated_from']['validation']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
